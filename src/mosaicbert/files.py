"""Result files that are never half-written: a reader sees the old file or the whole new one."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json_atomically(path: str | os.PathLike, payload: Any) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2))


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Written whole under a temporary name beside `path`, then renamed: never a partial file under its name."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)
