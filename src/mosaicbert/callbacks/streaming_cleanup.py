"""Frees what a run's StreamingDatasets hold when its trainer closes, not at process exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from streaming import StreamingDataset

from mosaicbert.data.shared_memory import block_prefix, release, streaming_handles


class ReleaseStreamingResources(Callback):
    """Frees what the run's StreamingDatasets hold when the trainer closes, not at process exit.

    - Shared memory: Streaming registers every shared-memory handle it creates or opens with `atexit`, which
      keeps the block, its mapping and a file descriptor alive until the process ends, however long ago its
      dataset was done with; some handles (those a later dataset opens to check which name prefixes are taken)
      are referenced by nothing else. Every handle on a block of this run's datasets is closed (and the
      blocks this process created are unlinked).
    - Threads: each dataset keeps a thread pool for its prepare and ready threads after iteration ends.
    - Lock files: each dataset leaves two in the temporary folder.
    A process that trains more than once (GLUE with EarlyBERT, a notebook, tests) gathered 36 descriptors,
    12 /dev/shm entries, 4 threads and 4 lock files per run before this (tests/test_soak.py)."""

    def __init__(self, datasets: list[Any]):
        self.datasets = [d for d in datasets if isinstance(d, StreamingDataset)]

    def close(self, state: State, logger: Logger) -> None:
        for dataset in self.datasets:
            if hasattr(dataset, "_event"):
                dataset._event.set()  # the prepare and ready threads of an unfinished epoch end their loops
            if hasattr(dataset, "_executor"):
                dataset._executor.shutdown(wait=True, cancel_futures=True)
                del dataset._executor  # a later iteration would make a new pool
        prefixes = {dataset._shm_prefix_int for dataset in self.datasets}
        for dataset in self.datasets:  # the lock files beside the blocks ({prefix}_barrier_filelock, ...)
            for lock in Path(dataset._filelock_root).glob(f"{dataset._shm_prefix_int:06}_*filelock"):
                lock.unlink(missing_ok=True)
        for handle in streaming_handles():
            if block_prefix(handle) in prefixes:
                release(handle)
