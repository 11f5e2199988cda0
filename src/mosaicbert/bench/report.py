"""The benchmark's results as a markdown table, lines relative to the baseline, a bar chart, and the
generated part of docs/benchmarks.md (rebuilt from the stored JSON files, never edited by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from mosaicbert.bench.measure import BASELINE

LABELS = {"mosaicbert": "MosaicBERT", "mosaicbert-flex": "MosaicBERT (flex)", "bert": "BertForMaskedLM (SDPA)",
          "modernbert": "ModernBertForMaskedLM"}
BEGIN = "<!-- BEGIN GENERATED: throughput (python benchmarks/throughput.py --render-docs) -->"
END = "<!-- END GENERATED: throughput -->"


def label(key: str) -> str:
    name, _, suffix = key.partition("+")
    return LABELS.get(name, name) + (f" + {suffix}" if suffix else "")


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def case_title(result: dict, case: dict) -> str:
    setup = result["setup"]
    batch, seq_len = case.get("batch_size", setup["batch_size"]), case.get("seq_len", setup["seq_len"])
    return (f"{setup['preset']} ({setup['dims']['num_hidden_layers']} layers, hidden {setup['dims']['hidden_size']}), "
            f"batch {batch} x {seq_len}, lengths `{case['lengths']}`: "
            f"{case['padding_fraction']:.1%} padding")


def case_table(case: dict) -> str:
    lines = ["| model | non-padding tokens/s | vs BERT | step s (median) | step s (p25-p75) | peak memory MiB "
             "| GFLOP per round | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for key, m in case["models"].items():
        step = m["step_seconds"]
        flops = f"{m['flops_per_round'] / 1e9:,.0f}" if m.get("flops_per_round") else "-"
        mfu = f"{m['mfu']:.1%}" if m.get("mfu") is not None else "-"
        vs = f"{m['vs_baseline']:.2f}x" if "vs_baseline" in m else "-"
        lines.append(f"| {label(key)} | {m['tokens_per_second']:,.0f} | {vs} | {step['median']:.3f} "
                     f"| {step['p25']:.3f}-{step['p75']:.3f} | {_mib(m['peak_memory_bytes'])} | {flops} | {mfu} |")
    return "\n".join(lines)


def relative_lines(case: dict) -> list[str]:
    if BASELINE not in case["models"]:
        return []
    lines = []
    for key, m in case["models"].items():
        if key == BASELINE:
            continue
        paired = m["vs_baseline_per_round"]
        lines.append(f"{label(key)}: {m['vs_baseline']:.2f}x the non-padding tokens/s of {label(BASELINE)} "
                     f"(round by round: {min(paired):.2f}x-{max(paired):.2f}x over {len(paired)} rounds)")
    return lines


def sequence_length_table(result: dict) -> str:
    """`--seq-lens` runs: per sequence length and model, tokens/s and peak training memory per token."""
    cases = [case for case in result["cases"] if "seq_len" in case]
    models = list(dict.fromkeys(key for case in cases for key in case["models"]))
    lines = ["| tokens per sequence | batch | " + " | ".join(f"{label(m)} tokens/s, KiB/token" for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    for case in cases:
        cells = []
        for key in models:
            m = case["models"].get(key)
            tokens_per_batch = case["real_tokens_per_round"] / case["batches_per_round"]
            cells.append("not run" if m is None else
                         f"{m['tokens_per_second']:,.0f}, {m['peak_memory_bytes'] / tokens_per_batch / 1024:,.1f}")
        lines.append(f"| {case['seq_len']} | {case['batch_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def packing_table(stats: dict) -> str:
    lines = ["| batch layout | rows per batch | padding | real tokens per row (CV) | masked per row (CV) | masked / real |",
             "|---|---|---|---|---|---|"]
    for name, st in stats.items():
        lines.append(f"| {name} | {st['rows_per_batch']:.1f} | {st['padding_fraction']:.1%} "
                     f"| {st['real_tokens_per_row']:.1f} ({st['real_tokens_per_row_cv']:.2f}) "
                     f"| {st['masked_tokens_per_row']:.1f} ({st['masked_tokens_per_row_cv']:.2f}) "
                     f"| {st['masked_fraction_of_real']:.2%} |")
    return "\n".join(lines)


def environment_line(result: dict) -> str:
    env = result["environment"]
    return (f"{env['date']}, {env['device']}, torch {env['torch']}, transformers {env['transformers']}, "
            f"{env['precision']}, glibc malloc tuning {'on' if env.get('malloc_tuning') else 'off'}; "
            f"matmul peak measured in the run: {result['peak_flops'] / 1e9:,.1f} GFLOP/s")


def render_result(result: dict, heading: str = "###") -> str:
    parts = [environment_line(result), ""]
    for case in result["cases"]:
        parts += [f"{heading} {case_title(result, case)}", "", case_table(case), ""]
        parts += [f"- {line}" for line in relative_lines(case)]
        parts += [f"- lengths from: {case['lengths_source']}; {case['masked_fraction_of_real']:.1%} of real tokens "
                  f"masked; {case['rounds']} rounds of {case['batches_per_round']} batches", ""]
        if "packing_statistics" in case:
            parts += ["Packing, over 200 batches of the same distribution:", "",
                      packing_table(case["packing_statistics"]), ""]
    return "\n".join(parts)


def write_bar_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    keys = list(dict.fromkeys(key for case in cases for key in case["models"]))  # not every model runs every case
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(cases) * len(keys) / 3, 3.6))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ran = [c for c, case in enumerate(cases) if key in case["models"]]
        xs = [c + (i - (len(keys) - 1) / 2) * width for c in ran]
        medians = [cases[c]["models"][key]["tokens_per_second"] for c in ran]
        ranges = [cases[c]["models"][key]["tokens_per_second_range"] for c in ran]
        errors = [[m - r[0] for m, r in zip(medians, ranges)], [r[1] - m for m, r in zip(medians, ranges)]]
        ax.bar(xs, medians, width, yerr=errors, capsize=3, label=label(key))
    ax.set_xticks(range(len(cases)), [f"{c['lengths']}\n{c['padding_fraction']:.0%} padding" for c in cases])
    ax.set_ylabel("non-padding tokens / s (training step)")
    setup = result["setup"]
    shape = (f"{setup['tokens_per_batch']:,} tokens per batch" if setup.get("tokens_per_batch")
             else f"batch {setup['batch_size']} x {setup['seq_len']}")
    ax.set_title(f"{setup['preset']}, {shape}, {result['environment']['device']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(named_results: list[tuple[str, dict]]) -> str:
    """One row per stored run, case and model: what it measured and how each model compared with BERT."""
    lines = ["| run | what it measures | preset, batch | lengths (padding) | model | tokens/s | vs BERT | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for name, result in named_results:
        setup = result["setup"]
        for case in result["cases"]:
            for key, m in case["models"].items():
                mfu = f"{m['mfu']:.1%}" if m.get("mfu") is not None else "-"
                vs = f"{m['vs_baseline']:.2f}x" if "vs_baseline" in m else "-"
                lines.append(f"| `{name}` | {result.get('label') or '-'} | {setup['preset']}, {setup['batch_size']} x "
                             f"{setup['seq_len']} | {case['lengths']} ({case['padding_fraction']:.0%}) | {label(key)} "
                             f"| {m['tokens_per_second']:,.0f} | {vs} | {mfu} |")
    return "\n".join(lines)


def render_docs_section(json_paths: list[Path], docs_dir: Path) -> str:
    """The generated block of docs/benchmarks.md: a summary of every stored run, then each in full with its
    chart (charts live beside the doc, named as the JSON file)."""
    named = sorted(((path.stem, json.loads(path.read_text())) for path in json_paths),
                   key=lambda item: (item[1]["environment"]["date"], item[0]))  # in the order they ran
    parts = [BEGIN, "", summary_table(named), ""]
    for name, result in named:
        parts += [f"### `{name}`", "", f"`{result['command']}`", "", render_result(result, heading="####")]
        if (docs_dir / f"{name}.png").is_file():
            parts += [f"![{name}]({name}.png)", ""]
    parts.append(END)
    return "\n".join(parts)


def update_docs(doc: Path, json_paths: list[Path]) -> bool:
    """Replace the generated block of `doc`; return whether the file changed."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc} has no generated block ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    new = head + render_docs_section(json_paths, doc.parent) + tail
    if new != text:
        doc.write_text(new)
    return new != text
