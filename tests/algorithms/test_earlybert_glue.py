"""EarlyBERT in GLUE jobs: the search's schedule and length, the ticket's own training, round 2 on
MNLI's ticket, and refusing to search a model that is already pruned."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mosaicbert.errors import ConfigError, UserError
from mosaicbert.glue import finetune as glue_job
from mosaicbert.glue import runner
from mosaicbert.glue.config import load_glue_config
from mosaicbert.glue.demo_data import write_demo_tasks
from mosaicbert.glue.tasks import TASKS
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

from conftest import REPO

FINETUNE_YAML = REPO / "yamls" / "earlybert" / "finetune.yaml"
TEXTS = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
         for i in range(60)]
ONE_SEED_SMALL_BATCHES = [f"task_overrides.{task}.{key}" for task in TASKS for key in ("seeds=[19]", "batch_size=4")]


def tiny(**overrides) -> MosaicBertConfig:
    values = dict(vocab_size=2048, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, intermediate_size=96,
                  attention_backend="sdpa")
    return MosaicBertConfig(**{**values, **overrides})


def save_start(path, **overrides) -> str:
    torch.manual_seed(0)
    MosaicBertForMaskedLM(tiny(**overrides)).save_pretrained(path)
    return str(path)


def finetune_overrides(tmp_path, sample_root, start, data=None) -> list[str]:
    """yamls/earlybert/finetune.yaml on a tiny model and the generated demo tasks, searched in steps of an epoch."""
    return [
        f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}", "data_source=local",
        f"data_local={data or tmp_path / 'no-data'}", f"tokenizer_name={sample_root / 'tokenizer'}", "max_seq_len=64",
        "precision=null", "earlybert.window=2", "earlybert.min_units_per_layer=8", "earlybert.round_units_to=1",
    ]


def test_glue_earlybert_settings_are_checked():
    base = ["starting_checkpoint=x.pt"]
    config = load_glue_config(FINETUNE_YAML, base)
    assert {k: config.earlybert[k] for k in ("retrain_lr", "retrain_epochs", "max_search_fraction")} == {
        "retrain_lr": 4e-5, "retrain_epochs": 2, "max_search_fraction": 0.2}
    cases = {
        "earlybert.max_search_steps=50": "set max_search_fraction .a fraction of an epoch. or max_search_steps .steps., not both",
        "earlybert.check_interval=5": "set check_fraction .a fraction of an epoch. or check_interval .steps., not both",
        "earlybert.max_search_fraction=0": r"max_search_fraction must be a number > 0 \(a fraction of an epoch\), got 0",
        "earlybert.retrain_epochs=0": "retrain_epochs must be a whole number of epochs >= 1, got 0",
        "earlybert.retrain_epochs=1.5": "retrain_epochs must be a whole number of epochs >= 1, got 1.5",
        "earlybert.retrain_lr=fast": "retrain_lr must be a number > 0 .a learning rate., got 'fast'",
        "earlybert.ticket=t.json": "every GLUE job draws its own ticket",
        "earlybert.rewind=false earlybert.mode=in_run": "GLUE jobs run two_phase, a search at a constant learning rate",
        "earlybert.retrain_rate=1": "has no argument 'retrain_rate'.* GLUE jobs also take retrain_lr, retrain_epochs",
        "earlybert.min_search_fraction=0.5": "min_search_fraction=0.5 is above max_search_fraction=0.2",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_glue_config(FINETUNE_YAML, base + override.split())


@pytest.mark.slow
def test_search_at_a_constant_rate_then_the_ticket_with_its_own_lr_and_epochs(tmp_path, sample_root, monkeypatch):
    import composer
    from composer.core import Callback

    class LearningRates(Callback):
        def __init__(self):
            self.lrs = []

        def batch_start(self, state, logger):
            self.lrs.append(state.optimizers[0].param_groups[0]["lr"])

    fits = []
    real_trainer = composer.Trainer

    def recording_trainer(**kwargs):
        recorder = LearningRates()
        fits.append({"max_duration": kwargs["max_duration"], "lrs": recorder.lrs})
        return real_trainer(**{**kwargs, "callbacks": [*(kwargs.get("callbacks") or []), recorder]})

    monkeypatch.setattr(composer, "Trainer", recording_trainer)
    data = write_demo_tasks(tmp_path / "glue", train_size=32, dev_size=8, texts=TEXTS)
    config = load_glue_config(FINETUNE_YAML, finetune_overrides(tmp_path, sample_root, save_start(tmp_path / "start"), data) + [
        "tasks=[rte]", "task_overrides.rte.seeds=[19]", "task_overrides.rte.batch_size=2",  # 16 steps per epoch
        "task_overrides.rte.lr=2.0e-4", "task_overrides.rte.epochs=3",
        "earlybert.check_fraction=0.125", "earlybert.min_search_fraction=0.25", "earlybert.max_search_fraction=0.5",
        "earlybert.retrain_lr=4.0e-4", "earlybert.retrain_epochs=2",
    ])
    job = runner.make_jobs(config, ["rte"], config.starting_checkpoint, set())[0]
    result = glue_job.run(job)

    search, retrain = fits
    assert search["max_duration"] == "8ba" and 4 <= len(search["lrs"]) <= 8  # at most half of a 16-step epoch
    assert search["lrs"] == [2e-4] * len(search["lrs"])  # the task's rate, constant: no warm-up in the search
    assert retrain["max_duration"] == "2ep" and len(retrain["lrs"]) == 32
    peak = max(retrain["lrs"])
    assert retrain["lrs"][0] == 0.0 and peak == pytest.approx(4e-4)  # its own warm-up, up to its own rate
    assert retrain["lrs"][-1] < retrain["lrs"][16] < peak  # then decays
    ticket = json.loads((Path(job.earlybert_folder) / "ticket.json").read_text())
    assert (ticket["settings"]["check_interval"], ticket["settings"]["min_search_steps"],
            ticket["settings"]["max_search_steps"]) == (2, 4, 8)
    assert result["earlybert"]["search"]["max_search_steps"] == 8
    assert (result["earlybert"]["retrain"]["lr"], result["earlybert"]["retrain"]["epochs"]) == (4e-4, 2)
    assert result["earlybert_draw_step"] == ticket["step"] == len(search["lrs"])


@pytest.mark.slow
def test_round_2_trains_the_mnli_ticket_on_the_full_task_list(tmp_path, sample_root):
    data = write_demo_tasks(tmp_path / "glue", train_size=24, dev_size=8, texts=TEXTS)
    config = load_glue_config(FINETUNE_YAML, finetune_overrides(tmp_path, sample_root, save_start(tmp_path / "start"), data) + [
        "save_finetuned=true", "earlybert.check_fraction=0.2", "earlybert.min_search_fraction=0.4",
        "earlybert.max_search_fraction=0.5", "earlybert.retrain_epochs=1", *ONE_SEED_SMALL_BATCHES,
    ])
    assert config.tasks == ["mnli", "qnli", "qqp", "sst2", "cola", "rte", "mrpc", "stsb"]
    report = runner.run_glue(config)
    assert {row["task"]: row["status"] for row in report["jobs"]} == dict.fromkeys(config.tasks, "ok"), report["jobs"]
    run = tmp_path / "run"

    def one(pattern):  # job files are named <task>-seed<seed>-<hash of the job's settings>
        found = [p for p in run.glob(pattern) if not p.name.endswith("-earlybert")]
        assert len(found) == 1, (pattern, found)
        return found[0]

    def kept_heads(task):
        return json.loads((one(f"models/{task}-seed19-*") / "config.json").read_text())["head_indices_per_layer"]

    mnli_ticket = one("results/mnli-seed19-*-earlybert/ticket.json")
    for task in ("mnli", "qnli", "qqp", "sst2", "cola"):  # round 1: each searches its own ticket, 4 of 6 heads
        assert one(f"results/{task}-seed19-*-earlybert/ticket.json").is_file()
        assert [len(heads) for heads in kept_heads(task)] == [4, 4]
    for task in ("rte", "mrpc", "stsb"):  # round 2: MNLI's ticket, trained further, not searched and cut again
        assert not list(run.glob(f"results/{task}-seed19-*-earlybert"))
        assert kept_heads(task) == kept_heads("mnli")
        result = json.loads(one(f"results/{task}-seed19-*.json").read_text())
        assert result["start"] == str(one("models/mnli-seed19-*"))
        assert result["earlybert"]["ticket"] == str(mnli_ticket) and result["earlybert"]["search"] is None
        assert (result["earlybert"]["retrain"]["lr"], result["earlybert"]["retrain"]["epochs"]) == (4e-5, 1)
    assert "whose EarlyBERT ticket is trained further without a new search" in report["round_2_start"]

    # Later, round 2 alone (MNLI's model from the run above): still MNLI's ticket, no search of it.
    alone = load_glue_config(FINETUNE_YAML, finetune_overrides(tmp_path, sample_root, str(tmp_path / "start"), data) + [
        "save_finetuned=true", "earlybert.check_fraction=0.2", "earlybert.min_search_fraction=0.4",
        "earlybert.max_search_fraction=0.5", "earlybert.retrain_epochs=1", *ONE_SEED_SMALL_BATCHES,
        "tasks=[rte]", "task_overrides.rte.lr=3.0e-4",
    ])
    report = runner.run_glue(alone)
    assert [row["status"] for row in report["jobs"]] == ["ok"], report["jobs"]
    result = json.loads(Path(report["jobs"][0]["result"]).read_text())
    assert result["earlybert"]["ticket"] == str(mnli_ticket) and result["earlybert"]["search"] is None


def test_glue_search_on_a_pruned_start_is_refused_before_any_job(tmp_path, sample_root, monkeypatch, capsys):
    pruned = save_start(tmp_path / "pruned", head_indices_per_layer=[[0, 1, 2, 4], [1, 2, 3, 5]],
                        intermediate_size_per_layer=[58, 58])
    overrides = finetune_overrides(tmp_path, sample_root, pruned)
    earlier = tmp_path / "run" / "results" / "sst2-seed19.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"written": "by an earlier run"}')
    launched = []
    monkeypatch.setattr(runner, "execute", lambda jobs, *args: launched.extend(jobs) or {})
    assert runner.main([str(FINETUNE_YAML), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert (f"EarlyBERT cannot search starting_checkpoint {pruned}: it is already structurally pruned "
            "(heads per layer [4, 4] of 6, GeGLU units per layer [58, 58] of 96)") in err
    assert launched == [] and earlier.read_text() == '{"written": "by an earlier run"}'

    # A pruned round_2_start (say, MNLI's ticket from another run) would be searched by round 2: refused
    # before round 1 spends its time.
    start = save_start(tmp_path / "start")
    overrides = finetune_overrides(tmp_path, sample_root, start) + ["tasks=[sst2,rte]", f"round_2_start={pruned}"]
    assert runner.main([str(FINETUNE_YAML), *overrides]) == 2
    assert f"EarlyBERT cannot search round_2_start {pruned}: it is already structurally pruned" in capsys.readouterr().err
    assert launched == []


def test_glue_job_refuses_to_search_a_pruned_model(tmp_path, sample_root):
    """A job handed a pruned start other than as round 2 of its MNLI ticket refuses too, before training."""
    pruned = save_start(tmp_path / "pruned", head_indices_per_layer=[[0, 1, 2, 4], [1, 2, 3, 5]])
    data = write_demo_tasks(tmp_path / "glue", train_size=8, dev_size=4, texts=TEXTS)
    config = load_glue_config(FINETUNE_YAML, finetune_overrides(tmp_path, sample_root, pruned, data))
    job = runner.make_jobs(config, ["rte"], pruned, set())[0]
    with pytest.raises(ConfigError, match="EarlyBERT cannot search this model: it is already structurally pruned"):
        glue_job.run(job)
    # As round 2, it trains MNLI's ticket; a ticket that is not there (MNLI fine-tuned without earlybert) is named.
    missing = tmp_path / "run" / "results" / "mnli-seed19-earlybert" / "ticket.json"
    with pytest.raises(UserError, match=f"but {missing} does not exist: that model was fine-tuned without earlybert"):
        glue_job.run(dataclasses.replace(job, earlybert_ticket=str(missing)))
    assert not Path(job.result_path).exists()
