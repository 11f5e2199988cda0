"""Result files that are never half-written (a reader sees the old file or the whole new one), and the
names of files that one package writes and another reads."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

# In a checkpoint folder (callbacks/checkpoint_on_signal.py writes it, sweep/evaluate.py reads it): the names
# of the checkpoints saved on a signal, off the save interval, one per line.
SIGNAL_CHECKPOINTS = "signal-checkpoints.txt"


def write_json_atomically(path: str | os.PathLike, payload: Any) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2))


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Written whole under a temporary name beside `path`, then renamed: never a partial file under its name."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with replacing(path) as f:
        f.write(text)


@contextmanager
def replacing(path: str | os.PathLike, binary: bool = False) -> Iterator[IO[Any]]:
    """A file whose content appears at `path` only once the block finishes without error."""
    path = os.fspath(path)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        with open(partial, "wb") if binary else open(partial, "w", encoding="utf-8", newline="") as f:
            yield f
        os.replace(partial, path)
    finally:
        # Only left behind when the block failed; a finished write has already been renamed away.
        if os.path.exists(partial):
            os.remove(partial)
