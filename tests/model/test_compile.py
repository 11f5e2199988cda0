"""torch.compile: `compile_config` in the training YAML, and compiled MosaicBERT against eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mosaicbert.bench.lengths import LengthProfile, make_batches
from mosaicbert.config import load_config
from mosaicbert.errors import ConfigError
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
from mosaicbert.train import build_trainer

from conftest import DEMO_YAML, tiny_overrides


@pytest.mark.slow
def test_compiled_and_eager_agree_in_outputs_and_gradients():
    """Inductor on CPU with dynamic shapes: batches of different real-token counts, fp32, no dropout."""
    torch.manual_seed(0)
    config = MosaicBertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = MosaicBertForMaskedLM(config)
    compiled = torch.compile(model, dynamic=True)
    profile = LengthProfile("t", "test", np.array([6, 11, 23, 32]))
    for batch in make_batches(profile, num_batches=2, batch_size=4, seq_len=32, vocab_size=256,
                              mlm_probability=0.3, seed=3):
        results = []
        for forward in (compiled, model):
            model.zero_grad(set_to_none=True)
            out = forward(**batch)
            out.loss.backward()
            results.append((out.loss.detach(), out.logits.detach(), [p.grad.clone() for p in model.parameters()]))
        (loss_c, logits_c, grads_c), (loss_e, logits_e, grads_e) = results
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits_c, logits_e, rtol=1e-5, atol=1e-5)
        for g_c, g_e in zip(grads_c, grads_e):
            torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_config_reaches_composer(clean_env, sample_root, tmp_path):
    config = load_config(DEMO_YAML, tiny_overrides(sample_root, tmp_path / "run") + ["compile_config={dynamic: true}"])
    assert config.compile_config == {"dynamic": True}
    trainer, _ = build_trainer(config)
    try:  # Composer wraps the model's forward in dynamo (compilation itself happens at the first batch)
        assert hasattr(trainer.state.model.forward, "_torchdynamo_orig_callable")
    finally:
        trainer.close()


def test_a_misspelt_compile_argument_is_named(sample_root, tmp_path):
    with pytest.raises(ConfigError, match="torch.compile has no argument 'dynamc'. Did you mean 'dynamic'"):
        load_config(DEMO_YAML, tiny_overrides(sample_root, tmp_path / "run") + ["compile_config={dynamc: true}"])
