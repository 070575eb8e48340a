"""Read ahead in a background thread: the next batches are read and decoded while this one is scored.

pyarrow's Parquet decoding and numpy's copies release the GIL, and JAX dispatches asynchronously, so a
reader thread, the device and the merging thread overlap. The queue holds at most ``depth`` batches,
so memory stays bounded by a few batches however large the pool is.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


@contextlib.contextmanager
def prefetch(make: Callable[[], Iterator[T]], depth: int = 2) -> Iterator[Iterator[T]]:
    """Iterate ``make()`` in a background thread, at most ``depth`` items ahead of the consumer.

    An exception in the reader is raised in the consumer at the item where it happened. Leaving the
    ``with`` block early (an error or a break in the consumer) stops the reader, closes its iterator
    (and so its files) in the reader thread, and waits for it.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = None
        try:
            it = make()
            for item in it:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(_Failed(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="alloop-prefetch", daemon=True)
    thread.start()

    def items() -> Iterator[T]:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    try:
        yield items()
    finally:
        stop.set()
        thread.join()
