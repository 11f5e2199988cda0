"""GLUE results: per job, per task (mean, median, min-max over seeds) and the GLUE average."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mosaicbert.files import write_json_atomically
from mosaicbert.glue.job import Job, job_task
from mosaicbert.glue.tasks import TASKS


def seed_score(task, metrics: dict[str, dict[str, float]]) -> float:
    """A job's score: the mean over evaluators and the task's scored metrics, x100."""
    values = [metrics[split][name] for split in metrics for name in task.metrics]
    return 100 * sum(values) / len(values)


def build_report(config, jobs: list[Job], statuses: dict[str, dict[str, Any]], round_2_note: str | None) -> dict[str, Any]:
    rows = []
    for job in jobs:
        status = statuses.get(job.name, {"status": "not run"})
        row = {"task": job.task, "seed": job.seed, "status": status["status"], "start": job.start, "log": job.log_path,
               "result": job.result_path}
        if status["status"] == "ok":
            result = json.loads(Path(job.result_path).read_text())
            row.update(metrics=result["metrics"], score=seed_score(job_task(job), result["metrics"]), start=result["start"])
        else:
            row["error"] = status.get("error", "")
        rows.append(row)

    tasks = {}
    for task, definition in {job.task: job_task(job) for job in jobs}.items():
        done = [r for r in rows if r["task"] == task and r["status"] == "ok"]
        entry: dict[str, Any] = {"seeds_ok": len(done), "seeds_planned": sum(r["task"] == task for r in rows),
                                 "metrics": list(definition.metrics), "glue": task in TASKS}
        if done:
            # numpy, not statistics or min/max: a NaN (a correlation of constant predictions) must carry through.
            scores = [r["score"] for r in done]
            entry.update(score=float(np.mean(scores)), median=float(np.median(scores)), min=float(np.min(scores)),
                         max=float(np.max(scores)))
            names = tuple(definition.metrics) + tuple(definition.extra_metrics)
            entry["metric_means"] = {
                f"{split}/{name}": 100 * float(np.mean([r["metrics"][split][name] for r in done]))
                for split in done[0]["metrics"] for name in names
            }
        tasks[task] = entry
    scored = [t["score"] for t in tasks.values() if "score" in t and t["glue"]]  # own tasks are not GLUE
    complete = len(scored) == len(TASKS)
    return {
        "protocol": config.protocol,
        "starting_checkpoint": config.starting_checkpoint,
        "model_name": config.model_name,
        "round_2_start": round_2_note,
        "shuffle_train": config.shuffle_train,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tasks": tasks,
        "jobs": rows,
        "glue_score": float(np.mean(scored)) if scored else None,
        "glue_tasks_scored": len(scored),
        "glue_complete": complete,
    }


def to_markdown(report: dict[str, Any]) -> str:
    glue = [task for task, entry in report["tasks"].items() if entry["glue"]]
    lines = [f"# {'GLUE' if len(glue) == len(report['tasks']) else 'Fine-tuning'} dev results ({report['created']})", "",
             f"- Starting checkpoint: `{report['starting_checkpoint']}` ({report['model_name']})"]
    if glue:
        lines.append("- Protocol: " + {
            "paper": "MosaicBERT paper protocol: per-task hyperparameters and seeds; RTE, MRPC, STS-B start from the "
                     "fine-tuned MNLI model",
            "sane": "sane protocol: one setting for all tasks, every task starts from the pretraining checkpoint",
        }[report["protocol"]])
    if len(glue) < len(report["tasks"]):
        lines.append("- Own tasks: each with its definition's hyperparameters (the sane settings where it sets none), "
                     "from the pretraining checkpoint")
    if report["round_2_start"]:
        lines.append(f"- Round 2 started from the {report['round_2_start']}")
    lines.append(f"- Training data {'shuffled' if report['shuffle_train'] else 'in file order'}; scores are the final "
                 "evaluation of each job (no best-of), x100; a task's score is the mean of its metrics over seeds")
    if "stsb" in glue:
        lines.append("- STS-B is scored by Spearman correlation, as in the MosaicBERT reference (the GLUE leaderboard "
                     "averages Pearson and Spearman; Pearson is listed per metric), and trains in fp32 as the reference "
                     "did; a correlation with constant predictions (a collapsed run) shows as nan")
    lines += [
        "",
        "| task | metric(s) | score | median | min-max | seeds | per metric |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, entry in report["tasks"].items():
        metric_names = ", ".join(entry["metrics"]) + ("" if entry["glue"] else " (own task)")
        seeds = f"{entry['seeds_ok']}/{entry['seeds_planned']}"
        if "score" not in entry:
            lines.append(f"| {task} | {metric_names} | failed | | | {seeds} | |")
            continue
        details = ", ".join(f"{k} {v:.2f}" for k, v in entry["metric_means"].items())
        lines.append(f"| {task} | {metric_names} | {entry['score']:.2f} | {entry['median']:.2f} | "
                     f"{entry['min']:.2f}-{entry['max']:.2f} | {seeds} | {details} |")
    if report["glue_score"] is not None:
        label = "GLUE (8 tasks)" if report["glue_complete"] else f"average of {report['glue_tasks_scored']} tasks (not a GLUE score)"
        lines.append(f"| **{label}** | | **{report['glue_score']:.2f}** | | | | |")
    if report.get("submission"):
        sub = report["submission"]
        seeds = ", ".join(f"{task} seed {seed}" for task, seed in sub["seeds"].items())
        lines += ["", f"Test-set submission `{sub['zip']}` ({len(sub['files'])} files"
                  + (f"; missing {', '.join(sub['missing'])}" if sub["missing"] else "") + f"): {sub['rule']} ({seeds})."]
    lines += ["", "| job | status | score | metrics |", "|---|---|---|---|"]
    for row in report["jobs"]:
        name = f"{row['task']}-seed{row['seed']}"
        if row["status"] == "ok":
            metrics = "; ".join(f"{s} " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for s, m in row["metrics"].items())
            lines.append(f"| {name} | ok | {row['score']:.2f} | {metrics} |")
        else:
            error = row.get("error", "").replace("|", "/")
            lines.append(f"| {name} | {row['status']} | | `{row['log']}`: {error} |")
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN (a collapsed regression run's correlation) as null: json.dump would write the bare token
    NaN, which strict JSON readers (jq, JavaScript) reject."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], folder: Path) -> None:
    write_json_atomically(str(folder / "glue_results.json"), _json_safe(report))
    markdown = to_markdown(report)
    (folder / "glue_results.md").write_text(markdown, encoding="utf-8")
    print(markdown, flush=True)
