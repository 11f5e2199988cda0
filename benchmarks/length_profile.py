"""Write a document-length profile (a `tokens,documents` CSV) for `benchmarks/throughput.py --lengths`.

    make c4-shards
    python benchmarks/length_profile.py data/c4 --split val_small --tokenizer bert-base-uncased \
        --out benchmarks/profiles/c4_en.csv

Counts each document's tokens (plus [CLS] and [SEP]) without cutting, so one profile serves any
sequence length; the CSV's `# source:` line records the split and tokenizer it came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mosaicbert.bench.lengths import tokenized_profile, write_histogram
from mosaicbert.errors import entry_point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", help="a folder of MDS text splits (data_prep/convert_dataset.py output)")
    parser.add_argument("--split", default="val_small")
    parser.add_argument("--tokenizer", default=None, help="hub name or folder (default: <data_root>/tokenizer)")
    parser.add_argument("--max-documents", type=int, default=20_000)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    profile = tokenized_profile(Path(args.data_root), args.split, args.tokenizer, args.max_documents)
    write_histogram(profile, args.out)
    print(f"wrote {args.out}: {len(profile.lengths)} documents, {profile.padding_fraction(128):.1%} padding at 128 tokens")


if __name__ == "__main__":
    sys.exit(entry_point()(main)())
