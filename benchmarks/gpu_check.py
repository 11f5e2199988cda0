"""The GPU check (`make gpu-check`): the GPU path verified and measured in one short run on one CUDA GPU.

1. Attention agreement: MosaicBERT logits on a ragged batch through FlashAttention-2 (where flash-attn is
   installed), SDPA and FlexAttention under bf16 autocast, each against the same weights run by SDPA in
   fp32, at bf16 tolerance.
2. Training: MosaicBERT-Base as the recipe trains it (bf16 autocast, low-precision LayerNorm,
   attention_backend=auto), Hugging Face BERT-Base (SDPA) and, where flash-attn is installed,
   ModernBERT-base, each `--steps` AdamW steps on the same synthetic batches (128 x 128 by default, the
   recipe's microbatch; lengths uniform in 16..128; Zipf-distributed ids, so the loss has something to
   fall to). Per model: tokens/s (median of 20-step windows after 20 warm-up steps, with the slowest and
   fastest window), MFU against the GPU's bf16 dense peak (FLOPs counted by torch's FlopCounterMode over
   the same steps), peak memory, host syncs per step (CUDA's sync debug mode), and the loss at start and end.

Writes gpu-check.json and gpu-check.md to `--out`. Without CUDA it prints one line and exits 0, having
measured nothing; `--cpu-dry-run` runs every step on CPU with a tiny model instead (for the tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 2e-2  # max |logits - fp32 logits| / max |fp32 logits|: bf16 keeps 8 significant bits
WINDOW, WARMUP_STEPS = 20, 20
RAGGED_LENGTHS = (128, 5, 77, 1, 64, 100, 33, 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--cpu-dry-run", action="store_true", help="a tiny model on CPU: checks the script, measures nothing")
    args = parser.parse_args(argv)
    if args.steps < WARMUP_STEPS + 2 * WINDOW:
        parser.error(f"--steps must be at least {WARMUP_STEPS + 2 * WINDOW}: {WARMUP_STEPS} warm-up steps, then "
                     f"windows of {WINDOW}")
    return args


def environment(device: torch.device) -> dict:
    import composer
    import transformers

    from mosaicbert.bench.measure import flash_attn_version

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "composer": composer.__version__, "flash_attn": flash_attn_version(), "python": sys.version.split()[0]}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        info.update(device=torch.cuda.get_device_name(device), capability=f"{major}.{minor}")
    else:
        info["device"] = "CPU (dry run)"
    return info


def ragged_batch(vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (len(RAGGED_LENGTHS), max(RAGGED_LENGTHS)), generator=generator)
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(RAGGED_LENGTHS)[:, None]).long()
    return ids.to(device), mask.to(device)


def attention_agreement(dims: dict, device: torch.device) -> dict:
    """Each backend's bf16 logits on the real tokens against SDPA's fp32 logits, same weights."""
    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
    from mosaicbert.model import modeling_mosaicbert

    backends = ["sdpa", "flex"] + (["flash_attn"] if modeling_mosaicbert.flash_attn_varlen_qkvpacked_func else [])
    torch.manual_seed(0)
    config = MosaicBertConfig(vocab_size=1024, hidden_dropout_prob=0.0, attention_backend="sdpa", **dims)
    model = MosaicBertForMaskedLM(config).to(device).eval()
    ids, mask = ragged_batch(config.vocab_size, device)
    real = mask.bool()
    with torch.no_grad():
        reference = model(ids, mask).logits[real].double()
        results = {}
        for backend in backends:
            model.config.attention_backend = backend
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(ids, mask).logits[real].double()
            error = float((logits - reference).abs().max() / reference.abs().max())
            results[backend] = {"max_relative_error": error, "ok": error < TOLERANCE}
    return {"lengths": list(RAGGED_LENGTHS), "tolerance": TOLERANCE, "backends": results}


def count_syncs(step, batches: list[dict]) -> float:
    """Host syncs per step, as CUDA's sync debug mode reports them (one warning each)."""
    if not torch.cuda.is_available():
        return float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for batch in batches:
                step(batch)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / len(batches)


