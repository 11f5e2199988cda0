"""A user's corpus to MDS splits in one pass: validation by hash, exact de-duplication, a length filter,
optional tokenization and chunking into sequence-length pieces, worker processes, progress and a report.

    documents -> [workers: key, filter, tokenize, chunk] -> [main: de-duplicate, route to splits, write]

Each document's key is a 64-bit hash of its whitespace-normalised NFC text. The key alone decides the
split (validation when `key < val_fraction * 2**64`), so the same document lands in the same split on
every run and machine, and copies of it land together. Where the input names its splits (`train.jsonl`
and `validation.jsonl`, a dataset's own splits), those are kept. Memory holds the documents in flight and
one 8-byte key per unique document (for de-duplication): about 60 bytes per document in CPython, not the
corpus.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mosaicbert.data.prep import (C4_SMALL_SIZES, SPLITS, StagedSplit, already_exists, existing_split, split_specs,
                                  token_columns)
from mosaicbert.data.prep_worker import Processed, WorkerSetup, init_worker, process_documents, split_role
from mosaicbert.data.sources import Corpus, Document, ReadStats
from mosaicbert.errors import UserError
from mosaicbert.files import write_json_atomically

WORK_CHUNK = 256  # documents per task sent to a worker
REPORT = "prep_report.json"


@dataclass(frozen=True)
class PrepOptions:
    val_fraction: float = 0.005
    dedupe: bool = True
    min_chars: int = 0
    tokenizer: str | None = None  # hub name or folder; adds an `input_ids` column
    max_seq_len: int = 128  # training's sequence length: what truncation keeps of a document, and the chunk size
    chunk: bool = False  # cut tokenized documents into pieces of max_seq_len - 2 tokens ([CLS]/[SEP] added later)
    max_docs: int | None = None  # per split
    small_sizes: dict[str, int] = field(default_factory=lambda: dict(C4_SMALL_SIZES))
    num_proc: int = 1
    remote: str | None = None


def processed_stream(documents: Iterable[Document], options: PrepOptions,
                     tokenizer: Any = None) -> Iterator[tuple[Document, Processed | None]]:
    """(document, result) in input order, from `num_proc` worker processes (or this one) with a bounded
    number of batches in flight, so memory does not grow with the corpus. Workers start only with a
    tokenizer: hashing and filtering alone run faster here than documents can be sent to others. Alone,
    this process tokenizes on every core too (the Rust tokenizer's threads), but its reading, hashing and
    writing leave them waiting: two workers were 1.18 times as fast on two cores (docs/data.md)."""
    batches = _batches(documents, WORK_CHUNK)
    setup = _worker_setup(options, tokenizer)
    if options.num_proc <= 1 or tokenizer is None:
        init_worker(setup)
        for batch in batches:
            yield from zip(batch, process_documents([d.text for d in batch]))
        return
    with ProcessPoolExecutor(options.num_proc, mp_context=get_context("spawn"), initializer=init_worker,
                             initargs=(setup,)) as pool:
        pending: list[tuple[list[Document], Future]] = []
        for batch in batches:
            pending.append((batch, pool.submit(process_documents, [d.text for d in batch])))
            if len(pending) >= 2 * options.num_proc:
                done, future = pending.pop(0)
                yield from zip(done, future.result())
        for done, future in pending:
            yield from zip(done, future.result())


def _worker_setup(options: PrepOptions, tokenizer: Any) -> WorkerSetup:
    if tokenizer is None:
        return WorkerSetup(options.min_chars)
    try:
        definition = tokenizer.backend_tokenizer.to_str()
    except Exception as err:  # noqa: BLE001  (a slow tokenizer has no backend; a custom Python part has no JSON)
        raise UserError(f"--tokenizer {options.tokenizer} is not a fast (Rust) tokenizer that can be saved as "
                        f"JSON ({err.__class__.__name__}), which prep tokenizes with; give a folder with a "
                        "tokenizer.json (`make tokenizer` trains one).") from None
    return WorkerSetup(options.min_chars, options.max_seq_len - 2 if options.chunk else None, definition,
                       len(tokenizer), bool(getattr(tokenizer, "split_special_tokens", False)))


def _batches(documents: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class PrepReport:
    source: str
    documents_read: int = 0
    documents_written: int = 0
    characters: int = 0
    tokens: int | None = None
    # Of the tokens written, the share one epoch trains on: truncated at max_seq_len (the loader's default)
    # or, with --chunk, every piece whole.
    max_seq_len: int = 128
    share_of_tokens_trained_unchunked: float | None = None
    share_of_tokens_trained: float | None = None
    duplicates_dropped: int = 0
    filtered_min_chars: int = 0
    samples_per_split: dict[str, int] = field(default_factory=dict)
    documents_per_split: dict[str, int] = field(default_factory=dict)
    rows_skipped: dict[str, int] = field(default_factory=dict)
    invalid_utf8_bytes_replaced: int = 0
    files_ignored_by_extension: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    input_megabytes: float | None = None
    splits_by: str = ""

    def lines(self) -> list[str]:
        rate = f"{self.documents_read / max(self.seconds, 1e-9):,.0f} documents/s"
        if self.input_megabytes is not None:
            rate += f", {self.input_megabytes / max(self.seconds, 1e-9):.1f} MB/s"
        out = [f"read {self.documents_read:,} documents from {self.source} in {self.seconds:.1f} s ({rate})",
               f"wrote {self.documents_written:,} documents, {self.characters:,} characters"
               + (f", {self.tokens:,} tokens" if self.tokens is not None else "")]
        if self.tokens:
            out.append(f"  tokens trained on per epoch at max_seq_len {self.max_seq_len}: {self.share_of_tokens_trained:.1%}"
                       f" (truncated, without --chunk: {self.share_of_tokens_trained_unchunked:.1%})")
        out.append("  " + ", ".join(f"{split}: {n:,} samples" for split, n in self.samples_per_split.items())
                   + f" (validation {self.splits_by})")
        dropped = {"duplicates dropped": self.duplicates_dropped, "shorter than --min-chars": self.filtered_min_chars,
                   **{f"skipped ({reason})": n for reason, n in self.rows_skipped.items()},
                   "invalid UTF-8 bytes replaced with U+FFFD": self.invalid_utf8_bytes_replaced}
        out += [f"  {what}: {n:,}" for what, n in dropped.items() if n]
        if self.files_ignored_by_extension:
            kinds = ", ".join(f"{n} {ext}" for ext, n in sorted(self.files_ignored_by_extension.items()))
            out.append(f"  files in folders left out (not a text format): {kinds}")
        return out


def write_corpus(out_root: str | os.PathLike, corpus: Corpus, stats: ReadStats, options: PrepOptions,
                 splits: Iterable[str] = SPLITS, if_exists: str = "error") -> PrepReport | None:
    """Write the corpus's documents into the requested splits in one pass; returns the report, or None when
    every split exists and `if_exists="skip"`."""
    splits = _splits_to_write(Path(out_root), list(splits), if_exists, options.remote)
    if not splits:
        return None
    if options.chunk and options.tokenizer is None:
        raise UserError("--chunk cuts documents on token boundaries: give --tokenizer too.")
    tokenizer = _load_tokenizer(options.tokenizer)
    columns, _ = token_columns(tokenizer)
    report = PrepReport(source=corpus.description)
    start = time.perf_counter()
    with ExitStack() as stack:
        staged = {split: StagedSplit(out_root, split, columns, remote=options.remote) for split in splits}
        stack.callback(lambda: [s.abandon() for s in staged.values()])  # after a commit the staging folder is gone
        _route(corpus, processed_stream(corpus.documents, options, tokenizer), staged, options, report, stats)
        report.seconds = time.perf_counter() - start
        _finish_report(report, stats, corpus)
        for split, writer in staged.items():
            if writer.samples == 0:
                raise UserError(_empty_split(split, report, options))
        info = {"source": corpus.description, "report": asdict(report),
                **({"tokenizer": options.tokenizer, "tokenizer_vocab_size": len(tokenizer),
                    "chunk": options.chunk, "max_seq_len": options.max_seq_len} if options.tokenizer else {})}
        for split, writer in staged.items():
            writer.commit(dict(info, split=split, documents=report.documents_per_split[split], samples=writer.samples,
                               columns=columns))
    write_json_atomically(Path(out_root) / REPORT, asdict(report))
    return report


def _splits_to_write(out_root: Path, splits: list[str], if_exists: str, remote: str | None) -> list[str]:
    """The splits to write; an existing one (local, or remote with `remote`) is an error, kept or replaced."""
    if if_exists == "overwrite":
        return splits
    existing = {split: where for split in splits if (where := existing_split(out_root, split, remote)) is not None}
    if existing and if_exists == "error":
        raise UserError(already_exists(next(iter(existing.values()))))
    for where in existing.values():
        print(f"keeping existing {where}")
    return [split for split in splits if split not in existing]


def _load_tokenizer(name: str | None) -> Any:
    if name is None:
        return None
    from mosaicbert.data.tokenizer import build_tokenizer

    return build_tokenizer(name, max_seq_len=10**9)


def _route(corpus: Corpus, results: Iterator[tuple[Document, Processed | None]], staged: dict[str, StagedSplit],
           options: PrepOptions, report: PrepReport, stats: ReadStats) -> None:
    """De-duplicate and send each document's samples to its splits, with progress in bytes (or documents)."""
    seen: set[int] = set()
    caps = {spec.name: spec.max_docs for spec in split_specs(staged, options.max_docs, options.small_sizes)}
    documents = Counter()
    kept_unchunked = 0  # tokens a document keeps when training truncates it
    named = corpus.names_validation
    by_bytes = corpus.total_bytes is not None  # files: progress and ETA in bytes; a streamed dataset: documents
    progress = tqdm(total=corpus.total_bytes, unit="B" if by_bytes else "doc", unit_scale=by_bytes, desc="prep",
                    dynamic_ncols=True)
    for document, result in results:
        report.documents_read += 1
        progress.update(stats.bytes_read - progress.n if by_bytes else 1)
        if report.documents_read % 1000 == 0:
            progress.set_postfix(documents=f"{report.documents_read:,}",
                                 per_s=f"{report.documents_read / max(progress.format_dict['elapsed'], 1e-9):,.0f}")
        if result is None:
            report.filtered_min_chars += 1
            continue
        if options.dedupe:
            if result.key in seen:
                report.duplicates_dropped += 1
                continue
            seen.add(result.key)
        role = split_role(document.split if named else None, result.key, options.val_fraction)
        targets = [s for s in staged if s.startswith("val") == (role == "validation")
                   and (caps[s] is None or documents[s] < caps[s])]
        for split in targets:
            for sample in result.samples:
                staged[split].write(sample)
            documents[split] += 1
        if targets:
            report.documents_written += 1
            report.characters += result.chars
            if options.tokenizer:
                report.tokens = (report.tokens or 0) + result.tokens
                kept_unchunked += min(result.tokens, options.max_seq_len - 2)
        if all(caps[s] is not None and documents[s] >= caps[s] for s in staged):
            break  # every split is full: stop reading
    progress.close()
    report.documents_per_split = {split: documents[split] for split in staged}
    report.samples_per_split = {split: writer.samples for split, writer in staged.items()}
    if report.tokens:
        report.max_seq_len = options.max_seq_len
        report.share_of_tokens_trained_unchunked = kept_unchunked / report.tokens
        report.share_of_tokens_trained = 1.0 if options.chunk else report.share_of_tokens_trained_unchunked
    report.splits_by = "as the input names them" if named else f"by hash, {options.val_fraction:.2%} of documents"


def _finish_report(report: PrepReport, stats: ReadStats, corpus: Corpus) -> None:
    report.rows_skipped = dict(stats.skipped)
    report.invalid_utf8_bytes_replaced = stats.invalid_utf8_bytes
    report.files_ignored_by_extension = dict(stats.skipped_files)
    report.input_megabytes = stats.bytes_read / 1e6 if corpus.total_bytes is not None else None


def _empty_split(split: str, report: PrepReport, options: PrepOptions) -> str:
    if report.documents_written == 0:
        return (f"no documents to write: {report.documents_read:,} read, none kept (see the counts above: "
                "empty, duplicates, --min-chars, rows skipped); check the inputs and options.")
    return (f"split '{split}' would be empty: {report.documents_written:,} documents were kept and none went to "
            f"it; with a small corpus raise --val-fraction (now {options.val_fraction}) or name the splits "
            "in the input (train.jsonl, validation.jsonl).")
