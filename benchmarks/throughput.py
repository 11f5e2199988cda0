"""Training-step throughput: MosaicBERT, Hugging Face BertForMaskedLM (SDPA) and ModernBertForMaskedLM, side by side.

    make bench                                                     # small preset, CPU or GPU
    python benchmarks/throughput.py --preset base --lengths c4 full
    python benchmarks/throughput.py --preset small --record cpu-small   # store a measured run for the docs
    python benchmarks/throughput.py --render-docs                  # rebuild docs/benchmarks.md from the stored runs
    python benchmarks/throughput.py --seq-lens 128 512 1024 2048 --models mosaicbert mosaicbert-flex bert modernbert

Full training steps (forward, backward, AdamW step) on identical batches whose lengths follow a real
distribution (`corpus`: the offline corpus tokenized and cut at the sequence length; `c4`: the stored C4
profile; `full`: no padding). Models take turns in rounds within this one process; each figure is the
median round with its spread. MFU is the matmul and attention FLOPs each model executes (padding
included, counted by torch's FlopCounterMode) per second, against the matmul peak measured in the same
run (fp32 on CPU, bf16 on GPU). Writes results.json, results.md, throughput.png and per-op profiles.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from datetime import datetime
from pathlib import Path

from mosaicbert.allocator import malloc_tuning_active, reexec_with_malloc_tuning

if __name__ == "__main__":
    reexec_with_malloc_tuning()  # before torch loads; MOSAICBERT_MALLOC_TUNING=0 measures without

import torch  # noqa: E402

from mosaicbert.bench import lengths as length_profiles  # noqa: E402
from mosaicbert.bench.measure import BERT_POSITIONS, DEFAULT_MODELS, MODELS, PRESETS, uncounted_attention  # noqa: E402
from mosaicbert.bench.report import (  # noqa: E402
    relative_lines,
    render_result,
    sequence_length_table,
    update_docs,
    write_bar_chart,
)  # noqa: E402
from mosaicbert.bench.throughput import (  # noqa: E402
    CPU_BATCH_SIZE,
    GPU_BATCH_SIZE,
    default_batch_size,
    environment,
    measure_peak,
    run_case,
)
from mosaicbert.errors import UserError, entry_point  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
C4_PROFILE = REPO / "benchmarks" / "profiles" / "c4_en.csv"
DIMENSIONS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="small")
    for dim in DIMENSIONS:
        parser.add_argument(f"--{dim.replace('_', '-')}", type=int, help=f"override the preset's {dim}")
    parser.add_argument("--vocab-size", type=int, default=30528)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS))
    parser.add_argument("--lengths", nargs="+", choices=["corpus", "c4", "full"],
                        help="length distributions, one case each (default: corpus, c4 where its profile is "
                        "stored, and full)")
    parser.add_argument("--data-root", default=str(REPO / "data" / "sample"), help="corpus for --lengths corpus")
    parser.add_argument("--batch-size", type=int,
                        help=f"sequences per batch (default: {GPU_BATCH_SIZE} on GPU, the recipe's microbatch; "
                        f"{CPU_BATCH_SIZE} on CPU)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seq-lens", nargs="+", type=int, metavar="N",
                        help="instead of --lengths: one case per sequence length, every sequence full, "
                        "--tokens-per-batch tokens per batch (BERT only up to its 512 positions)")
    parser.add_argument("--tokens-per-batch", type=int, default=8192, help="with --seq-lens (default: 8192)")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches; a round is one pass over them")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes over the batches per model")
    parser.add_argument("--compile", action="store_true", help="also time each model under torch.compile")
    parser.add_argument("--packing", action="store_true",
                        help="also time MosaicBERT on the same documents packed into rows, with packing statistics")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on GPU, fp32 on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output folder (default runs/bench/<time>)")
    parser.add_argument("--record", metavar="NAME", help="also store the run as benchmarks/results/NAME.json "
                        "(per-op profiles: NAME-ops/, chart: docs/NAME.png) and rebuild docs/benchmarks.md")
    parser.add_argument("--label", default="", help="what this run measures (a change tried), kept in results.json")
    parser.add_argument("--render-docs", action="store_true", help="only rebuild docs/benchmarks.md from stored runs")
    args = parser.parse_args(argv)
    if args.lengths is None:
        args.lengths = ["corpus", "c4", "full"] if C4_PROFILE.is_file() else ["corpus", "full"]
    return args


def load_profile(name: str, args: argparse.Namespace) -> length_profiles.LengthProfile:
    if name == "full":
        return length_profiles.full_profile(args.seq_len)
    if name == "c4":
        return length_profiles.read_histogram(C4_PROFILE)
    profile = length_profiles.tokenized_profile(Path(args.data_root), "train")
    profile.name = "corpus"
    return profile


def cases(args: argparse.Namespace, profiles: list, batch_size: int) -> list[tuple[list[str], object, int, int]]:
    """(models, length profile, batch size, sequence length) of each case: one per --lengths profile, or one
    per --seq-lens length at --tokens-per-batch tokens, full sequences, BERT only where its positions reach."""
    if not args.seq_lens:
        return [(args.models, profile, batch_size, args.seq_len) for profile in profiles]
    found = []
    for seq_len in args.seq_lens:
        if seq_len < 8 or args.tokens_per_batch < seq_len:
            raise UserError(f"--seq-lens {seq_len}: lengths must be at least 8 and at most --tokens-per-batch "
                            f"({args.tokens_per_batch})")
        profile = length_profiles.full_profile(seq_len)
        profile.name = f"full, {seq_len} tokens"
        models = [m for m in args.models if m != "bert" or seq_len <= BERT_POSITIONS]
        found.append((models, profile, args.tokens_per_batch // seq_len, seq_len))
    return found


def recorded_command(argv: list[str]) -> str:
    """The command that reproduces the measurement: where its output went (--out, --record) is left out."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--record"):
            skip = True
        elif not arg.startswith(("--out=", "--record=")):
            kept.append(arg)
    return shlex.join(["python", "benchmarks/throughput.py", *kept])


