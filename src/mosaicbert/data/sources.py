"""A user's text as documents: files, folders and globs of text, JSON lines, CSV/TSV and Parquet
(optionally compressed), or a Hugging Face dataset, read one document at a time.

    inputs = resolve_inputs(["notes/", "extra/*.jsonl.gz"], text_field="body")   # checks everything first
    for doc in read_documents(inputs, options, stats): ...                       # Document(text, split)

Every input is checked before anything is read in full (`resolve_inputs`): a path that matches
nothing, an unsupported extension, a binary file, or a text field or column that no record has is
one `UserError` naming the problem and the fix, so a long prep never fails on its last file.
Rows that cannot be used (invalid JSON, a record without the field, an empty document) are counted
in `ReadStats` by reason and skipped; with `strict=True` the first one is an error instead.
Invalid UTF-8 bytes are replaced (U+FFFD) and the document counted, or refused with `strict`.
Memory is bounded by the largest single document (or Parquet row group), never by the input size.
"""

from __future__ import annotations

import argparse
import bz2
import codecs
import csv
import glob
import gzip
import io
import json
import lzma
import os
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from mosaicbert.errors import UserError

FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
DOC_BOUNDARIES = ("file", "line", "blank-line")
# Names that say which split a file or folder holds (`train.jsonl`, `c4-validation.00000.json.gz`, `dev/`).
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation"}
SNIFF_BYTES = 8192
FIELD_CHECK_RECORDS = 100  # a field or column none of a file's first records has does not exist


