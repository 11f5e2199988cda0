"""Checkpoint files that are never half-written.

Composer 0.32.1 writes a monolithic checkpoint with `open(filename, 'wb')` straight to its
final name, so a run killed mid-save leaves a truncated `ep0-ba100-rank0.pt` that looks
like any other checkpoint. `atomic_write` replaces Composer's file writer so the bytes go to a
hidden temporary name in the same folder and are renamed into place (an atomic operation on POSIX
file systems) once fully written and synced.

`load_with_clear_errors` turns a missing, damaged or incompatible checkpoint (load_path, or the
one autoresume picks) into one message naming the file, instead of torch's traceback.

`per_node_signal_file_name` fixes multi-node autoresume on a save folder that all nodes share
(the usual cluster file system): Composer names the "local rank 0 is done" signal file after rank
0's node and broadcasts that name, so every node's local rank 0 writes and then removes the same
file, and the second removal fails with FileNotFoundError before training starts.

These replace Composer internals; composer_patches.py installs them, once, on the Composer version
they were written for.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import socket
import zipfile
from typing import Any

from composer.callbacks import CheckpointSaver
from composer.utils import checkpoint as composer_checkpoint
from composer.utils import dist as composer_dist

from mosaicbert.errors import UserError

_original_write = composer_checkpoint._write_checkpoint_file
# This host, in partial-file names without dashes (host names may have them).
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_original_load = composer_checkpoint.load_checkpoint
_original_signal_file_name = composer_dist.get_node_signal_file_name


# A full disk (or quota, or file-size limit) while writing: said plainly, not as a pickling traceback.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def atomic_write(state_dict: dict[str, Any], filename: str) -> None:
    folder, name = os.path.split(filename)
    # Keep the real name as the suffix: Composer picks tar/compression from the extension.
    partial = os.path.join(folder, f".partial-{os.getpid()}-{_HOST}-{name}")
    try:
        _original_write(state_dict, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, filename)
    except BaseException as err:
        if os.path.exists(partial):
            os.remove(partial)
        full = err if isinstance(err, OSError) else err.__cause__ or err.__context__
        if isinstance(full, OSError) and full.errno in DISK_FULL:
            raise UserError(f"could not write checkpoint {filename}: {full.strerror}. The partial file was removed and "
                            "earlier checkpoints are intact; free space (or set save_folder to a larger disk) and "
                            "run the same command with autoresume=true.") from None
        raise


def remove_partial_writes(save_folder: str | None) -> list[str]:
    """Partial checkpoint files (`.partial-<pid>-<host>-<name>`) that a killed run of this host left mid-write:
    their process is gone. Those of a live process (an earlier attempt still writing its SIGTERM checkpoint
    while a replacement starts) or of another host are kept. Returns the names removed."""
    if save_folder is None or not os.path.isdir(save_folder):
        return []
    stale = []
    for name in sorted(os.listdir(save_folder)):
        parts = name.split("-", 3)
        if len(parts) == 4 and parts[0] == ".partial" and parts[1].isdigit() and parts[2] == _HOST \
                and not _alive(int(parts[1])):
            os.remove(os.path.join(save_folder, name))
            stale.append(name)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


DAMAGED = ("PytorchStreamReader", "failed finding central directory", "invalid load key", "unpickling stack")
INCOMPATIBLE = ("size mismatch", "Missing key", "Unexpected key")


def load_with_clear_errors(*args, path: str, **kwargs):
    """Composer's load_checkpoint; the errors a bad checkpoint file gives become one message naming the file.
    Anything else (a bug in a callback's state, a network or collective failure) keeps its traceback."""
    try:
        return _original_load(*args, path=path, **kwargs)
    except Exception as err:
        text = str(err)
        lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(err).__name__]
        if isinstance(err, FileNotFoundError) and not os.path.exists(path):
            problem = "does not exist; point load_path at an existing checkpoint (runs/<run>/checkpoints/...)"
        elif isinstance(err, RuntimeError) and any(marker in text for marker in INCOMPATIBLE):
            problem = (f"holds another architecture than this config ({' '.join(lines[:2])[:300]}); load it with "
                       "the model_config it was trained with, or point load_path at a checkpoint of this model")
        elif isinstance(err, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile)) or \
                (isinstance(err, RuntimeError) and any(marker in text for marker in DAMAGED)) or \
                (isinstance(err, OSError) and os.path.isfile(path)):  # e.g. EINVAL seeking in a cut-off zip
            problem = (f"cannot be read ({type(err).__name__}: {lines[0][:200]}): it is damaged, cut short, not a "
                       "Composer checkpoint or not readable here (this package writes checkpoints atomically, so "
                       "it was not cut by a killed run); use another checkpoint")
        else:
            raise
        raise UserError(f"checkpoint {path} {problem}.") from None


def per_node_signal_file_name(rng=None) -> str:
    # The broadcast part stays common to all ranks (so a node's ranks agree); the suffix separates nodes.
    return f"{_original_signal_file_name(rng)}-of-node{composer_dist.get_node_rank()}"


def remove_saver_temp_folders(trainer) -> None:
    """Composer's CheckpointSaver keeps a temporary folder (for its `latest` symlink files) until it is garbage
    collected, which a closed trainer's saver may never be in a long-lived process: one folder per run in the
    temporary directory (tests/test_soak.py). Removed once the trainer is closed."""
    for callback in trainer.state.callbacks:
        if isinstance(callback, CheckpointSaver) and hasattr(callback, "tmp_dir_for_symlink"):
            callback.tmp_dir_for_symlink.cleanup()
