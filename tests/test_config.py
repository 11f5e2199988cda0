from __future__ import annotations

import pytest

from mosaicbert.builders import validate_entries
from mosaicbert.config import load_config
from mosaicbert.errors import ConfigError

from conftest import DEMO_YAML


def load(*overrides: str):
    """The demo recipe as the training entry checks it: the config, then its registry entries."""
    config = load_config(DEMO_YAML, list(overrides))
    validate_entries(config)
    return config


def test_demo_config_resolves_with_cpu_defaults(clean_env):
    config = load()
    assert config.device == "cpu"
    assert config.precision == "fp32"
    assert config.device_train_batch_size == 32
    assert config.device_train_microbatch_size == 32
    assert config.tokenizer_name == "data/sample/tokenizer"  # interpolated from data_local
    assert config.train_loader.local == "data/sample"  # filled from data_local
    assert config.run_folder == "runs/demo"
    assert config.save_folder == "runs/demo/checkpoints"


def test_missing_microbatch_is_filled_from_device_batch(clean_env):
    config = load("device_train_microbatch_size=null")
    assert config.device_train_microbatch_size == 32
    assert config.filled_defaults["device_train_microbatch_size"] == 32
    assert config.filled_defaults["precision"] == "fp32"


def test_an_explicit_auto_microbatch_stays_auto_on_a_gpu(clean_env, monkeypatch):
    """Composer adapts it on the fly there; this package's reading of the config refused it until the pydantic one."""
    from mosaicbert import config as config_module

    monkeypatch.setattr(config_module, "cuda_available", lambda: True)
    config = load("device=gpu", "precision=amp_bf16", "device_train_microbatch_size=auto")
    assert config.device_train_microbatch_size == "auto" and config.device_eval_batch_size == 32


def test_gpu_precision_falls_back_to_fp32_on_cpu_and_says_so(clean_env):
    config = load("precision=amp_bf16")
    assert config.precision == "fp32"
    assert "amp_bf16 needs a GPU" in config.filled_defaults["precision"]


def test_auto_microbatch_becomes_an_integer_on_cpu(clean_env):
    assert load("device_train_microbatch_size=auto").device_train_microbatch_size == 32


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_duraton=10ba", "unknown key 'max_duraton'. Did you mean 'max_duration'?"),
        ("train_loader.mlm_probabilty=0.2", "unknown key 'train_loader.mlm_probabilty'. Did you mean 'train_loader.mlm_probability'?"),
        ("global_train_batch_size=lots", "global_train_batch_size: expected int, got str 'lots'"),
        ("train_loader.shuffle=3", "train_loader.shuffle: expected bool"),
        ("device_train_microbatch_size=5", "not divisible by world size 1 x device_train_microbatch_size 5"),
        ("precision=bf16", "precision 'bf16' is unknown; use one of fp32, amp_bf16, amp_fp16"),
        ("optimizer.name=decoupled_adam", "unknown optimizer 'decoupled_adam'. Did you mean 'decoupled_adamw'?"),
        ("optimizer.betaz=[0.9,0.9]", "optimizer 'decoupled_adamw' has no argument 'betaz'. Did you mean 'betas'?"),
        ("callbacks.speed_moniter={}", "unknown callback 'speed_moniter'. Did you mean 'speed_monitor'?"),
        ("scheduler.t_warmpu=0.1dur", "has no argument 't_warmpu'. Did you mean 't_warmup'?"),
        ("model.name=hf_bret", "unknown model 'hf_bret'. Did you mean 'hf_bert'?"),
        ("model.tokenizer=x", "model.tokenizer: set by the trainer"),
        ("train_loader.mlm_probability=1.5", "mlm_probability must lie in (0, 1)"),
        ("autoresume=true", None),  # valid: demo has a save_folder
        ("autoresume=true save_folder=null", "autoresume=true needs save_folder"),
        ("maxduration", "is not of the form key=value"),
    ],
)
def test_bad_config_fails_with_a_precise_message(clean_env, override, message):
    overrides = override.split(" ")
    if message is None:
        load(*overrides)
        return
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    assert message in str(err.value)


def test_global_batch_must_divide_by_world_size(clean_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        load()


def test_batch_arithmetic_uses_world_size(clean_env, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load("device_train_microbatch_size=8")
    assert config.device_train_batch_size == 16
    with pytest.raises(ConfigError, match="world size 2 x device_train_microbatch_size 32 = 64"):
        load("device_train_microbatch_size=32")


def test_missing_required_key(clean_env, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("tokenizer_name: x\n")
    with pytest.raises(ConfigError, match="missing required key 'model'"):
        load_config(path)


def test_missing_config_file_names_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="yamls/"):
        load_config(tmp_path / "nope.yaml")


def test_recipes_all_validate(clean_env):
    from pathlib import Path

    for path in sorted(Path(DEMO_YAML).parent.rglob("*.yaml")):
        if "starting_checkpoint" in path.read_text() or path.parent.name == "sweeps":
            continue  # GLUE configs, checked in test_glue.py; sweeps in test_sweep.py
        config = load_config(path)  # GPU recipes validate as they would run on this CPU
        validate_entries(config)
        assert config.max_duration
