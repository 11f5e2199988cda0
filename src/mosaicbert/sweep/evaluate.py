"""Scores every checkpoint of a sweep run and collects the sweep's table.

Each checkpoint gets one result file, `<run>/evaluations/<checkpoint>-<kind>-<hash>.json`, keyed on
the evaluation settings: a re-run skips what is there, and changed settings evaluate again. The
x-axis of a Pareto point is the checkpoint's own training wall clock (Composer's `total_wct`,
evaluation excluded, carried across resumptions), read from the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mosaicbert.errors import UserError
from mosaicbert.files import SIGNAL_CHECKPOINTS, write_json_atomically
from mosaicbert.sweep.plan import Plan, Run, glue_overrides

CHECKPOINT_NAME = re.compile(r"^ep\d+-ba(\d+)-rank0\.pt$")
MLM_METRIC = "mlm_accuracy"
GLUE_METRIC = "glue_score"


def checkpoints(run: Run) -> list[Path]:
    """The run's interval checkpoints in step order: not the `latest` link, partial writes, or the extra
    checkpoint a SIGTERM saved (off the interval, it would break the alignment of points across seeds)."""
    folder = Path(run.checkpoint_folder)
    if not folder.is_dir():
        return []
    signalled = folder / SIGNAL_CHECKPOINTS
    skip = set(signalled.read_text().split()) if signalled.is_file() else set()
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := CHECKPOINT_NAME.match(p.name)) and not p.is_symlink() and p.name not in skip]
    return [p for _, p in sorted(found)]


def is_trained(run: Run) -> bool:
    """Pretraining wrote its summary at the end of fit: the run is complete."""
    return os.path.isfile(os.path.join(run.folder, "summary.json"))


def evaluation_hash(plan: Plan, run: Run) -> str:
    settings = plan.sweep.evaluation.model_dump()
    if plan.sweep.evaluation.kind == "glue":
        settings["glue_recipe"] = [run.glue_recipe, Path(run.glue_recipe).read_text()]  # an edited recipe scores again
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def result_path(plan: Plan, run: Run, checkpoint: Path) -> Path:
    stem = checkpoint.name.removesuffix("-rank0.pt")
    return Path(run.folder) / "evaluations" / f"{stem}-{plan.sweep.evaluation.kind}-{evaluation_hash(plan, run)}.json"


def identity(checkpoint: Path) -> list[int]:
    """Size and modification time: a checkpoint written again (a run retrained from an earlier point) is scored again."""
    stat = checkpoint.stat()
    return [stat.st_size, stat.st_mtime_ns]


def read_result(plan: Plan, run: Run, checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's result for these evaluation settings, if it is of this very checkpoint file."""
    path = result_path(plan, run, checkpoint)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("checkpoint_identity") == identity(checkpoint) else None


def scored_checkpoints(plan: Plan, run: Run) -> list[Path]:
    """The checkpoints that become points: all of them, or (`evaluation.checkpoints: last`, for sweeps
    whose points are separately trained runs, e.g. over time budgets) the finished run's last."""
    found = checkpoints(run)
    if plan.sweep.evaluation.checkpoints == "last":
        return found[-1:] if is_trained(run) else []
    return found


def pending_evaluations(plan: Plan, run: Run) -> list[Path]:
    return [c for c in scored_checkpoints(plan, run) if read_result(plan, run, c) is None]


def checkpoint_position(path: Path) -> dict[str, Any]:
    """Step, tokens seen and training wall clock at a checkpoint, from its Composer timestamp."""
    import torch

    # mmap: only the timestamp is read, not gigabytes of weights and optimizer state.
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)["state"]  # Composer pickles: trusted files only
    timestamp = state["timestamp"]["Timestamp"]  # Composer keys each stateful object by its class name
    return {"step": int(timestamp["batch"]), "tokens": int(timestamp["token"]),
            "wall_clock_hours": timestamp["total_wct"].total_seconds() / 3600}


def evaluate_run(plan: Plan, run: Run) -> int:
    """Evaluate the run's checkpoints that have no result yet; returns how many were evaluated."""
    todo = pending_evaluations(plan, run)
    if not todo:
        print(f"{run.run_id}: all {len(scored_checkpoints(plan, run))} checkpoint(s) already evaluated", flush=True)
        return 0
    score = _mlm_scorer(plan, run) if plan.sweep.evaluation.kind == "mlm" else _glue_scorer(plan, run)
    for index, checkpoint in enumerate(todo, 1):
        metric, quality, details = score(checkpoint)
        payload = {"run": run.run_id, "checkpoint": checkpoint.name, "checkpoint_identity": identity(checkpoint),
                   **checkpoint_position(checkpoint),
                   "metric": metric, "quality": quality, "details": details}
        write_json_atomically(result_path(plan, run, checkpoint), payload)
        print(f"{run.run_id}: [{index}/{len(todo)}] {checkpoint.name} step {payload['step']}: {metric} {quality:.4f}", flush=True)
    return len(todo)


