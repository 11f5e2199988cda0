"""The time-to-quality study: tune each model's learning rate, run the budget sweep, report.

    python src/time_to_quality.py yamls/sweeps/time-to-quality.yaml [key=value ...] [--no-tuning]
    python src/time_to_quality.py --report runs/sweeps/time-to-quality

1. Tuning (unless --no-tuning): every model's peak learning rate by a small sweep at the grid's middle
   budget and first seed (sweep/tuning.py), each in `<folder>/tuning/<model>/`.
2. The sweep itself at the chosen rates, on this machine: every model at every budget and seed, the
   models' runs alternating, each run scored once at its end.
3. The report: `time-to-quality.md`, `.json`, `.png` in the sweep folder (sweep/time_to_quality.py).

Every step keeps what it finished: a second invocation continues where the first stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from mosaicbert.config import wall_clock_seconds
from mosaicbert.errors import ConfigError, Stopped, UserError
from mosaicbert.files import write_json_atomically
from mosaicbert.sweep.plan import Plan, SweepConfig, flatten, load_plan, make_plan, read_sweep, save_plan
from mosaicbert.sweep.tuning import LR_KEY, Tuning, tune_model, tuning_table, with_rates

TUNING_FILE = "tuning.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python src/time_to_quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", nargs="?", help="a budget sweep YAML (yamls/sweeps/time-to-quality.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the sweep YAML")
    parser.add_argument("--report", metavar="SWEEP_FOLDER", help="redraw the report of a study's folder")
    parser.add_argument("--no-tuning", action="store_true", help="run at the recipes' learning rates")
    parser.add_argument("--baseline", help="the model the others' times are divided by (default: hf-bert)")
    parser.add_argument("--targets", nargs="+", type=float, metavar="ACCURACY",
                        help="target accuracies (default: three that every model reaches within its budgets)")
    args = parser.parse_intermixed_args(argv)
    if bool(args.sweep) == bool(args.report):
        parser.error("give a sweep YAML or --report SWEEP_FOLDER")
    return args


def budgets(sweep: SweepConfig) -> list[str]:
    """The grid's time budgets, shortest first; at least two, or times cannot be interpolated."""
    values = [str(value) for value in sweep.grid.get("max_duration", [])]
    seconds = {value: wall_clock_seconds(value) for value in values}
    if len(values) < 2 or any(s is None for s in seconds.values()):
        raise ConfigError(f"grid.max_duration must list at least two wall-clock budgets (e.g. [2m, 4m, 8m]), got {values}.")
    if sweep.evaluation.checkpoints != "last" or sweep.evaluation.kind != "mlm":
        raise ConfigError("evaluation must be {kind: mlm, checkpoints: last}: each run is one point, scored at its end.")
    return sorted(values, key=seconds.get)


def run_sweep(sweep: SweepConfig) -> tuple[Plan, list[dict]]:
    """Train and score every unfinished run of `sweep` on this machine; its plan and rows."""
    from mosaicbert.sweep import launch
    from mosaicbert.sweep.cli import report
    from mosaicbert.sweep.evaluate import collect

    plan = make_plan(sweep)
    print(launch.describe_plan(plan), flush=True)
    save_plan(plan)
    if not launch.run_local(plan):
        raise UserError(f"some runs of {plan.folder} failed (see above); run the study again to resume them.")
    print(report(plan.folder), flush=True)
    return plan, collect(plan)


def tune(sweep: SweepConfig, folder: str) -> list[Tuning]:
    middle = budgets(sweep)[len(budgets(sweep)) // 2]
    seed = int(sweep.grid.get("seed", [17])[0])
    tunings = []
    for model in sweep.grid.get("model", list(sweep.models)):
        tunings.append(tune_model(sweep, model, middle, seed, folder, run_sweep))
        print(f"[tuning] {model}: peak learning rate {tunings[-1].chosen:g}", flush=True)
    write_json_atomically(os.path.join(folder, TUNING_FILE), [dataclasses.asdict(t) for t in tunings])
    return tunings


def read_tunings(folder: str) -> list[Tuning] | None:
    path = os.path.join(folder, TUNING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [Tuning(**{**entry, "results": {float(k): v for k, v in entry["results"].items()}}) for entry in json.load(f)]


def tuned_rate(plan: Plan, model: str) -> float | None:
    """The learning rate the study set for `model`'s runs (None when they run at their recipe's)."""
    entry = plan.sweep.models.get(model)
    value = flatten(entry.overrides).get(LR_KEY) if entry else None
    return None if value is None else float(value)


def write_report(plan: Plan, rows: list[dict], baseline: str | None, targets: list[float] | None) -> str:
    from mosaicbert.sweep.time_to_quality import analyse, read_points, write_time_to_quality

    if not rows:
        raise UserError(f"no run of {plan.folder} has been scored yet; run the study first.")
    models = list(plan.sweep.models)
    baseline = baseline or ("hf-bert" if "hf-bert" in models else models[0])
    points = read_points(plan, rows)
    tunings = read_tunings(plan.folder)
    tuned = tunings is not None and all(tuned_rate(plan, t.model) == t.chosen for t in tunings)
    text = write_time_to_quality(plan.folder, points, analyse(points, baseline, targets),
                                 tuning_table(tunings) if tuned else None, f"time to quality: sweep {plan.sweep.name}")
    return f"{text}\nwritten: {plan.folder}/time-to-quality.md, .json, .png"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.report:
            from mosaicbert.sweep.evaluate import collect

            plan = load_plan(args.report)
            print(write_report(plan, collect(plan), args.baseline, args.targets), flush=True)
            return 0
        sweep = read_sweep(args.sweep, args.overrides)
        budgets(sweep)
        sweep.folder = sweep.folder or f"runs/sweeps/{sweep.name}"
        if not args.no_tuning:
            sweep = with_rates(sweep, {t.model: t.chosen for t in tune(sweep, sweep.folder)})
        plan, rows = run_sweep(sweep)
        print(write_report(plan, rows, args.baseline, args.targets), flush=True)
        return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except Stopped as stop:
        print(f"[time-to-quality] {stop}", file=sys.stderr, flush=True)
        return 128 + stop.signum
