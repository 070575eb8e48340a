"""The use cases, one module per command (``init``, ``train``, ``query``, ``ingest``, ``status``, ``tune``,
``verify``, ``inherit``, ``demo``); each takes the run's lock, validates, calls core and I/O and
commits once. ``common`` holds what they share. The CLI and ``alloop.api`` call exactly these functions.
"""
