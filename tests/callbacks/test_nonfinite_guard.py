"""nonfinite_guard: a NaN injected into one step's loss is caught before the update; stop, skip and rollback."""

from __future__ import annotations

import json

import pytest
import torch
from composer.core import Callback

from mosaicbert.callbacks.nonfinite_guard import NonFiniteError
from mosaicbert.train import main

from conftest import DEMO_YAML, tiny_overrides
from helpers.training import checkpoint_weights, run


class NaNLossAt(Callback):
    """Multiplies the loss of step `batch` by NaN (every microbatch), the first `times` times that step runs."""

    def __init__(self, batch: int, times: int = 1):
        self.batch, self.times = batch, times

    def after_loss(self, state, logger):
        if int(state.timestamp.batch) + 1 == self.batch and self.times:
            state.loss = state.loss * float("nan")

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.batch:
            self.times -= 1


class Weights(Callback):
    """The model's parameters after every step."""

    def __init__(self):
        self.after = {}

    def batch_end(self, state, logger):
        self.after[int(state.timestamp.batch)] = [p.detach().clone() for p in state.model.parameters()]


GUARD = "callbacks.nonfinite_guard"
SETTINGS = {"max_duration": "10ba", "save_interval": "4ba", "save_num_checkpoints_to_keep": -1}


@pytest.mark.slow
def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(clean_env, sample_root, tmp_path):
    with pytest.raises(NonFiniteError, match="non-finite loss at step 6; that step was not applied") as stop:
        run(sample_root, tmp_path / "run", [NaNLossAt(6)], **SETTINGS, **{GUARD: "{}"})
    assert stop.value.batch == 6 and stop.value.checkpoint.endswith("ep0-ba4-rank0.pt")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ep*.pt")) == ["ep0-ba4-rank0.pt"]
    assert all(torch.isfinite(w).all() for w in checkpoint_weights(stop.value.checkpoint).values()
               if isinstance(w, torch.Tensor))


@pytest.mark.slow
def test_skip_leaves_weights_and_optimizer_untouched_then_rollback_follows_the_same_path(clean_env, sample_root, tmp_path):
    weights = Weights()
    skipped = run(sample_root, tmp_path / "skip", [NaNLossAt(6), weights], **SETTINGS, **{f"{GUARD}.action": "skip"})
    assert skipped["batches"] == 10
    for before, after in zip(weights.after[5], weights.after[6]):
        assert torch.equal(before, after)  # step 6 changed nothing
    assert any(not torch.equal(a, b) for a, b in zip(weights.after[6], weights.after[7]))  # step 7 trained

    # Rollback: stop at step 6, resume from the step-4 checkpoint, skip step 6 there. Resumption is exact
    # (same data order, masks, dropout), so it ends where the skipping run ended.
    rolled = run(sample_root, tmp_path / "rollback", [NaNLossAt(6)], **SETTINGS, **{f"{GUARD}.action": "rollback"})
    assert rolled["batches"] == 10 and rolled["batches_this_run"] == 6  # the second attempt, from step 4
    assert json.loads((tmp_path / "rollback" / "nonfinite-batches.json").read_text())["batches"] == [6]
    a, b = checkpoint_weights(skipped["checkpoint"]), checkpoint_weights(rolled["checkpoint"])
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_skips_are_bounded(clean_env, sample_root, tmp_path):
    with pytest.raises(NonFiniteError, match="1 steps were skipped already"):
        run(sample_root, tmp_path / "run", [NaNLossAt(3), NaNLossAt(5)], **SETTINGS,
            **{f"{GUARD}.action": "skip", f"{GUARD}.max_skips": 1})


def test_cli_diverging_run_stops_with_one_message(clean_env, sample_root, tmp_path, capsys):
    overrides = tiny_overrides(sample_root, tmp_path / "run", max_duration="6ba", **{"optimizer.lr": 1e30, GUARD: "{}"})
    assert main([str(DEMO_YAML), *overrides]) == 2
    err = capsys.readouterr().err
    assert "error: non-finite" in err and "Traceback" not in err


def test_unknown_action_is_a_config_error(clean_env, sample_root, tmp_path, capsys):
    overrides = tiny_overrides(sample_root, tmp_path / "run", **{f"{GUARD}.action": "ignore"})
    assert main([str(DEMO_YAML), *overrides]) == 2
    assert "action must be one of stop, skip, rollback" in capsys.readouterr().err


def test_the_guard_and_the_signal_handler_read_the_device_once_per_batch(tmp_path):
    """Two microbatches' checks stay on the device; after the batch one read serves both callbacks, and
    the signal handler uses the flag the guard's all-reduce carried (tests/helpers/sync_spy.py)."""
    from types import SimpleNamespace

    from composer.core import Precision
    from composer.devices import DeviceCPU

    from mosaicbert.callbacks.checkpoint_on_signal import CheckpointOnSignal
    from mosaicbert.callbacks.nonfinite_guard import NonFiniteGuard
    from helpers.sync_spy import host_syncs

    model = torch.nn.Linear(3, 1)
    guard, on_signal = NonFiniteGuard(str(tmp_path)), CheckpointOnSignal()
    state = SimpleNamespace(model=model, precision=Precision.AMP_BF16, timestamp=SimpleNamespace(batch=4),
                            callbacks=[guard, on_signal], loss=None, device=DeviceCPU())
    with host_syncs() as seen:
        guard.before_train_batch(state, None)
        for _ in range(2):  # microbatches
            state.loss = model(torch.ones(2, 3)).sum()
            state.loss.backward()
            guard.after_backward(state, None)
        guard.after_train_batch(state, None)
        state.timestamp.batch = 5
        on_signal.batch_checkpoint(state, None)  # no signal: returns
    assert seen == [("tolist", "nonfinite_guard.py:after_train_batch")]
