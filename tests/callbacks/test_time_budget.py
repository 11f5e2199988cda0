"""Training to a wall-clock budget (`max_duration: 2h`): the accepted forms, where training ends,
a learning rate that follows elapsed training time, evaluation left out, and resumption."""

from __future__ import annotations

import datetime
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from composer.core import Callback

from mosaicbert.callbacks.jsonl_logger import read_jsonl
from mosaicbert.config import load_config
from mosaicbert.errors import ConfigError
from mosaicbert.train import train

from conftest import DEMO_YAML, CrashAtBatch, tiny_overrides

LR, ALPHA_F, WARMUP = 1e-3, 0.02, 0.25  # the demo's peak rate and final factor; a warm-up of a quarter


def load(*overrides: str):
    return load_config(DEMO_YAML, list(overrides))


@pytest.mark.parametrize(
    "max_duration, seconds",
    [("2h", 7200), ("1.5h", 5400), ("90m", 5400), ("30min", 1800), ("45s", 45), ("7200sec", 7200), ("1h30m", 5400),
     ("24h", 86400), ("600ba", None), ("2ep", None), ("1000000tok", None), (3, None)],
)
def test_max_duration_is_a_training_length_or_a_time_budget(clean_env, max_duration, seconds):
    assert load(f"max_duration={max_duration}").time_budget_seconds == seconds


def test_the_demo_trains_to_a_time_budget(clean_env):
    assert load().time_budget_seconds == 300


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("max_duration=2hours", "max_duration: '2hours' is neither a training length (600ba, 2ep, 100000sp, "
                                "5000000tok) nor a wall-clock budget of training time (2h, 1.5h, 90m, 30min, 45s, "
                                "7200sec, 1h30m)."),
        ("max_duration=0.5dur", "max_duration: '0.5dur' is neither"),
        ("max_duration=0m", "a time budget must be positive, got '0m'"),
        ("max_duration=1h eval_interval=0.25dur", "eval_interval=0.25dur is a fraction of a time budget (1h), which has "
                                                  "no fixed number of batches: give it in seconds of training instead "
                                                  "(eval_interval=900sec is that fraction) or in batches."),
        ("max_duration=1h save_interval=0.5dur", "(save_interval=1800sec is that fraction)"),
        ("max_duration=1h scheduler.t_max=1000ba", "scheduler.t_max=1000ba: a schedule trained to a time budget"),
        ("eval_interval=10minutes", "eval_interval: '10minutes' is not a time such as 200ba, 1ep, 0.25dur, 10m or 60sec."),
    ],
)
def test_what_a_time_budget_cannot_be_fails_with_the_accepted_forms(clean_env, overrides, message):
    with pytest.raises(ConfigError) as err:
        load(*overrides.split(" "))
    assert message in str(err.value)


def test_fractions_of_a_training_length_stay_allowed(clean_env):
    config = load("max_duration=600ba", "eval_interval=0.25dur", "save_interval=0.5dur", "scheduler.t_max=600ba")
    assert config.time_budget_seconds is None


def test_wall_clock_intervals_become_composer_seconds(clean_env):
    config = load("eval_interval=90m", "save_interval=1.5s")
    assert (config.eval_interval, config.save_interval) == ("5400sec", "2sec")


# --------------------------------------------------------------------------- runs


class FakeClock(Callback):
    """Composer's training clock, made to tick 1 s per batch, `spells[k]` more in batch k (0-based: a
    busy spell of the machine) and `eval_seconds` per evaluation. What a budget buys then does not
    depend on how fast or busy this machine is, and every expectation is exact."""

    def __init__(self, monkeypatch, spells: dict[int, float] | None = None, eval_seconds: float = 0.0):
        self.now = datetime.datetime(2025, 1, 1)
        self.spells, self.eval_seconds = spells or {}, eval_seconds
        clock = self

        class Datetime(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return clock.now

        # The training loop reads the time as datetime.datetime.now() of its own module.
        monkeypatch.setattr(sys.modules["composer.trainer.trainer"], "datetime",
                            SimpleNamespace(datetime=Datetime, timedelta=datetime.timedelta))

    def batch_start(self, state, logger):
        self.now += datetime.timedelta(seconds=1.0 + self.spells.get(int(state.timestamp.batch), 0.0))

    def eval_start(self, state, logger):
        self.now += datetime.timedelta(seconds=self.eval_seconds)


class SlowEvaluation(Callback):
    """The first evaluation during training takes `seconds` longer (real time)."""

    def __init__(self, seconds: float):
        self.seconds, self.done = seconds, False

    def eval_start(self, state, logger):
        if int(state.timestamp.batch) > 0 and not self.done:
            self.done = True
            time.sleep(self.seconds)


class BatchCap(Callback):
    """A budget that fails to end training must fail the test, not train toward the 10**12-batch placeholder."""

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) > 2000:
            raise RuntimeError("the time budget did not end training within 2000 batches")


