"""Fine-tuning throughput (examples/s): MosaicBERT against Hugging Face BERT of the same size, on the same
sequence-classification and token-classification batches, side by side in one process.

    python benchmarks/finetune_throughput.py                       # the demo model's size, CPU or GPU
    python benchmarks/finetune_throughput.py --preset base --rounds 5 --out runs/bench/finetune

The batches are the own-task demo data (`make finetune-demo`'s topic CSV and NER CoNLL, generated here from
the offline corpus), tokenized with the sample tokenizer and padded per batch as the harness pads them.
Each step is a full training step (forward, backward, AdamW). Models take turns within each round, in an
order that rotates, so load drift hits both; each figure is the median round with its spread (min-max).
Both models run in fp32 on CPU and bf16 autocast on GPU, without attention dropout (which keeps SDPA off
its fused kernels); BERT with SDPA attention, MosaicBERT with its default backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from mosaicbert.bench.measure import PRESETS, Contender, time_rounds
from mosaicbert.bench.throughput import device_name
from mosaicbert.glue import data, own_task
from mosaicbert.glue.demo_data import write_own_demo_tasks
from mosaicbert.glue.tagging import encode, label_names

DEMO_SIZE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)  # yamls/demo.yaml


def task_batches(kind: str, tokenizer, batch_size: int, batches: int, max_seq_len: int) -> tuple[list[dict], int]:
    """(batches, number of labels) of the demo's topic (`sequence`) or NER (`token`) training split."""
    with tempfile.TemporaryDirectory() as folder:
        root = write_own_demo_tasks(Path(folder) / "own", train_size=batch_size * batches, dev_size=1)
        if kind == "sequence":
            task = own_task.resolve(own_task.OwnTask(name="topic", train=str(root / "topic/train.csv"),
                                                     dev=str(root / "topic/dev.csv")))
            items = data.TokenizedExamples(own_task.load_examples(task, "train")[1], tokenizer, max_seq_len, False)
            items, labels = [items[i] for i in range(len(items))], task.num_labels
        else:
            sentences = own_task.read_tagged(own_task.OwnTask(train=str(root / "ner/train.conll")), "train")
            names = label_names(sentences)
            ids = {name: i for i, name in enumerate(names)}
            items = [(e.input_ids, [0] * len(e.input_ids), e.labels)
                     for e in (encode(tokenizer, s, ids, max_seq_len) for s in sentences)]
            labels = len(names)
    collate = data.collate(tokenizer.pad_token_id)
    return [collate(items[i:i + batch_size]) for i in range(0, len(items), batch_size)], labels


def build(name: str, kind: str, dims: dict, vocab_size: int, num_labels: int) -> torch.nn.Module:
    if name == "mosaicbert":
        from mosaicbert.model import (MosaicBertConfig, MosaicBertForSequenceClassification,
                                      MosaicBertForTokenClassification)

        config = MosaicBertConfig(vocab_size=vocab_size, num_labels=num_labels, attention_probs_dropout_prob=0.0, **dims)
        return (MosaicBertForSequenceClassification if kind == "sequence" else MosaicBertForTokenClassification)(config)
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    config = BertConfig(vocab_size=vocab_size, num_labels=num_labels, attention_probs_dropout_prob=0.0, **dims)
    head = BertForSequenceClassification if kind == "sequence" else BertForTokenClassification
    return head._from_config(config, attn_implementation="sdpa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["demo", *PRESETS], default="demo")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/finetune"), help="folder for results.json and results.md")
    args = parser.parse_args()

    from mosaicbert.data.tokenizer import build_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dims = DEMO_SIZE if args.preset == "demo" else PRESETS[args.preset]
    tokenizer = build_tokenizer(args.tokenizer, args.max_seq_len)
    vocab_size = -(-len(tokenizer) // 64) * 64
    results = {"device": device_name(device), "torch": torch.__version__, "preset": args.preset, "dims": dims,
               "batch_size": args.batch_size, "batches": args.batches, "rounds": args.rounds, "tasks": {}}
    for kind in ("sequence", "token"):
        batches, num_labels = task_batches(kind, tokenizer, args.batch_size, args.batches, args.max_seq_len)
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        contenders = []
        for name in ("mosaicbert", "bert"):
            torch.manual_seed(args.seed)
            model = build(name, kind, dims, vocab_size, num_labels).to(device)
            contenders.append(Contender(name, model, "", torch.bfloat16 if device.type == "cuda" else None, batches))
        for contender in contenders:  # warm-up round, not timed
            for batch in batches[:2]:
                contender.step(batch)
        print(f"{kind} classification, {len(batches)} batches of {args.batch_size} per round:")
        time_rounds(contenders, args.rounds, device)
        examples = sum(len(b["input_ids"]) for b in batches)
        rates = {c.key: sorted(examples / s for s in c.round_seconds) for c in contenders}
        results["tasks"][kind] = {key: {"median": statistics.median(r), "min": r[0], "max": r[-1]} for key, r in rates.items()}
        mosaic, bert = contenders
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        results["tasks"][kind]["padding_share"] = 1 - real / sum(b["attention_mask"].numel() for b in batches)
        results["tasks"][kind]["ratio"] = statistics.median(b / m for m, b in zip(mosaic.round_seconds, bert.round_seconds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"Fine-tuning throughput, {results['device']}, torch {results['torch']}, "
             f"preset {args.preset}, batch {args.batch_size}, {args.rounds} rounds of {args.batches} batches",
             "", "| task | MosaicBERT examples/s | BERT examples/s | MosaicBERT / BERT (median of per-round ratios) "
             "| padding in BERT's batches |", "|---|---|---|---|---|"]
    for kind, r in results["tasks"].items():
        mosaic, bert = (f"{r[key]['median']:.1f} ({r[key]['min']:.1f}-{r[key]['max']:.1f})" for key in ("mosaicbert", "bert"))
        lines.append(f"| {kind} classification | {mosaic} | {bert} | {r['ratio']:.2f}x | {r['padding_share']:.0%} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
