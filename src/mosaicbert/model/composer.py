"""The two pretraining models as Composer models, registered for `model: {name: ...}` in YAML (builders.py).

- `mosaic_bert`: MosaicBertForMaskedLM, with sparse MLM metrics (masked tokens only) and a FLOP count of
  what it computes (real tokens, the head on masked tokens), so SpeedMonitor reports MFU.
- `hf_bert`, the baseline: Hugging Face `BertForMaskedLM` inside Composer's HuggingFaceModel, with a FLOP
  count of what it computes (every position, padding included).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import ComposerModel, HuggingFaceModel
from transformers import BertConfig, BertForMaskedLM
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

from mosaicbert.errors import ConfigError
from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
from mosaicbert.model.loading import (check_config_keys, check_model_name, check_vocabulary, folder_model_name,
                                     load_masked_lm, resolve_source, with_vocab_size)
from mosaicbert.model.modeling_mosaicbert import (
    IGNORE_INDEX,
    MosaicBertForMaskedLM,
    MosaicBertMaskedLMOutput,
    unpad,
)

# --------------------------------------------------------------------------- mosaic_bert


class ComposerMosaicBert(ComposerModel):
    """Training and evaluation metrics are computed on the sparse logits of masked tokens only."""

    def __init__(self, model: MosaicBertForMaskedLM, tokenizer: Any = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.train_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(), "MaskedAccuracy": MaskedAccuracy()}
        self.eval_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(), "MaskedAccuracy": MaskedAccuracy()}
        # Called with the replaced parameters when loading a checkpoint reshapes the model (see set_extra_state).
        self.reshape_hooks: list[Callable[[list], None]] = []

    def get_extra_state(self) -> dict[str, Any]:
        """The model's widths travel with every checkpoint, so a structurally pruned run resumes."""
        config = self.model.config
        return {"head_indices_per_layer": config.head_indices_per_layer,
                "intermediate_size_per_layer": config.intermediate_size_per_layer}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Runs before the submodules load their weights, so they can take the checkpoint's shapes first.
        config = self.model.config
        heads, units = state.get("head_indices_per_layer"), state.get("intermediate_size_per_layer")
        if (heads, units) == (config.head_indices_per_layer, config.intermediate_size_per_layer):
            return
        from mosaicbert.model.pruning import reshape_to

        replaced = reshape_to(self.model, heads, units)
        for hook in self.reshape_hooks:
            hook(replaced)

    def forward(self, batch: dict[str, torch.Tensor]) -> MosaicBertMaskedLMOutput:
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            token_type_ids=batch.get("token_type_ids"),
            labels=batch["labels"],
        )

    def loss(self, outputs: MosaicBertMaskedLMOutput, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs.loss

    def eval_forward(self, batch: dict[str, torch.Tensor], outputs: Any = None) -> MosaicBertMaskedLMOutput:
        return outputs if outputs is not None else self.forward(batch)

    def get_metrics(self, is_train: bool = False) -> dict[str, Any]:
        return self.train_metrics if is_train else self.eval_metrics

    def update_metric(self, batch: dict[str, torch.Tensor], outputs: MosaicBertMaskedLMOutput, metric: Any) -> None:
        metric.update(outputs.logits, outputs.labels)

    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return mlm_training_flops(self.model, batch["attention_mask"], batch["labels"])


def mlm_training_flops(model: MosaicBertForMaskedLM, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """Forward + backward FLOPs (3x forward) of one MLM batch, counting what the model computes:
    real tokens only, every layer's widths as they are (pruned or not), the last layer after
    attention, the head and the vocabulary on masked tokens only."""
    seqlens = unpad(attention_mask).seqlens.long()  # per document when rows are packed
    tokens = int(seqlens.sum())
    squares = int((seqlens**2).sum())
    masked = masked_tokens(attention_mask, labels)
    hidden = model.config.hidden_size
    layers = model.bert.encoder.layer
    forward = 0
    for i, layer in enumerate(layers):
        attn, mlp = layer.attention, layer.mlp
        inner = attn.num_heads * attn.head_dim
        rows_after_attention = masked if i == len(layers) - 1 else tokens
        forward += 2 * tokens * hidden * 3 * inner  # Wqkv
        forward += 2 * 2 * squares * inner  # QK^T and attention x V
        forward += 2 * rows_after_attention * (inner * hidden + 3 * mlp.intermediate_size * hidden)  # dense, GeGLU
    return 3 * forward + mlm_head_training_flops(model.config, masked)


def masked_tokens(attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    return int(((labels != IGNORE_INDEX) & attention_mask.bool()).sum())


def mlm_head_training_flops(config: MosaicBertConfig, masked: int) -> int:
    """Forward + backward FLOPs of the MLM head's transform and vocabulary decoder on `masked` tokens:
    the part of a step that EarlyBERT's pruning of heads and units leaves whole."""
    return 3 * 2 * masked * (config.hidden_size * config.hidden_size + config.hidden_size * config.vocab_size)


def build_mosaic_bert(
    tokenizer: Any,
    model_config: dict[str, Any] | None = None,
    vocab_multiple: int = 64,
    pretrained_model_name: str | None = None,
) -> ComposerMosaicBert:
    """MosaicBertForMaskedLM, MosaicBERT-Base unless `model_config` says otherwise, its vocabulary the
    tokenizer's rounded up to `vocab_multiple` (30522 -> 30528). `pretrained_model_name` takes architecture
    and weights from a Hugging Face folder or hub id (this package's export or the original
    mosaicml/mosaic-bert-base layout) or a Composer checkpoint, instead of initialising fresh ones."""
    overrides = dict(model_config or {})
    if "alibi_starting_size" in overrides:
        raise ConfigError("model.model_config.alibi_starting_size is no longer a setting: ALiBi distances are "
                          "computed per batch, for any length. Remove the key from the recipe.")
    check_config_keys(overrides, MosaicBertConfig)
    if pretrained_model_name is not None:
        model = load_masked_lm(resolve_source(pretrained_model_name), "mosaic_bert", **overrides)
        check_vocabulary(model.config.vocab_size, tokenizer, pretrained_model_name, vocab_multiple)
    else:
        overrides = with_vocab_size(overrides, tokenizer, vocab_multiple)
        model = MosaicBertForMaskedLM(MosaicBertConfig(pad_token_id=tokenizer.pad_token_id, **overrides))
    return ComposerMosaicBert(model, tokenizer)


# --------------------------------------------------------------------------- hf_bert


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
