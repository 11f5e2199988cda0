"""Checkpoint files that are never half-written.

Composer 0.32.1 writes a monolithic checkpoint with `open(filename, 'wb')` straight to its
final name, so a run killed mid-save leaves a truncated `ep0-ba100-rank0.pt` that looks
like any other checkpoint. `install_atomic_checkpoint_writes` wraps Composer's file writer
so the bytes go to a hidden temporary name in the same folder and are renamed into place
(an atomic operation on POSIX file systems) once fully written and synced.

`install_per_node_signal_files` fixes multi-node autoresume on a save folder that all nodes share
(the usual cluster file system): Composer names the "local rank 0 is done" signal file after rank
0's node and broadcasts that name, so every node's local rank 0 writes and then removes the same
file, and the second removal fails with FileNotFoundError before training starts.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from composer.utils import checkpoint as composer_checkpoint
from composer.utils import dist as composer_dist

_original_write = composer_checkpoint._write_checkpoint_file
_original_signal_file_name = composer_dist.get_node_signal_file_name


def _atomic_write(state_dict: dict[str, Any], filename: str) -> None:
    folder, name = os.path.split(filename)
    # Keep the real name as the suffix: Composer picks tar/compression from the extension.
    partial = os.path.join(folder, f".partial-{os.getpid()}-{name}")
    try:
        _original_write(state_dict, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, filename)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


@functools.cache
def install_atomic_checkpoint_writes() -> None:
    composer_checkpoint._write_checkpoint_file = _atomic_write


def _per_node_signal_file_name(rng=None) -> str:
    # The broadcast part stays common to all ranks (so a node's ranks agree); the suffix separates nodes.
    return f"{_original_signal_file_name(rng)}-of-node{composer_dist.get_node_rank()}"


@functools.cache
def install_per_node_signal_files() -> None:
    composer_dist.get_node_signal_file_name = _per_node_signal_file_name
