"""Writing text corpora into MDS shards: C4 (hub or local json files) and an offline sample.

A split is written into a hidden staging folder next to its final place and renamed
into place only when complete, so an interrupted run never leaves a folder that reads
as a finished split. Existing splits are kept unless `overwrite=True`.
"""

from __future__ import annotations

import ast
import glob
import itertools
import json
import os
import shutil
import sysconfig
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mosaicbert.data.prep_worker import token_id_dtype
from mosaicbert.data.remote import ShardWriter, remote_split_exists
from mosaicbert.data.text_dataset import PREP_INFO
from mosaicbert.errors import UserError

SPLITS = ("train", "train_small", "val", "val_small")
C4_SMALL_SIZES = {"train_small": 100_000, "val_small": 10_000}
TOKENIZE_CHUNK = 512


@dataclass
class SplitSpec:
    """Which source split feeds an output split, and how many documents at most."""

    name: str
    source_split: str  # "train" or "validation"
    max_docs: int | None


def split_specs(splits: Iterable[str], max_docs: int | None, small_sizes: dict[str, int]) -> list[SplitSpec]:
    specs = []
    for name in splits:
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}'; choose from {', '.join(SPLITS)}.")
        cap = small_sizes.get(name)
        if max_docs is not None:
            cap = max_docs if cap is None else min(cap, max_docs)
        specs.append(SplitSpec(name, "train" if name.startswith("train") else "validation", cap))
    return specs


def token_columns(tokenizer: Any) -> tuple[dict[str, str], Any]:
    """MDS columns for documents (and their token ids when a tokenizer is given), and the id dtype."""
    if tokenizer is None:
        return {"text": "str"}, None
    id_dtype = token_id_dtype(len(tokenizer))
    return {"text": "str", "input_ids": f"ndarray:{np.dtype(id_dtype).name}"}, id_dtype


class StagedSplit:
    """An MDSWriter on a hidden staging folder beside `<out_root>/<split>`, moved into place by `commit`.

    Until then nothing at the split's path changes: an interrupted write (an exception, Ctrl-C) removes the
    staging folder, and a staging folder left by a killed prep is removed by the next one. With `remote`,
    shards are also uploaded to `<remote>/<split>` as they are written, and `index.json` only after all of
    them and the prep info (remote.ShardWriter), so an interrupted upload does not read as a finished split.
    """

    def __init__(self, out_root: str | os.PathLike, split: str, columns: dict[str, str], *,
                 remote: str | None = None, compression: str | None = None, size_limit: str | int = "64mb"):
        self.final = Path(out_root) / split
        self.final.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.final.parent.glob(f".{split}.partial-*"):  # left by a prep that was killed mid-write
            shutil.rmtree(stale, ignore_errors=True)
        self.staging = self.final.parent / f".{split}.partial-{os.getpid()}"
        out = str(self.staging) if remote is None else (str(self.staging), remote_split(remote, split))
        self.writer = ShardWriter(out=out, columns=columns, compression=compression, size_limit=size_limit)
        self.samples = 0

    def write(self, sample: dict[str, Any]) -> None:
        self.writer.write(sample)
        self.samples += 1

    def commit(self, info: dict[str, Any]) -> None:
        """Finish the shards (and their upload), record `info` beside them and move the split into place."""
        (self.staging / PREP_INFO).write_text(json.dumps(info, indent=2) + "\n")
        self.writer.upload(PREP_INFO)
        self.writer.finish()
        _swap_into_place(self.staging, self.final)

    def abandon(self) -> None:
        self.writer.abandon()
        shutil.rmtree(self.staging, ignore_errors=True)


def write_split(
    out_root: str | os.PathLike,
    split: str,
    documents: Iterable[str],
    *,
    total: int | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    info: dict[str, Any] | None = None,
    compression: str | None = None,
    remote: str | None = None,
) -> int:
    """Write documents to `<out_root>/<split>` (and upload them to `<remote>/<split>`) as MDS; returns the number
    written."""
    existing = None if overwrite else existing_split(out_root, split, remote)
    if existing is not None:
        raise UserError(already_exists(existing))
    columns, id_dtype = token_columns(tokenizer)
    staged = StagedSplit(out_root, split, columns, remote=remote, compression=compression)
    try:
        progress = tqdm(total=total, desc=f"{split}", unit="doc", dynamic_ncols=True)
        for chunk in _chunks(documents, TOKENIZE_CHUNK):
            ids = tokenizer(chunk, add_special_tokens=False)["input_ids"] if tokenizer is not None else None
            for i, text in enumerate(chunk):
                sample = {"text": text}
                if ids is not None:
                    sample["input_ids"] = np.asarray(ids[i], dtype=id_dtype)
                staged.write(sample)
            progress.update(len(chunk))
        progress.close()
        if staged.samples == 0:
            raise UserError(f"no documents for split '{split}'; check the source.")
        meta = dict(info or {}, split=split, documents=staged.samples, columns=columns)
        if tokenizer is not None:
            meta.update(tokenizer=tokenizer.name_or_path, tokenizer_vocab_size=len(tokenizer))
        staged.commit(meta)
    except BaseException:
        staged.abandon()
        raise
    return staged.samples


def remote_split(remote: str, split: str) -> str:
    return f"{remote.rstrip('/')}/{split}"