def render_docs() -> None:
    changed = update_docs(DOCS, sorted(RESULTS.glob("*.json")))
    print(f"{'rebuilt' if changed else 'unchanged'}: {DOCS.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render_docs:
        render_docs()
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    batch_size = default_batch_size(device) if args.batch_size is None else args.batch_size
    dims = {**PRESETS[args.preset], **{d: getattr(args, d) for d in DIMENSIONS if getattr(args, d) is not None}}
    if dims["hidden_size"] % dims["num_attention_heads"]:
        raise UserError(f"hidden size {dims['hidden_size']} is not a multiple of {dims['num_attention_heads']} heads")
    out = Path(args.out or REPO / "runs" / "bench" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    profiles = [] if args.seq_lens else [load_profile(name, args) for name in args.lengths]

    precision = "bf16 autocast" if bf16 else "fp32"
    peak = measure_peak(device, torch.bfloat16 if bf16 else torch.float32)
    uncounted = uncounted_attention(device)
    result = {
        "command": recorded_command(argv if argv is not None else sys.argv[1:]),
        "label": args.label,
        "environment": {**environment(device, precision), "malloc_tuning": malloc_tuning_active()},
        "peak_flops": peak,
        "setup": {"preset": args.preset, "dims": dims, "vocab_size": args.vocab_size, "batch_size": batch_size,
                  "seq_len": args.seq_len, "models": args.models,
                  "tokens_per_batch": args.tokens_per_batch if args.seq_lens else None},
        "cases": [],
    }
    print(f"{result['environment']['device']}; {precision}; matmul peak {peak / 1e9:,.1f} GFLOP/s")
    if uncounted:
        print(uncounted)
    for models, profile, batch, seq_len in cases(args, profiles, batch_size):
        case = run_case(
            models, dims, profile, batch_size=batch, seq_len=seq_len, vocab_size=args.vocab_size,
            num_batches=args.batches, rounds=args.rounds, warmup=args.warmup, device=device,
            autocast_dtype=torch.bfloat16 if bf16 else None, peak_flops=peak, compile_models=args.compile,
            packing=args.packing, with_flops=uncounted is None, ops_folder=out, seed=args.seed)
        result["cases"].append({**case, "seq_len": seq_len, "batch_size": batch} if args.seq_lens else case)

    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = "\n\n" + sequence_length_table(result) if args.seq_lens else ""
    (out / "results.md").write_text(render_result(result) + summary + "\n")
    write_bar_chart(result, out / "throughput.png")
    print()
    print(render_result(result))
    print(summary.strip())
    for case in result["cases"]:
        for line in relative_lines(case):
            print(f"[{case['lengths']}] {line}")
    print(f"wrote {out}/results.json, results.md, throughput.png and per-op profiles (ops-*.txt)")
    if args.record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "results.json", RESULTS / f"{args.record}.json")
        shutil.copyfile(out / "throughput.png", DOCS.parent / f"{args.record}.png")
        ops = RESULTS / f"{args.record}-ops"
        shutil.rmtree(ops, ignore_errors=True)
        shutil.copytree(out, ops, ignore=lambda folder, names: [n for n in names if not n.startswith("ops-")])
        render_docs()


if __name__ == "__main__":
    sys.exit(entry_point()(main)())
