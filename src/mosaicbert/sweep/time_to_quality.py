"""Time to quality: how long each model needs to reach fixed held-out accuracies, with uncertainty over seeds.

Every point is a separate run that completed its whole schedule (warm-up and decay as fractions of
its time budget) within that budget, so a point never understates what its training time can reach.
For each model the seeds' qualities are averaged per budget; the time to a target accuracy is
interpolated between the two budgets around the first crossing, linearly in log time. A target that
the shortest budget already reaches is reported as "at most" that time, one that the longest does not
reach as "more than" it. The ratio of two models' times is then exact or bounded: a model that reaches
a target within 1.5 minutes that its reference has not reached after 6 needs at most 1.5/6 = 0.25 of
its time.

Uncertainty comes from a bootstrap over seeds: each model's seeds are resampled with replacement
(a seed keeps its runs at every budget together), the times and their ratio's bounds recomputed, and
the 2.5th percentile of the lower bounds and the 97.5th of the upper bounds reported, with the share of
resamples in which a time fell outside the budgets.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mosaicbert.reports.runs import step_seconds
from mosaicbert.config import read_yaml, wall_clock_seconds
from mosaicbert.errors import UserError
from mosaicbert.files import replacing
from mosaicbert.sweep.plan import Plan, Run

RESAMPLES = 2000


@dataclass
class Point:
    """One finished run: a model at a budget and seed, scored once at its end."""

    run: str
    model: str
    seed: int
    budget: str
    budget_seconds: float
    train_seconds: float
    quality: float
    steps: int
    tokens: int
    median_step_seconds: float
    searched: bool = False  # an EarlyBERT run that searches for its ticket
    reused_ticket: str | None = None  # an EarlyBERT run built from another run's ticket (no search)
    draw_step: int | None = None  # the step its ticket was drawn at (None: not drawn within the run)
    draw_time_share: float | None = None  # the share of its training time up to the draw
    median_step_seconds_before_draw: float | None = None
    median_step_seconds_after_draw: float | None = None


def read_points(plan: Plan, rows: Sequence[dict[str, Any]]) -> list[Point]:
    """One point per evaluated run of a budget sweep (`evaluation.checkpoints: last`, grid over max_duration)."""
    runs = {run.run_id: run for run in plan.runs}
    points = []
    for row in rows:
        run = runs[row["run"]]
        budget = str(run.cell.get("max_duration", ""))
        seconds = wall_clock_seconds(budget)
        if seconds is None:
            raise UserError(f"run {run.run_id} has no wall-clock budget in the grid (max_duration={budget!r}): "
                            "time to quality compares runs of grid.max_duration time budgets, e.g. [2m, 4m, 8m].")
        steps = step_seconds(run.folder)
        point = Point(run=run.run_id, model=run.model, seed=int(row["seed"]), budget=budget, budget_seconds=seconds,
                      train_seconds=float(row["wall_clock_hours"]) * 3600, quality=float(row["quality"]),
                      steps=int(row["step"]), tokens=int(row["tokens"]), median_step_seconds=statistics.median(steps))
        point.searched, point.reused_ticket = earlybert_role(read_yaml(run.recipe, run.overrides).get("algorithms"))
        ticket = os.path.join(run.folder, "ticket.json")
        if os.path.isfile(ticket):
            with open(ticket, encoding="utf-8") as f:
                draw = point.draw_step = int(json.load(f)["step"])
            # From the per-step times rather than the ticket's clock, which restarts with a resumed run.
            point.draw_time_share = sum(steps[:draw]) / sum(steps)
            point.median_step_seconds_before_draw = statistics.median(steps[:draw]) if steps[:draw] else None
            point.median_step_seconds_after_draw = statistics.median(steps[draw:]) if steps[draw:] else None
        points.append(point)
    return points


def earlybert_role(algorithms: dict[str, Any] | None) -> tuple[bool, str | None]:
    """(searches for a ticket, the ticket it reuses) of a run's `algorithms` section; `earlybert: null`, as any
    null entry, means EarlyBERT with its defaults."""
    if "earlybert" not in (algorithms or {}):
        return False, None
    ticket = (algorithms["earlybert"] or {}).get("ticket")
    return ticket is None, ticket


def time_to_target(minutes: Sequence[float], qualities: Sequence[float], target: float) -> tuple[float, str]:
    """(minutes, how) to reach `target` on a curve of budgets in increasing order.

    how: "interpolated" between the budgets around the first crossing (linear in log time), "at most"
    when the shortest budget already reaches it, "more than" when the longest does not."""
    for i, quality in enumerate(qualities):
        if quality >= target:
            if i == 0:
                return minutes[0], "at most"
            low, high = qualities[i - 1], quality
            share = (target - low) / (high - low)
            return math.exp(math.log(minutes[i - 1]) + share * (math.log(minutes[i]) - math.log(minutes[i - 1]))), "interpolated"
    return minutes[-1], "more than"


def curve(points: Sequence[Point]) -> tuple[list[float], list[float]]:
    """One model's mean training minutes and mean quality per budget, in budget order."""
    budgets = sorted({p.budget_seconds for p in points})
    at = [[p for p in points if p.budget_seconds == b] for b in budgets]
    return ([statistics.fmean(p.train_seconds for p in group) / 60 for group in at],
            [statistics.fmean(p.quality for p in group) for group in at])