def train(name: str, dims: dict, vocab_size: int, batches: list[dict], args, device: torch.device,
          peak: float | None) -> dict:
    from mosaicbert.bench.measure import Contender, build_model, count_flops, synchronize, uncounted_attention

    torch.manual_seed(0)
    model, note = build_model(name, dims, vocab_size, args.seq_len, device, torch.bfloat16)
    contender = Contender(name, model, note, torch.bfloat16, batches, lr=args.lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, windows = [], []
    synchronize(device)
    start = time.perf_counter()
    for step, batch in enumerate(batches, 1):
        losses.append(contender.step(batch))
        if step % WINDOW == 0:
            synchronize(device)
            windows.append(time.perf_counter() - start)
            start = time.perf_counter()
    peak_memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    losses = torch.stack(losses).float().cpu()
    timed = windows[WARMUP_STEPS // WINDOW:]
    tokens = [sum(int(b["attention_mask"].sum()) for b in batches[i:i + WINDOW]) for i in range(0, len(batches), WINDOW)]
    rates = [t / s for t, s in zip(tokens[WARMUP_STEPS // WINDOW:], timed)]
    # An old flash-attn's kernels (MosaicBERT's and ModernBERT's attention) are invisible to the FLOP counter:
    # no MFU rather than one without attention.
    uncounted = uncounted_attention(device) if name != "bert" else None
    if uncounted:
        print(f"gpu-check: {name}: {uncounted}", flush=True)
    flops = None if uncounted else count_flops(Contender(name, model, note, torch.bfloat16, batches))
    seconds = sum(timed) * len(batches) / (len(timed) * WINDOW)  # the run's time at the timed windows' pace
    return {
        "note": note,
        "tokens_per_second": statistics.median(rates),
        "tokens_per_second_range": [min(rates), max(rates)],
        "mfu": flops / seconds / peak if peak and flops else None,
        "flops_per_step": flops / len(batches) if flops else None,
        "peak_memory_gib": peak_memory / 2**30 if peak_memory is not None else None,
        "host_syncs_per_step": count_syncs(contender.step, batches[:5]),
        "loss_first_20": float(losses[:20].mean()),
        "loss_last_20": float(losses[-20:].mean()),
        "loss_fell": bool(losses[-20:].mean() < losses[:20].mean() - 0.5),
    }


def training(args, device: torch.device) -> dict:
    from mosaicbert.bench.lengths import LengthProfile, make_batches
    from mosaicbert.bench.measure import PRESETS, flash_attn_version
    from mosaicbert.callbacks.speed import gpu_peak_flops

    dims, vocab_size = (PRESETS["tiny"], 1024) if args.cpu_dry_run else (PRESETS["base"], 30528)
    profile = LengthProfile("uniform", "lengths uniform in 16..seq_len", np.arange(16, args.seq_len + 1))
    batches = [{k: v.to(device) for k, v in b.items()}
               for b in make_batches(profile, args.steps, args.batch_size, args.seq_len, vocab_size, 0.3, seed=0, zipf=1.1)]
    peak = gpu_peak_flops(torch.cuda.get_device_name(device), "amp_bf16") if device.type == "cuda" else None
    models = ["mosaicbert", "bert"] + (["modernbert"] if flash_attn_version() and device.type == "cuda" else [])
    results = {}
    for name in models:
        print(f"gpu-check: training {name} for {args.steps} steps", flush=True)
        results[name] = train(name, dims, vocab_size, batches, args, device, peak)
    return {"dims": dims, "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "lr": args.lr,
            "bf16_dense_peak_flops": peak, "real_tokens_per_step": sum(int(b["attention_mask"].sum()) for b in batches) / len(batches),
            "models": results}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"GPU check on {env['device']} (compute capability {env.get('capability', '-')}): torch {env['torch']}, "
             f"CUDA {env['cuda']}, transformers {env['transformers']}, Composer {env['composer']}, "
             f"flash-attn {env['flash_attn'] or 'not installed'}.", "",
             "| backend | max relative error of bf16 logits vs fp32 SDPA | within tolerance |", "|---|---|---|"]
    for backend, entry in result["agreement"]["backends"].items():
        lines.append(f"| {backend} | {entry['max_relative_error']:.2e} | {'yes' if entry['ok'] else 'NO'} |")
    run = result["training"]
    lines += ["", f"{run['steps']} steps of {run['batch_size']} x {run['seq_len']} ({run['real_tokens_per_step']:.0f} real "
              "tokens per step), bf16:", "",
              "| model | tokens/s (median, range) | MFU | peak memory | host syncs per step | loss (first 20 -> last 20) |",
              "|---|---|---|---|---|---|"]
    for name, m in run["models"].items():
        low, high = m["tokens_per_second_range"]
        mfu = f"{m['mfu']:.1%}" if m["mfu"] is not None else "unknown"
        memory = f"{m['peak_memory_gib']:.1f} GiB" if m["peak_memory_gib"] is not None else "-"
        lines.append(f"| {name} | {m['tokens_per_second']:,.0f} ({low:,.0f}-{high:,.0f}) | {mfu} | {memory} | "
                     f"{m['host_syncs_per_step']:.1f} | {m['loss_first_20']:.2f} -> {m['loss_last_20']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine; nothing measured (run it on a GPU machine: docs/benchmarks.md)")
        return 0
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    # 12 heads, as Base: their ALiBi slopes are not all powers of two, so a bias rounded to bf16 shows.
    small = {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 12, "intermediate_size": 128}
    result = {"environment": environment(device),
              "agreement": attention_agreement(small if args.cpu_dry_run else {"num_hidden_layers": 2}, device),
              "training": training(args, device)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu-check.md").write_text(markdown(result))
    print(markdown(result))
    failed = [b for b, e in result["agreement"]["backends"].items() if not e["ok"]]
    failed += [f"{n} loss did not fall" for n, m in result["training"]["models"].items() if not m["loss_fell"]]
    if result["training"]["models"]["mosaicbert"]["host_syncs_per_step"] > 1:  # NaN on CPU: not measured
        failed.append("mosaicbert syncs more than once per step (unpad's read of its counts is the one expected)")
    if failed:
        print("gpu-check: FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
