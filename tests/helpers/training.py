"""Pretraining runs for tests: in this process, in two processes (two CPU ranks), and their checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from mosaicbert.config import load_config
from mosaicbert.train import train

from conftest import DEMO_YAML, REPO, tiny_overrides
from helpers import free_port


def run(sample_root, run_folder, callbacks=None, **extra):
    config = load_config(DEMO_YAML, tiny_overrides(sample_root, run_folder, **extra))
    return train(config, extra_callbacks=callbacks)


def checkpoint_weights(path):
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["state"]["model"]


def run_two_processes(overrides: list[str]) -> None:
    """`composer -n 2 src/main.py yamls/demo.yaml <overrides>`: two CPU ranks over gloo."""
    composer = os.path.join(os.path.dirname(sys.executable), "composer")
    result = subprocess.run(
        [composer, "-n", "2", "--master_port", str(free_port()), "src/main.py", "yamls/demo.yaml", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# A tiny EarlyBERT search that draws its ticket within a few steps, checkpointing around the draw.
EARLYBERT = {"model.model_config.num_attention_heads": 4, "model.model_config.hidden_size": 64,
             "algorithms.earlybert.mode": "in_run", "algorithms.earlybert.check_interval": 2,
             "algorithms.earlybert.window": 3, "algorithms.earlybert.min_search_steps": 4,
             "algorithms.earlybert.max_search_steps": 6, "algorithms.earlybert.min_units_per_layer": 8,
             "algorithms.earlybert.unit_prune_ratio": 0.3, "max_duration": "16ba", "save_interval": "4ba",
             "eval_interval": "8ba"}