def _spread(curves: Sequence[Sequence[float]]) -> list[float]:
    """A quarter, half and three quarters into the accuracy range every curve crosses (none if there is none)."""
    low, high = max(qualities[0] for qualities in curves), min(qualities[-1] for qualities in curves)
    return [low + share * (high - low) for share in (0.25, 0.5, 0.75)] if low < high else []


NO_TARGET = ("No default target: the models' mean accuracies share no range within the budgets (all still on "
             "their initial plateau, or the baseline's best at its shortest budget), so no time to target says anything.")


def default_targets(by_model: dict[str, list[Point]], baseline: str) -> list[float]:
    """Three accuracies in the range every model's mean curve crosses within its budgets, so every time is
    interpolated. Without such a range (a baseline that stays below the others), three in the range the
    other models share, and the baseline's best mean where it improves on its shortest budget: targets where
    one side's time is measured and the other's bounded, which still bounds their ratio. Otherwise none: the
    report then says so and asks for --targets."""
    curves = {model: curve(points)[1] for model, points in by_model.items()}
    targets = _spread(list(curves.values()))
    if targets:
        return targets
    others = [qualities for model, qualities in curves.items() if model != baseline]
    targets = _spread(others) if others else []
    own = curves[baseline]
    if max(own) > own[0]:  # a best at the shortest budget is reached "at most" then by every model above it
        targets.append(max(own))
    return sorted(targets)  # none when the curves share no range (e.g. all still on the initial plateau)


def time_bounds(minutes: float, how: str) -> tuple[float, float]:
    """The interval a time to target lies in: the time itself when interpolated, (0, t] when the shortest
    budget already reached the target, (t, inf) when the longest did not."""
    return {"interpolated": (minutes, minutes), "at most": (0.0, minutes), "more than": (minutes, math.inf)}[how]


def ratio_bounds(model: tuple[float, str], reference: tuple[float, str]) -> tuple[float, float]:
    """The interval time(model) / time(reference) lies in, from the two times' intervals (inf: unbounded)."""
    (low, high), (reference_low, reference_high) = time_bounds(*model), time_bounds(*reference)
    return low / reference_high, (math.inf if reference_low == 0 else high / reference_low)


def bootstrap_ratios(model: list[Point], reference: list[Point], target: float, seed: int = 0) -> dict[str, Any]:
    """A 95% percentile interval of time(model) / time(reference) to `target`, resampling each model's seeds
    whole: the 2.5th percentile of the resamples' lower bounds to the 97.5th of their upper bounds (equal
    when both times are interpolated), so a resample whose time falls outside the budgets widens the
    interval instead of being dropped. Also the share of such resamples."""
    rng = np.random.default_rng(seed)
    lows, highs = [], []
    for _ in range(RESAMPLES):
        times = []
        for points in (model, reference):
            seeds = sorted({p.seed for p in points})
            drawn = rng.choice(seeds, size=len(seeds), replace=True)
            times.append(time_to_target(*curve([p for s in drawn for p in points if p.seed == s]), target))
        low, high = ratio_bounds(*times)
        lows.append(low)
        highs.append(high)
    high = float(np.percentile(highs, 97.5, method="higher"))
    return {"low": float(np.percentile(lows, 2.5, method="lower")), "high": None if math.isinf(high) else high,
            "censored_share": sum(low != high for low, high in zip(lows, highs)) / RESAMPLES}


