"""Each model's peak learning rate, chosen by a small sweep before the main one.

A model's rates start at its recipe's rate times 1/2, 1 and 2, all trained at one budget and seed
and scored like the main sweep's points. The best rate must lie inside the range tried: while it is
the lowest or the highest, the range grows by another factor of 2 that way (up to `max_extensions`
more rates). A model whose best rate is still at the edge then is reported as such, not hidden.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mosaicbert.config import read_yaml
from mosaicbert.errors import ConfigError
from mosaicbert.sweep.plan import Plan, SweepConfig, flatten

FACTORS = (0.5, 1.0, 2.0)
LR_KEY = "optimizer.lr"

# Runs a sweep to the end and returns its plan and collected rows (sweep.evaluate.collect's format).
SweepRunner = Callable[[SweepConfig], tuple[Plan, list[dict[str, Any]]]]


@dataclass
class Tuning:
    model: str
    budget: str
    seed: int
    results: dict[float, float]  # peak learning rate -> held-out quality
    chosen: float
    interior: bool  # False: the best rate is still the lowest or highest tried


def recipe_rate(sweep: SweepConfig, model: str) -> float:
    """The model's peak learning rate as the main sweep would run it (recipe, sweep and model overrides)."""
    entry = sweep.models[model]
    values = {**flatten(sweep.overrides), **flatten(entry.overrides)}
    config = read_yaml(entry.recipe, [f"{key}={value}" for key, value in values.items() if key == LR_KEY])
    return float(config["optimizer"]["lr"])


def best_rate(results: dict[float, float]) -> float:
    """The rate with the highest quality; of equals, the lowest rate."""
    return max(sorted(results), key=lambda rate: results[rate])


def next_rate(results: dict[float, float]) -> float | None:
    """The rate to try next, a factor of 2 past the edge the best rate sits on; None when it is inside the range."""
    rates = sorted(results)
    best = best_rate(results)
    if best == rates[0]:
        return best / 2
    if best == rates[-1]:
        return best * 2
    return None


def tuning_sweep(sweep: SweepConfig, model: str, rates: list[float], budget: str, seed: int, folder: str) -> SweepConfig:
    """The main sweep cut to one model, budget and seed, over `rates`, in its own folder."""
    grid = {"model": [model], "seed": [seed], "max_duration": [budget], LR_KEY: sorted(rates)}
    return dataclasses.replace(sweep, name=f"{sweep.name}-lr-{model}", grid=grid,
                               folder=os.path.join(folder, "tuning", model))


def tune_model(sweep: SweepConfig, model: str, budget: str, seed: int, folder: str, run_sweep: SweepRunner,
               max_extensions: int = 2) -> Tuning:
    start = recipe_rate(sweep, model)
    rates = [start * factor for factor in FACTORS]
    for extension in range(max_extensions + 1):
        plan, rows = run_sweep(tuning_sweep(sweep, model, rates, budget, seed, folder))
        rate_of = {run.run_id: float(run.cell[LR_KEY]) for run in plan.runs}
        results = {rate_of[row["run"]]: float(row["quality"]) for row in rows}
        following = next_rate(results)
        if following is None or extension == max_extensions:
            break
        print(f"[tuning] {model}: the best rate {best_rate(results):g} is at the edge of those tried; "
              f"adding {following:g}", flush=True)
        rates.append(following)
    return Tuning(model=model, budget=budget, seed=seed, results=dict(sorted(results.items())),
                  chosen=best_rate(results), interior=following is None)


def with_rates(sweep: SweepConfig, rates: dict[str, float]) -> SweepConfig:
    """The sweep with each model's peak learning rate set (as a model override)."""
    if LR_KEY in sweep.grid:
        raise ConfigError(f"grid.{LR_KEY} would override the tuned rates: remove it, or run without tuning.")
    models = {label: dataclasses.replace(entry, overrides={**flatten(entry.overrides), LR_KEY: rates[label]})
              if label in rates else entry for label, entry in sweep.models.items()}
    return dataclasses.replace(sweep, models=models)


def tuning_table(tunings: list[Tuning]) -> str:
    """Markdown: each model's rates and their qualities, the chosen one in bold."""
    lines = ["| model | budget, seed | peak learning rate: held-out MLM accuracy | chosen |", "|---|---|---|---|"]
    for t in tunings:
        cells = ", ".join(f"**{rate:g}: {quality:.4f}**" if rate == t.chosen else f"{rate:g}: {quality:.4f}"
                          for rate, quality in t.results.items())
        note = "" if t.interior else " (at the edge of the range tried)"
        lines.append(f"| {t.model} | {t.budget}, {t.seed} | {cells} | {t.chosen:g}{note} |")
    return "\n".join(lines)
