"""Pretraining runs compared from their files: summary.json, metrics.jsonl and an EarlyBERT ticket.json."""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

from mosaicbert.errors import UserError


def compare_runs(pairs: list[tuple[str, str]]) -> str:
    """Training time and final evaluation of (baseline, candidate) run pairs, each pair on the same data
    and steps (from their summary.json; an EarlyBERT candidate's draw from its ticket.json). Several
    pairs are repeats, best run interleaved on a shared machine; then the mean, standard deviation and
    range over the pairs follow the per-pair table.

    Besides the wall clock, each run is timed at its median step time (per phase for a candidate with
    a ticket: search steps up to the draw, pruned steps after it; from metrics.jsonl): a busy spell of
    a shared machine slows some steps of one run, which moves its wall clock but hardly its median."""
    rows = []
    for baseline, candidate in pairs:
        base, cand = _read_json(baseline, "summary.json"), _read_json(candidate, "summary.json")
        if base["batches"] != cand["batches"]:
            raise UserError(f"{baseline} and {candidate} differ in length: {base['batches']} vs {cand['batches']} batches")
        ticket = _read_json(candidate, "ticket.json") if os.path.isfile(os.path.join(candidate, "ticket.json")) else None
        base_steps, cand_steps = step_seconds(baseline), step_seconds(candidate)
        draw = ticket["step"] if ticket else len(cand_steps)
        phases = [statistics.median(base_steps), statistics.median(cand_steps[:draw])]
        phases.append(statistics.median(cand_steps[draw:]) if draw < len(cand_steps) else phases[1])
        typical = (draw * phases[1] + (len(cand_steps) - draw) * phases[2]) / (len(base_steps) * phases[0])
        rows.append({"base": base, "cand": cand, "saved": 1 - cand["train_seconds"] / base["train_seconds"],
                     "saved_typical": 1 - typical, "phases": phases,
                     "draw": f"step {ticket['step']} ({ticket['reason']})" if ticket else "-"})
    metrics = [key for key in sorted(rows[0]["base"]["last_eval"] or {}) if key != "batch"]
    lines = [f"== {len(rows)} pair(s) of runs, baseline vs candidate, {rows[0]['base']['batches']} batches each",
             "| pair | train s: baseline -> candidate | time saved | median s/step: baseline; candidate before, "
             "after the draw | time saved at median step times | ticket drawn at | "
             + " | ".join(f"{m}: baseline -> candidate" for m in metrics) + " |",
             "|---" * (6 + len(metrics)) + "|"]
    for row in rows:
        base, cand = row["base"], row["cand"]
        values = " | ".join(f"{base['last_eval'][m]:.4f} -> {cand['last_eval'][m]:.4f}" for m in metrics)
        lines.append(f"| {cand['run_name']} vs {base['run_name']} | {base['train_seconds']:.1f} -> "
                     f"{cand['train_seconds']:.1f} | {row['saved']:+.1%} | {row['phases'][0]:.3f}; "
                     f"{row['phases'][1]:.3f}, {row['phases'][2]:.3f} | {row['saved_typical']:+.1%} | {row['draw']} | {values} |")
    if len(rows) > 1:
        lines.append(f"over {len(rows)} pairs: mean, standard deviation (min to max)")
        lines.append(f"   time saved: {_spread([r['saved'] for r in rows], '.1%')}")
        lines.append(f"   time saved at median step times: {_spread([r['saved_typical'] for r in rows], '.1%')}")
        for m in metrics:
            base = [r["base"]["last_eval"][m] for r in rows]
            cand = [r["cand"]["last_eval"][m] for r in rows]
            lines.append(f"   {m}: baseline {_spread(base, '.4f')}; candidate {_spread(cand, '.4f')}; "
                         f"candidate - baseline {_spread([c - b for b, c in zip(base, cand)], '+.4f')}")
    return "\n".join(lines)


def step_seconds(folder: str) -> list[float]:
    """Wall-clock seconds of each training step of a run, from the cumulative `time/train` metric (hours,
    evaluation excluded) that Composer logs every batch into metrics.jsonl."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: is {folder} a finished run?")
    hours = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "time/train" in row:
                hours[row["step"]] = row["time/train"]
    steps = sorted(hours)
    return [3600 * (hours[step] - hours.get(step - 1, 0.0)) for step in steps]


def _spread(values: list[float], fmt: str) -> str:
    return (f"{statistics.fmean(values):{fmt}}, sd {statistics.stdev(values):{fmt.lstrip('+')}} "
            f"({min(values):{fmt}} to {max(values):{fmt}})")


def _read_json(folder: str, name: str) -> dict[str, Any]:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: is {folder} a finished run?")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
