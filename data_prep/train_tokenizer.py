"""Train a BERT-style tokenizer on your corpus and save it as a transformers tokenizer folder.

    python data_prep/train_tokenizer.py --input corpus/ --out tokenizers/mine
    python data_prep/train_tokenizer.py --input 'c4/*.json.gz' --out tokenizers/c4 --max-docs 1000000 \\
        --compare bert-base-uncased
    python data_prep/train_tokenizer.py --hf-dataset NAME --out tokenizers/mine --algorithm unigram --cased

Documents are read as the shard writer reads them (the same input options, exact duplicates once) and
streamed into the trainer, so memory holds word counts, not the corpus; --max-docs N trains on N
training documents drawn evenly from the whole corpus (by hash; it reads the corpus twice). BERT's
special tokens ([PAD]=0, [UNK], [CLS], [SEP], [MASK]) and post-processor come with every algorithm.
--vocab-size is rounded up to a multiple of 64, as the model rounds its vocabulary.

Validation documents are the shard writer's (the input's own validation split where it names one,
else --val-fraction of documents by hash) and are never trained on. On up to --max-eval-docs of them
the report gives fertility (tokens per whitespace-separated word) and the unknown-token rate, beside
--compare's; it is also written to <out>/tokenizer_report.json. Use the folder as tokenizer_name=<out>.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from mosaicbert.data.corpus_prep import PrepOptions
from mosaicbert.data.prep import save_tokenizer_atomically
from mosaicbert.data.prep_worker import document_key, split_role
from mosaicbert.data.sources import (SPLIT_NAMES, Document, ReadOptions, ReadStats, add_source_arguments,
                                     corpus_from_args, open_hf_dataset, read_documents, resolve_inputs)
from mosaicbert.data.tokenizer import (ALGORITHMS, VOCAB_MULTIPLE, TokenizerReport, TrainingRequest, load_tokenizer,
                                       train_on_corpus, vocab_size_to_train)
from mosaicbert.errors import UserError, entry_point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="the tokenizer folder to write (then tokenizer_name=OUT)")
    parser.add_argument("--vocab-size", type=int, default=30522,
                        help=f"vocabulary size, rounded up to a multiple of {VOCAB_MULTIPLE} (default: 30522, BERT's)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="wordpiece", help="default: wordpiece, BERT's")
    parser.add_argument("--cased", action="store_true",
                        help="keep case and accents (default: lowercase and strip accents, as bert-base-uncased)")
    parser.add_argument("--val-fraction", type=float, default=PrepOptions.val_fraction,
                        help="share of documents held out by hash where the input names no validation split "
                             f"(default: {PrepOptions.val_fraction}, the shard writer's)")
    parser.add_argument("--max-docs", type=int, default=None, help="train on this many documents, drawn "
                        "from the whole corpus by hash (which reads it twice)")
    parser.add_argument("--max-eval-docs", type=int, default=TrainingRequest.max_eval_docs,
                        help="measure on at most this many validation documents (default: "
                             f"{TrainingRequest.max_eval_docs}; 0: do not measure)")
    parser.add_argument("--compare", metavar="NAME_OR_FOLDER",
                        help="a reference tokenizer (hub name or folder) to measure beside the new one")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier tokenizer")
    return parser.parse_args(argv)


@entry_point()
def main(argv: list[str] | None = None) -> int:
    report = train(parse_args(argv))
    print("\n".join(report.lines()))
    return 0


def train(args: argparse.Namespace) -> TokenizerReport:
    check_options(args)
    target = vocab_size_to_train(args.vocab_size)
    if target != args.vocab_size:
        print(f"--vocab-size {args.vocab_size} rounded up to {target}, a multiple of {VOCAB_MULTIPLE}: the model pads "
              "its vocabulary to one, and a tokenizer of that size fills every row")
    out = Path(args.out)
    check_out(out, args.overwrite)
    compare = (args.compare, load_tokenizer(args.compare, max_seq_len=10**9)) if args.compare else None
    stats = ReadStats()
    corpus = corpus_from_args(args, stats)
    named = corpus.names_validation
    texts = training_texts(args, corpus.documents, named)
    request = TrainingRequest(args.vocab_size, args.algorithm, args.cased, args.max_docs, args.max_eval_docs)
    split = "as the input names it" if named else f"by hash, {args.val_fraction:.2%} of documents"
    reports = []

    def train_into(staging: Path) -> None:  # the folder is moved to `out` only once trained and measured
        reports.append(train_on_corpus(staging, str(out), texts, corpus.description, lambda: held_out_texts(args),
                                       request, compare, split))

    save_tokenizer_atomically(train_into, out)
    if stats.skipped or stats.invalid_utf8_bytes:
        print("rows skipped while reading: " + ", ".join(f"{n:,} ({reason})" for reason, n in stats.skipped.items())
              + (f"; {stats.invalid_utf8_bytes:,} invalid UTF-8 bytes replaced" if stats.invalid_utf8_bytes else ""))
    return reports[0]


def check_options(args: argparse.Namespace) -> None:
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction} must be at least 0 and below 1 (0.005: one document "
                        "in 200).")
    if args.max_docs is not None and args.max_docs < 1:
        raise UserError(f"--max-docs {args.max_docs} must be at least 1; leave it out to train on every document.")
    if args.max_eval_docs < 0:
        raise UserError(f"--max-eval-docs {args.max_eval_docs} must be 0 (do not measure) or more.")


def check_out(out: Path, overwrite: bool) -> None:
    """An existing --out is replaced only when asked, and only when it is a tokenizer folder (not, say, data/)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise UserError(f"{out} already exists; choose another --out, or pass --overwrite to replace it (the old "
                        "tokenizer stays until the new one is complete).")
    if not (out / "tokenizer.json").is_file() or any(p.is_dir() for p in out.iterdir()):
        raise UserError(f"{out} is not a tokenizer folder (no tokenizer.json, or it holds folders); --overwrite "
                        "replaces only an earlier tokenizer. Choose the tokenizer's own folder.")