def analyse(points: list[Point], references: list[str], targets: list[float] | None = None) -> dict[str, Any]:
    """Per-model curves, the time each model needs to every target, and its ratio to each reference model's
    (the first reference also picks the default targets)."""
    by_model: dict[str, list[Point]] = {}
    for point in points:
        by_model.setdefault(point.model, []).append(point)
    missing = [reference for reference in references if reference not in by_model]
    if missing:
        raise UserError(f"{', '.join(missing)} has no finished runs; models with results: {', '.join(by_model)}.")
    targets = targets if targets is not None else default_targets(by_model, references[0])
    rows = []
    for target in targets:
        times = {model: time_to_target(*curve(mine), target) for model, mine in by_model.items()}
        for model, (minutes, how) in times.items():
            ratios = {}
            for reference in references:
                # Later references are for the other models (EarlyBERT / MosaicBERT), not each other's inverse.
                if reference != model and (reference == references[0] or model not in references):
                    low, high = ratio_bounds(times[model], times[reference])
                    ratios[reference] = {"low": low, "high": None if math.isinf(high) else high,
                                         "interval": bootstrap_ratios(by_model[model], by_model[reference], target)}
            rows.append({"target": target, "model": model, "minutes": minutes, "how": how, "ratios": ratios})
    return {"references": references, "targets": targets, "times": rows,
            "curves": {model: dict(zip(("minutes", "quality"), curve(mine))) for model, mine in by_model.items()}}


def budget_table(points: list[Point]) -> str:
    """Markdown: each model at each budget, over seeds."""
    lines = ["| model | budget | seeds | held-out MLM accuracy | steps | tokens | median s/step |",
             "|---|---|--:|--:|--:|--:|--:|"]
    groups: dict[tuple[str, float], list[Point]] = {}
    for p in points:
        groups.setdefault((p.model, p.budget_seconds), []).append(p)
    for (model, _), group in sorted(groups.items(), key=lambda item: (list(dict.fromkeys(p.model for p in points)).index(item[0][0]), item[0][1])):
        qualities = [p.quality for p in group]
        spread = f" ± {statistics.stdev(qualities):.4f}" if len(group) > 1 else ""
        lines.append(f"| {model} | {group[0].budget} | {len(group)} | {statistics.fmean(qualities):.4f}{spread} | "
                     f"{statistics.fmean(p.steps for p in group):,.0f} | {statistics.fmean(p.tokens for p in group):,.0f} | "
                     f"{statistics.median(p.median_step_seconds for p in group):.3f} |")
    return "\n".join(lines)


