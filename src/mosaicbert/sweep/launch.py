"""Launchers: run a plan's pretraining and evaluation jobs on this machine, or submit them to Slurm.

Both launch the same two commands per run: `src/main.py <recipe> <overrides>` (under Composer's launcher
for several processes; autoresume on, so an interrupted run continues from its latest checkpoint) and
`python src/sweep.py --evaluate <sweep folder> <run>`. Finished runs and evaluated checkpoints are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

from mosaicbert.errors import Stopped, UserError
from mosaicbert.sweep.evaluate import checkpoints, is_trained, pending_evaluations
from mosaicbert.processes import ChildProcesses, visible_gpus
from mosaicbert.sweep.plan import Plan, Run, save_plan

BIN = Path(sys.executable).parent  # the environment's `composer` launcher sits next to its python


def status(plan: Plan, run: Run) -> str:
    if is_trained(run):
        pending = len(pending_evaluations(plan, run))
        return f"trained, {pending} checkpoint(s) to evaluate" if pending else "done"
    saved = len(checkpoints(run))
    return f"to resume from {saved} checkpoint(s)" if saved else "to train"


def describe_plan(plan: Plan) -> str:
    lines = [f"sweep {plan.sweep.name}: {len(plan.runs)} run(s) in {plan.folder}"]
    for run in plan.runs:
        cell = ", ".join(f"{k}={v}" for k, v in run.cell.items())
        lines.append(f"  {run.run_id}  [{cell}]  {status(plan, run)}")
    return "\n".join(lines)


def evaluate_command(plan: Plan, run: Run) -> list[str]:
    return [sys.executable, "src/sweep.py", "--evaluate", plan.folder, run.run_id]


# --------------------------------------------------------------------------- local


def local_slots(plan: Plan) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each concurrent run: every `gpus_per_node` of the GPUs this process may use
    form a slot; CPU sweeps run one at a time (parallel runs would only share the same cores)."""
    if plan.sweep.nodes != 1:
        raise UserError(f"the local launcher runs on this machine only: set nodes: 1 (got {plan.sweep.nodes}) or use --launcher slurm.")
    per_run = plan.sweep.gpus_per_node
    if per_run == 0:
        return [None]
    gpus = visible_gpus()
    if len(gpus) < per_run:
        raise UserError(f"gpus_per_node is {per_run} but this process sees {len(gpus)} GPU(s); set gpus_per_node: {len(gpus)} "
                        "(0 for CPU) or use --launcher slurm.")
    return [",".join(gpus[start:start + per_run]) for start in range(0, len(gpus) - per_run + 1, per_run)]


def run_local(plan: Plan) -> bool:
    """Train and evaluate every unfinished run, a slot's runs one after another; True if all succeeded."""
    slots: Queue = Queue()
    all_slots = local_slots(plan)
    for index, slot in enumerate(all_slots):
        slots.put((index, slot))
    todo = [run for run in plan.runs if status(plan, run) != "done"]
    print(f"{len(plan.runs) - len(todo)} of {len(plan.runs)} run(s) already done; {len(todo)} to go "
          f"on {len(all_slots)} slot(s)", flush=True)
    started = time.perf_counter()

    def work(numbered: tuple[int, Run]) -> bool:
        number, run = numbered
        index, slot = slots.get()
        try:
            if children.received is not None:
                return False  # stopping: nothing new starts
            return _train_and_evaluate(plan, run, slot, index, f"[{number}/{len(todo)}]", started, children)
        finally:
            slots.put((index, slot))

    # SIGTERM or Ctrl-C goes on to the running jobs (pretraining checkpoints and stops; the next sweep resumes it).
    with ChildProcesses() as children, ThreadPoolExecutor(max_workers=len(all_slots)) as pool:
        ok = all(list(pool.map(work, enumerate(todo, 1))))
    if children.received is not None:
        raise Stopped(children.received, "the running jobs were stopped (pretraining checkpoints first); "
                                         "unfinished runs resume next time")
    return ok


def pretraining_command(plan: Plan, run: Run, slot_index: int) -> list[str]:
    """`src/main.py` alone for one process (Composer's launcher would only add a second interpreter start,
    about 8 s of imports on a small CPU, to every run); Composer's launcher for several, on the slot's own
    rendezvous port so that concurrent slots do not collide."""
    nproc = max(plan.sweep.gpus_per_node, 1)
    if nproc == 1:
        return [sys.executable, "src/main.py", run.recipe, *run.overrides]
    port = str(plan.sweep.slurm.master_port + slot_index)
    return [str(BIN / "composer"), "-n", str(nproc), "--master_port", port, "src/main.py", run.recipe, *run.overrides]


