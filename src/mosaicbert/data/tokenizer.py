"""Tokenizers: a hub name or local directory, and an offline WordPiece trainer."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

from mosaicbert.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first: pad id 0, as in BERT


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Round up to a multiple (30522 -> 30528 for 64): matmuls on GPUs like aligned widths."""
    if multiple < 1:
        raise ValueError(f"vocab multiple must be >= 1, got {multiple}")
    return -(-vocab_size // multiple) * multiple


def build_tokenizer(name_or_path: str, max_seq_len: int) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory or the Hugging Face hub (cached after the first time)."""
    # Hub ids are "name" or "org/name"; anything else that does not exist is a missing local folder.
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise UserError(
            f"tokenizer directory {name_or_path} does not exist. Build the offline tokenizer with "
            "`make sample-shards`, or set tokenizer_name to a hub name such as bert-base-uncased."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, model_max_length=max_seq_len)
    except OSError as err:
        raise UserError(
            f"could not load tokenizer '{name_or_path}' ({err.__class__.__name__}: {str(err).splitlines()[0]}). "
            "If the Hugging Face hub is unreachable: run once with network access so it is cached and set "
            "HF_HUB_OFFLINE=1, or use a local tokenizer directory (tokenizer_name=data/sample/tokenizer, "
            "built offline by `make sample-shards`)."
        ) from None
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise UserError(f"tokenizer '{name_or_path}' has no [MASK] or [PAD] token; MLM needs both.")
    return tokenizer


def train_wordpiece_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int) -> BertTokenizerFast:
    """Train an uncased BERT-style WordPiece tokenizer and save it as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=True,
    )
    wrapped.save_pretrained(str(out_dir))
    return wrapped