def budgeted_run(sample_root, run_folder, budget: float, callbacks=None, **extra):
    values = {"max_duration": f"{budget:g}s", "scheduler.t_warmup": f"{WARMUP}dur", "eval_interval": "1000sec",
              "save_interval": "1000sec", **extra}
    config = load_config(DEMO_YAML, tiny_overrides(sample_root, run_folder, **values))
    return train(config, extra_callbacks=[*(callbacks or []), BatchCap()])


def logged(run_folder) -> dict[int, dict]:
    """metrics.jsonl as {step: every metric logged at that step} (a resumed run's later value wins)."""
    steps: dict[int, dict] = {}
    for row in read_jsonl(run_folder / "metrics.jsonl"):
        steps.setdefault(row["step"], {}).update(row)
    return steps


def train_seconds(steps: dict[int, dict]) -> dict[int, float]:
    """Composer's training clock after each batch (speed_monitor logs it in hours)."""
    return {step: 3600 * row["time/train"] for step, row in steps.items() if "time/train" in row}


def ends_with_its_budget(summary, seconds: dict[int, float], budget: float) -> None:
    """Training stops at the first batch that brings the training clock to the budget."""
    last = summary["batches"]
    assert summary["time_budget_seconds"] == budget
    assert seconds[last - 1] < budget <= seconds[last]
    assert summary["train_seconds_total"] == pytest.approx(seconds[last], abs=1e-3)


def schedule(fraction: float) -> float:
    """linear_decay_with_warmup as a function of the fraction of the run done, in units of the peak rate."""
    if fraction < WARMUP:
        return fraction / WARMUP
    return 1 + (min(fraction, 1.0) - WARMUP) / (1 - WARMUP) * (ALPHA_F - 1)


def follows_the_schedule(steps: dict[int, dict], budget: float, first: int, last: int) -> None:
    """The learning rate logged after each batch from `first` to `last` is the schedule at the fraction
    of the budget spent, to within one batch's share of it; at the end it is the schedule's end, alpha_f.
    A schedule by batch count (batch k of `last`) does not fit it."""
    seconds = train_seconds(steps)
    lr = {step: row["lr-DecoupledAdamW/group0"] / LR for step, row in steps.items() if "lr-DecoupledAdamW/group0" in row}
    by_time, by_count = [], []
    for step in range(first, last + 1):
        # Composer steps the scheduler at the end of batch `step` but before its clock moves on: the rate
        # logged there comes from k = step - 1 batches, the training time after them and the plan made then.
        k = step - 1
        fraction, share = seconds[k] / budget, 1 / steps[k]["time/budget_batches"]
        # One batch's share: the planned batch count is rounded up, the warm-up rounded down to whole batches.
        tolerance = 2 * share * max(1 / (WARMUP - share), (1 - ALPHA_F) / (1 - WARMUP))
        assert lr[step] == pytest.approx(schedule(fraction), abs=tolerance), f"batch {step}: {fraction=}, {share=}"
        by_time.append((lr[step] - schedule(fraction)) ** 2)
        by_count.append((lr[step] - schedule(k / last)) ** 2)
    assert sum(by_time) < sum(by_count) / 4, (by_time, by_count)
    # The last rate logged is the one a run of `last` batches of fixed length ends with: a step short of alpha_f.
    share = 1 / steps[last - 1]["time/budget_batches"]
    assert 0 <= lr[last] - ALPHA_F <= (1 - ALPHA_F) / (1 - WARMUP) * share + 1e-12


@pytest.mark.slow
def test_a_budgeted_run_trains_until_its_budget_and_evaluation_is_not_counted(clean_env, sample_root, tmp_path):
    budget = 3.0
    summary = budgeted_run(sample_root, tmp_path / "run", budget, [SlowEvaluation(budget)], eval_interval="1ba")
    assert summary["eval_seconds"] > budget  # an evaluation took longer than the whole budget...
    ends_with_its_budget(summary, train_seconds(logged(tmp_path / "run")), budget)  # ...and training still got all of it
    assert summary["train_seconds"] >= budget  # by this process's own clock too
    assert summary["checkpoint"].endswith(f"ep0-ba{summary['batches']}-rank0.pt")