def _damaged_file_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged, cut-off or unreadable file raises (UnicodeDecodeError is handled on its own)."""
    import pyarrow
    import zstandard

    return OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError, pyarrow.ArrowException


def supported_extensions() -> str:
    return ", ".join(FORMATS) + f" (each optionally {', '.join(COMPRESSIONS)})"


class Document(NamedTuple):
    text: str
    split: str | None  # "train" or "validation" when the input names its split, else None


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: str  # a value of FORMATS
    compression: str | None  # one of COMPRESSIONS
    split: str | None


@dataclass(frozen=True)
class ReadOptions:
    doc_boundary: str = "file"  # text files: a whole file, each line, or each blank-line-separated paragraph
    text_field: str = "text"  # JSON lines; dots reach into nested objects (`meta.body`)
    text_column: str = "text"  # CSV, TSV, Parquet
    strict: bool = False


@dataclass
class ReadStats:
    """What reading saw: documents yielded, bytes of input consumed, rows skipped by reason."""

    documents: int = 0
    bytes_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_files: Counter = field(default_factory=Counter)  # in folders: files of other types, by extension
    invalid_utf8_bytes: int = 0  # replaced with U+FFFD

    def skip(self, reason: str, where: str, strict: bool) -> None:
        if strict:
            raise UserError(f"{where}: {reason} (--strict stops at the first unusable row; leave it out to count "
                            "and skip such rows)")
        self.skipped[reason] += 1


# --------------------------------------------------------------------------- finding and checking inputs


def input_format(path: Path) -> tuple[str, str | None] | None:
    """(format, compression) from a file name, or None when the extension is not supported."""
    name = path.name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), None)
    if compression:
        name = name[: -len(compression)]
    fmt = FORMATS.get(os.path.splitext(name)[1])
    return (fmt, compression) if fmt else None


def named_split(path: Path, root: Path | None = None) -> str | None:
    """The split a path names in its file name or in a folder below `root`, if any."""
    parts = list(path.resolve().relative_to(root).parts[:-1]) if root else []
    words = [part.lower() for part in parts] + re.split(r"[^a-z]+", path.name.lower().split(".")[0])
    found = {SPLIT_NAMES[w] for w in words if w in SPLIT_NAMES}
    return found.pop() if len(found) == 1 else None


def resolve_inputs(patterns: Iterable[str], options: ReadOptions = ReadOptions(),
                   ignored: Counter | None = None) -> list[InputFile]:
    """Expand files, folders (recursively) and globs into checked input files, in a stable order. Files of
    other types found in folders are counted by extension in `ignored`."""
    files: list[InputFile] = []
    ignored = Counter() if ignored is None else ignored
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [Path(m) for m in matches if Path(m).exists()]
        if not matches:
            raise UserError(f"no file or folder matches '{pattern}'; check the path (globs need quotes in the shell).")
        for match in matches:
            if match.is_dir():
                found = _files_in_folder(match, ignored)
                if not found:
                    raise UserError(f"folder {match} has no readable text files ({supported_extensions()}).")
                files.extend(found)
            else:
                files.append(_input_file(match, None, explicit=True))
    for item in files:
        _check_readable(item, options)
    return files


def _files_in_folder(folder: Path, ignored: Counter) -> list[InputFile]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue  # hidden files and folders (.git, editor swap files)
        if input_format(path) is None:
            ignored[path.suffix.lower() or "(no extension)"] += 1
            continue
        found.append(_input_file(path, folder.resolve().parent, explicit=False))  # the folder's own name counts
    return found


def _input_file(path: Path, root: Path | None, explicit: bool) -> InputFile:
    kind = input_format(path)
    if kind is None:
        raise UserError(f"{path}: unsupported file type; supported: {supported_extensions()}.")
    fmt, compression = kind
    if fmt == "parquet" and compression:
        raise UserError(f"{path}: Parquet compresses inside the file; give the .parquet file itself.")
    return InputFile(path, fmt, compression, named_split(path, root))


def _check_readable(item: InputFile, options: ReadOptions) -> None:
    try:
        if item.format == "parquet":
            _check_parquet(item, options)
            return
        with open_binary(item) as raw:
            head = raw.read(SNIFF_BYTES)
    except (*_damaged_file_errors(), ValueError) as err:
        raise UserError(f"{item.path}: cannot be read as {item.compression or 'uncompressed'} {item.format} "
                        f"({err.__class__.__name__}: {err}); check the file or its extension.") from None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{item.path} is UTF-16 text; convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8 IN > OUT).")
    if b"\x00" in head:
        raise UserError(f"{item.path} is a binary file, not text; remove it from the inputs "
                        f"(text formats: {supported_extensions()}).")
    if item.format in ("jsonl", "csv", "tsv"):
        _check_field(item, options)


def _check_field(item: InputFile, options: ReadOptions) -> None:
    """Fail when none of the first records has the text field (or the header lacks the column)."""
    stats = ReadStats()
    if item.format == "jsonl":
        seen: set[str] = set()
        with open_text(item) as f:
            for _, record in zip(range(FIELD_CHECK_RECORDS), _json_lines(f, item, ReadOptions(), stats)):
                if isinstance(record, dict):
                    if _field(record, options.text_field) is not None:
                        return
                    seen.update(_keys(record))
        if seen:
            raise UserError(f"{item.path}: no record has the text field '{options.text_field}'; its records have "
                            f"{', '.join(sorted(seen))}. Choose one with --text-field (dots reach into nested objects).")
        return  # no usable record at all: every row is counted and skipped (or refused with --strict)
    with open_text(item) as f:
        header = next(csv.reader(f, delimiter="\t" if item.format == "tsv" else ","), None)
    if header is not None and options.text_column not in header:
        raise UserError(f"{item.path}: no column '{options.text_column}'; its columns are "
                        f"{', '.join(header)}. Choose one with --text-column.")


def _check_parquet(item: InputFile, options: ReadOptions) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(item.path).schema_arrow.names
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"{item.path} is not a readable Parquet file ({err}); check the file.") from None
    if options.text_column not in names:
        raise UserError(f"{item.path}: no column '{options.text_column}'; its columns are {', '.join(names)}. "
                        "Choose one with --text-column.")


def _keys(record: dict, prefix: str = "") -> Iterator[str]:
    for key, value in record.items():
        yield prefix + key
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")


def _field(record: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


# --------------------------------------------------------------------------- opening files


def open_binary(item: InputFile, raw: IO[bytes] | None = None) -> IO[bytes]:
    """The file's bytes, decompressed (from `raw`, the open file on disk, when given)."""
    raw = raw if raw is not None else open(item.path, "rb")
    if item.compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if item.compression == ".bz2":
        return bz2.BZ2File(raw, "rb")
    if item.compression == ".xz":
        return lzma.LZMAFile(raw, "rb")
    if item.compression == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


class _InvalidBytes:
    """A decoding error handler that replaces each invalid UTF-8 byte with U+FFFD and counts it."""

    name = "mosaicbert-count-replace"
    count = 0

    @classmethod
    def handle(cls, err: UnicodeDecodeError) -> tuple[str, int]:
        cls.count += err.end - err.start
        return "\ufffd" * (err.end - err.start), err.end