def is_held_out(document: Document, named: bool, val_fraction: float) -> bool:
    """The shard writer's rule: the input's own split where it names a validation split, else the hash."""
    return split_role(document.split if named else None, document_key(document.text), val_fraction) == "validation"


def training_texts(args: argparse.Namespace, documents: Iterator[Document], named: bool) -> Iterator[str]:
    """The training documents' texts; with --max-docs N, the N with the highest keys (validation has the
    lowest): a sample spread over the whole corpus, found by a first pass that keeps N keys."""
    keyed = keyed_training_documents(documents, named, args.val_fraction)
    if args.max_docs is None:
        return (text for text, _ in keyed)
    recount = keyed_training_documents(corpus_from_args(args, ReadStats()).documents, named, args.val_fraction)
    counted = tqdm((key for _, key in recount), desc="choosing training documents", unit="doc", dynamic_ncols=True)
    highest = heapq.nlargest(args.max_docs, counted)
    lowest_kept = highest[-1] if len(highest) == args.max_docs else 0
    return (text for text, key in keyed if key >= lowest_kept)


def keyed_training_documents(documents: Iterator[Document], named: bool,
                             val_fraction: float) -> Iterator[tuple[str, int]]:
    """(text, key) of each training document, without exact duplicates, as the shard writer keeps them."""
    seen: set[int] = set()
    for document in documents:
        key = document_key(document.text)
        if key not in seen and split_role(document.split if named else None, key, val_fraction) == "train":
            seen.add(key)
            yield document.text, key


def held_out_texts(args: argparse.Namespace) -> Iterator[str]:
    """The validation documents' texts, from a second read of the corpus that skips a training split the
    input names (C4's train files sort before its validation files; a dataset streams its train split first)."""
    stats = ReadStats()
    documents, named = validation_first(args, stats)
    return (d.text for d in documents if is_held_out(d, named, args.val_fraction))


def validation_first(args: argparse.Namespace, stats: ReadStats) -> tuple[Iterator[Document], bool]:
    """The documents that can be validation ones, and whether the input names its validation split."""
    options = ReadOptions(args.doc_boundary, args.text_field, args.text_column, args.strict)
    if args.hf_dataset is None:
        files = resolve_inputs(args.input, options)
        named = any(item.split == "validation" for item in files)
        return read_documents([f for f in files if not (named and f.split == "train")], options, stats), named
    if args.hf_split is None:
        import datasets

        try:
            names = [s for s in datasets.get_dataset_split_names(args.hf_dataset, args.hf_config)
                     if SPLIT_NAMES.get(s) == "validation"]
        except Exception:  # noqa: BLE001  (then read the dataset as the first pass did: slower, same documents)
            names = []
        if names:
            parts = (open_hf_dataset(args.hf_dataset, args.hf_config, name, options, stats)[0] for name in names)
            return (Document(d.text, "validation") for d in itertools.chain.from_iterable(parts)), True
    return open_hf_dataset(args.hf_dataset, args.hf_config, args.hf_split, options, stats)


if __name__ == "__main__":
    sys.exit(main())
