"""SIGTERM during training: a checkpoint of the current step, a clean stop, and a resume from there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from composer.core import Callback

from mosaicbert.errors import Interrupted
from conftest import DEMO_YAML, REPO, tiny_overrides
from helpers.training import checkpoint_weights, run


class SignalAtBatch(Callback):
    """Sends this process SIGTERM during step `batch` (after its backward), as Slurm would before a time limit."""

    def __init__(self, batch: int):
        self.batch = batch

    def after_backward(self, state, logger):
        if int(state.timestamp.batch) + 1 == self.batch:  # the timestamp counts finished steps
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_run_resumes_from_it(clean_env, sample_root, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    settings = {"max_duration": "10ba", "save_interval": "4ba"}
    straight = run(sample_root, tmp_path / "straight", **settings)
    with pytest.raises(Interrupted) as stop:
        run(sample_root, tmp_path / "stopped", [SignalAtBatch(6)], **settings)
    assert stop.value.signum == signal.SIGTERM and stop.value.batch == 6
    assert stop.value.checkpoint.endswith("ep0-ba6-rank0.pt") and os.path.isfile(stop.value.checkpoint)
    assert "stopped on SIGTERM after batch 6" in str(stop.value)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler does not outlive the run
    assert not (tmp_path / "stopped" / "summary.json").exists()  # an interrupted run is not a finished one

    resumed = run(sample_root, tmp_path / "stopped", autoresume=True, **settings)
    assert resumed["batches"] == 10 and resumed["batches_this_run"] == 4
    a, b = checkpoint_weights(straight["checkpoint"]), checkpoint_weights(resumed["checkpoint"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


class SignalAfterBatch(Callback):
    """Sends SIGTERM after step `batch` was checked (at its BATCH_END, as an evaluation runs there)."""

    def __init__(self, batch: int):
        self.batch = batch

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_signal_after_the_steps_agreement_stops_the_next_step(clean_env, sample_root, tmp_path):
    """The flag rides in nonfinite_guard's all-reduce after the backward: one that arrives later is not
    lost, it stops the run one step later."""
    with pytest.raises(Interrupted) as stop:
        run(sample_root, tmp_path / "run", [SignalAfterBatch(3)], max_duration="10ba", save_interval="4ba")
    assert stop.value.batch == 4 and stop.value.checkpoint.endswith("ep0-ba4-rank0.pt")


@pytest.mark.slow
def test_sigterm_on_a_checkpoint_step_saves_once(clean_env, sample_root, tmp_path):
    with pytest.raises(Interrupted) as stop:
        run(sample_root, tmp_path / "run", [SignalAtBatch(4)], max_duration="10ba", save_interval="4ba")
    assert stop.value.checkpoint.endswith("ep0-ba4-rank0.pt")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ep*.pt")) == ["ep0-ba4-rank0.pt"]


@pytest.mark.slow
def test_sigterm_to_every_process_with_loader_workers(clean_env, sample_root, tmp_path):
    """Slurm signals every process of a job step, DataLoader workers included: the step still ends with
    a checkpoint and exit 143, not with a worker killed under the trainer."""
    run_folder = tmp_path / "run"
    overrides = tiny_overrides(sample_root, run_folder, max_duration="100000ba", save_interval="1000ba",
                               **{"train_loader.num_workers": 2})
    process = subprocess.Popen([sys.executable, "src/main.py", str(DEMO_YAML), *overrides], cwd=REPO,
                               start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, deadline = run_folder / "metrics.jsonl", time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count('"time/train"') >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)  # the whole process group, as proctrack/pgid or a cgroup does
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped on SIGTERM after batch" in output and "DataLoader worker" not in output
