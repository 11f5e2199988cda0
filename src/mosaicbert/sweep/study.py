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
from mosaicbert.errors import ConfigError, UserError, entry_point
from mosaicbert.files import write_json_atomically
from mosaicbert.sweep.plan import Plan, SweepConfig, flatten, load_plan, make_plan, read_sweep, save_plan
from mosaicbert.sweep.tuning import LR_KEY, Tuning, recipe_rate, tune_models, tuning_table, with_rates

TUNING_FILE = "tuning.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python src/time_to_quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", nargs="?", help="a budget sweep YAML (yamls/sweeps/time-to-quality.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the sweep YAML")
    parser.add_argument("--report", metavar="SWEEP_FOLDER", help="redraw the report of a study's folder")
    parser.add_argument("--no-tuning", action="store_true", help="run at the recipes' learning rates")
    parser.add_argument("--baseline", action="append", metavar="MODEL",
                        help="a model the others' times are divided by, repeatable (default: hf-bert, and "
                             "mosaicbert beside it when the study has EarlyBERT runs)")
    parser.add_argument("--targets", nargs="+", type=float, metavar="ACCURACY",
                        help="target accuracies (default: a quarter, half and three quarters into the range "
                             "every model's mean curve crosses; without one, into the range the other models "
                             "share, plus the baseline's best mean; without that, none, and the report says so)")
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


def models_of(sweep: SweepConfig) -> list[str]:
    return list(sweep.grid.get("model", list(sweep.models)))


def check_study(sweep: SweepConfig, tuning: bool, baselines: list[str] | None) -> None:
    """Everything that can be wrong with the study, before its first run: the budgets, the baselines, a grid
    of rates that tuning would fight, and every cell of the main sweep planned (and validated)."""
    budgets(sweep)
    for baseline in baselines or []:
        if baseline not in models_of(sweep):
            raise ConfigError(f"--baseline {baseline} is not among the study's models ({', '.join(models_of(sweep))}).")
    make_plan(with_rates(sweep, {model: recipe_rate(sweep, model) for model in models_of(sweep)}) if tuning else sweep)


def run_sweep(sweep: SweepConfig) -> tuple[Plan, list[dict], list[str]]:
    """Train and score every unfinished run of `sweep` on this machine: its plan, the scored rows, and the
    runs that failed (reported, not fatal: the others' results stand, and a second invocation retries them)."""
    from mosaicbert.sweep import launch
    from mosaicbert.sweep.cli import report
    from mosaicbert.sweep.evaluate import collect

    plan = make_plan(sweep)
    print(launch.describe_plan(plan), flush=True)
    save_plan(plan)
    launch.run_local(plan)
    rows = collect(plan)
    scored = {row["run"] for row in rows}
    if rows:
        print(report(plan.folder), flush=True)
    return plan, rows, [run.run_id for run in plan.runs if run.run_id not in scored]


def score_one(sweep: SweepConfig) -> float | None:
    """The held-out quality of a one-run sweep, None if it failed (a diverging learning rate)."""
    _, rows, _ = run_sweep(sweep)
    return float(rows[0]["quality"]) if rows else None


def tune(sweep: SweepConfig, folder: str) -> list[Tuning]:
    middle = budgets(sweep)[len(budgets(sweep)) // 2]
    seed = int(sweep.grid.get("seed", [17])[0])
    tunings = tune_models(sweep, models_of(sweep), middle, seed, folder, score_one)
    write_json_atomically(os.path.join(folder, TUNING_FILE), [dataclasses.asdict(t) for t in tunings])
    for tuning in tunings:
        if tuning.results[tuning.chosen] is None:
            raise UserError(f"every learning rate tried for {tuning.model} failed ({', '.join(map(str, tuning.results))}); "
                            f"see the logs under {folder}/tuning/{tuning.model}/runs.")
        print(f"[tuning] {tuning.model}: peak learning rate {tuning.chosen:g}", flush=True)
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


def default_baselines(points) -> list[str]:
    """hf-bert (else mosaicbert, else the first model), and mosaicbert beside it when EarlyBERT runs want their
    saving over it."""
    models = list(dict.fromkeys(point.model for point in points))
    baselines = [next((m for m in ("hf-bert", "mosaicbert") if m in models), models[0])]
    if "mosaicbert" in models and "mosaicbert" not in baselines and any(point.searched or point.reused_ticket for point in points):
        baselines.append("mosaicbert")
    return baselines


def write_report(plan: Plan, rows: list[dict], baselines: list[str] | None, targets: list[float] | None) -> str:
    from mosaicbert.sweep.time_to_quality import NO_TARGET, analyse, diagnosis_table, read_points, write_time_to_quality

    if not rows:
        raise UserError(f"no run of {plan.folder} has been scored yet; run the study first.")
    points = read_points(plan, rows)
    models = list(dict.fromkeys(point.model for point in points))
    tunings = read_tunings(plan.folder)
    tuned = tunings is not None and all(tuned_rate(plan, t.model) == t.chosen for t in tunings)
    diagnosis = diagnosis_table(points, plan, "mosaicbert") if "mosaicbert" in models else ""
    baselines = list(dict.fromkeys(baselines)) if baselines else default_baselines(points)
    analysis = analyse(points, baselines, targets)
    if not analysis["targets"]:
        print(f"note: {NO_TARGET} Give them with --report {plan.folder} --targets ACCURACY ...", file=sys.stderr)
    text = write_time_to_quality(plan.folder, points, analysis, tuning_table(tunings) if tuned else None, diagnosis,
                                 f"time to quality: sweep {plan.sweep.name}")
    return f"{text}\nwritten: {plan.folder}/time-to-quality.md, .json, .png"


@entry_point("time-to-quality")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.report:
        from mosaicbert.sweep.evaluate import collect

        plan = load_plan(args.report)
        print(write_report(plan, collect(plan), args.baseline, args.targets), flush=True)
        return 0
    sweep = read_sweep(args.sweep, args.overrides)
    sweep.folder = sweep.folder or f"runs/sweeps/{sweep.name}"
    check_study(sweep, not args.no_tuning, args.baseline)
    if not args.no_tuning:
        sweep = with_rates(sweep, {t.model: t.chosen for t in tune(sweep, sweep.folder)})
    plan, rows, failed = run_sweep(sweep)
    print(write_report(plan, rows, args.baseline, args.targets), flush=True)
    if failed:
        print(f"error: {len(failed)} run(s) failed and are left out of the report: {', '.join(failed)}; their logs "
              f"are {plan.folder}/runs/<run>/sweep.log, and the study retries them when run again.", file=sys.stderr)
        return 1
    return 0
