"""Tiny sweeps on the sample corpus, the sweep command, and its results table."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

TINY_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def write_sweep(folder: Path, sample_root: Path, **changes) -> Path:
    """A tiny two-model sweep on the sample corpus; `changes` replace top-level keys."""
    sweep = {
        "name": "tiny",
        "folder": str(folder / "sweep"),
        "models": {"mosaicbert": {"recipe": "yamls/demo.yaml"}, "hf-bert": {"recipe": "yamls/pretrain/hf-bert-demo.yaml"}},
        "grid": {"seed": [17]},
        "overrides": {"data_local": str(sample_root), "max_seq_len": 64, "model": {"model_config": TINY_MODEL},
                      "global_train_batch_size": 8, "max_duration": "6ba", "eval_loader": None, "progress_bar": False},
        "checkpoint_interval": "3ba",
        "evaluation": {"kind": "mlm", "split": "val_small", "batches": 2, "batch_size": 16},
        "slurm": {"cpus_per_task": 1},  # two jobs side by side on two cores, one torch thread each
    }
    sweep.update(changes)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return path


def sweep_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "src/sweep.py", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)


def read_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