def _train_and_evaluate(plan: Plan, run: Run, slot: str | None, index: int, tag: str, started: float,
                        children: ChildProcesses) -> bool:
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # as Composer's launcher sets it: a killed run's log keeps its last lines
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    steps = []
    if not is_trained(run):
        steps.append(("pretraining", pretraining_command(plan, run, index)))
    steps.append(("evaluation", evaluate_command(plan, run)))
    os.makedirs(run.folder, exist_ok=True)
    log_path = os.path.join(run.folder, "sweep.log")
    for what, command in steps:
        print(f"{tag} {run.run_id}: {what} (log {log_path}; {_elapsed(started)} into the sweep)", flush=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n$ {shlex.join(command)}\n")
            log.flush()
            try:
                code = children.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            except Stopped:
                return False
        if code != 0 and children.received is not None:
            print(f"{tag} {run.run_id}: {what} stopped on a signal (exit {code}); it resumes next time", flush=True)
            return False
        if code != 0:
            print(f"{tag} {run.run_id}: {what} failed (exit {code}); last lines of {log_path}:\n{_tail(log_path)}", flush=True)
            return False
    print(f"{tag} {run.run_id}: done ({_elapsed(started)} into the sweep)", flush=True)
    return True


def _elapsed(started: float) -> str:
    seconds = int(time.perf_counter() - started)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _tail(path: str, lines: int = 15) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:]).rstrip()


# --------------------------------------------------------------------------- slurm


REPORT_CPUS = 2  # the report reads JSON files and draws one plot


def _resources(plan: Plan, job: str) -> tuple[int, int | None, bool]:
    """GPUs per node, CPUs per task, and whether `job` uses its nodes whole: what it runs on, so that a job
    on part of a node leaves the rest to others."""
    sweep, cpus = plan.sweep, plan.sweep.slurm.cpus_per_task
    if job == "report":
        return 0, min(REPORT_CPUS, cpus or REPORT_CPUS), False
    if job == "evaluate" and sweep.evaluation.kind == "mlm":
        # The scorer uses one device (sweep/evaluate.py): one GPU and that GPU's share of the CPUs.
        share = max(cpus // sweep.gpus_per_node, 1) if cpus and sweep.gpus_per_node else cpus
        return min(sweep.gpus_per_node, 1), share, False
    return sweep.gpus_per_node, cpus, True  # pretraining; GLUE runs a job on every GPU of the node


def _takes_whole_node(option: str) -> bool:
    """--exclusive in any form, and --mem=0 (Slurm's "all of each node's memory", with a unit too: 0G)."""
    name, _, value = option.strip().replace(" ", "=", 1).partition("=")
    return name == "--exclusive" or (name == "--mem" and value.strip().upper().rstrip("KMGT") == "0")


def _sbatch_header(plan: Plan, job: str, time_limit: str, log: str, nodes: int) -> list[str]:
    slurm = plan.sweep.slurm
    gpus, cpus, whole_node = _resources(plan, job)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={plan.sweep.name}-{job}", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --time={time_limit}", f"#SBATCH --output={log}"]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if cpus:
        lines.append(f"#SBATCH --cpus-per-task={cpus}")
    if slurm.account:
        lines.append(f"#SBATCH --account={slurm.account}")
    if slurm.partition:
        lines.append(f"#SBATCH --partition={slurm.partition}")
    lines += [f"#SBATCH {extra}" for extra in slurm.extra_sbatch if whole_node or not _takes_whole_node(extra)]
    return lines


TEMPLATES = Path(__file__).parent / "templates"


def render(name: str, **values: str) -> str:
    """A file of templates/ with every `{{key}}` replaced by its value (bash's own braces are left alone)."""
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    unknown = set(re.findall(r"\{\{(\w+)\}\}", text)) - set(values)
    if unknown:
        raise KeyError(f"templates/{name} needs {', '.join(sorted(unknown))}")
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match[1]], text)


def slurm_scripts(plan: Plan, to_train: list[Run], repo: str) -> dict[str, str]:
    """The batch scripts, by file name: a pretraining job array over `to_train`, the per-node launch
    script it runs on every node, and the evaluation and report jobs (templates/)."""
    sweep, slurm = plan.sweep, plan.sweep.slurm
    folder = os.path.abspath(plan.folder)
    scripts_dir, logs = os.path.join(folder, "slurm"), os.path.join(folder, "slurm", "logs")
    places = {"repo": shlex.quote(repo), "folder": shlex.quote(folder), "python": shlex.quote(sys.executable)}
    cases = "\n".join(f"  {run.run_id}) ARGS=({shlex.join([run.recipe, *run.overrides])}) ;;" for run in plan.runs)

    def header(job: str, time_limit: str, log: str, nodes: int) -> str:
        return "\n".join(_sbatch_header(plan, job, time_limit, f"{logs}/{log}", nodes))

    return {
        "launch-node.sh": render("launch-node.sh", repo=places["repo"], nproc=str(max(sweep.gpus_per_node, 1)),
                                 cases=cases, composer=shlex.quote(str(BIN / "composer"))),
        "pretrain.sbatch": render(
            "pretrain.sbatch", **places, header=header("pretrain", slurm.time, "pretrain-%A_%a.out", sweep.nodes),
            last_task=str(max(len(to_train) - 1, 0)), signal_seconds=str(slurm.signal_seconds), nodes=str(sweep.nodes),
            runs=" ".join(run.run_id for run in to_train), master_port=str(slurm.master_port),
            scripts_dir=shlex.quote(scripts_dir)),
        "evaluate.sbatch": render("evaluate.sbatch", **places,
                                  header=header("evaluate", slurm.evaluation_time, "evaluate-%j.out", 1)),
        "report.sbatch": render("report.sbatch", **places, header=header("report", "00:30:00", "report-%j.out", 1)),
    }