def existing_split(out_root: str | os.PathLike, split: str, remote: str | None = None) -> str | None:
    """Where the split already exists: its local folder, else (with `remote`) its remote copy, one whose
    index.json is there (written last: shards without it are an interrupted upload, replaced freely)."""
    final = Path(out_root) / split
    if final.exists():
        return str(final)
    if remote is not None and remote_split_exists(remote_split(remote, split)):
        return remote_split(remote, split)
    return None


def already_exists(path: Path | str) -> str:
    if "://" in str(path):  # an object store has no rename: its shards are replaced where they are
        return (f"{path} already exists; pass --overwrite to replace it (in place: no training may read it until "
                "the prep is done, and caches of the old one must be deleted) or --skip-existing to keep it.")
    return (f"{path} already exists; pass --overwrite to replace it (the old one stays until the new one is "
            "complete) or --skip-existing to keep it.")


def _swap_into_place(staging: Path, final: Path) -> None:
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)


def save_tokenizer_atomically(train: Callable[[Path], Any], final: Path) -> None:
    """Run `train(staging_dir)` and move the saved tokenizer folder into place only when done."""
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        train(staging)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def write_splits(
    out_root: str | os.PathLike,
    specs: list[SplitSpec],
    source: Callable[[str], Iterable[str]],
    *,
    total: Callable[[SplitSpec], int | None],
    tokenizer: Any = None,
    if_exists: str = "error",
    info: dict[str, Any] | None = None,
    remote: str | None = None,
) -> dict[str, int]:
    """Write each split (uploading it to `<remote>/<split>` too); an existing split, local or remote, is an
    error, kept (`skip`) or replaced (`overwrite`)."""
    counts = {}
    for spec in specs:
        existing = None if if_exists == "overwrite" else existing_split(out_root, spec.name, remote)
        if existing is not None and if_exists == "skip":
            print(f"keeping existing {existing}")
            continue
        if existing is not None:
            raise UserError(already_exists(existing))
        docs = itertools.islice(source(spec.source_split), spec.max_docs)
        counts[spec.name] = write_split(
            out_root, spec.name, docs, total=total(spec), tokenizer=tokenizer, overwrite=True, info=info,
            remote=remote,
        )
    return counts


# --------------------------------------------------------------------------- C4


def c4_documents(source_split: str, local_dir: str | None = None) -> Iterator[str]:
    """C4 `en` documents, streamed from the hub (`allenai/c4`) or read from local json/json.gz files.

    Local files follow C4's naming: `*train*.json[.gz]` for train, `*validation*.json[.gz]`.
    """
    import datasets

    if local_dir is not None:
        files = sorted(glob.glob(os.path.join(local_dir, f"*{source_split}*.json*")))
        if not files:
            raise UserError(f"no C4 files matching *{source_split}*.json or *.json.gz in {local_dir}.")
        stream = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    else:
        try:
            stream = datasets.load_dataset("allenai/c4", "en", split=source_split, streaming=True)
        except Exception as err:  # noqa: BLE001  (connection, auth and hub errors all mean the same here)
            raise UserError(_hub_unreachable(err)) from None
    iterator = iter(stream)
    try:
        first = next(iterator)
    except StopIteration:
        return
    except Exception as err:  # noqa: BLE001
        if local_dir is not None:
            raise
        raise UserError(_hub_unreachable(err)) from None
    for record in itertools.chain([first], iterator):
        yield record["text"]


def _hub_unreachable(err: Exception) -> str:
    return (
        f"could not stream allenai/c4 from the Hugging Face hub ({err.__class__.__name__}: {str(err).splitlines()[0][:200]}). "
        "Offline options: download C4 json.gz files elsewhere and pass --local-dir DIR "
        "(make c4-shards C4_LOCAL_DIR=DIR), or build the offline sample corpus with `make sample-shards`."
    )


# --------------------------------------------------------------------------- offline sample


def stdlib_documents() -> list[tuple[str, str]]:
    """Real English text on every machine with Python: docstrings and pydoc topics of the stdlib.

    Returns (key, text) pairs in a fixed order; the key names the module the text came from,
    so train and validation can be split by module. Texts repeated across modules (shared
    docstrings) are kept once, so validation text never appears in training.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__"}
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = str(rel)
        if rel.as_posix() == "pydoc_data/topics.py":
            docs.extend((f"{module}#{i}", p) for i, p in enumerate(_topic_paragraphs(tree)))
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) >= 80:
                    docs.append((module, text))
    seen: set[str] = set()
    return [(key, text) for key, text in docs if not (text in seen or seen.add(text))]


def _topic_paragraphs(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) > 200:
            for paragraph in node.value.split("\n\n"):
                paragraph = paragraph.strip()
                if len(paragraph) >= 200:
                    yield paragraph


def is_validation_key(key: str, every: int = 20) -> bool:
    """About 1 in `every` modules (pydoc topics: paragraphs) goes to validation, the same on every machine."""
    return zlib.crc32(key.encode()) % every == 0


def sample_corpus() -> dict[str, list[str]]:
    docs = stdlib_documents()
    return {
        "train": [text for key, text in docs if not is_validation_key(key)],
        "validation": [text for key, text in docs if is_validation_key(key)],
    }