codecs.register_error(_InvalidBytes.name, _InvalidBytes.handle)


def open_text(item: InputFile, raw: IO[bytes] | None = None, strict: bool = False) -> io.TextIOWrapper:
    """Decoded text: a UTF-8 byte-order mark dropped, invalid bytes replaced and counted (refused with
    `strict`), line endings kept as they are so that CSV sees quoted line breaks."""
    return io.TextIOWrapper(open_binary(item, raw), encoding="utf-8-sig",
                            errors="strict" if strict else _InvalidBytes.name, newline="")


# --------------------------------------------------------------------------- reading documents


def read_documents(files: list[InputFile], options: ReadOptions, stats: ReadStats) -> Iterator[Document]:
    """Documents of every file in order, line endings made `\\n`; `stats.bytes_read` follows the
    files' on-disk (compressed) bytes, for progress."""
    done = 0
    for item in files:
        invalid_before = _InvalidBytes.count
        with open(item.path, "rb") as raw:
            try:
                for text in _documents_of(item, raw, options, stats):
                    text = unix_newlines(text)
                    stats.bytes_read = done + raw.tell()
                    if not text.strip():
                        stats.skip("empty document", str(item.path), strict=False)
                        continue
                    stats.documents += 1
                    yield Document(text, item.split)
            except UnicodeDecodeError as err:
                raise UserError(f"{item.path}: invalid UTF-8 byte near byte {err.start} of its text (--strict refuses "
                                "them; leave it out to replace them with U+FFFD and count them).") from None
            except _damaged_file_errors() as err:  # what was read stays; the rest of the file is reported
                stats.skip("rest of a damaged or unreadable file", f"{item.path} ({err.__class__.__name__}: {err})",
                           options.strict)
                print(f"warning: {item.path}: stopped reading after {raw.tell():,} bytes ({err.__class__.__name__}: "
                      f"{err}); its documents so far are kept", file=sys.stderr)
        done += item.path.stat().st_size
        stats.bytes_read = done
        stats.invalid_utf8_bytes += _InvalidBytes.count - invalid_before


def unix_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _documents_of(item: InputFile, raw: IO[bytes], options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    if item.format == "parquet":
        yield from _parquet_documents(item, options, stats)
        return
    with open_text(item, raw, options.strict) as f:
        if item.format == "text":
            yield from _text_documents(f, options.doc_boundary)
        elif item.format == "jsonl":
            yield from _jsonl_documents(f, item, options, stats)
        else:
            yield from _csv_documents(f, item, options, stats)


def _text_documents(f: IO[str], doc_boundary: str) -> Iterator[str]:
    if doc_boundary == "file":
        yield f.read()
    elif doc_boundary == "line":
        for line in f:
            yield line.rstrip("\r\n")
    else:
        paragraph: list[str] = []
        for line in f:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph)
                paragraph = []
        if paragraph:
            yield "".join(paragraph)


_INVALID = object()


def _json_lines(f: IO[str], item: InputFile, options: ReadOptions, stats: ReadStats) -> Iterator[Any]:
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = _INVALID
        if number == 1 and line.lstrip().startswith("[") and not isinstance(record, dict):
            raise UserError(f"{item.path} is one JSON array, not JSON lines (one object per line); convert it "
                            "with `jq -c '.[]' in.json > out.jsonl`.")
        if record is _INVALID:
            stats.skip("invalid JSON", f"{item.path}:{number}", options.strict)
        else:
            yield record


