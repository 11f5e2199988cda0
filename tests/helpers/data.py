"""Small corpora in the formats of the real downloads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_c4_files(folder: Path, n_train: int = 30, n_val: int = 12) -> dict[str, list[str]]:
    """Small C4-format files: one JSON object per line with text, timestamp and url."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "train": [f"Training document number {i}. It talks about café prices and the weather, {i * 7} times." for i in range(n_train)],
        "validation": [f"Validation document {i}: a short note on rivers and hills." for i in range(n_val)],
    }
    for split, docs in texts.items():
        half = len(docs) // 2
        for part, chunk in enumerate((docs[:half], docs[half:])):
            path = folder / f"c4-{split}.{part:05d}-of-00002.json.gz"
            with gzip.open(path, "wt", encoding="utf-8") as f:
                for text in chunk:
                    f.write(json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": "https://example.com"}) + "\n")
    return texts
