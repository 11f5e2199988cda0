"""`convert_dataset.py text`: every input format, the quirks of real files, splits by hash, de-duplication,
filters, workers, chunking and the bad-input messages, on corpora the tests write."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import json
import logging
import lzma
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from streaming import LocalDataset

from mosaicbert.config import LoaderConfig
from mosaicbert.data import cli as prep_cli
from mosaicbert.data import corpus_prep
from mosaicbert.data.corpus_prep import REPORT, PrepOptions
from mosaicbert.data.sources import Document
from mosaicbert.data.text_dataset import PREP_INFO, check_prep_info
from mosaicbert.errors import UserError

from conftest import REPO

DOCS = [f"Document {i}: the river meets the hill at dawn, {i * 7} times, café {'ü' * (i % 3)}." for i in range(40)]
COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
               ".zst": lambda data: zstandard.ZstdCompressor().compress(data)}


def run(*args: str) -> dict[str, int]:
    return prep_cli.main(["text", "--num-proc", "1", *args])


def texts(root: Path, split: str) -> list[str]:
    return [sample["text"] for sample in LocalDataset(str(root / split))]


def all_texts(root: Path) -> list[str]:
    return sorted(texts(root, "train") + texts(root, "val"))


def reference_key(text: str) -> int:
    """The split and de-duplication key from its definition: blake2b-64 of NFC text with whitespace runs as one space."""
    normalised = " ".join(unicodedata.normalize("NFC", text).split())
    return int.from_bytes(hashlib.blake2b(normalised.encode("utf-8"), digest_size=8).digest(), "little")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in COMPRESSORS:
        data = COMPRESSORS[path.suffix](data)
    path.write_bytes(data)
    return path


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def csv_bytes(rows: list[dict], delimiter: str = ",") -> bytes:
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


# Parquet compresses inside the file; a compressed .parquet is refused (see the bad-input test).
@pytest.mark.parametrize("fmt, compression", [(f, c) for f in ("txt", "md", "jsonl", "json", "csv", "tsv", "parquet")
                                              for c in ("", ".gz", ".bz2", ".xz", ".zst") if f != "parquet" or not c])
def test_every_format_and_compression_reads_the_same_documents(tmp_path, fmt, compression):
    name = tmp_path / "in" / f"corpus.{fmt}{compression}"
    if fmt in ("txt", "md"):
        write(name, "\n".join(DOCS).encode())
    elif fmt in ("jsonl", "json"):
        write(name, jsonl([{"id": i, "meta": {"body": d}} for i, d in enumerate(DOCS)]))
    elif fmt in ("csv", "tsv"):
        write(name, csv_bytes([{"id": i, "body": d} for i, d in enumerate(DOCS)], "\t" if fmt == "tsv" else ","))
    else:
        name.parent.mkdir(parents=True)
        pq.write_table(pa.table({"id": list(range(len(DOCS))), "body": DOCS}), name, row_group_size=7)
    run("--input", str(name), "--out-root", str(tmp_path / "out"), "--doc-boundary", "line",
        "--text-field", "meta.body", "--text-column", "body", "--val-fraction", "0.3")
    assert all_texts(tmp_path / "out") == sorted(DOCS)


def test_text_document_boundaries(tmp_path):
    body = "Para one line one.\nPara one line two.\n\n\nPara two.\n"
    write(tmp_path / "a.txt", body.encode())
    expected = {"file": [body], "line": ["Para one line one.", "Para one line two.", "Para two."],
                "blank-line": ["Para one line one.\nPara one line two.\n", "Para two.\n"]}
    for boundary, docs in expected.items():
        out = tmp_path / boundary
        run("--input", str(tmp_path / "a.txt"), "--out-root", str(out), "--doc-boundary", boundary,
            "--val-fraction", "0", "--splits", "train")
        assert sorted(texts(out, "train")) == sorted(docs), boundary


def test_quirks_of_real_files_are_handled_and_counted(tmp_path):
    big = "word " * 4_000_000  # a 20 MB document on one line
    write(tmp_path / "in" / "bom_crlf.txt", b"\xef\xbb\xbfFirst line\r\nsecond line\r\n\r\nThird\r\n")
    write(tmp_path / "in" / "invalid.txt", b"caf\xe9 au lait \xff bytes\n")
    write(tmp_path / "in" / "big.txt", big.encode())
    write(tmp_path / "in" / "rows.jsonl", b'{"text": "kept row"}\n\n{"title": "no text field"}\n{"text": 7}\n'
                                          b'{broken json\n{"text": ""}\n{"text": "kept row 2"}\n')
    write(tmp_path / "in" / "quoted.csv", b'id,text\r\n1,"line one\r\nline two, with ""quotes"""\r\n2,\r\n')
    write(tmp_path / "in" / "notes.pdf", b"%PDF-1.4 not text")  # in a folder: left out and counted
    out = tmp_path / "out"
    run("--input", str(tmp_path / "in"), "--out-root", str(out), "--doc-boundary", "blank-line", "--val-fraction", "0",
        "--splits", "train")
    written = texts(out, "train")
    assert "First line\nsecond line\n" in written  # no byte-order mark, Windows line endings made \n
    assert "Third\n" in written
    assert "caf\ufffd au lait \ufffd bytes\n" in written  # each invalid byte replaced
    assert big in written
    assert "line one\nline two, with \"quotes\"" in written  # a quoted field spanning lines
    assert {"kept row", "kept row 2"} <= set(written)
    report = json.loads((out / REPORT).read_text())
    assert report["rows_skipped"] == {"no 'text' field": 1, "'text' is not a string": 1, "invalid JSON": 1,
                                      "empty document": 2}
    assert report["invalid_utf8_bytes_replaced"] == 2
    assert report["files_ignored_by_extension"] == {".pdf": 1}
    assert report["documents_written"] == len(written) == 7


