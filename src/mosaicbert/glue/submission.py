"""The GLUE leaderboard's test-set files (gluebenchmark.com), from each task's best seed, zipped.

Each file is `index<TAB>prediction` with a header: label names for MNLI-m, MNLI-mm, QNLI, RTE and AX
(entailment, neutral, contradiction / not_entailment), 0 or 1 for CoLA, SST-2, MRPC, QQP and WNLI, a
score clipped to [0, 5] for STS-B. Rule: for each task, the seed with the best dev score (the report's
score: its scored metrics averaged over its dev sets) gives the predictions; AX comes from MNLI's.
WNLI is not fine-tuned: its file holds the majority class for every example (`tasks.WNLI_MAJORITY`).
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

from mosaicbert.errors import UserError
from mosaicbert.files import write_text_atomically
from mosaicbert.glue.job import predictions_path
from mosaicbert.glue.tasks import TASKS, WNLI_MAJORITY, WNLI_TEST

ZIP_NAME = "submission.zip"


def best_jobs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each task's finished job with the best dev score (the lowest seed among equals)."""
    best: dict[str, dict[str, Any]] = {}
    for row in report["jobs"]:
        if row["status"] != "ok" or row["task"] not in TASKS:  # own tasks are not on the leaderboard
            continue
        current = best.get(row["task"])
        if current is None or (_rank(row["score"]), -row["seed"]) > (_rank(current["score"]), -current["seed"]):
            best[row["task"]] = row
    return best


def _rank(score: float) -> float:
    """A NaN score (a collapsed regression run) ranks below every other."""
    return float("-inf") if math.isnan(score) else score


def leaderboard_value(task: str, prediction: Any) -> str:
    if TASKS[task].num_labels == 1:
        return f"{min(max(float(prediction), 0.0), 5.0):.3f}"
    return str(prediction)


def task_files(task: str, row: dict[str, Any]) -> dict[str, str]:
    """The leaderboard files of one task's best job, from its saved test predictions."""
    files = {}
    for test_set in TASKS[task].test_sets:
        path = Path(predictions_path(row["result"], test_set.name))
        if not path.is_file():
            raise UserError(f"{path} is missing: {task}'s best seed ({row['seed']}) saved no {test_set.name} predictions.")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        lines = ["index\tprediction"] + [f"{r['id']}\t{leaderboard_value(task, r['prediction'])}" for r in rows]
        files[test_set.leaderboard_file] = "\n".join(lines) + "\n"
    return files


def wnli_file(config) -> str | None:
    """WNLI's majority-class file, where its test file can be read (it names the examples); else None."""
    from mosaicbert.glue.data import load_test

    try:
        ids, _ = load_test(WNLI_TEST, config.data_source, config.data_local)
    except UserError:
        return None
    return "\n".join(["index\tprediction"] + [f"{i}\t{WNLI_MAJORITY}" for i in ids]) + "\n"


def write_submission(report: dict[str, Any], config, folder: Path) -> dict[str, Any]:
    """The files and their zip in `folder`; what was written, from which seed, and what is missing."""
    best = best_jobs(report)
    files: dict[str, str] = {}
    for task, row in best.items():
        files.update(task_files(task, row))
    wnli = wnli_file(config)
    if wnli is not None:
        files[WNLI_TEST.leaderboard_file] = wnli
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_text_atomically(folder / name, text)
    archive = folder / ZIP_NAME
    partial = folder / f".{ZIP_NAME}.partial"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name in sorted(files):
            zipped.write(folder / name, arcname=name)
    partial.replace(archive)
    expected = [t.leaderboard_file for task in TASKS.values() for t in task.test_sets] + [WNLI_TEST.leaderboard_file]
    missing = [name for name in expected if name not in files]
    print(f"[glue] submission: {len(files)} files in {archive}" + (f"; missing {', '.join(missing)}" if missing else ""),
          flush=True)
    return {"zip": str(archive), "files": sorted(files), "missing": missing,
            "seeds": {task: row["seed"] for task, row in best.items()},
            "rule": "each task's seed with the best dev score; AX from MNLI's; WNLI the majority class"}