def _mlm_scorer(plan: Plan, run: Run):
    """Masked-token accuracy on a held-out split, the same masks (`mask_seed`) for every run."""
    import torch

    from mosaicbert.builders import build_model
    from mosaicbert.config import LoaderConfig, load_config
    from mosaicbert.data.text_dataset import build_mlm_dataloader
    from mosaicbert.data.tokenizer import build_tokenizer
    from mosaicbert.precision import autocast

    settings = plan.sweep.evaluation
    config = load_config(run.recipe, run.overrides, world_size=1)
    held_out = LoaderConfig(split=settings.split, local=config.data_local, remote=config.data_remote,
                            mlm_probability=settings.mlm_probability, fixed_masks=True)
    tokenizer = build_tokenizer(config.tokenizer_name, config.max_seq_len)
    model = build_model(config, tokenizer)
    device = torch.device("cuda" if config.device == "gpu" else "cpu")
    model.to(device).eval()
    in_training_precision = autocast(config.precision, device)

    def score(checkpoint: Path) -> tuple[str, float, dict[str, Any]]:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]
        model.load_state_dict(state)
        # A fresh loader per checkpoint: every checkpoint sees the same batches and masks.
        loader = build_mlm_dataloader(held_out, tokenizer, config.max_seq_len, settings.batch_size, seed=settings.mask_seed,
                                      pin_memory=device.type == "cuda").dataloader
        metrics = {name: metric.to(device) for name, metric in model.get_metrics(is_train=False).items()}
        for metric in metrics.values():
            metric.reset()
        batches = 0
        with torch.no_grad(), in_training_precision:
            for batch in loader:
                if batches == settings.batches:
                    break
                batch = {k: v.to(device) for k, v in batch.items()}
                outputs = model.eval_forward(batch)
                for metric in metrics.values():
                    model.update_metric(batch, outputs, metric)
                batches += 1
        values = {name: float(metric.compute()) for name, metric in metrics.items()}
        return MLM_METRIC, values["MaskedAccuracy"], {**values, "batches": batches, "split": settings.split}

    return score


def _glue_scorer(plan: Plan, run: Run):
    """The GLUE harness (src/glue.py, the paper's protocol) from each checkpoint; its average is the score."""

    def score(checkpoint: Path) -> tuple[str, float, dict[str, Any]]:
        folder = Path(run.folder) / "evaluations" / f"glue-{checkpoint.name.removesuffix('-rank0.pt')}-{evaluation_hash(plan, run)}"
        command = [sys.executable, "src/glue.py", run.glue_recipe, *glue_overrides(plan.sweep, str(checkpoint)),
                   f"run_name={run.run_id}-{checkpoint.stem}", f"run_folder={folder}"]
        print(f"{run.run_id}: GLUE from {checkpoint.name}: {' '.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            raise UserError(f"GLUE from {checkpoint} failed; its jobs' logs are under {folder}/logs.")
        report = json.loads((folder / "glue_results.json").read_text())
        if report["glue_score"] is None:
            raise UserError(f"GLUE from {checkpoint} scored no task; see {folder}/glue_results.md.")
        return GLUE_METRIC, report["glue_score"], {"tasks_scored": report["glue_tasks_scored"], "complete": report["glue_complete"]}

    return score


def collect(plan: Plan) -> list[dict[str, Any]]:
    """One row per evaluated checkpoint of the plan's runs, in the report's format."""
    rows = []
    for run in plan.runs:
        gpus = plan.sweep.nodes * plan.sweep.gpus_per_node
        for ordinal, checkpoint in enumerate(scored_checkpoints(plan, run), 1):
            result = read_result(plan, run, checkpoint)
            if result is None:
                continue
            rows.append({
                "run": run.run_id, "model": run.model, "seed": int(run.cell["seed"]) if "seed" in run.cell else _seed_of(run),
                # Repeats across seeds share the cell (seed aside) and the checkpoint's place in the run.
                "point": f"{run.point_group}, checkpoint {ordinal}", "step": result["step"], "tokens": result["tokens"],
                "wall_clock_hours": result["wall_clock_hours"], "gpus": gpus, "metric": result["metric"],
                "quality": result["quality"],
            })
    return rows


def _seed_of(run: Run) -> int:
    from mosaicbert.config import read_yaml

    return int(read_yaml(run.recipe, run.overrides).get("seed", 17))
