"""MosaicBERT configuration (arXiv 2312.17482), in the Hugging Face `PretrainedConfig` style."""

from __future__ import annotations

from transformers import PretrainedConfig

ATTENTION_BACKENDS = ("auto", "flash_attn", "sdpa", "flex")


class MosaicBertConfig(PretrainedConfig):
    """Defaults are MosaicBERT-Base: 12 layers, hidden 768, 12 heads, GeGLU width 3072, vocabulary
    30528 (bert-base-uncased's 30522 padded to a multiple of 64). ALiBi has no maximum length, so
    there is no position table to size (`from_pretrained` accepts configs of the original release,
    which carry `alibi_starting_size`, and ignores it; a training recipe that sets it is refused).

    Args beyond BERT's:
        attention_backend: "auto" (FlashAttention-2 varlen for CUDA fp16/bf16 tensors when
            flash-attn is installed, else PyTorch SDPA), "flash_attn" (required; an error when it
            cannot run), "sdpa" (PyTorch scaled_dot_product_attention on padded tensors), or "flex"
            (FlexAttention on the packed tokens: ALiBi as a score modifier, sequences as a block mask;
            compiled on GPU; no attention dropout).
        head_indices_per_layer: for structurally pruned models (EarlyBERT), which of the original
            heads each layer kept, so surviving heads keep their original ALiBi slopes; None
            means every layer has all heads.
        intermediate_size_per_layer: GeGLU width of each layer for pruned models; None means
            `intermediate_size` everywhere.
    """

    model_type = "mosaic_bert"

    def __init__(
        self,
        vocab_size: int = 30528,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        attention_backend: str = "auto",
        classifier_dropout: float | None = None,
        head_indices_per_layer: list[list[int]] | None = None,
        intermediate_size_per_layer: list[int] | None = None,
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")
        if attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {attention_backend!r}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.attention_backend = attention_backend
        self.classifier_dropout = classifier_dropout
        self.head_indices_per_layer = head_indices_per_layer
        self.intermediate_size_per_layer = intermediate_size_per_layer

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_head_indices(self, layer: int) -> list[int]:
        """The original head numbers a layer keeps (all of them unless pruned)."""
        if self.head_indices_per_layer is not None:
            return list(self.head_indices_per_layer[layer])
        return list(range(self.num_attention_heads))

    def layer_intermediate_size(self, layer: int) -> int:
        if self.intermediate_size_per_layer is not None:
            return self.intermediate_size_per_layer[layer]
        return self.intermediate_size