def targets_table(analysis: dict[str, Any]) -> str:
    """Markdown: minutes to each target per model, and the ratio to each reference's with its interval."""
    references = analysis["references"]
    if not analysis["targets"]:
        return (NO_TARGET + " Give target accuracies with `python src/time_to_quality.py --report SWEEP_FOLDER "
                "--targets ACCURACY ...`.")
    lines = ["| target accuracy | model | minutes to reach it | "
             + " | ".join(f"time ÷ {reference}'s (95% interval)" for reference in references) + " |",
             "|--:|---|--:|" + "---|" * len(references)]
    for row in analysis["times"]:
        minutes = {"interpolated": f"{row['minutes']:.2f}", "at most": f"≤ {row['minutes']:.2f}",
                   "more than": f"> {row['minutes']:.2f}"}[row["how"]]
        ratios = [_ratio_text(row["ratios"][reference]) if reference in row["ratios"] else "-" for reference in references]
        lines.append(f"| {row['target']:.4f} | {row['model']} | {minutes} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _range_text(low: float, high: float | None) -> str:
    if high is None:
        return "unbounded" if low == 0 else f"≥ {low:.2f}"
    if low == high:
        return f"{low:.2f}"
    return f"≤ {high:.2f}" if low == 0 else f"{low:.2f} to {high:.2f}"


def _ratio_text(ratio: dict[str, Any]) -> str:
    if ratio["low"] == 0 and ratio["high"] is None:
        return "n/a (both times outside the budgets, on the same side)"
    interval = ratio["interval"]
    return f"{_range_text(ratio['low'], ratio['high'])} ({_range_text(interval['low'], interval['high'])})"


def runs_table(points: list[Point]) -> str:
    """Markdown: every run, with its step count, tokens and step times (EarlyBERT's before and after its draw)."""
    lines = ["| run | model | budget | seed | training s | steps | tokens | median s/step | ticket drawn at "
             "(share of steps, of training time) | median s/step before, after the draw | accuracy |",
             "|---|---|---|--:|--:|--:|--:|--:|---|---|--:|"]
    for p in points:
        draw = (f"step {p.draw_step} ({p.draw_step / p.steps:.0%}, {p.draw_time_share:.0%})" if p.draw_step is not None
                else f"not drawn in {p.steps:,} steps" if p.searched else "reused ticket" if p.reused_ticket else "-")
        phases = "-" if p.draw_step is None else ", ".join(
            "-" if s is None else f"{s:.3f}" for s in (p.median_step_seconds_before_draw, p.median_step_seconds_after_draw))
        lines.append(f"| {p.run} | {p.model} | {p.budget} | {p.seed} | {p.train_seconds:.1f} | {p.steps:,} | "
                     f"{p.tokens:,} | {p.median_step_seconds:.3f} | {draw} | {phases} | {p.quality:.4f} |")
    return "\n".join(lines)


def pruning_flops(run: Run, ticket: str) -> dict[str, float]:
    """`ticket_flops` of a ticket (the run's own or the one it reused), on its model and one training batch."""
    from mosaicbert.builders import build_model
    from mosaicbert.config import load_config
    from mosaicbert.data.text_dataset import build_mlm_dataloader
    from mosaicbert.data.tokenizer import build_tokenizer

    config = load_config(run.recipe, [o for o in run.overrides if not o.startswith("algorithms")], world_size=1)
    tokenizer = build_tokenizer(config.tokenizer_name, config.max_seq_len)
    model = build_model(config, tokenizer).model
    batch = next(iter(build_mlm_dataloader(config.train_loader, tokenizer, config.max_seq_len,
                                           config.global_train_batch_size, seed=config.seed).dataloader))
    with open(ticket, encoding="utf-8") as f:
        return ticket_flops(model, json.load(f), batch)


def ticket_flops(model, ticket: dict[str, Any], batch: dict[str, Any]) -> dict[str, float]:
    """What EarlyBERT's ticket should save per step by FLOPs, counted as the speed monitor counts them: the
    pruned model's training FLOPs over the unpruned `model`'s (which this prunes), and the unpruned step's
    share in the MLM head and decoder, which pruning leaves whole."""
    from mosaicbert.model.composer import masked_tokens, mlm_head_training_flops, mlm_training_flops
    from mosaicbert.model.pruning import prune

    full = mlm_training_flops(model, batch["attention_mask"], batch["labels"])
    head = mlm_head_training_flops(model.config, masked_tokens(batch["attention_mask"], batch["labels"]))
    prune(model, ticket["kept_heads"], ticket["kept_units"])
    return {"flop_ratio": mlm_training_flops(model, batch["attention_mask"], batch["labels"]) / full,
            "head_share": head / full}


def diagnosis_table(points: list[Point], plan: Plan, base: str) -> str:
    """Markdown: each EarlyBERT run's draw, its step times against the unpruned model's at the same budget and
    seed (search steps carry coefficients and the L1 term; pruned steps should be faster), and what FLOPs
    predict. A run built from a reused ticket has pruned steps only; its pilot's search is shown beside it."""
    runs = {run.run_id: run for run in plan.runs}
    unpruned = {(p.budget, p.seed): p for p in points if p.model == base}
    lines = [f"| run | budget | seed | ticket drawn at (share of steps) | search s/step ÷ {base}'s | pruned s/step ÷ "
             f"{base}'s | FLOPs pruned ÷ unpruned | MLM head's share of the unpruned FLOPs |",
             "|---|---|--:|---|--:|--:|--:|--:|"]
    for p in points:
        if (p.draw_step is None and p.reused_ticket is None) or (p.budget, p.seed) not in unpruned:
            continue
        reference = unpruned[(p.budget, p.seed)].median_step_seconds
        if p.reused_ticket:
            draw, phases = pilot_cost(p.reused_ticket), (None, p.median_step_seconds)
            flops = pruning_flops(runs[p.run], p.reused_ticket)
        else:
            draw, phases = f"step {p.draw_step} ({p.draw_step / p.steps:.0%})", (p.median_step_seconds_before_draw,
                                                                                  p.median_step_seconds_after_draw)
            flops = pruning_flops(runs[p.run], os.path.join(runs[p.run].folder, "ticket.json"))
        ratios = ["-" if s is None else f"{s / reference:.2f}" for s in phases]
        lines.append(f"| {p.run} | {p.budget} | {p.seed} | {draw} | {ratios[0]} | {ratios[1]} | "
                     f"{flops['flop_ratio']:.2f} | {flops['head_share']:.0%} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def pilot_cost(ticket: str) -> str:
    """What a reused ticket cost where it was drawn (the pilot's search, outside the reusing runs' budgets)."""
    with open(ticket, encoding="utf-8") as f:
        drawn = json.load(f)
    seconds = drawn.get("search_seconds")
    return f"reused (the pilot drew it at step {drawn['step']}" + (f", after {seconds:.0f} s)" if seconds else ")")


def plot(points: list[Point], analysis: dict[str, Any], title: str):
    """Mean accuracy against training minutes per model (log-2 time axis), seeds as dots, targets dashed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for index, (model, line) in enumerate(analysis["curves"].items()):
        colour = f"C{index}"
        mine = [p for p in points if p.model == model]
        axes.plot(line["minutes"], line["quality"], "o-", color=colour, label=model, zorder=3)
        axes.scatter([p.train_seconds / 60 for p in mine], [p.quality for p in mine], color=colour, alpha=0.35, s=14)
    for target in analysis["targets"]:
        axes.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xscale("log", base=2)
    budgets = sorted({p.budget_seconds: p.budget for p in points}.items())
    axes.set_xticks([seconds / 60 for seconds, _ in budgets], [name for _, name in budgets])
    axes.minorticks_off()
    axes.set_xlabel("training wall clock in minutes (ticks: the budgets); each point a run that decayed fully within it")
    axes.set_ylabel("held-out MLM accuracy")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(title="line: mean over seeds; dots: seeds", fontsize="small", title_fontsize="small")
    return figure


def write_time_to_quality(folder: str, points: list[Point], analysis: dict[str, Any], tuning: str | None,
                          diagnosis: str, title: str) -> str:
    """time-to-quality.md, .json and .png in `folder`; returns the markdown."""
    sections = [f"# {title}", "", "## Accuracy at each budget", "", budget_table(points), ""]
    if len(set(Counter((p.model, p.budget) for p in points).values())) > 1:
        sections += ["Not every model and budget has the same number of seeds yet (the `seeds` column): the "
                     "means, times and intervals below mix different seeds until the study is complete.", ""]
    sections += ["## Time to target accuracies", "", targets_table(analysis), ""]
    if tuning:
        sections += ["## Learning-rate tuning", "", tuning, ""]
    if diagnosis:
        sections += ["## EarlyBERT's step costs", "", diagnosis, ""]
    sections += ["## Runs", "", runs_table(points), ""]
    text = "\n".join(sections)
    with replacing(os.path.join(folder, "time-to-quality.md")) as f:
        f.write(text)
    with replacing(os.path.join(folder, "time-to-quality.json")) as f:
        json.dump({"points": [p.__dict__ for p in points], **analysis}, f, indent=2)
        f.write("\n")
    with replacing(os.path.join(folder, "time-to-quality.png"), binary=True) as f:
        plot(points, analysis, title).savefig(f, format="png", dpi=150)
    return text
