"""SIGTERM during training: a checkpoint of the current step, a clean stop, and a resume from there."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from composer.core import Callback

from mosaicbert.errors import Interrupted
from test_train import checkpoint_weights, run


class SignalAtBatch(Callback):
    """Sends this process SIGTERM at the end of batch `batch`, as Slurm would before a time limit."""

    def __init__(self, batch: int):
        self.batch = batch

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.batch:
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


@pytest.mark.slow
def test_sigterm_on_a_checkpoint_step_saves_once(clean_env, sample_root, tmp_path):
    with pytest.raises(Interrupted) as stop:
        run(sample_root, tmp_path / "run", [SignalAtBatch(4)], max_duration="10ba", save_interval="4ba")
    assert stop.value.checkpoint.endswith("ep0-ba4-rank0.pt")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ep*.pt")) == ["ep0-ba4-rank0.pt"]
