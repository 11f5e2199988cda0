"""Write the offline own-task demo data (used by `make finetune-demo`): a topic classification task in CSV
and a named-entity task in CoNLL, generated from the sample corpus.

    python data_prep/finetune_demo_tasks.py --out data/finetune_demo
"""

import argparse

from mosaicbert.glue.demo_data import write_own_demo_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder that receives topic/ and ner/")
    parser.add_argument("--train-size", type=int, default=240)
    parser.add_argument("--dev-size", type=int, default=60)
    args = parser.parse_args()
    out = write_own_demo_tasks(args.out, args.train_size, args.dev_size)
    print(f"wrote the topic (CSV) and ner (CoNLL) demo tasks under {out}")


if __name__ == "__main__":
    main()