# On the fake clock: 1 s per batch, 12 s more in the sixth (a busy spell), 100 s per evaluation. After
# k batches the training clock reads k s, and k + 12 s from the sixth on: a 40 s budget buys 28 batches.
BUDGET, SPELLS, BATCHES = 40.0, {5: 12.0}, 28


@pytest.mark.slow
def test_the_learning_rate_follows_the_training_clock_to_the_end_of_the_budget(clean_env, sample_root, tmp_path, monkeypatch):
    clock = FakeClock(monkeypatch, spells=SPELLS, eval_seconds=100.0)
    summary = budgeted_run(sample_root, tmp_path / "run", BUDGET, [clock], eval_interval="10sec")
    steps = logged(tmp_path / "run")
    assert summary["batches"] == BATCHES and steps[BATCHES]["time/budget_batches"] == BATCHES
    ends_with_its_budget(summary, train_seconds(steps), BUDGET)
    # Every 10 s of training (10 at batch 6, 20 at 8, 30 at 18, 40 at 28), none of the 100 s evaluations counted.
    assert [step for step, row in sorted(steps.items()) if "metrics/eval/MaskedAccuracy" in row] == [0, 6, 8, 18, 28]
    assert summary["last_eval"]["batch"] == BATCHES
    assert summary["checkpoint"].endswith(f"ep0-ba{BATCHES}-rank0.pt")
    assert steps[1]["lr-DecoupledAdamW/group0"] == 0.0
    follows_the_schedule(steps, BUDGET, 2, BATCHES)


@pytest.mark.slow
def test_a_resumed_budgeted_run_goes_on_from_its_saved_training_time(clean_env, sample_root, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        budgeted_run(sample_root, folder, BUDGET, [FakeClock(monkeypatch, spells=SPELLS), CrashAtBatch(10)], save_interval="4ba")
    before = logged(folder)
    saved = torch.load(folder / "checkpoints" / "latest-rank0.pt", map_location="cpu", weights_only=False)
    timestamp = saved["state"]["timestamp"]["Timestamp"]
    assert timestamp["batch"] == 8 and timestamp["total_wct"].total_seconds() == 8 + 12

    # Nothing but Composer's checkpointed clock carries the plan: the resumed run ends where an
    # uninterrupted one does, with batch 9 at the rate it had before.
    summary = budgeted_run(sample_root, folder, BUDGET, [FakeClock(monkeypatch)], save_interval="4ba", autoresume=True)
    after = logged(folder)
    assert summary["batches"] == BATCHES and summary["batches_this_run"] == BATCHES - 8
    ends_with_its_budget(summary, train_seconds(after), BUDGET)
    assert summary["last_eval"]["batch"] == BATCHES  # Composer's evaluation at the end, off any eval_interval
    assert after[9]["lr-DecoupledAdamW/group0"] == before[9]["lr-DecoupledAdamW/group0"]
    follows_the_schedule(after, BUDGET, 9, BATCHES)


def test_the_budget_leaves_a_stop_made_by_another_part_of_the_run():
    """Algorithms run before callbacks at BATCH_END: EarlyBERT's two-phase draw stops training with
    `stop_training()` and the budget must not plan past it."""
    from datetime import timedelta
    from types import SimpleNamespace

    from composer.core import Time, TimeUnit

    from mosaicbert.callbacks.time_budget import PLACEHOLDER_MAX_DURATION, TimeBudget

    budget = TimeBudget(10.0)
    logger = SimpleNamespace(log_metrics=lambda metrics: None, destinations=[])
    state = SimpleNamespace(timestamp=SimpleNamespace(batch=Time(5, TimeUnit.BATCH), total_wct=timedelta(seconds=5)),
                            max_duration=PLACEHOLDER_MAX_DURATION)
    budget.batch_end(state, logger)
    assert state.max_duration == Time(10, TimeUnit.BATCH)  # half the budget after 5 batches: 10 in all
    state.timestamp.batch, state.timestamp.total_wct = Time(6, TimeUnit.BATCH), timedelta(seconds=6)
    state.max_duration = Time(6, TimeUnit.BATCH)  # what state.stop_training() sets
    budget.batch_end(state, logger)
    assert state.max_duration == Time(6, TimeUnit.BATCH)
    state.timestamp.total_wct = timedelta(0)  # no pace yet (a zeroed clock): one more batch, no division by zero
    assert TimeBudget(10.0).batch_end(state, logger) is None and state.max_duration == Time(7, TimeUnit.BATCH)
