"""Shared fixtures: a small offline corpus built once per session, tiny-model overrides, a Slurm cluster."""

from __future__ import annotations

import os
from collections import Counter
import sys
from pathlib import Path

import pytest
from composer.core import Callback

from helpers.slurm_cluster import SlurmCluster, available

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "data_prep"))

DEMO_YAML = REPO / "yamls" / "demo.yaml"
HF_BERT_YAML = REPO / "yamls" / "pretrain" / "hf-bert-demo.yaml"


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The offline sample corpus (stdlib docs) with a small tokenizer, as `make sample-shards` builds it."""
    from mosaicbert.data import cli as prep_cli

    root = tmp_path_factory.mktemp("sample")
    prep_cli.main(["sample", "--out-root", str(root), "--vocab-size", "2048"])
    return root


def tiny_overrides(sample_root: Path, run_folder: Path, **extra) -> list[str]:
    """A small, fast model and schedule on the sample corpus."""
    values = {
        "data_local": str(sample_root),
        "run_folder": str(run_folder),
        "max_seq_len": 64,
        "model.model_config.hidden_size": 64,
        "model.model_config.num_hidden_layers": 2,
        "model.model_config.num_attention_heads": 2,
        "model.model_config.intermediate_size": 128,
        "global_train_batch_size": 16,
        "device_train_microbatch_size": 8,
        "max_duration": "12ba",
        "eval_interval": "6ba",
        "eval_subset_num_batches": 2,
        "save_folder": str(run_folder / "checkpoints"),
        "save_interval": "6ba",
        "progress_bar": False,
        "callbacks.speed_monitor.window_size": 2,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def pretrain(yaml: Path, sample_root: Path, run_folder: Path) -> Path:
    """A tiny model of `yaml` trained 4 steps on the sample corpus; the path of its checkpoint."""
    from mosaicbert.config import load_config
    from mosaicbert.train import train

    config = load_config(yaml, tiny_overrides(sample_root, run_folder, max_duration="4ba", save_interval="4ba",
                                              eval_interval="4ba"))
    return Path(train(config)["checkpoint"])


class CrashAtBatch(Callback):
    """Simulates a run killed part way: raises once `batch` batches are done."""

    def __init__(self, batch: int):
        self.batch = batch

    def batch_checkpoint(self, state, logger):
        if int(state.timestamp.batch) == self.batch:
            raise KeyboardInterrupt


@pytest.fixture
def clean_env(monkeypatch):
    """No distributed variables leak in from the environment or out to other tests."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    return os.environ


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm cluster (tests/helpers/slurm_cluster.py), torn down after the module's tests.

    Skipped, with the reason, where Debian's Slurm and munge packages are not installed.
    """
    installed, reason = available()
    if not installed:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def in_repo(monkeypatch):
    """Recipes and scripts are named relative to the repository root, where sweeps are started."""
    monkeypatch.chdir(REPO)


def pytest_collection_modifyitems(items):
    """Files with more end-to-end (`slow`) tests first, each file's tests kept together and in order. Under
    `--dist loadfile` a worker takes a whole file at a time: a long file started last would keep one worker
    busy while the other idles at the end of `make test`."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])
