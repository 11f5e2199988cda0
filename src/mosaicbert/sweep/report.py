"""Sweep results: one row per evaluated point, seed means per point, and each model's Pareto frontier.

The MosaicBERT paper's Figure 1 plots GLUE average against pretraining wall clock, one point per
checkpoint, to ask which model reaches a given quality soonest. `write_report` answers that for a
sweep: `results.csv` holds one row per evaluated point (one checkpoint of one seed), `results.json`
adds the means over seeds and each model's frontier, and `pareto.png` draws them.

A point is on its model's frontier when no other point of that model is at least as fast and at
least as good, and strictly one of the two. Read left to right, the frontier is the points that set
a new quality record. It is taken over the seed means, so one lucky seed does not move it.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mosaicbert.errors import UserError, nearest
from mosaicbert.files import replacing

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# What the sweep hands over for each evaluated point, in the CSV's column order.
ROW_KEYS = ("run", "model", "seed", "point", "step", "tokens", "wall_clock_hours", "gpus", "metric", "quality")
COST_KEYS = ("gpu_hours", "cost")
CSV_COLUMNS = ROW_KEYS + COST_KEYS

_TYPES: dict[str, type] = {
    "run": str, "model": str, "seed": int, "point": str, "step": int, "tokens": int, "wall_clock_hours": float,
    "gpus": int, "metric": str, "quality": float, "gpu_hours": float, "cost": float,
}
_NON_NEGATIVE = {"step", "tokens", "wall_clock_hours", "gpus", "gpu_hours", "cost"}


def add_costs(rows: Sequence[Mapping[str, Any]], price_per_gpu_hour: float) -> list[dict[str, Any]]:
    """Copies of `rows` with `gpu_hours` (wall clock x GPUs, so 0 for a CPU run) and `cost` (GPU-hours x price)."""
    price = _check_price(price_per_gpu_hour)
    costed = []
    for row in _checked(rows, ROW_KEYS):
        gpu_hours = row["wall_clock_hours"] * row["gpus"]
        costed.append({**row, "gpu_hours": gpu_hours, "cost": gpu_hours * price})
    return costed


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, point): means over seeds, sample standard deviations, and `on_frontier`.

    The rows must carry costs (`add_costs`). A standard deviation is None for a single seed: the
    spread of one sample is unknown, not zero. Models keep the order they first appear in; within a
    model, points run in order of mean wall clock.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in _checked(rows, CSV_COLUMNS):
        groups.setdefault((row["model"], row["point"]), []).append(row)
    models = list(dict.fromkeys(model for model, _ in groups))
    points = sorted((_summary(group) for group in groups.values()),
                    key=lambda p: (models.index(p["model"]), p["wall_clock_hours_mean"]))
    for model in models:
        mine = [p for p in points if p["model"] == model]
        frontier = set(pareto_frontier([(p["wall_clock_hours_mean"], p["quality_mean"]) for p in mine]))
        for index, point in enumerate(mine):
            point["on_frontier"] = index in frontier
    return points


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (hours, quality) points that no other point dominates, in time order.

    One point dominates another when it is no slower and no worse, and strictly faster or strictly
    better. So for ties: of points at equal time only the best stays; of points at equal quality only
    the earliest; exact duplicates dominate neither each other and all stay, in input order.
    """
    # Fastest first and, at equal time, best first: a point then stays exactly when it beats every
    # quality seen so far, or repeats the last point kept.
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    frontier: list[int] = []
    record = -math.inf
    for i in order:
        hours, quality = points[i]
        duplicate = bool(frontier) and (hours, quality) == tuple(points[frontier[-1]])
        if quality > record or duplicate:
            frontier.append(i)
            record = quality
    return frontier


