"""MLM loss and accuracy of one or more models at several sequence lengths (ALiBi's length extrapolation):

    python src/eval_lengths.py runs/<run> [runs/<other run> exported/<name> ...] --lengths 128 256 512 1024 2048

Each argument is a run folder (its latest checkpoint), a checkpoint (.pt) or a model folder. Every model is
scored on the same pieces of the evaluation split (documents in order, concatenated so that every piece is as
long as asked) with the same 15% masks. Writes results.json, table.md and lengths.png (loss against length,
one line per model) to --out. Learned position tables (Hugging Face BERT) are not run past their end: those
cells say so. The evaluation split defaults to the first model's run (data_local and its eval split).
"""

import argparse
import sys
import time
from pathlib import Path

from mosaicbert.errors import UserError, entry_point


@entry_point()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="run folders, checkpoints (.pt) or model folders")
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--data", help="MDS text dataset root (default: the first run's data_local)")
    parser.add_argument("--split", help="the split to score (default: the first run's eval split)")
    parser.add_argument("--tokenizer", help="tokenizer name or folder (default: the runs' own)")
    parser.add_argument("--tokens-per-length", type=int, default=16_384,
                        help="tokens scored at each length: 128 pieces of 128, 8 of 2048 (default: 16384)")
    parser.add_argument("--mlm-probability", type=float, default=0.15, help="masking rate (default: 0.15)")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/eval-lengths-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    args = parser.parse_args(argv)
    from mosaicbert.evaluation.lengths import evaluate_lengths, markdown_table, write_results

    out = args.out or Path("runs") / f"eval-lengths-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / "results.json").exists() and not args.overwrite:
        raise UserError(f"{out} already holds results; choose another --out or pass --overwrite.")
    results = evaluate_lengths(args.models, args.lengths, lambda source: evaluation_texts(source, args.data, args.split),
                               args.tokens_per_length, args.mlm_probability, tokenizer_name=args.tokenizer)
    settings = {"lengths": args.lengths, "tokens_per_length": args.tokens_per_length,
                "mlm_probability": args.mlm_probability, "data": args.data, "split": args.split}
    written = write_results(results, out, settings)
    print(markdown_table(results))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def evaluation_texts(source, data: str | None, split: str | None):
    """The documents of the evaluation split in order (read as needed): `data`/`split`, else the source run's
    data_local and eval split."""
    from streaming import LocalDataset

    from mosaicbert.data.text_dataset import check_local_split

    run = source.card.get("run_config") or {}
    root = data or run.get("data_local")
    if root is None:
        raise UserError("no run record says which data the model saw; name the evaluation data with --data (and --split).")
    if data is None and source.repo_root is not None and not Path(root).is_absolute():
        root = str(source.repo_root / root)  # the run's relative path, from where it ran
    split = split or (run.get("eval_loader") or {}).get("split") or "val"
    check_local_split(root, split)
    dataset = LocalDataset(local=str(Path(root) / split))
    return (dataset[i]["text"] for i in range(len(dataset)))


if __name__ == "__main__":
    sys.exit(main())
