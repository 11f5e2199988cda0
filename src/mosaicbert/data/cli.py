"""Write text corpora as MDS shards with splits train, train_small, val and val_small (`mosaicbert-prep`, or
`python data_prep/convert_dataset.py` in a checkout; the same command).

    python data_prep/convert_dataset.py c4 --out-root data/c4            # allenai/c4 (en) from the hub
    python data_prep/convert_dataset.py c4 --local-dir DIR --out-root data/c4   # local C4 json/json.gz files
    python data_prep/convert_dataset.py sample --out-root data/sample    # offline: Python stdlib docs
    python data_prep/convert_dataset.py text --input notes/ more/*.jsonl.gz --out-root data/mycorpus   # your text

Each split holds one document per sample in a `text` column; `--tokenizer` adds an
`input_ids` column of token ids (uint16 where the vocabulary fits). `sample` also
trains a WordPiece tokenizer on its train split and saves it to <out-root>/tokenizer. `text` reads
files, folders and globs of text, JSON lines, CSV/TSV and Parquet (optionally .gz/.bz2/.xz/.zst), or a
Hugging Face dataset, in one pass: validation by a hash of each document, exact de-duplication, a
length filter, worker processes, and a report (<out-root>/prep_report.json).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mosaicbert.errors import UserError, entry_point

# A spawned tokenizing worker runs the command's script again (as __mp_main__), and with it this module's
# imports, and uses none of it (it runs mosaicbert.data.prep_worker). So the modules that bring torch are
# imported in the functions that use them: the worker starts without torch, in about a second.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from mosaicbert.data import prep, sources

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out-root", required=True, help="dataset root; splits become <out-root>/<split>")
    common.add_argument("--splits", nargs="+", default=list(prep.SPLITS), choices=prep.SPLITS)
    common.add_argument("--max-docs", type=int, default=None, help="at most this many documents per split")
    common.add_argument("--tokenizer", default=None, help="also store token ids from this tokenizer (hub name or folder)")
    existing = common.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace splits that already exist")
    existing.add_argument("--skip-existing", action="store_true", help="keep splits (and tokenizer) that already exist")
    common.add_argument("--remote", default=None, help="also upload each split to REMOTE/<split> as its shards are "
                        "written, e.g. s3://bucket/prefix (endpoint: S3_ENDPOINT_URL; credentials: AWS_* variables)")

    c4 = sub.add_parser("c4", parents=[common], help="C4 en, streamed from the hub or read from local files")
    c4.add_argument("--local-dir", default=None, help="folder of C4-format *train*/*validation* json or json.gz files")

    sample = sub.add_parser("sample", parents=[common], help="offline corpus from the Python standard library's docs")
    sample.add_argument("--vocab-size", type=int, default=8192, help="WordPiece vocabulary of the offline tokenizer")
    sample.add_argument("--small-train-docs", type=int, default=1000)
    sample.add_argument("--small-val-docs", type=int, default=200)

    text = sub.add_parser("text", parents=[common], help="your own text: files, folders, globs or a Hugging Face dataset",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sources.add_source_arguments(text)
    text.add_argument("--val-fraction", type=float, default=0.005, help="share of documents (by hash) for validation, "
                      "unless the input names its splits")
    text.add_argument("--no-dedupe", dest="dedupe", action="store_false", help="keep exact duplicates (same text "
                      "after normalising whitespace and Unicode)")
    text.add_argument("--min-chars", type=int, default=0, help="leave out documents shorter than this")
    text.add_argument("--chunk", action="store_true", help="with --tokenizer: cut each document into pieces of "
                      "--max-seq-len tokens (less [CLS] and [SEP]) instead of letting training truncate it")
    text.add_argument("--max-seq-len", type=int, default=128, help="the training sequence length: --chunk cuts for it, "
                      "and the report says what share of tokens training reads with and without --chunk")
    text.add_argument("--num-proc", type=int, default=len(os.sched_getaffinity(0)), help="worker processes that "
                      "key, filter and tokenize (default: the usable cores); with 1, this process does, the Rust "
                      "tokenizer using every core (docs/data.md). Without --tokenizer, this process always does")
    text.add_argument("--small-train-docs", type=int, default=prep.C4_SMALL_SIZES["train_small"])
    text.add_argument("--small-val-docs", type=int, default=prep.C4_SMALL_SIZES["val_small"])
    args = parser.parse_args(argv)
    if args.source == "text":
        check_text_args(args)
    return args


def check_text_args(args: argparse.Namespace) -> None:
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction must be at least 0 and below 1, got {args.val_fraction}")
    if args.chunk and not args.tokenizer:
        raise UserError("--chunk cuts documents on token boundaries: give --tokenizer too")
    if args.chunk and args.max_seq_len < 3:
        raise UserError(f"--max-seq-len must leave room for [CLS], [SEP] and a token, got {args.max_seq_len}")
    if args.num_proc < 1:
        raise UserError(f"--num-proc must be at least 1, got {args.num_proc}")


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Writes the corpus; returns the documents (samples) written per split. Raises UserError on bad input."""
    from mosaicbert.data import prep
    from mosaicbert.data.tokenizer import build_tokenizer

    args = parse_args(argv)
    if_exists = "overwrite" if args.overwrite else "skip" if args.skip_existing else "error"
    if args.source == "text":
        return write_text_corpus(args, if_exists)
    if args.source == "c4":
        specs = prep.split_specs(args.splits, args.max_docs, prep.C4_SMALL_SIZES)
        corpus = lambda split: prep.c4_documents(split, args.local_dir)  # noqa: E731
        total = lambda spec: spec.max_docs  # noqa: E731
        info = {"source": "allenai/c4 en" if args.local_dir is None else f"C4 files in {args.local_dir}"}
    else:
        docs = prep.sample_corpus()
        small = {"train_small": args.small_train_docs, "val_small": args.small_val_docs}
        specs = prep.split_specs(args.splits, args.max_docs, small)
        corpus = docs.__getitem__
        total = lambda spec: min(len(docs[spec.source_split]), spec.max_docs or len(docs[spec.source_split]))  # noqa: E731
        info = {"source": "python stdlib docstrings and pydoc topics"}
        write_sample_tokenizer(Path(args.out_root) / "tokenizer", docs["train"], args.vocab_size, if_exists)
    tokenizer = build_tokenizer(args.tokenizer, max_seq_len=10**9) if args.tokenizer else None
    counts = prep.write_splits(args.out_root, specs, corpus, total=total, tokenizer=tokenizer, if_exists=if_exists,
                               info=info, remote=args.remote)
    if counts:
        print("wrote " + ", ".join(f"{name}: {n} documents" for name, n in counts.items()) + f" under {args.out_root}")
    return counts


