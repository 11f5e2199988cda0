"""Plans the GLUE jobs of a protocol, runs them (one per GPU at a time, or one after another on CPU),
and writes the results table.

    python src/glue.py yamls/glue/mosaicbert-base.yaml starting_checkpoint=runs/x/checkpoints/latest-rank0.pt
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from mosaicbert.glue.config import GlueConfig, hyperparameters
from mosaicbert.glue.job import Job, write_json_atomically
from mosaicbert.glue.report import build_report, write_report
from mosaicbert.glue.tasks import ROUND_1, ROUND_2


def make_jobs(config: GlueConfig, tasks: list[str], start: str, keep_models: set[str]) -> list[Job]:
    folder = Path(config.run_folder)
    jobs = []
    for task in tasks:
        hp = hyperparameters(config, task)
        for seed in hp.seeds:
            name = f"{task}-seed{seed}"
            keep = config.save_finetuned or task in keep_models
            jobs.append(Job(
                task=task, seed=seed, start=start, model_name=config.model_name, model_config=config.model_config,
                tokenizer_name=config.tokenizer_name, max_seq_len=config.max_seq_len, data_source=config.data_source,
                data_local=config.data_local, lr=hp.lr, weight_decay=hp.weight_decay, batch_size=hp.batch_size,
                epochs=hp.epochs, precision=config.precision, shuffle_train=config.shuffle_train,
                result_path=str(folder / "results" / f"{name}.json"), log_path=str(folder / "logs" / f"{name}.log"),
                save_model_dir=str(folder / "models" / name) if keep else None, earlybert=config.earlybert,
            ))
    return jobs


def warm_start(config: GlueConfig) -> tuple[str, str]:
    """Round 2's starting point and how it was chosen: the first MNLI seed's fine-tuned model in the
    paper protocol when it exists, else the pretraining checkpoint."""
    if config.protocol != "paper":
        return config.starting_checkpoint, "pretraining checkpoint (protocol without MNLI warm start)"
    seed = hyperparameters(config, "mnli").seeds[0]
    mnli = Path(config.run_folder) / "models" / f"mnli-seed{seed}"
    if (mnli / "config.json").is_file():
        return str(mnli), f"fine-tuned MNLI model {mnli}"
    return config.starting_checkpoint, "pretraining checkpoint (no fine-tuned MNLI model: MNLI was not run or failed)"


def check_earlybert_start(config: GlueConfig) -> None:
    """Refuse, before any job runs, an EarlyBERT search on a starting checkpoint that is already a ticket."""
    if config.earlybert is None:
        return
    from mosaicbert.algorithms.earlybert import refuse_search_on_pruned
    from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
    from mosaicbert.model.loading import read_start

    config_dict, _ = read_start(config.starting_checkpoint, config.model_config)
    refuse_search_on_pruned(MosaicBertConfig.from_dict(config_dict), f"starting_checkpoint {config.starting_checkpoint}")


def reuse_mnli_ticket(config: GlueConfig, round_1: list[Job], round_2: list[Job], note: str) -> tuple[list[Job], str]:
    """With earlybert, round 2 starting from the fine-tuned MNLI model trains MNLI's ticket (that model,
    already pruned) instead of searching it again, which would prune a ticket a second time."""
    if config.earlybert is None or not round_2:
        return round_2, note
    mnli = next((job for job in round_1 if job.save_model_dir == round_2[0].start), None)
    if mnli is None:  # round 2 starts from the pretraining checkpoint: it searches as round 1 does
        return round_2, note
    ticket = os.path.join(mnli.earlybert_folder, "ticket.json")
    jobs = [dataclasses.replace(job, earlybert_ticket=ticket) for job in round_2]
    return jobs, f"{note}, whose EarlyBERT ticket is trained further without a new search"


def gpu_slots(config: GlueConfig) -> list[str | None]:
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return [None]
    return [str(i) for i in range(count if config.parallel else 1)]


def execute(jobs: list[Job], slots: list[str | None], done_before: int, total: int) -> dict[str, dict[str, Any]]:
    """Run jobs as separate processes, at most one per slot; returns a status per job name."""
    statuses: dict[str, dict[str, Any]] = {}
    pending = deque(jobs)
    running: dict[str | None, tuple[Job, subprocess.Popen, Any, float]] = {}
    finished = done_before
    while pending or running:
        for slot in slots:
            if slot not in running and pending:
                job = pending.popleft()
                running[slot] = (job, *_launch(job, slot), time.perf_counter())
                where = f"GPU {slot}" if slot is not None else "CPU"
                print(f"[glue] started {job.name} on {where} (log: {job.log_path})", flush=True)
        for slot, (job, process, log, began) in list(running.items()):
            if process.poll() is None:
                continue
            log.close()
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


def _launch(job: Job, slot: str | None) -> tuple[subprocess.Popen, Any]:
    spec = Path(job.log_path).parent.parent / "jobs" / f"{job.name}.json"
    write_json_atomically(str(spec), dataclasses.asdict(job))
    os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
    log = open(job.log_path, "w", encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    process = subprocess.Popen([sys.executable, "-m", "mosaicbert.glue.job", str(spec)], stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    return process, log


def _short(metrics: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{split} {name} {value:.4f}" for split, values in metrics.items() for name, value in values.items())


def _last_line(path: str) -> str:
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_glue(config: GlueConfig) -> dict[str, Any]:
    check_earlybert_start(config)
    folder = Path(config.run_folder)
    folder.mkdir(parents=True, exist_ok=True)
    slots = gpu_slots(config)
    round_1 = [t for t in ROUND_1 if t in config.tasks]
    round_2 = [t for t in ROUND_2 if t in config.tasks]
    keep = {"mnli"} if config.protocol == "paper" and round_2 else set()
    planned = make_jobs(config, round_1, config.starting_checkpoint, keep)
    total = len(planned) + len(make_jobs(config, round_2, config.starting_checkpoint, set()))
    statuses: dict[str, dict[str, Any]] = {}

    def run_round(jobs: list[Job]) -> None:
        todo = [j for j in jobs if not os.path.isfile(j.result_path)]
        for job in jobs:
            if job not in todo:
                statuses[job.name] = {"status": "ok", "skipped": True}
        if len(todo) < len(jobs):
            print(f"[glue] skipping {len(jobs) - len(todo)} job(s) with results already in {folder / 'results'}", flush=True)
        statuses.update(execute(todo, slots, len(statuses), total))

    run_round(planned)
    round_2_start, round_2_note = warm_start(config)
    second = make_jobs(config, round_2, round_2_start, set())
    second, round_2_note = reuse_mnli_ticket(config, planned, second, round_2_note)
    if second:
        print(f"[glue] round 2 ({', '.join(round_2)}) starts from the {round_2_note}", flush=True)
        run_round(second)
    report = build_report(config, planned + second, statuses, round_2_note if second else None)
    write_report(report, folder)
    return report


def main(argv: list[str] | None = None) -> int:
    from mosaicbert.errors import UserError
    from mosaicbert.glue.config import load_glue_config

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        config = load_glue_config(argv[0], argv[1:])
        start = Path(config.starting_checkpoint)
        if not start.exists():
            raise UserError(f"starting_checkpoint {start} does not exist; pretrain first (make demo writes "
                            "runs/demo-*/checkpoints/latest-rank0.pt) or point it at a Hugging Face model folder.")
        report = run_glue(config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0 if all(row["status"] == "ok" for row in report["jobs"]) else 1
