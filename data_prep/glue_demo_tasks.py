"""Write the offline GLUE-format demo tasks (used by `make glue-demo`).

    python data_prep/glue_demo_tasks.py --out data/glue_demo
"""

import argparse

from mosaicbert.glue.demo_data import write_demo_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder that receives MNLI/, QNLI/, ... in the classic GLUE layout")
    parser.add_argument("--train-size", type=int, default=320)
    parser.add_argument("--dev-size", type=int, default=96)
    args = parser.parse_args()
    out = write_demo_tasks(args.out, args.train_size, args.dev_size)
    print(f"wrote 8 GLUE-format demo tasks under {out}")


if __name__ == "__main__":
    main()
