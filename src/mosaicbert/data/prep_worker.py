"""What corpus prep does to each document before the main process routes it: key, filter, tokenize, chunk.

This module is all a prep worker process imports: numpy and, with a tokenizer, the Rust `tokenizers`
library, which the main process hands over as its JSON. Neither torch, transformers nor streaming loads,
so a spawned worker starts in about a second and holds tens of megabytes, not the hundreds torch costs.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np


def document_key(text: str) -> int:
    """A 64-bit hash of the text with Unicode normalised (NFC) and every run of whitespace made one space."""
    normalised = " ".join(unicodedata.normalize("NFC", text).split())
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=8).digest(), "little")


def is_validation(key: int, val_fraction: float) -> bool:
    return key < val_fraction * 2**64


def split_role(named_split: str | None, key: int, val_fraction: float) -> str:
    """'train' or 'validation': the split the input names for the document, else the one its key decides."""
    if named_split:
        return named_split
    return "validation" if is_validation(key, val_fraction) else "train"


def token_id_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The narrowest unsigned integer type that holds every token id."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


@dataclass
class Processed:
    """One document after the workers: its key and its samples (one, or one per chunk)."""

    key: int
    chars: int
    samples: list[dict[str, Any]]
    tokens: int = 0


@dataclass(frozen=True)
class WorkerSetup:
    min_chars: int = 0
    chunk_tokens: int | None = None  # cut tokenized documents into pieces of at most this many tokens
    tokenizer_json: str | None = None  # the fast tokenizer's definition (`backend_tokenizer.to_str()`)
    vocab_size: int = 0
    split_special_tokens: bool = False  # transformers sets this per call; the JSON does not keep it


_setup = WorkerSetup()
_tokenizer: Any = None


def init_worker(setup: WorkerSetup) -> None:
    """Set up this process (a worker, or the main process when prep runs in one) to process documents."""
    global _setup, _tokenizer
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle, once
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _setup = setup
    _tokenizer = None
    if setup.tokenizer_json is not None:
        from tokenizers import Tokenizer

        _tokenizer = Tokenizer.from_str(setup.tokenizer_json)
        _tokenizer.no_truncation()  # whole documents: truncation happens at training, chunking here
        _tokenizer.no_padding()
        _tokenizer.encode_special_tokens = setup.split_special_tokens


def process_documents(texts: list[str]) -> list[Processed | None]:
    """Key, filter (None: shorter than `min_chars` once stripped), tokenize and chunk a batch of documents."""
    keep = [len(text.strip()) >= _setup.min_chars for text in texts]
    kept = [text for text, ok in zip(texts, keep) if ok]
    results = [Processed(document_key(text), len(text), [{"text": text}]) for text in kept]
    if _tokenizer is not None:
        _add_tokens(results, kept)
    by_text = iter(results)
    return [next(by_text) if ok else None for ok in keep]


def _add_tokens(results: list[Processed], texts: list[str]) -> None:
    chunk = _setup.chunk_tokens
    id_dtype = token_id_dtype(_setup.vocab_size)
    for result, text, encoding in zip(results, texts, _tokenizer.encode_batch(texts, add_special_tokens=False)):
        ids = np.asarray(encoding.ids, dtype=id_dtype)
        result.tokens = len(ids)
        if chunk is None or len(ids) <= chunk:
            result.samples[0]["input_ids"] = ids
            continue
        offsets = encoding.offsets
        result.samples = [
            # each piece keeps the text it was cut from, so a loader that re-tokenizes text sees the same piece
            {"text": text[offsets[start][0]: offsets[min(start + chunk, len(ids)) - 1][1]],
             "input_ids": ids[start: start + chunk]}
            for start in range(0, len(ids), chunk)
        ]