def test_a_file_damaged_part_way_keeps_what_was_read_and_is_counted(tmp_path):
    good = gzip.compress("\n".join(DOCS).encode() * 50)  # well past the 8 KB read to check the file
    write(tmp_path / "in" / "cut.txt.gz", b"")
    (tmp_path / "in" / "cut.txt.gz").write_bytes(good[: len(good) // 2])  # cut off mid-stream
    write(tmp_path / "in" / "whole.txt", b"A whole document.\n")
    run("--input", str(tmp_path / "in"), "--out-root", str(tmp_path / "out"), "--doc-boundary", "line",
        "--val-fraction", "0", "--splits", "train")
    report = json.loads((tmp_path / "out" / REPORT).read_text())
    assert report["rows_skipped"] == {"rest of a damaged or unreadable file": 1}
    assert "A whole document." in texts(tmp_path / "out", "train")
    with pytest.raises(UserError, match=r"cut.txt.gz \(EOFError"):
        run("--input", str(tmp_path / "in"), "--out-root", str(tmp_path / "strict"), "--strict")


def test_strict_stops_at_the_first_unusable_row(tmp_path):
    write(tmp_path / "rows.jsonl", b'{"text": "fine"}\n{broken json\n')
    with pytest.raises(UserError, match=r"rows.jsonl:2: invalid JSON .*--strict"):
        run("--input", str(tmp_path / "rows.jsonl"), "--out-root", str(tmp_path / "out"), "--strict")
    write(tmp_path / "bad.txt", b"caf\xe9\n")
    with pytest.raises(UserError, match="invalid UTF-8"):
        run("--input", str(tmp_path / "bad.txt"), "--out-root", str(tmp_path / "out"), "--strict")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_validation_by_hash_is_stable_and_duplicates_land_once(tmp_path):
    docs = [f"Note {i} about the harbour and its {i % 11} boats." for i in range(600)]
    copies = [docs[3], "  " + docs[3].replace(" ", "\n  "), docs[10]]  # exact copies, modulo whitespace
    write(tmp_path / "a" / "one.jsonl", jsonl([{"text": d} for d in docs + copies]))
    write(tmp_path / "b" / "one.jsonl", jsonl([{"text": d} for d in reversed(docs)]))
    for folder in ("a", "b"):
        run("--input", str(tmp_path / folder), "--out-root", str(tmp_path / f"out-{folder}"), "--val-fraction", "0.1")
    expected_val = {d for d in docs if reference_key(d) < 0.1 * 2**64}
    for folder in ("a", "b"):
        assert set(texts(tmp_path / f"out-{folder}", "val")) == expected_val  # the same split whatever the order
        assert sorted(texts(tmp_path / f"out-{folder}", "train")) == sorted(set(docs) - expected_val)
    assert json.loads((tmp_path / "out-a" / REPORT).read_text())["duplicates_dropped"] == 3
    run("--input", str(tmp_path / "a"), "--out-root", str(tmp_path / "kept"), "--val-fraction", "0.1", "--no-dedupe")
    assert len(all_texts(tmp_path / "kept")) == len(docs) + len(copies)


def test_input_that_names_its_splits_keeps_them_and_small_splits_are_prefixes(tmp_path):
    write(tmp_path / "in" / "train.jsonl", jsonl([{"text": d} for d in DOCS[:30]]))
    write(tmp_path / "in" / "validation.jsonl", jsonl([{"text": d} for d in DOCS[30:]]))
    run("--input", str(tmp_path / "in"), "--out-root", str(tmp_path / "out"), "--small-train-docs", "5",
        "--small-val-docs", "3")
    out = tmp_path / "out"
    assert texts(out, "train") == DOCS[:30] and texts(out, "val") == DOCS[30:]
    assert texts(out, "train_small") == DOCS[:5] and texts(out, "val_small") == DOCS[30:33]


def test_hugging_face_dataset_through_the_same_loader_offline(tmp_path):
    """A local folder of data files is a dataset for `datasets.load_dataset`, as a hub name is."""
    write(tmp_path / "ds" / "train.jsonl", jsonl([{"content": d} for d in DOCS[:30]]))
    write(tmp_path / "ds" / "validation.jsonl", jsonl([{"content": d} for d in DOCS[30:]]))
    run("--hf-dataset", str(tmp_path / "ds"), "--text-field", "content", "--out-root", str(tmp_path / "out"))
    assert texts(tmp_path / "out", "train") == DOCS[:30] and texts(tmp_path / "out", "val") == DOCS[30:]
    run("--hf-dataset", str(tmp_path / "ds"), "--hf-split", "train", "--text-field", "content", "--out-root",
        str(tmp_path / "one"), "--val-fraction", "0.3")  # one split named: validation by hash
    assert set(texts(tmp_path / "one", "val")) == {d for d in DOCS[:30] if reference_key(d) < 0.3 * 2**64}
    with pytest.raises(UserError, match="no field 'text'; its fields are content"):
        run("--hf-dataset", str(tmp_path / "ds"), "--out-root", str(tmp_path / "bad"))


def test_min_chars_max_docs_and_report(tmp_path):
    write(tmp_path / "a.txt", "\n".join(["short", "tiny"] + DOCS).encode())
    counts = run("--input", str(tmp_path / "a.txt"), "--out-root", str(tmp_path / "out"), "--doc-boundary", "line",
                 "--min-chars", "10", "--val-fraction", "0.2", "--max-docs", "20")
    report = json.loads((tmp_path / "out" / REPORT).read_text())
    assert report["filtered_min_chars"] == 2
    assert counts["train"] == min(20, report["documents_per_split"]["train"])
    assert json.loads((tmp_path / "out" / "train" / PREP_INFO).read_text())["report"]["filtered_min_chars"] == 2


def test_tokenized_workers_match_one_process_and_chunks_cover_every_token(tmp_path, sample_root):
    tokenizer_dir = str(sample_root / "tokenizer")
    long_docs = [" ".join(DOCS[i:i + 12]) for i in range(0, 40, 4)]
    write(tmp_path / "a.jsonl", jsonl([{"text": d} for d in long_docs + DOCS]))
    common = ["--input", str(tmp_path / "a.jsonl"), "--tokenizer", tokenizer_dir, "--val-fraction", "0.2"]
    prep_cli.main(["text", *common, "--out-root", str(tmp_path / "one"), "--num-proc", "1"])
    prep_cli.main(["text", *common, "--out-root", str(tmp_path / "two"), "--num-proc", "2"])
    for split in ("train", "val"):
        one, two = LocalDataset(str(tmp_path / "one" / split)), LocalDataset(str(tmp_path / "two" / split))
        assert [s["text"] for s in one] == [s["text"] for s in two]
        assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(one, two))
    prep_cli.main(["text", *common, "--out-root", str(tmp_path / "chunked"), "--num-proc", "1", "--chunk",
                          "--max-seq-len", "32"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    for split in ("train", "val"):
        whole = {s["text"]: s["input_ids"] for s in LocalDataset(str(tmp_path / "one" / split))}
        pieces = [s["input_ids"] for s in LocalDataset(str(tmp_path / "chunked" / split))]
        assert all(len(p) <= 30 for p in pieces)  # room for [CLS] and [SEP]
        # every token of every document, in order, and nothing else
        assert np.array_equal(np.concatenate(pieces), np.concatenate(list(whole.values())))
        for text, ids in whole.items():
            assert np.array_equal(ids, tokenizer(text, add_special_tokens=False)["input_ids"])
    report = json.loads((tmp_path / "chunked" / REPORT).read_text())
    lengths = [len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in set(long_docs + DOCS)]
    assert report["tokens"] == sum(lengths)
    assert report["share_of_tokens_trained"] == 1.0
    assert report["share_of_tokens_trained_unchunked"] == pytest.approx(sum(min(n, 30) for n in lengths) / sum(lengths))
    assert report["share_of_tokens_trained_unchunked"] < 0.9  # the long documents lose tokens to truncation


@pytest.mark.parametrize("script", ["data_prep/convert_dataset.py", str(Path(sys.executable).parent / "mosaicbert-prep")])
def test_a_worker_imports_neither_torch_nor_transformers(sample_root, script):
    """A spawned worker imports the worker module alone: it starts in a second, without torch's memory. Spawn
    runs the command's script first: the checkout's, or the console script pip installed."""
    code = ("import runpy, sys, pathlib\n"
            f"runpy.run_path({script!r}, run_name='__mp_main__')  # what spawn runs first\n"
            "from mosaicbert.data.prep_worker import WorkerSetup, init_worker, process_documents\n"
            "init_worker(WorkerSetup(chunk_tokens=4, tokenizer_json=pathlib.Path(sys.argv[1]).read_text(), "
            "vocab_size=2048))\n"
            "assert len(process_documents(['the river meets the hill at dawn, seven times'])[0].samples) > 1\n"
            "print(sorted(m for m in ('torch', 'transformers', 'streaming') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(sample_root / "tokenizer" / "tokenizer.json")],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("split_special_tokens", [False, True])
def test_prep_tokenizes_as_transformers_does(sample_root, split_special_tokens):
    """Prep tokenizes with the Rust tokenizer rebuilt from its JSON; transformers' call is the reference."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sample_root / "tokenizer", split_special_tokens=split_special_tokens)
    texts = ["The river [MASK] meets the hill at dawn [SEP] café", DOCS[5]]
    stream = corpus_prep.processed_stream([Document(t, None) for t in texts], PrepOptions(tokenizer="sample"), tokenizer)
    for (document, result), text in zip(stream, texts):
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert result.samples[0]["input_ids"].tolist() == expected and result.tokens == len(expected)


def test_without_a_tokenizer_prep_runs_in_one_process(tmp_path, monkeypatch):
    """Hashing and filtering are faster in the reading process than documents can be sent to workers."""
    def no_pool(*args, **kwargs):
        raise AssertionError("a worker pool was started without a tokenizer")

    monkeypatch.setattr(corpus_prep, "ProcessPoolExecutor", no_pool)
    write(tmp_path / "a.txt", "\n".join(DOCS).encode())
    prep_cli.main(["text", "--num-proc", "2", "--input", str(tmp_path / "a.txt"), "--doc-boundary", "line",
                          "--out-root", str(tmp_path / "out"), "--val-fraction", "0.2"])
    assert all_texts(tmp_path / "out") == sorted(DOCS)


@pytest.mark.parametrize("run_len, packing, warning", [
    (128, False, "loses its tokens past 126. Set max_seq_len=256"),
    (512, False, "most of each sequence is padding"),
    (512, True, None),
    (256, False, None),
])
def test_training_warns_when_chunked_pieces_do_not_fit_its_sequences(caplog, run_len, packing, warning):
    info = {"chunk": True, "max_seq_len": 256, "tokenizer": "tok", "tokenizer_vocab_size": 2048}
    cfg = LoaderConfig(split="train", local="data", pretokenized=True, packing=packing)
    with caplog.at_level(logging.WARNING):
        check_prep_info(info, "data/train", cfg, vocab_size=2048, max_seq_len=run_len)
    assert (warning in caplog.text) if warning else not caplog.text
    with pytest.raises(UserError, match="2048-token vocabulary"):
        check_prep_info(info, "data/train", cfg, vocab_size=30528, max_seq_len=run_len)


def test_interrupted_prep_leaves_no_split_and_existing_splits_are_kept(tmp_path, monkeypatch):
    write(tmp_path / "a.txt", "\n".join(DOCS).encode())
    args = ["--input", str(tmp_path / "a.txt"), "--out-root", str(tmp_path / "out"), "--doc-boundary", "line",
            "--val-fraction", "0.3"]

    real = corpus_prep.process_documents

    def interrupted(texts, *rest):
        if any(DOCS[0] in t for t in texts):
            raise KeyboardInterrupt
        return real(texts, *rest)

    monkeypatch.setattr(corpus_prep, "WORK_CHUNK", 8)
    monkeypatch.setattr(corpus_prep, "process_documents", interrupted)
    write(tmp_path / "a.txt", "\n".join(DOCS[1:] + DOCS[:1]).encode())  # the interruption comes after some writes
    with pytest.raises(KeyboardInterrupt):
        run(*args)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    monkeypatch.setattr(corpus_prep, "process_documents", real)
    run(*args)
    before = all_texts(tmp_path / "out")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        run(*args)
    assert run(*args, "--skip-existing") == {}
    write(tmp_path / "a.txt", "\n".join(DOCS[:10]).encode())
    run(*args, "--overwrite")
    assert all_texts(tmp_path / "out") != before and len(all_texts(tmp_path / "out")) == 10


@pytest.mark.parametrize("make_input, args, message", [
    (lambda d: None, ["--input", "{d}/nothing*.txt"], "no file or folder matches"),
    (lambda d: (d / "empty").mkdir(), ["--input", "{d}/empty"], "has no readable text files"),
    (lambda d: write(d / "x.txt", b"\x00\x01\x02binary"), ["--input", "{d}/x.txt"], "is a binary file"),
    (lambda d: write(d / "x.txt", "UTF-16 text".encode("utf-16")), ["--input", "{d}/x.txt"], "is UTF-16 text; convert"),
    (lambda d: write(d / "x.docx", b"PK"), ["--input", "{d}/x.docx"], r"unsupported file type; supported: \.txt"),
    (lambda d: write(d / "x.jsonl", b'{"body": "a", "meta": {"title": "b"}}\n'), ["--input", "{d}/x.jsonl"],
     "no record has the text field 'text'; its records have body, meta, meta.title"),
    (lambda d: write(d / "x.csv", b"id,body\n1,a\n"), ["--input", "{d}/x.csv"], "no column 'text'; its columns are id, body"),
    (lambda d: write(d / "x.parquet.gz", b"x"), ["--input", "{d}/x.parquet.gz"], "Parquet compresses inside the file"),
    (lambda d: write(d / "x.json", b'[{"text": "a"}]\n'), ["--input", "{d}/x.json"], "one JSON array, not JSON lines"),
    (lambda d: (d / "x.txt.gz").write_bytes(b"not gzip"), ["--input", "{d}/x.txt.gz"], "cannot be read as .gz text"),
    (lambda d: write(d / "x.txt", b"a\n"), ["--input", "{d}/x.txt", "--chunk"], "give --tokenizer too"),
])
def test_bad_input_is_one_clear_message_and_nothing_written(tmp_path, make_input, args, message):
    make_input(tmp_path)
    with pytest.raises(UserError, match=message):
        run("--out-root", str(tmp_path / "out"), *[a.format(d=tmp_path) for a in args])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_script_prints_one_error_line_and_exits_2(tmp_path):
    command = [sys.executable, str(REPO / "data_prep" / "convert_dataset.py"), "text", "--input",
               str(tmp_path / "missing"), "--out-root", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: no file or folder matches '{tmp_path / 'missing'}'; check the "
                                                "path (globs need quotes in the shell)."]
