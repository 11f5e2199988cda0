"""The Hugging Face BERT baseline (`hf_bert`): `BertForMaskedLM` inside Composer's HuggingFaceModel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import HuggingFaceModel
from transformers import BertConfig, BertForMaskedLM
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from mosaicbert.errors import ConfigError
from mosaicbert.model.loading import (check_config_keys, check_model_name, check_vocabulary, folder_model_name,
                                     with_vocab_size)


class ComposerHFBert(HuggingFaceModel):
    """HuggingFaceModel that also counts training FLOPs, so SpeedMonitor can report MFU."""

    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        # HF BERT computes on every position, padding included, and projects all of them to the vocabulary.
        config = self.model.config
        batch_size, seq_len = batch["input_ids"].shape
        tokens = batch_size * seq_len
        dense_params = sum(p.numel() for n, p in self.model.named_parameters() if "embeddings" not in n)
        decoder = config.hidden_size * config.vocab_size  # tied to the word embeddings, so not in dense_params
        attention = 2 * 2 * config.num_hidden_layers * config.hidden_size * seq_len  # QK^T and AV, per token
        return 3 * tokens * (2 * (dense_params + decoder) + attention)  # forward + 2x backward


def mlm_metrics() -> list[Any]:
    return [LanguageCrossEntropy(ignore_index=-100), MaskedAccuracy(ignore_index=-100)]


def build_hf_bert(
    tokenizer,
    pretrained_model_name: str = "bert-base-uncased",
    use_pretrained: bool = False,
    model_config: dict[str, Any] | None = None,
    vocab_multiple: int = 1,
    gradient_checkpointing: bool = False,
) -> ComposerHFBert:
    """Build `BertForMaskedLM`: from `pretrained_model_name`'s weights when `use_pretrained`, else freshly
    initialised from a `BertConfig` (the Hugging Face defaults, i.e. BERT-Base, updated by `model_config`).

    The vocabulary matches the tokenizer, rounded up to `vocab_multiple` (the reference baseline
    keeps bert-base-uncased's 30522, i.e. multiple 1).
    """
    overrides = dict(model_config or {})
    if use_pretrained:
        if Path(pretrained_model_name).is_dir():  # else a hub id, which transformers checks itself
            found = folder_model_name(Path(pretrained_model_name))
            check_model_name(pretrained_model_name, found, "hf_bert", "the YAML says model.name")
        model = BertForMaskedLM.from_pretrained(pretrained_model_name, **overrides)
        check_vocabulary(model.config.vocab_size, tokenizer, pretrained_model_name, vocab_multiple)
        if model.config.vocab_size % vocab_multiple:
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=vocab_multiple)
    else:
        check_config_keys(overrides, BertConfig)
        config = BertConfig(pad_token_id=tokenizer.pad_token_id, **with_vocab_size(overrides, tokenizer, vocab_multiple))
        model = BertForMaskedLM(config)
    # The training entry sets model_max_length to the run's max_seq_len; a tokenizer loaded without it says "unbounded".
    if VERY_LARGE_INTEGER > tokenizer.model_max_length > model.config.max_position_embeddings:
        raise ConfigError(f"max_seq_len={tokenizer.model_max_length} does not fit hf_bert's position table of "
                          f"{model.config.max_position_embeddings} (model.model_config.max_position_embeddings); "
                          "lower max_seq_len or enlarge the table (MosaicBERT's ALiBi has no such limit).")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return ComposerHFBert(model, tokenizer=tokenizer, use_logits=True, metrics=mlm_metrics(), eval_metrics=mlm_metrics())
