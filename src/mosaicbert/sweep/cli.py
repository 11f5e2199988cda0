"""Accuracy-versus-time sweeps.

    python src/sweep.py yamls/sweeps/demo.yaml [--launcher local|slurm] [--dry-run] [--wait] [key=value ...]
    python src/sweep.py --report runs/sweeps/<name>         # redraw the table and Pareto plot
    python src/sweep.py --evaluate runs/sweeps/<name> <run>  # score a run's checkpoints (what the jobs run)

key=value overrides change the sweep YAML (e.g. folder=runs/sweeps/try2 overrides.data_local=data/c4).
Re-running a sweep resumes it: finished runs and evaluations are skipped, interrupted runs autoresume.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from mosaicbert.errors import UserError, entry_point


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python src/sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", nargs="?", help="a sweep YAML (yamls/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the sweep YAML")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (and the Slurm batch scripts) and stop")
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the submitted jobs, then print the report")
    parser.add_argument("--report", metavar="SWEEP_FOLDER", help="collect the results and redraw the report")
    parser.add_argument("--evaluate", nargs=2, metavar=("SWEEP_FOLDER", "RUN"), help="evaluate one run's checkpoints")
    args = parser.parse_intermixed_args(argv)
    if sum(bool(x) for x in (args.sweep, args.report, args.evaluate)) != 1:
        parser.error("give a sweep YAML, or --report SWEEP_FOLDER, or --evaluate SWEEP_FOLDER RUN")
    return args


def report(folder: str) -> str:
    from mosaicbert.sweep.evaluate import collect
    from mosaicbert.sweep.plan import load_plan
    from mosaicbert.sweep.report import write_report

    plan = load_plan(folder)
    rows = collect(plan)
    if not rows:
        raise UserError(f"no run of {folder} has an evaluated checkpoint yet; run the sweep (or its evaluation jobs) first.")
    table = write_report(folder, rows, price_per_gpu_hour=plan.sweep.price_per_gpu_hour, title=f"sweep {plan.sweep.name}")
    return f"{table}\nwritten: {folder}/results.csv, results.json, pareto.png"


@entry_point("sweep")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    from mosaicbert.sweep import launch
    from mosaicbert.sweep.evaluate import evaluate_run
    from mosaicbert.sweep.plan import load_plan, make_plan, read_sweep, save_plan

    if args.report:
        print(report(args.report), flush=True)
        return 0
    if args.evaluate:
        folder, run_id = args.evaluate
        plan = load_plan(folder)
        runs = {run.run_id: run for run in plan.runs}
        if run_id not in runs:
            raise UserError(f"{folder} has no run named {run_id}; its runs: {', '.join(runs)}.")
        evaluate_run(plan, runs[run_id])
        return 0

    plan = make_plan(read_sweep(args.sweep, args.overrides))
    print(launch.describe_plan(plan), flush=True)
    if args.dry_run:
        if args.launcher == "slurm":
            launch.submit_slurm(plan, dry_run=True)
        else:
            for run in plan.runs:
                print(f"\n{run.run_id}:\n  {shlex.join(launch.pretraining_command(plan, run, 0))}\n  {shlex.join(launch.evaluate_command(plan, run))}")
        return 0
    if args.launcher == "slurm":
        jobs = launch.submit_slurm(plan)  # saves the plan once no earlier submission is still running
        if not args.wait:
            print(f"follow with: squeue --me; the report is written to {plan.folder} when the jobs end "
                  f"(or run python src/sweep.py --report {plan.folder})", flush=True)
            return 0
        launch.wait_for_jobs(jobs)
        unfinished = [run.run_id for run in plan.runs if launch.status(plan, run) != "done"]
        failure = (f"{len(unfinished)} run(s) did not finish: {', '.join(unfinished)}; logs in {plan.folder}/slurm/logs. "
                   "Submit the sweep again to resume them.") if unfinished else None
    else:
        save_plan(plan)
        failure = None if launch.run_local(plan) else "some runs failed (see above); run the sweep again to resume them."
    if failure:
        print(f"error: {failure}", file=sys.stderr, flush=True)
    print(report(plan.folder), flush=True)
    return 1 if failure else 0
