"""One benchmark case (a model size and a length distribution): every model on the same batches."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import transformers

from mosaicbert.bench.lengths import LengthProfile, make_batches
from mosaicbert.data.packing import pack_batch
from mosaicbert.data.text_dataset import count_real_tokens
from mosaicbert.bench.measure import (
    BASELINE,
    Contender,
    build_model,
    count_flops,
    matmul_peak,
    profile_step,
    resident_bytes,
    time_rounds,
)


# On a GPU, the recipe's microbatch (yamls/base.yaml: device_train_microbatch_size 128 at max_seq_len 128), what
# a training step runs per device; at 32 x 128 an H100 step is bound by kernel launches, not compute. On CPU, 32,
# the stored `cpu-small*` runs' batch.
GPU_BATCH_SIZE = 128
CPU_BATCH_SIZE = 32


def default_batch_size(device: torch.device) -> int:
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def environment(device: torch.device, precision: str) -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "precision": precision,
        "threads": torch.get_num_threads(),
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run_case(models: list[str], dims: dict, profile: LengthProfile, *, batch_size: int, seq_len: int,
             vocab_size: int, num_batches: int, rounds: int, warmup: int, device: torch.device,
             autocast_dtype: torch.dtype | None, peak_flops: float, compile_models: bool = False,
             packing: bool = False, with_flops: bool = True, ops_folder: Path | None = None, seed: int = 0,
             progress: Callable[[str], None] = print) -> dict:
    """Time every model (and, with `compile_models`, each compiled; with `packing`, MosaicBERT on the same
    documents packed into rows) on the same batches drawn from `profile`; without `with_flops`, no FLOPs or MFU."""
    batches = make_batches(profile, num_batches, batch_size, seq_len, vocab_size, mlm_probability=0.3, seed=seed)
    real_tokens = sum(count_real_tokens(b) for b in batches)
    padding = 1 - real_tokens / (len(batches) * batch_size * seq_len)
    masked_tokens = sum(int((b["labels"] != -100).sum()) for b in batches)
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]

    contenders = build_contenders(models, dims, vocab_size, seq_len, device, autocast_dtype, batches, on_device,
                                  compile_models=compile_models, packing=packing, seed=seed)
    progress(f"case {profile.name}: {len(batches)} batches of {batch_size} x {seq_len}, "
             f"{padding:.1%} padding")
    results = {c.key: measure_untimed(c, warmup, device, with_flops, ops_folder, profile.name) for c in contenders}
    time_rounds(contenders, rounds, device, progress)
    add_timings(results, contenders, real_tokens, len(batches), peak_flops)
    case = {
        "lengths": profile.name,
        "lengths_source": profile.source,
        "padding_fraction": padding,
        "distribution_padding_fraction": profile.padding_fraction(seq_len),
        "masked_fraction_of_real": masked_tokens / real_tokens,
        "real_tokens_per_round": real_tokens,
        "batches_per_round": len(batches),
        "rounds": rounds,
        "models": results,
    }
    if packing:
        case["packing_statistics"] = packing_statistics(profile, batch_size, seq_len, vocab_size, seed)
    return case


def build_contenders(models: list[str], dims: dict, vocab_size: int, seq_len: int, device: torch.device,
                     autocast_dtype: torch.dtype | None, batches: list[dict], on_device: list[dict], *,
                     compile_models: bool, packing: bool, seed: int) -> list[Contender]:
    """Every model (each also compiled, with `compile_models`; MosaicBERT also on packed rows, with `packing`),
    each built from the same seed."""
    variants = [(name, compiled, False) for name in models for compiled in ([False, True] if compile_models else [False])]
    if packing and "mosaicbert" in models:
        variants.append(("mosaicbert", False, True))
    contenders = []
    for name, compiled, packed in variants:
        torch.manual_seed(seed)
        model, note = build_model(name, dims, vocab_size, seq_len, device, autocast_dtype)
        key = name
        if compiled:
            model, key, note = torch.compile(model, dynamic=True), f"{name}+compile", note + "; torch.compile(dynamic=True)"
        case_batches = on_device
        if packed:
            case_batches = [{k: v.to(device) for k, v in pack_batch(b).items()} for b in batches]
            key, note = f"{name}+packing", note + "; each batch's documents packed into rows (best fit)"
        contenders.append(Contender(key, model, note, autocast_dtype, case_batches))
    return contenders


def measure_untimed(contender: Contender, warmup: int, device: torch.device, with_flops: bool, ops_folder: Path | None,
                    case_name: str) -> dict:
    """After `warmup` rounds: the contender's FLOPs per round (unless a twin's stand in), parameters and peak memory,
    and its per-op profile in `ops_folder`."""
    for _ in range(warmup):  # allocations, kernel choice, compilation
        for batch in contender.batches:
            contender.step(batch)
    flops = count_flops(contender) if with_flops and flop_twin(contender.key) is None else None
    # Memory follows the real tokens for MosaicBERT: profile the batch with the most.
    largest = max(contender.batches, key=count_real_tokens)
    ops, transient = profile_step(contender, largest, device)
    if ops_folder is not None:
        ops_folder.mkdir(parents=True, exist_ok=True)
        (ops_folder / f"ops-{case_name}-{contender.key}.txt").write_text(ops)
    return {"note": contender.note, "parameters": contender.parameters, "flops_per_round": flops,
            "rows_per_round": sum(b["input_ids"].shape[0] for b in contender.batches),
            "peak_memory_bytes": resident_bytes(contender) + transient}


def add_timings(results: dict, contenders: list[Contender], real_tokens: int, num_batches: int, peak_flops: float) -> None:
    """Each contender's step times, throughput and MFU from its timed rounds, and its speed against the baseline's,
    per round too (rounds interleave the models, so each gives a paired ratio under the same machine load)."""
    for contender in contenders:
        entry = results[contender.key]
        seconds = contender.round_seconds
        median = statistics.median(seconds)
        flops = entry["flops_per_round"] or results.get(flop_twin(contender.key), {}).get("flops_per_round")
        entry.update({
            "flops_per_round": flops,
            "step_seconds": {"median": median / num_batches, "p25": percentile(seconds, 25) / num_batches,
                             "p75": percentile(seconds, 75) / num_batches, "min": min(seconds) / num_batches,
                             "max": max(seconds) / num_batches},
            "tokens_per_second": real_tokens / median,
            "tokens_per_second_range": [real_tokens / max(seconds), real_tokens / min(seconds)],
            "flops_per_real_token": flops / real_tokens if flops else None,
            "mfu": flops / median / peak_flops if flops else None,
        })
    baseline = next((c for c in contenders if c.key == BASELINE), None)
    if baseline is not None:
        for contender in contenders:
            entry = results[contender.key]
            entry["vs_baseline"] = entry["tokens_per_second"] / results[BASELINE]["tokens_per_second"]
            entry["vs_baseline_per_round"] = [b / c for b, c in zip(baseline.round_seconds, contender.round_seconds)]


def flop_twin(key: str) -> str | None:
    """The model whose counted FLOPs `key` executes, where torch's FlopCounterMode cannot count them itself: inside
    compiled graphs (a compiled model's are its eager twin's) and FlexAttention's operator (MosaicBERT's math)."""
    if key.endswith("+compile"):
        return key.removesuffix("+compile")
    return "mosaicbert" if key.startswith("mosaicbert-flex") else None


def packing_statistics(profile: LengthProfile, batch_size: int, seq_len: int, vocab_size: int, seed: int,
                       num_batches: int = 200) -> dict:
    """What packing does to a batch of `batch_size` documents, over many batches from the profile: rows,
    padding of the `[rows, seq]` tensor, real and masked tokens per row (mean and coefficient of variation)."""
    stats = {}
    batches = make_batches(profile, num_batches, batch_size, seq_len, vocab_size, mlm_probability=0.3, seed=seed + 1)
    for name, layout in (("plain", batches), ("packed", [pack_batch(b) for b in batches])):
        mask = torch.cat([b["attention_mask"] for b in layout]) != 0
        masked = torch.cat([b["labels"] for b in layout]) != -100
        real_per_row, masked_per_row = mask.sum(1).double(), masked.sum(1).double()
        stats[name] = {
            "rows_per_batch": mask.shape[0] / num_batches,
            "padding_fraction": 1 - float(mask.double().mean()),
            "real_tokens_per_row": float(real_per_row.mean()),
            "real_tokens_per_row_cv": float(real_per_row.std() / real_per_row.mean()),
            "masked_tokens_per_row": float(masked_per_row.mean()),
            "masked_tokens_per_row_cv": float(masked_per_row.std() / masked_per_row.mean()),
            "masked_fraction_of_real": float(masked.sum() / mask.sum()),
        }
    return stats


def measure_peak(device: torch.device, dtype: torch.dtype) -> float:
    return matmul_peak(device, dtype, size=8192 if device.type == "cuda" else 2048)