def _jsonl_documents(f: IO[str], item: InputFile, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    for record in _json_lines(f, item, options, stats):
        text = _field(record, options.text_field)
        if isinstance(text, str):
            yield text
        elif text is None:
            stats.skip(f"no '{options.text_field}' field", str(item.path), options.strict)
        else:
            stats.skip(f"'{options.text_field}' is not a string", str(item.path), options.strict)


def _csv_documents(f: IO[str], item: InputFile, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)  # a single field may be a whole book
    rows = csv.DictReader(f, delimiter="\t" if item.format == "tsv" else ",")
    for row in rows:
        text = row.get(options.text_column)
        if text is None:
            stats.skip("row shorter than the header", f"{item.path}:{rows.line_num}", options.strict)
        else:
            yield text


def _parquet_documents(item: InputFile, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(item.path).iter_batches(batch_size=1024, columns=[options.text_column]):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text
            else:
                stats.skip(f"'{options.text_column}' is null or not text", str(item.path), options.strict)


# --------------------------------------------------------------------------- Hugging Face datasets


def open_hf_dataset(name: str, config: str | None, split: str | None, options: ReadOptions,
                    stats: ReadStats) -> tuple[Iterator[Document], bool]:
    """A dataset streamed with `datasets.load_dataset` (a hub name, or a local folder or builder such as `json`
    with its data files): `split` reads one split (then divided by hash), else the dataset's own train and
    validation splits (`valid`, `val`, `dev` count as validation) keep their roles and other splits are left out.
    Returns the documents and whether the dataset names a validation split."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001  (hub, network, missing config and file errors all mean the same here)
        raise UserError(f"could not open the Hugging Face dataset '{name}'"
                        f"{f' (config {config})' if config else ''}: {err.__class__.__name__}: "
                        f"{str(err).splitlines()[0][:300]}. Check the name, --hf-config and --hf-split, or the network; "
                        "a local folder of data files works offline.") from None
    if split is not None:
        parts = {None: loaded}
    else:
        parts = {SPLIT_NAMES[s]: loaded[s] for s in loaded if s in SPLIT_NAMES}
        if not parts:
            raise UserError(f"the Hugging Face dataset '{name}' has the splits {', '.join(loaded)}, none named "
                            "train or validation; choose one with --hf-split.")
    return _dataset_documents(name, parts, options, stats), "validation" in parts


def _dataset_documents(name: str, parts: dict[str | None, Any], options: ReadOptions,
                       stats: ReadStats) -> Iterator[Document]:
    for role, part in parts.items():
        for number, record in enumerate(part, 1):
            text = _field(record, options.text_field)
            if number == 1 and text is None:
                raise UserError(f"the Hugging Face dataset '{name}' has no field '{options.text_field}'; its fields "
                                f"are {', '.join(sorted(_keys(record)))}. Choose one with --text-field.")
            if not isinstance(text, str) or not text.strip():
                stats.skip("empty document" if isinstance(text, str) else f"'{options.text_field}' is not text",
                           name, options.strict and not isinstance(text, str))
                continue
            stats.documents += 1
            yield Document(unix_newlines(text), role)


# --------------------------------------------------------------------------- command-line options


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say what to read, shared by the shard writer and the tokenizer trainer."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", nargs="+", metavar="PATH", help=f"files, folders (recursive) or quoted globs: "
                      f"{supported_extensions()}")
    what.add_argument("--hf-dataset", metavar="NAME", help="a Hugging Face dataset, streamed (hub name, or a local "
                      "folder of data files)")
    parser.add_argument("--hf-config", default=None, help="the dataset's configuration (subset)")
    parser.add_argument("--hf-split", default=None, help="read this split only (then divided by hash); default: "
                        "the dataset's train and validation splits")
    parser.add_argument("--doc-boundary", choices=DOC_BOUNDARIES, default="file",
                        help="text files: a document is a whole file, each line, or each paragraph between blank lines")
    parser.add_argument("--text-field", default="text", help="JSON lines and datasets: the field with the text "
                        "(dots reach into nested objects: meta.body)")
    parser.add_argument("--text-column", default="text", help="CSV, TSV and Parquet: the column with the text")
    parser.add_argument("--strict", action="store_true", help="stop at the first row that cannot be used "
                        "(default: count and skip it)")


@dataclass
class Corpus:
    documents: Iterator[Document]
    total_bytes: int | None  # on disk, for progress; None for a streamed dataset
    description: str
    names_validation: bool  # the input names a validation split: keep the input's splits


def corpus_from_args(args: argparse.Namespace, stats: ReadStats) -> Corpus:
    """The documents the options name, every input checked before the first is read."""
    options = ReadOptions(args.doc_boundary, args.text_field, args.text_column, args.strict)
    if args.hf_dataset:
        documents, named = open_hf_dataset(args.hf_dataset, args.hf_config, args.hf_split, options, stats)
        config = f" ({args.hf_config})" if args.hf_config else ""
        return Corpus(documents, None, f"Hugging Face dataset {args.hf_dataset}{config}", named)
    files = resolve_inputs(args.input, options, stats.skipped_files)
    description = f"{len(files)} file{'s' * (len(files) != 1)} from {' '.join(args.input)}"
    return Corpus(read_documents(files, options, stats), sum(f.path.stat().st_size for f in files), description,
                  any(f.split == "validation" for f in files))