def write_text_corpus(args: argparse.Namespace, if_exists: str) -> dict[str, int]:
    from mosaicbert.data import corpus_prep, sources

    stats = sources.ReadStats()
    corpus = sources.corpus_from_args(args, stats)
    options = corpus_prep.PrepOptions(
        val_fraction=args.val_fraction, dedupe=args.dedupe, min_chars=args.min_chars, tokenizer=args.tokenizer,
        max_seq_len=args.max_seq_len, chunk=args.chunk, max_docs=args.max_docs,
        small_sizes={"train_small": args.small_train_docs, "val_small": args.small_val_docs}, num_proc=args.num_proc,
        remote=args.remote,
    )
    report = corpus_prep.write_corpus(args.out_root, corpus, stats, options, args.splits, if_exists)
    if report is None:
        return {}
    print("\n".join(report.lines()))
    print(f"wrote {', '.join(report.samples_per_split)} under {args.out_root} (report: {args.out_root}/{corpus_prep.REPORT})")
    return report.samples_per_split


def write_sample_tokenizer(folder: Path, texts: list[str], vocab_size: int, if_exists: str) -> None:
    from mosaicbert.data import prep
    from mosaicbert.data.tokenizer import train_wordpiece_tokenizer

    if folder.exists():
        if if_exists == "skip":
            print(f"keeping existing {folder}")
            return
        if if_exists == "error":
            raise UserError(prep.already_exists(folder))
    print(f"training a {vocab_size}-token WordPiece tokenizer on {len(texts)} documents -> {folder}")
    prep.save_tokenizer_atomically(lambda staging: train_wordpiece_tokenizer(texts, staging, vocab_size), folder)


command = entry_point()(main)  # the console script: an error line and exit status 2 where main() raises
