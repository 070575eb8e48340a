"""The I/O shell: pool reading, label files, checkpoints and the run directory.

Never imports jax, typer or rich: only numpy, pandas, pyarrow and the standard library.
"""

from alloop.io.atomic import encode_json, encode_table, sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic, write_table_atomic, write_text_atomic
from alloop.io.checkpoint import encode_tree, flatten_tree, load_meta, load_tree, save_tree
from alloop.io.labels import LabelFile, class_label, read_label_file, validate_ingest
from alloop.io.lock import run_lock
from alloop.io.pool import (
                              PoolBatch,
                              PoolInfo,
                              as_ids,
                              check_fingerprint,
                              check_unique_ids,
                              feature_moments,
                              iter_batches,
                              missing_ids,
                              open_pool,
                              require_ids,
                              scan_ids,
                              take_rows,
)
from alloop.io.rundir import (
                              RUNS_ENV,
                              Run,
                              append_history,
                              commit,
                              create_run,
                              load_checkpoint,
                              open_run,
                              read_history,
                              read_labels,
                              resolve_run_path,
                              run_files_digest,
                              runs_root,
)

__all__ = [
    "LabelFile", "PoolBatch", "PoolInfo", "RUNS_ENV", "Run", "append_history", "as_ids", "check_fingerprint",
    "check_unique_ids", "class_label", "commit", "create_run", "encode_json", "encode_table", "encode_tree",
    "feature_moments", "flatten_tree", "iter_batches", "load_checkpoint", "load_meta", "load_tree",
    "missing_ids", "open_pool", "open_run", "read_history", "read_label_file", "read_labels", "require_ids",
    "resolve_run_path", "run_files_digest", "run_lock", "runs_root", "save_tree", "scan_ids",
    "sha256_bytes", "sha256_file", "take_rows", "validate_ingest", "write_bytes_atomic",
    "write_json_atomic", "write_table_atomic", "write_text_atomic",
]
