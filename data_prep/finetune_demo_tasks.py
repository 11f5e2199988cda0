"""Write the offline own-task demo data, generated from the sample corpus: a topic classification task in CSV
and a named-entity task in CoNLL (used by `make finetune-demo`), or with --long-documents a 4-way
classification of 600-2,000-token documents whose label sits far from both ends (docs/long-context.md).

    python data_prep/finetune_demo_tasks.py --out data/finetune_demo
    python data_prep/finetune_demo_tasks.py --out data/finetune_demo/long --long-documents
"""

import argparse
import sys

from mosaicbert.errors import entry_point
from mosaicbert.glue.demo_data import write_long_document_task, write_own_demo_tasks


@entry_point()
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder that receives topic/ and ner/ (with --long-documents: "
                                                     "train.csv and dev.csv)")
    parser.add_argument("--train-size", type=int, default=None, help="default: 240 (400 long documents)")
    parser.add_argument("--dev-size", type=int, default=None, help="default: 60 (200 long documents)")
    parser.add_argument("--long-documents", action="store_true", help="write the long-document task instead")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer",
                        help="counts the long documents' tokens (default: the sample corpus's, make sample-shards)")
    args = parser.parse_args()
    if not args.long_documents:
        out = write_own_demo_tasks(args.out, 240 if args.train_size is None else args.train_size,
                                   60 if args.dev_size is None else args.dev_size)
        print(f"wrote the topic (CSV) and ner (CoNLL) demo tasks under {out}")
        return 0
    from mosaicbert.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(args.tokenizer, 10**9)  # counts only: no length limit
    count = lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # noqa: E731
    out = write_long_document_task(args.out, count, 400 if args.train_size is None else args.train_size,
                                   200 if args.dev_size is None else args.dev_size)
    print(f"wrote the long-document task (train.csv, dev.csv) under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