def sbatch(args: list[str], env: dict[str, str] | None = None) -> str:
    """Submit and return the job id; a refusal is shown verbatim with the command that failed."""
    command = ["sbatch", "--parsable", *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise UserError("sbatch is not on PATH: run the sweep on a Slurm login node, or use --launcher local.") from None
    if done.returncode != 0:
        raise UserError(f"Slurm refused the submission (exit {done.returncode}):\n  $ {shlex.join(command)}\n"
                        f"{(done.stderr or done.stdout).rstrip()}")
    return done.stdout.strip().split(";")[0]


def submit_slurm(plan: Plan, dry_run: bool = False) -> list[str]:
    """Write the batch scripts and submit: the pretraining array, one evaluation per run after its
    array task (`afterok`; cancelled rather than left pending if that task fails), and a report after
    all evaluations. Returns the job ids (none for a dry run, which prints the scripts instead).

    Refused while an earlier submission of the sweep is still queued or running: it would train the
    same runs twice into the same folders."""
    repo = os.getcwd()
    to_train = [run for run in plan.runs if not is_trained(run)]
    to_evaluate = [run for run in plan.runs if is_trained(run) and pending_evaluations(plan, run)]
    scripts = slurm_scripts(plan, to_train, repo)
    scripts_dir = Path(plan.folder, "slurm")
    if dry_run:
        for name, text in scripts.items():
            print(f"\n----- {scripts_dir / name}\n{text}")
        print(f"would submit: pretrain.sbatch as an array of {len(to_train)}, {len(to_train) + len(to_evaluate)} "
              "evaluation job(s), 1 report job")
        return []
    record = scripts_dir / "submitted.json"
    history = json.loads(record.read_text()) if record.is_file() else []
    live = sorted(queued({job for submission in history for job in submission.values()}))
    if live:
        raise UserError(f"jobs of this sweep are still queued or running ({', '.join(live)}); wait for them "
                        f"(squeue --me) or cancel them (scancel {' '.join(live)}) before submitting it again.")
    save_plan(plan)
    (scripts_dir / "logs").mkdir(parents=True, exist_ok=True)
    for name, text in scripts.items():
        (scripts_dir / name).write_text(text, encoding="utf-8")
    jobs: dict[str, str] = {}
    history.append(jobs)
    try:
        _submit_all(plan, scripts_dir, to_train, to_evaluate, jobs)
    except UserError as err:
        if jobs:
            raise UserError(f"{err}\nalready submitted, and still queued: {', '.join(jobs.values())} "
                            f"(recorded in {record}; scancel them, or let them run and submit again later)") from None
        raise
    finally:
        if jobs:
            record.write_text(json.dumps(history, indent=2), encoding="utf-8")
    return list(jobs.values())


def _submit_all(plan: Plan, scripts_dir: Path, to_train: list[Run], to_evaluate: list[Run], jobs: dict[str, str]) -> None:
    evaluations = []
    if to_train:
        array = jobs["pretrain"] = sbatch([str(scripts_dir / "pretrain.sbatch")])
        print(f"submitted pretraining array {array} ({len(to_train)} run(s))", flush=True)
        for index, run in enumerate(to_train):
            job = jobs[f"evaluate {run.run_id}"] = sbatch([f"--dependency=afterok:{array}_{index}", "--kill-on-invalid-dep=yes",
                                                            str(scripts_dir / "evaluate.sbatch"), run.run_id])
            evaluations.append(job)
    for run in to_evaluate:
        job = jobs[f"evaluate {run.run_id}"] = sbatch([str(scripts_dir / "evaluate.sbatch"), run.run_id])
        evaluations.append(job)
    report_args = [f"--dependency=afterany:{':'.join(evaluations)}"] if evaluations else []
    jobs["report"] = sbatch([*report_args, str(scripts_dir / "report.sbatch")])
    print(f"submitted {len(evaluations)} evaluation job(s) and report job {jobs['report']}; logs in {scripts_dir / 'logs'}", flush=True)


def queued(job_ids: set[str]) -> set[str]:
    """Those of `job_ids` Slurm still lists as pending or running (an array counts while any task does)."""
    if not job_ids:
        return set()
    # %F is an array task's array id (a plain job's own id), %A the task's own id: either may be ours.
    listed = subprocess.run(["squeue", "--me", "-h", "-o", "%F %A"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise UserError(f"squeue failed:\n  $ squeue --me -h -o '%F %A'\n{listed.stderr.rstrip()}")
    return job_ids & set(listed.stdout.split())


def wait_for_jobs(job_ids: list[str], poll_seconds: float = 2.0) -> None:
    """Block until none of the jobs (array tasks included) is pending or running."""
    while queued(set(job_ids)):
        time.sleep(poll_seconds)
