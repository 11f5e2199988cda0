"""Plans the GLUE jobs of a protocol, runs them (one per GPU at a time, or one after another on CPU),
and writes the results table.

    python src/glue.py yamls/glue/mosaicbert-base.yaml starting_checkpoint=runs/x/checkpoints/latest-rank0.pt
    python src/glue.py ... --submission DIR     # also the GLUE leaderboard's test-set files, zipped, in DIR
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from mosaicbert.errors import Stopped, UserError, entry_point
from mosaicbert.glue.config import GlueConfig, hyperparameters
from mosaicbert.files import write_json_atomically
from mosaicbert.glue.job import Job, job_task, predictions_path, resolve_precision
from mosaicbert.glue.own_task import OwnTask, definitions, job_definition, resolve
from mosaicbert.glue.report import build_report, write_report
from mosaicbert.glue.tasks import ROUND_1, ROUND_2, TASKS
from mosaicbert.processes import ChildProcesses, visible_gpus


# Job fields outside its specification: where its outputs go, and the hash of the rest.
OUTPUT_FIELDS = ("result_path", "log_path", "save_model_dir", "spec_hash", "test_sets")


def file_identity(path: str | os.PathLike | None) -> list[list[Any]] | None:
    """Name, size and modification time of a file (with the model_config.json that gives a Composer
    checkpoint its architecture) or of every file in a folder: enough to notice a replaced checkpoint
    or regenerated data without reading gigabytes."""
    if path is None:
        return None
    path = Path(path)
    files = sorted(path.iterdir()) if path.is_dir() else [path, path.parent / "model_config.json"]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()] or None


def specification(job: Job) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(job).items() if k not in OUTPUT_FIELDS}


def make_jobs(config: GlueConfig, tasks: list[str], start: str, keep_models: set[str], test_sets: bool = False,
              own: dict[str, OwnTask] | None = None) -> list[Job]:
    """The jobs of `tasks` (GLUE's, or the resolved `own` tasks), each named by a hash of its specification:
    results of other settings stay where they are, and a result is reused only for the same settings and
    input files (an own task's files are in its definition)."""
    folder = Path(config.run_folder)
    jobs = []
    for task in tasks:
        definition = (own or {}).get(task)
        hp = hyperparameters(config, task, definition)
        local = config.data_source == "local" and definition is None
        inputs = {"start": file_identity(start),
                  "data": file_identity(Path(config.data_local) / TASKS[task].folder) if local else None}
        kind = definition.kind if definition else TASKS[task].kind
        for seed in hp.seeds:
            job = Job(
                task=task, seed=seed, start=start, model_name=config.model_name, model_config=config.architecture,
                tokenizer_name=config.tokenizer_name, max_seq_len=(definition and definition.max_seq_len) or config.max_seq_len,
                data_source=config.data_source,
                data_local=config.data_local, lr=hp.lr, weight_decay=hp.weight_decay, batch_size=hp.batch_size,
                epochs=hp.epochs, shuffle_train=config.shuffle_train, earlybert=config.earlybert, inputs=inputs,
                # Resolved here (fp32 on CPU and for STS-B), so a CPU result is never reused by a GPU run.
                precision=resolve_precision(config.precision, kind == "regression"),
                result_path="", log_path="", test_sets=test_sets or bool(definition and definition.test),
                own_task=job_definition(definition) if definition else None,
            )
            digest = hashlib.sha256(json.dumps(specification(job), sort_keys=True).encode()).hexdigest()[:12]
            stem = f"{job.name}-{digest}"
            keep = config.save_finetuned or task in keep_models
            jobs.append(dataclasses.replace(
                job, spec_hash=digest, result_path=str(folder / "results" / f"{stem}.json"),
                log_path=str(folder / "logs" / f"{stem}.log"), save_model_dir=str(folder / "models" / stem) if keep else None,
            ))
    return jobs


def rerun_reason(job: Job) -> str | None:
    """None when the job's result for this specification (and the model it must keep) exist, else why it runs."""
    if os.path.isfile(job.result_path):
        if job.save_model_dir and not os.path.isfile(os.path.join(job.save_model_dir, "config.json")):
            return f"its fine-tuned model {job.save_model_dir} is needed but missing"
        task = job_task(job)
        splits = list(task.eval_splits) + list(task.test_names if job.test_sets else ())
        missing = [s for s in splits if not os.path.isfile(predictions_path(job.result_path, s))]
        if missing:
            return f"its {', '.join(missing)} predictions are missing (results of older versions saved none)"
        return None
    results = Path(job.result_path).parent
    earlier = [p for p in [results / f"{job.name}.json", *results.glob(f"{job.name}-*.json")] if p.is_file()]
    if not earlier:
        return "no result yet"
    latest = max(earlier, key=lambda p: p.stat().st_mtime)
    old = json.loads(latest.read_text()).get("job")
    if old is None:
        return f"{latest} records no job specification (an older version wrote it); it stays as it is"
    new = specification(job)
    changes = [f"{key} {old.get(key)!r} -> {value!r}" if key != "own_task" else "the task's definition"
               for key, value in new.items() if key != "inputs" and old.get(key) != value]
    changes += [f"the {name}'s files changed" for name, value in new["inputs"].items()
                if (old.get("inputs") or {}).get(name) != value]
    return f"settings differ from {latest} ({'; '.join(changes) or 'specification hash'}); that result stays as it is"


def round_2_plan(config: GlueConfig, round_1: list[str]) -> tuple[Job | None, str]:
    """Round 2's MNLI job to start from (None when the start is fixed) and how the start was chosen.
    Decided before any job runs, so a run that cannot follow the paper protocol stops with nothing written."""
    if config.protocol != "paper":
        return None, f"pretraining checkpoint {config.starting_checkpoint} (protocol {config.protocol}: no MNLI warm start)"
    if config.round_2_start:
        return None, (f"round_2_start={config.round_2_start}, set in the config (the paper protocol starts round 2 "
                      "from its own fine-tuned MNLI model)")
    mnli = make_jobs(config, ["mnli"], config.starting_checkpoint, {"mnli"})[0]  # the first seed's model
    if "mnli" not in round_1 and rerun_reason(mnli) is not None:
        tasks = ", ".join(t for t in ROUND_2 if t in config.tasks)
        raise UserError(
            f"round 2 ({tasks}) starts from the fine-tuned MNLI model under protocol=paper, but mnli is not among "
            f"the tasks and this run folder holds no MNLI model for these settings ({mnli.save_model_dir}). "
            "Add mnli to tasks (it runs first), or set protocol=sane (every task from the pretraining checkpoint), "
            "or set round_2_start=<fine-tuned MNLI model folder> (round_2_start=<starting_checkpoint> starts round 2 "
            "from the pretraining checkpoint; the report says so)."
        )
    return mnli, f"fine-tuned MNLI model {mnli.save_model_dir}"


def check_earlybert_start(config: GlueConfig) -> None:
    """Refuse, before any job runs, an EarlyBERT search on a start that is already a ticket: the
    starting checkpoint, or a `round_2_start` (round 2 searches from it, since no MNLI job of this run
    names its ticket)."""
    if config.earlybert is None:
        return
    from mosaicbert.algorithms.earlybert import refuse_search_on_pruned
    from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
    from mosaicbert.model.loading import read_source

    starts = {"starting_checkpoint": config.starting_checkpoint}
    if config.protocol == "paper" and config.round_2_start and any(t in config.tasks for t in ROUND_2):
        starts["round_2_start"] = config.round_2_start
    for key, path in starts.items():
        refuse_search_on_pruned(MosaicBertConfig.from_dict(read_source(path, config.architecture).config), f"{key} {path}")


def reuse_mnli_ticket(config: GlueConfig, mnli: Job | None, round_2: list[Job], note: str) -> tuple[list[Job], str]:
    """With earlybert, round 2 starting from the fine-tuned MNLI model (`mnli`, the job that wrote it, in
    this run or an earlier one) trains MNLI's ticket (that model, already pruned) instead of searching it
    again, which would prune a ticket a second time."""
    if config.earlybert is None or not round_2 or mnli is None:
        return round_2, note  # round 2 starts from unpruned weights: it searches as round 1 does
    ticket = os.path.join(mnli.earlybert_folder, "ticket.json")
    jobs = [dataclasses.replace(job, earlybert_ticket=ticket) for job in round_2]
    return jobs, f"{note}, whose EarlyBERT ticket is trained further without a new search"


def gpu_slots(config: GlueConfig) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each job slot: one of this process's GPUs each, or [None] (CPU)."""
    gpus = visible_gpus()
    if not gpus:
        return [None]
    return gpus if config.parallel else gpus[:1]


def execute(jobs: list[Job], slots: list[str | None], done_before: int, total: int,
            children: ChildProcesses) -> dict[str, dict[str, Any]]:
    """Run jobs as separate processes, at most one per slot; returns a status per job name. On SIGTERM or
    Ctrl-C (forwarded to the running jobs by `children`) it waits for them and raises Stopped."""
    statuses: dict[str, dict[str, Any]] = {}
    pending = deque(jobs)
    running: dict[str | None, tuple[Job, subprocess.Popen, Any, float]] = {}
    finished = done_before
    while pending or running:
        if children.received is not None:
            children.wait_for_all()
            interrupted = 0
            for job, process, log, _ in running.values():
                log.close()
                children.finished(process)
                if process.returncode == 0 and os.path.isfile(job.result_path):
                    print(f"[glue] {job.name} finished while stopping; its result is kept", flush=True)
                    continue
                interrupted += 1
                print(f"[glue] {job.name} interrupted (exit {process.returncode}): not finished, it runs again "
                      "next time", flush=True)
            raise Stopped(children.received, f"{interrupted} running GLUE job(s) interrupted, "
                                             f"{len(pending)} not started")
        for slot in slots:
            if slot not in running and pending:
                job = pending.popleft()
                try:
                    running[slot] = (job, *_launch(job, slot, children), time.perf_counter())
                except Stopped:  # the signal came as it started: stop with the others
                    pending.appendleft(job)
                    break
                where = f"GPU {slot}" if slot is not None else "CPU"
                print(f"[glue] started {job.name} on {where} (log: {job.log_path})", flush=True)
        for slot, (job, process, log, began) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
            children.finished(process)
            del running[slot]
            finished += 1
            seconds = time.perf_counter() - began
            if process.returncode == 0 and os.path.isfile(job.result_path):
                result = json.loads(Path(job.result_path).read_text())
                statuses[job.name] = {"status": "ok"}
                print(f"[glue] {finished}/{total} {job.name} done in {seconds:.0f}s: {_short(result['metrics'])}", flush=True)
            else:
                statuses[job.name] = {"status": "failed", "returncode": process.returncode, "log": job.log_path,
                                      "error": _last_line(job.log_path)}
                print(f"[glue] {finished}/{total} {job.name} FAILED (exit {process.returncode}); see {job.log_path}", flush=True)
        time.sleep(0.2)
    return statuses


def _launch(job: Job, slot: str | None, children: ChildProcesses) -> tuple[subprocess.Popen, Any]:
    spec = Path(job.log_path).parent.parent / "jobs" / f"{Path(job.result_path).stem}.json"
    write_json_atomically(str(spec), dataclasses.asdict(job))
    os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
    log = open(job.log_path, "w", encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    try:
        process = children.start([sys.executable, "-m", "mosaicbert.glue.finetune", str(spec)], stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
    except BaseException:
        log.close()
        raise
    return process, log


def _short(metrics: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{split} {name} {value:.4f}" for split, values in metrics.items() for name, value in values.items())


def _last_line(path: str) -> str:
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_glue(config: GlueConfig, submission: Path | None = None) -> dict[str, Any]:
    """Every job of the config's tasks (results reused where the settings match); with `submission`, the jobs
    also predict the test sets, and the leaderboard's files are written there from each task's best seed."""
    check_earlybert_start(config)
    if submission is not None:
        check_submission_inputs(config)
    defined = definitions(config)
    own = {name: resolve(task) for name, task in defined.items() if name in config.tasks}
    for name in defined.keys() - own.keys():
        print(f"[glue] own task {name} is defined but not among tasks ({', '.join(config.tasks)}): not run", flush=True)
    folder = Path(config.run_folder)
    round_1 = [t for t in ROUND_1 if t in config.tasks] + list(own)  # own tasks start from the pretrained model
    round_2 = [t for t in ROUND_2 if t in config.tasks]
    mnli, round_2_note = round_2_plan(config, round_1) if round_2 else (None, None)
    folder.mkdir(parents=True, exist_ok=True)
    slots = gpu_slots(config)
    test_sets = submission is not None
    planned = make_jobs(config, round_1, config.starting_checkpoint, {"mnli"} if mnli else set(), test_sets, own)
    total = len(planned) + sum(len(hyperparameters(config, t).seeds) for t in round_2)
    statuses: dict[str, dict[str, Any]] = {}

    def run_round(jobs: list[Job]) -> None:
        todo = []
        for job in jobs:
            reason = rerun_reason(job)
            if reason is None:
                statuses[job.name] = {"status": "ok", "skipped": True}
                print(f"[glue] reusing {job.name}: {job.result_path} has the same settings", flush=True)
            else:
                todo.append(job)
                print(f"[glue] {job.name} runs: {reason}", flush=True)
        statuses.update(execute(todo, slots, len(statuses), total, children))

    with ChildProcesses() as children:  # stopping the runner stops its job processes
        run_round(planned)
        second = []
        if round_2:
            start = mnli.save_model_dir if mnli else (config.round_2_start or config.starting_checkpoint)
            second = make_jobs(config, round_2, start, set(), test_sets)
            second, round_2_note = reuse_mnli_ticket(config, mnli, second, round_2_note)
            print(f"[glue] round 2 ({', '.join(round_2)}) starts from the {round_2_note}", flush=True)
            if mnli and rerun_reason(mnli) is not None:
                error = f"no MNLI model to start from: {mnli.name} did not produce {mnli.save_model_dir} (see {mnli.log_path})"
                print(f"[glue] round 2 not run: {error}", flush=True)
                round_2_note += ", which was not produced: round 2 did not run"
                statuses.update({job.name: {"status": "not run", "error": error} for job in second})
            else:
                run_round(second)
    report = build_report(config, planned + second, statuses, round_2_note)
    write_report(report, folder)  # first: the results stand whatever happens to the submission
    if submission is not None:
        from mosaicbert.glue.submission import write_submission

        report["submission"] = write_submission(report, config, submission)
        write_report(report, folder)
    return report


def check_submission_inputs(config: GlueConfig) -> None:
    """Before any job: --submission needs GLUE tasks and, for local data, every test file they predict."""
    from mosaicbert.glue.data import load_test

    glue = [task for task in config.tasks if task in TASKS]
    if not glue:
        raise UserError("--submission writes GLUE leaderboard files, but no GLUE task is among tasks "
                        f"({', '.join(config.tasks)}); own tasks save their test predictions without it.")
    if config.data_source == "local":
        for task in glue:
            for test_set in TASKS[task].test_sets:
                load_test(test_set, "local", config.data_local)


def check_starts(config: GlueConfig) -> None:
    """The starting points exist and, for Hugging Face folders, hold `model_name`'s model type: one message
    now rather than the same failure in every job. (Composer checkpoints are opened by the jobs only.)"""
    from mosaicbert.model.loading import check_model_name, folder_model_name

    start = Path(config.starting_checkpoint)
    if not start.exists():
        raise UserError(f"starting_checkpoint {start} does not exist; pretrain first (make demo writes "
                        "runs/demo-*/checkpoints/latest-rank0.pt) or point it at a Hugging Face model folder.")
    if config.round_2_start and not Path(config.round_2_start).exists():
        raise UserError(f"round_2_start {config.round_2_start} does not exist; point it at a fine-tuned MNLI model folder.")
    for path in (start, config.round_2_start):
        if path and Path(path).is_dir():
            check_model_name(str(path), folder_model_name(Path(path)), config.model_name)
    check_position_table(config)


def check_position_table(config: GlueConfig) -> None:
    """hf_bert reads positions from a learned table, which bounds max_seq_len; MosaicBERT's ALiBi has no bound."""
    from mosaicbert.model.loading import source_position_table

    if config.model_name != "hf_bert":
        return
    table = source_position_table(config.starting_checkpoint, config.architecture)
    lengths = {"max_seq_len": config.max_seq_len}
    lengths.update({f"own_tasks.{name}.max_seq_len": task.max_seq_len
                    for name, task in definitions(config).items() if task.max_seq_len and name in config.tasks})
    for key, length in lengths.items():
        if length > table:
            raise UserError(f"{key}={length} does not fit the position table of {table} entries of "
                            f"{config.starting_checkpoint} (hf_bert); lower it to {table} or less (MosaicBERT's "
                            "ALiBi has no such limit).")


def submission_folder(argv: list[str]) -> tuple[list[str], Path | None]:
    """`--submission DIR` taken out of the arguments (the rest are the YAML and its overrides)."""
    if "--submission" not in argv:
        return argv, None
    at = argv.index("--submission")
    if at + 1 >= len(argv) or argv[at + 1].startswith("-") or "=" in argv[at + 1]:
        raise UserError("--submission needs a folder: python src/glue.py <yaml> [key=value ...] --submission DIR")
    return argv[:at] + argv[at + 2:], Path(argv[at + 1])


@entry_point("glue")
def main(argv: list[str] | None = None) -> int:
    from mosaicbert.glue.config import load_glue_config

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    argv, submission = submission_folder(argv)
    config = load_glue_config(argv[0], argv[1:])
    check_starts(config)
    report = run_glue(config, submission)
    return 0 if all(row["status"] == "ok" for row in report["jobs"]) else 1
