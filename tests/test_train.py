"""End-to-end pretraining runs on the offline sample corpus with a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mosaicbert.callbacks.jsonl_logger import read_jsonl
from mosaicbert.config import load_config
from mosaicbert.errors import DataNotFoundError, UserError
from mosaicbert.train import train

from conftest import DEMO_YAML, REPO, CrashAtBatch, tiny_overrides
from helpers.training import checkpoint_weights, run, run_two_processes


@pytest.mark.slow
def test_short_run_loss_falls_and_reports(clean_env, sample_root, tmp_path):
    summary = run(sample_root, tmp_path / "run", max_duration="30ba", eval_interval="15ba", eval_first=True,
                  **{"optimizer.lr": 3e-3, "eval_subset_num_batches": 4})
    first, last = summary["first_eval"], summary["last_eval"]
    assert first["batch"] == 0 and last["batch"] == 30
    assert last["eval/LanguageCrossEntropy"] < first["eval/LanguageCrossEntropy"] - 1.0
    assert last["eval/MaskedAccuracy"] > first["eval/MaskedAccuracy"]
    assert summary["non_padding_tokens"] > 0
    # Real-token counting: fewer tokens than batch x seq, since the sample documents are short.
    assert summary["non_padding_tokens"] < 30 * 16 * 64
    assert summary["checkpoint"].endswith("ep0-ba30-rank0.pt") and os.path.isfile(summary["checkpoint"])

    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    losses = [r["loss/train/total"] for r in records if "loss/train/total" in r]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert any("throughput/tokens_per_sec" in r for r in records)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["batches"] == 30
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.slow
def test_autoresume_continues_to_the_same_step_and_weights(clean_env, sample_root, tmp_path):
    straight = run(sample_root, tmp_path / "straight", max_duration="8ba", save_interval="4ba")
    with pytest.raises(KeyboardInterrupt):
        run(sample_root, tmp_path / "resumed", [CrashAtBatch(5)], max_duration="8ba", save_interval="4ba")
    resumed = run(sample_root, tmp_path / "resumed", max_duration="8ba", save_interval="4ba", autoresume=True)
    assert resumed["batches"] == straight["batches"] == 8
    assert resumed["batches_this_run"] == 4  # it picked up at batch 4, not from scratch
    a, b = checkpoint_weights(straight["checkpoint"]), checkpoint_weights(resumed["checkpoint"])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_existing_checkpoints_are_not_overwritten(clean_env, sample_root, tmp_path):
    first = run(sample_root, tmp_path / "run", max_duration="2ba", save_interval="2ba")
    before = os.path.getmtime(first["checkpoint"])
    with pytest.raises(UserError, match="autoresume=true"):
        run(sample_root, tmp_path / "run", max_duration="2ba", save_interval="2ba")
    assert os.path.getmtime(first["checkpoint"]) == before


def test_interrupted_checkpoint_write_leaves_no_file(tmp_path, monkeypatch):
    from composer.utils import checkpoint as composer_checkpoint

    from mosaicbert import composer_patches

    composer_patches.apply()

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        composer_checkpoint._write_checkpoint_file({"state": {}}, str(tmp_path / "ep0-ba2-rank0.pt"))
    assert list(tmp_path.iterdir()) == []


def test_missing_data_names_the_make_target(clean_env, tmp_path):
    config = load_config(DEMO_YAML, [f"data_local={tmp_path / 'nowhere'}", "tokenizer_name=bert-base-uncased",
                                     f"run_folder={tmp_path / 'run'}"])
    from mosaicbert.data.text_dataset import build_mlm_dataloader

    with pytest.raises(DataNotFoundError, match="make sample-shards") as err:
        build_mlm_dataloader(config.train_loader, tokenizer=None, max_seq_len=128, device_batch_size=8, seed=0)
    assert "make c4-shards" in str(err.value) and "index.json missing" in str(err.value)


def test_cli_reports_bad_input_once_and_exits_nonzero(tmp_path):
    result = subprocess.run(
        [sys.executable, "src/main.py", "yamls/demo.yaml", f"data_local={tmp_path}", "max_duraton=5ba"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "error: unknown key 'max_duraton'. Did you mean 'max_duration'?" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_process_cpu_run(clean_env, sample_root, tmp_path):
    run_two_processes(tiny_overrides(sample_root, tmp_path / "ddp", max_duration="4ba", save_interval="4ba"))
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["batches"] == 4
    saved = (tmp_path / "ddp" / "config.yaml").read_text()
    assert "world_size: 2" in saved and "device_train_batch_size: 8" in saved
    assert os.path.isfile(summary["checkpoint"])


@pytest.mark.slow
def test_paper_recipe_without_data_names_make_c4_shards(tmp_path):
    result = subprocess.run(
        [sys.executable, "src/main.py", "yamls/base.yaml", f"data_local={tmp_path / 'c4'}", f"run_folder={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "make c4-shards" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_hf_bert_baseline_recipe_trains(clean_env, sample_root, tmp_path):
    overrides = [
        f"data_local={sample_root}", f"tokenizer_name={sample_root / 'tokenizer'}", f"run_folder={tmp_path / 'hf'}",
        "max_seq_len=64", "model.model_config.hidden_size=64", "model.model_config.num_hidden_layers=2",
        "model.model_config.num_attention_heads=2", "model.model_config.intermediate_size=128",
        "global_train_batch_size=16", "device_train_microbatch_size=8", "max_duration=10ba", "eval_interval=10ba",
        "eval_subset_num_batches=2", "eval_first=true", "train_loader.num_workers=0", "eval_loader.num_workers=0",
        "optimizer.lr=3e-3", "scheduler.t_warmup=0ba", f"save_folder={tmp_path / 'hf' / 'ckpt'}", "save_interval=10ba",
        "progress_bar=false", "log_to_console=false", "callbacks.speed_monitor.window_size=2",
    ]
    config = load_config(REPO / "yamls" / "pretrain" / "hf-bert-base.yaml", overrides)
    assert config.precision == "fp32"  # the recipe's amp_bf16, on this CPU
    summary = train(config)
    assert summary["batches"] == 10
    assert summary["last_eval"]["eval/LanguageCrossEntropy"] < summary["first_eval"]["eval/LanguageCrossEntropy"]
    state = torch.load(summary["checkpoint"], map_location="cpu", weights_only=False)
    assert state["state"]["model"]["model.bert.embeddings.word_embeddings.weight"].shape == (2048, 64)  # vocab_multiple 1
