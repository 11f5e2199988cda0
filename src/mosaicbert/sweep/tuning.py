"""Each model's peak learning rate, chosen by a small sweep before the main one.

A model's rates start at its recipe's rate times 1/2, 1 and 2, all trained at one budget and seed
and scored like the main sweep's points. The best rate must lie inside the range tried: while it is
the lowest or the highest, the range grows by another factor of 2 that way (up to `max_extensions`
more rates; a model still at the edge then is reported as such, not hidden). The models' runs
alternate, as in the main sweep, so a busy spell of the machine does not fall on one model's rates.
A run that fails (a diverging rate stops on non-finite values) counts as the worst rate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from mosaicbert.config import read_yaml
from mosaicbert.errors import ConfigError
from mosaicbert.sweep.plan import SweepConfig, flatten

FACTORS = (1.0, 0.5, 2.0)  # the recipe's rate first: the run most likely to be usable if tuning is stopped
LR_KEY = "optimizer.lr"
MAX_EXTENSIONS = 4

# Trains and scores the single run of a sweep; its held-out quality, or None when it failed.
RunScorer = Callable[[SweepConfig], "float | None"]


@dataclass
class Tuning:
    model: str
    budget: str
    seed: int
    results: dict[float, float | None]  # peak learning rate -> held-out quality (None: the run failed)
    chosen: float
    interior: bool  # False: the best rate is still the lowest or highest tried


def recipe_rate(sweep: SweepConfig, model: str) -> float:
    """The model's peak learning rate as the main sweep would run it (recipe, sweep and model overrides)."""
    entry = sweep.models[model]
    values = {**flatten(sweep.overrides), **flatten(entry.overrides)}
    config = read_yaml(entry.recipe, [f"{key}={value}" for key, value in values.items() if key == LR_KEY])
    return float(config["optimizer"]["lr"])


def _score(quality: float | None) -> float:
    return -math.inf if quality is None else quality


def best_rate(results: dict[float, float | None]) -> float:
    """The rate with the highest quality; of equals, the lowest rate."""
    return max(sorted(results), key=lambda rate: _score(results[rate]))


def next_rate(results: dict[float, float | None]) -> float | None:
    """The rate to try next, a factor of 2 past the edge the best rate sits on; None when it is inside the range."""
    rates = sorted(results)
    best = best_rate(results)
    if best == rates[0]:
        return best / 2
    if best == rates[-1]:
        return best * 2
    return None


def tuning_sweep(sweep: SweepConfig, model: str, rate: float, budget: str, seed: int, folder: str) -> SweepConfig:
    """The main sweep cut to one run: `model` at `rate`, one budget and seed, in the model's tuning folder."""
    grid = {"model": [model], "seed": [seed], "max_duration": [budget], LR_KEY: [rate]}
    return sweep.model_copy(update={"name": f"{sweep.name}-lr-{model}", "grid": grid,
                                    "folder": os.path.join(folder, "tuning", model)})


def tune_models(sweep: SweepConfig, models: list[str], budget: str, seed: int, folder: str, run_one: RunScorer,
                max_extensions: int = MAX_EXTENSIONS) -> list[Tuning]:
    """Every model's rates in rounds: the first three rates, then one more per model still at an edge."""
    results: dict[str, dict[float, float | None]] = {model: {} for model in models}
    pending = {model: [recipe_rate(sweep, model) * factor for factor in FACTORS] for model in models}
    extensions = dict.fromkeys(models, 0)
    while pending:
        for index in range(max(map(len, pending.values()))):
            for model, rates in pending.items():  # the models alternate
                if index < len(rates):
                    results[model][rates[index]] = run_one(tuning_sweep(sweep, model, rates[index], budget, seed, folder))
        pending = {}
        for model in models:
            following = next_rate(results[model])
            if following is not None and extensions[model] < max_extensions:
                print(f"[tuning] {model}: the best rate {best_rate(results[model]):g} is at the edge of those "
                      f"tried; adding {following:g}", flush=True)
                extensions[model] += 1
                pending[model] = [following]
    return [Tuning(model=model, budget=budget, seed=seed, results=dict(sorted(results[model].items())),
                   chosen=best_rate(results[model]), interior=next_rate(results[model]) is None) for model in models]


def with_rates(sweep: SweepConfig, rates: dict[str, float]) -> SweepConfig:
    """The sweep with each model's peak learning rate set (as a model override)."""
    if LR_KEY in sweep.grid:
        raise ConfigError(f"grid.{LR_KEY} would override the tuned rates: remove it, or run without tuning.")
    models = {label: entry.model_copy(update={"overrides": {**flatten(entry.overrides), LR_KEY: rates[label]}})
              if label in rates else entry for label, entry in sweep.models.items()}
    return sweep.model_copy(update={"models": models})


def tuning_table(tunings: list[Tuning]) -> str:
    """Markdown: each model's rates and their qualities, the chosen one in bold."""
    lines = ["| model | budget, seed | peak learning rate: held-out MLM accuracy | chosen |", "|---|---|---|---|"]
    for t in tunings:
        text = {rate: "failed" if quality is None else f"{quality:.4f}" for rate, quality in t.results.items()}
        cells = ", ".join(f"**{rate:g}: {text[rate]}**" if rate == t.chosen else f"{rate:g}: {text[rate]}"
                          for rate in t.results)
        note = "" if t.interior else " (at the edge of the range tried)"
        lines.append(f"| {t.model} | {t.budget}, {t.seed} | {cells} | {t.chosen:g}{note} |")
    return "\n".join(lines)