def write_report(folder: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], *, price_per_gpu_hour: float,
                 title: str | None = None) -> str:
    """Write `results.csv`, `results.json` and `pareto.png` into `folder`; return the points as a markdown table.

    Each file is written under a temporary name and renamed into place, so neither a reader nor a
    crash ever leaves a half-written file under the final name.
    """
    costed = add_costs(rows, price_per_gpu_hour)
    points = aggregate(costed)
    metric = costed[0]["metric"]
    title = title or f"{metric} against pretraining wall clock"
    models = list(dict.fromkeys(p["model"] for p in points))
    os.makedirs(folder, exist_ok=True)

    with replacing(os.path.join(folder, "results.csv")) as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(costed)

    summary = {
        "title": title,
        "metric": metric,
        "price_per_gpu_hour": float(price_per_gpu_hour),
        "rows": costed,
        "points": points,
        "frontier": {model: [p["point"] for p in points if p["model"] == model and p["on_frontier"]]
                     for model in models},
    }
    with replacing(os.path.join(folder, "results.json")) as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    figure = plot_frontiers(points, title)
    with replacing(os.path.join(folder, "pareto.png"), binary=True) as f:
        figure.savefig(f, format="png", dpi=150)
    return markdown_table(points)


def plot_frontiers(points: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Quality against wall clock: each model's seed means with error bars, and its frontier as a step line."""
    # Imported here: only drawing needs matplotlib. A bare Figure renders with Agg and leaves pyplot's
    # global backend and figure list alone.
    from matplotlib.figure import Figure

    # Short (CPU, demo) sweeps read better in minutes than in fractions of an hour.
    latest = max(p["wall_clock_hours_mean"] + (p["wall_clock_hours_std"] or 0.0) for p in points)
    scale, unit = (60.0, "minutes") if latest < 1 else (1.0, "hours")

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    handles = []  # each model's points, then its frontier: matplotlib would list all lines before all error bars
    for colour_index, model in enumerate(dict.fromkeys(p["model"] for p in points)):
        colour = f"C{colour_index}"
        mine = [p for p in points if p["model"] == model]
        times = [p["wall_clock_hours_mean"] * scale for p in mine]
        handles.append(axes.errorbar(times, [p["quality_mean"] for p in mine],
                                     xerr=[(p["wall_clock_hours_std"] or 0.0) * scale for p in mine],
                                     yerr=[p["quality_std"] or 0.0 for p in mine],
                                     fmt="o", color=colour, capsize=3, markersize=5, zorder=3, label=model))
        best = [p for p in mine if p["on_frontier"]]
        # steps-post holds each record until the next one; the last is held to the model's latest
        # point, since up to then it is still the best this model has reached.
        handles += axes.plot([p["wall_clock_hours_mean"] * scale for p in best] + [max(times)],
                             [p["quality_mean"] for p in best] + [best[-1]["quality_mean"]],
                             drawstyle="steps-post", color=colour, linewidth=1.5, alpha=0.8, label=f"{model} frontier")
    axes.set_xlabel(f"pretraining wall clock ({unit})")
    axes.set_ylabel(points[0]["metric"])
    axes.set_title(title)
    axes.grid(alpha=0.3)
    seeds = any(p["n_seeds"] > 1 for p in points)
    axes.legend(handles=handles, title="error bars: std over seeds" if seeds else None, fontsize="small",
                title_fontsize="small")
    return figure


def markdown_table(points: Sequence[Mapping[str, Any]]) -> str:
    """The aggregated points, one line each, with mean ± std where there is more than one seed."""
    metric = points[0]["metric"]
    # One precision per column, from its largest value, so the decimals line up down the column.
    places = {key: _places(max(abs(p[key]) for p in points), digits) for key, digits in (
        ("wall_clock_hours_mean", 3), ("gpu_hours_mean", 3), ("cost_mean", 3), ("quality_mean", 4))}

    def cell(point: Mapping[str, Any], key: str, std: str | None = None) -> str:
        text = f"{point[key]:,.{places[key]}f}"
        return text if std is None or point[std] is None else f"{text} ± {point[std]:,.{places[key]}f}"

    lines = [
        f"| model | point | seeds | step | tokens | wall clock (h) | GPU-hours | cost | {metric} | frontier |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for p in points:
        cells = [
            p["model"], p["point"], str(p["n_seeds"]), f"{round(p['step_mean']):,}", f"{round(p['tokens_mean']):,}",
            cell(p, "wall_clock_hours_mean", "wall_clock_hours_std"), cell(p, "gpu_hours_mean"), cell(p, "cost_mean"),
            cell(p, "quality_mean", "quality_std"), "yes" if p["on_frontier"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _summary(group: list[dict[str, Any]]) -> dict[str, Any]:
    group = sorted(group, key=lambda row: row["seed"])

    def column(key: str) -> list[float]:
        return [row[key] for row in group]

    return {
        "model": group[0]["model"],
        "point": group[0]["point"],
        "metric": group[0]["metric"],
        "runs": [row["run"] for row in group],
        "seeds": [row["seed"] for row in group],
        "n_seeds": len(group),
        "step_mean": statistics.fmean(column("step")),
        "tokens_mean": statistics.fmean(column("tokens")),
        "wall_clock_hours_mean": statistics.fmean(column("wall_clock_hours")),
        "wall_clock_hours_std": _std(column("wall_clock_hours")),
        "gpu_hours_mean": statistics.fmean(column("gpu_hours")),
        "cost_mean": statistics.fmean(column("cost")),
        "quality_mean": statistics.fmean(column("quality")),
        "quality_std": _std(column("quality")),
    }


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _checked(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Copies of `rows` holding `keys` as plain Python values, or a UserError naming the first problem."""
    if not rows:
        raise UserError("no results to report: the sweep handed over no evaluated points")
    checked = []
    for number, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UserError(f"result row {number} is a {type(row).__name__}, not a mapping of {', '.join(ROW_KEYS)}")
        where = f"result row {number} (run {row.get('run')!r}, point {row.get('point')!r})"
        unknown = [key for key in row if key not in CSV_COLUMNS]
        if unknown:
            raise UserError(f"{where} has the unknown key {unknown[0]!r}.{nearest(str(unknown[0]), CSV_COLUMNS)}"
                            f" The keys are: {', '.join(ROW_KEYS)}")
        missing = [key for key in keys if key not in row]
        if missing:
            hint = " (add_costs adds them)" if set(missing) <= set(COST_KEYS) else ""
            raise UserError(f"{where} lacks {', '.join(map(repr, missing))}{hint}")
        checked.append({key: _value(key, row[key], where) for key in keys})

    # One plot has one y axis, and a seed counted twice would shrink its point's error bar.
    metrics = sorted({row["metric"] for row in checked})
    if len(metrics) > 1:
        raise UserError(f"the rows mix the metrics {metrics}; write one report per metric")
    seen: set[tuple[str, str, int]] = set()
    for row in checked:
        key = (row["model"], row["point"], row["seed"])
        if key in seen:
            raise UserError(f"model {key[0]!r}, point {key[1]!r}, seed {key[2]} appears twice (run {row['run']!r})")
        seen.add(key)
    return checked


def _value(key: str, value: Any, where: str) -> Any:
    kind = _TYPES[key]
    if kind is str:
        ok, wanted = isinstance(value, str) and value != "", "a non-empty string"
    elif kind is int:
        ok, wanted = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
    else:
        # NaN or infinity has no place on a frontier and is not valid JSON.
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        wanted = "a finite number"
    if ok and key in _NON_NEGATIVE and value < 0:
        ok, wanted = False, "not negative"
    if not ok:
        raise UserError(f"{where}: {key} = {value!r} must be {wanted}")
    return kind(value)  # numpy scalars become plain Python values that json and csv write as expected


def _check_price(price: Any) -> float:
    if isinstance(price, bool) or not isinstance(price, numbers.Real) or not math.isfinite(price) or price < 0:
        raise UserError(f"price_per_gpu_hour = {price!r} must be a finite number, 0 or more")
    return float(price)


def _places(value: float, digits: int) -> int:
    """Decimal places for numbers up to `value`: two from 1 up (79.41 GLUE, 12.50 GPU-hours), else `digits`
    significant ones (0.4123 accuracy, 0.00833 hours)."""
    if value == 0 or abs(value) >= 1:
        return 2
    return max(2, digits - 1 - math.floor(math.log10(abs(value))))
