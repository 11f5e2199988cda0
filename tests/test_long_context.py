"""Long context: the 512 / 1024 / 2048-token recipes."""

from __future__ import annotations

import pytest
import yaml

from mosaicbert.config import load_config
from mosaicbert.train import train

from conftest import REPO, tiny_overrides

BASE = REPO / "yamls" / "base.yaml"
LENGTH_KEYS = {"run_name", "max_seq_len", "global_train_batch_size", "device_train_microbatch_size", "max_duration"}


def recipe(seq_len: int):
    return REPO / "yamls" / "pretrain" / f"mosaicbert-base-seqlen-{seq_len}.yaml"


@pytest.mark.parametrize("seq_len", [512, 1024, 2048])
def test_long_recipes_are_the_base_recipe_at_the_same_tokens_per_batch(clean_env, seq_len):
    base, long = (yaml.safe_load(path.read_text()) for path in (BASE, recipe(seq_len)))
    assert {k: v for k, v in long.items() if k not in LENGTH_KEYS} == {k: v for k, v in base.items() if k not in LENGTH_KEYS}
    config = load_config(recipe(seq_len), [])  # validates, with this machine's defaults filled in
    assert config.max_seq_len == seq_len
    assert config.global_train_batch_size * seq_len == 4096 * 128
    assert config.device_train_microbatch_size * seq_len == 128 * 128
    assert long["max_duration"] == "70000ba" and base["max_duration"] == f"{70000 * 4096}sp"


@pytest.mark.slow
def test_the_2048_recipe_trains_a_tiny_model_on_cpu(clean_env, sample_root, tmp_path):
    overrides = tiny_overrides(sample_root, tmp_path / "run", max_seq_len=2048, global_train_batch_size=4,
                               device_train_microbatch_size=2, max_duration="3ba", eval_interval="3ba",
                               save_interval="3ba", **{"train_loader.num_workers": 0, "eval_loader.num_workers": 0,
                                                       "tokenizer_name": sample_root / "tokenizer"})
    config = load_config(recipe(2048), overrides)
    assert config.max_seq_len == 2048 and config.precision == "fp32"  # the recipe's amp_bf16, on this CPU
    summary = train(config)
    assert summary["batches"] == 3
    assert 0 < summary["last_eval"]["eval/LanguageCrossEntropy"] < 20
