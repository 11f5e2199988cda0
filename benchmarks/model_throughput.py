"""Training-step throughput: MosaicBERT against the Hugging Face BERT baseline, side by side.

    python benchmarks/model_throughput.py                      # CPU: small models, fp32
    python benchmarks/model_throughput.py --size base          # GPU: BERT-Base sizes, bf16 autocast

Both models see the same batches: sequences whose lengths follow a chosen padding level,
30% MLM masking, forward + backward + AdamW step. Variants are timed in interleaved rounds
so machine noise hits them alike; the table reports the median round. Throughput counts
non-padding tokens. A bar chart is written next to the table when --png is given.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertForMaskedLM

from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

SIZES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def make_batch(batch: int, seq: int, vocab: int, mean_fill: float, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = (torch.rand(batch, generator=g) * 2 * mean_fill * seq).clamp(8, seq).long()
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.full_like(ids, -100)
    chosen = mask.bool() & (torch.rand(ids.shape, generator=g) < 0.3)
    labels[chosen] = ids[chosen]
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=labels).items()}


def build(name: str, size: str, vocab: int, backend: str, device: str) -> torch.nn.Module:
    dims = SIZES[size]
    if name == "hf_bert":
        # The baseline as the paper trains it: GELU MLP of 4x width, learned positions, dense head.
        config = BertConfig(vocab_size=vocab, max_position_embeddings=512, **dims)
        return BertForMaskedLM(config).to(device)
    config = MosaicBertConfig(vocab_size=vocab, attention_backend=backend, **dims)
    return MosaicBertForMaskedLM(config).to(device)


def step_fn(model, batch, optimizer, autocast_dtype):
    def step():
        with torch.autocast(batch["input_ids"].device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--fill", type=float, default=0.5, help="mean fraction of each sequence that is real tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--png", default=None, help="write a bar chart here")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast_dtype = torch.bfloat16 if device == "cuda" else None
    vocab = 30528
    variants = [("hf_bert", "-"), ("mosaic_bert", "sdpa")]
    if device == "cuda":
        from mosaicbert.model import modeling_mosaicbert

        if modeling_mosaicbert.flash_attn_varlen_qkvpacked_func is not None:
            variants.append(("mosaic_bert", "flash_attn"))

    batch = make_batch(args.batch, args.seq, vocab, args.fill, device)
    real_tokens = int(batch["attention_mask"].sum())
    steps = {}
    for name, backend in variants:
        torch.manual_seed(0)
        model = build(name, args.size, vocab, backend, device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        step = step_fn(model, batch, optimizer, autocast_dtype)
        step()  # warm-up: allocations, kernel selection
        steps[(name, backend)] = step

    seconds = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[key].append((time.perf_counter() - start) / args.steps)

    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; torch {torch.__version__}; size {args.size}; batch {args.batch} x {args.seq}, "
          f"{real_tokens / batch['attention_mask'].numel():.0%} real tokens; precision {'bf16 autocast' if autocast_dtype else 'fp32'}")
    print(f"{'model':<12} {'attention':<11} {'s/step (median)':>16} {'real tokens/s':>14} {'vs hf_bert':>10}")
    baseline = statistics.median(seconds[("hf_bert", "-")])
    rows = []
    for (name, backend), times in seconds.items():
        median = statistics.median(times)
        rows.append((f"{name}\n{backend}", real_tokens / median))
        print(f"{name:<12} {backend:<11} {median:>16.4f} {real_tokens / median:>14,.0f} {baseline / median:>9.2f}x")

    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar([r[0] for r in rows], [r[1] for r in rows], color=["#888888", "#2a7ab9", "#e07b39"][: len(rows)])
        ax.set_ylabel("real tokens / s (train step)")
        ax.set_title(f"{args.size} models, {device_name}", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
