"""Tokenizers: loading one by hub name or folder, training BERT-style ones, and measuring them.

A trained tokenizer is BERT's in everything but, optionally, its vocabulary model: BERT's normaliser
(uncased: lowercased and accents stripped; cased: both kept), its pre-tokenizer (whitespace and
punctuation), the special tokens [PAD]=0, [UNK], [CLS], [SEP], [MASK], and its post-processor
("[CLS] A [SEP]"; pairs "[CLS] A [SEP] B [SEP]" with token type 1 for B). The vocabulary model is
WordPiece (BERT's), BPE (with WordPiece's "##" continuation prefix, so it decodes the same way), or
unigram (its pieces carry no continuation mark, so word starts are marked "▁" as in SentencePiece).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mosaicbert.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] first: pad id 0, as in BERT
ALGORITHMS = ("wordpiece", "bpe", "unigram")
# The recipes' model.vocab_multiple: the model pads its vocabulary to a multiple of it, so a trained
# vocabulary of such a size fills every embedding row.
VOCAB_MULTIPLE = 64
# WordPiece and BPE keep this many of the most frequent characters (BERT's trainers' default);
# rarer ones become [UNK] instead of each taking a vocabulary entry.
ALPHABET_LIMIT = 1000
REPORT = "tokenizer_report.json"
EVAL_BATCH = 256  # documents per tokenizer call when measuring


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Round up to a multiple (30522 -> 30528 for 64): matmuls on GPUs like aligned widths."""
    if multiple < 1:
        raise ValueError(f"vocab multiple must be >= 1, got {multiple}")
    return -(-vocab_size // multiple) * multiple


def vocab_size_to_train(requested: int) -> int:
    """The size to train: `requested` rounded up to VOCAB_MULTIPLE, as the model rounds its vocabulary."""
    if requested <= len(SPECIAL_TOKENS):
        raise UserError(f"--vocab-size {requested} leaves no room for ordinary tokens beside the "
                        f"{len(SPECIAL_TOKENS)} special tokens ({' '.join(SPECIAL_TOKENS)}); ask for more, e.g. "
                        "30522 as BERT, or a few thousand for a small experiment.")
    return padded_vocab_size(requested, VOCAB_MULTIPLE)


def load_tokenizer(name_or_path: str, max_seq_len: int) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory or the Hugging Face hub (cached after the first time)."""
    # Hub ids are "name" or "org/name"; anything else that does not exist is a missing local folder.
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise UserError(
            f"tokenizer directory {name_or_path} does not exist. Build the offline tokenizer with "
            "`make sample-shards` or your own with `make tokenizer`, or give a hub name such as bert-base-uncased."
        )
    try:
        return AutoTokenizer.from_pretrained(name_or_path, model_max_length=max_seq_len)
    except OSError as err:
        raise UserError(
            f"could not load tokenizer '{name_or_path}' ({err.__class__.__name__}: {str(err).splitlines()[0]}). "
            "If the Hugging Face hub is unreachable: run once with network access so it is cached and set "
            "HF_HUB_OFFLINE=1, or use a local tokenizer directory (tokenizer_name=data/sample/tokenizer, "
            "built offline by `make sample-shards`)."
        ) from None


def build_tokenizer(name_or_path: str, max_seq_len: int) -> PreTrainedTokenizerBase:
    """A tokenizer for masked-language modelling: `load_tokenizer`, checked for [MASK] and [PAD]."""
    tokenizer = load_tokenizer(name_or_path, max_seq_len)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise UserError(f"tokenizer '{name_or_path}' has no [MASK] or [PAD] token; MLM needs both.")
    return tokenizer


# --------------------------------------------------------------------------- training


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int, algorithm: str = "wordpiece",
                    cased: bool = False) -> PreTrainedTokenizerFast:
    """Train a BERT-style tokenizer on `texts` and save it as a transformers fast-tokenizer folder.

    The texts are streamed: the trainer keeps word counts, not the texts. The vocabulary holds at most
    `vocab_size` tokens; fewer when the texts have too few distinct words and pieces for more."""
    from tokenizers import processors

    backend, trainer = _untrained(algorithm, vocab_size, cased)
    try:
        backend.train_from_iterator(texts, trainer=trainer)
    except Exception as err:  # noqa: BLE001  (the Rust trainers raise plain Exception; reading errors pass through)
        if "not large enough to contain all chars" not in str(err):
            raise
        raise UserError(f"a {vocab_size}-token vocabulary is smaller than the number of distinct characters in "
                        "the training documents, and the unigram trainer keeps every character. Raise --vocab-size, "
                        f"or use --algorithm wordpiece or bpe, which keep the {ALPHABET_LIMIT} most frequent "
                        "characters and make the rest [UNK].") from None
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, backend.token_to_id(token)) for token in ("[CLS]", "[SEP]")],
    )
    roles = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    if algorithm == "wordpiece":  # BERT's own class: `tokenizer_class` and vocab.txt as BERT's
        wrapped = BertTokenizerFast(tokenizer_object=backend, do_lower_case=not cased, strip_accents=not cased,
                                    **roles)
    else:
        wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def train_wordpiece_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int) -> BertTokenizerFast:
    """Train an uncased BERT WordPiece tokenizer (the offline sample corpus's) and save it."""
    return train_tokenizer(texts, out_dir, vocab_size, "wordpiece")


def _untrained(algorithm: str, vocab_size: int, cased: bool) -> tuple[Any, Any]:
    """A tokenizers pipeline with BERT's normaliser and pre-tokenizer, and its trainer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    special = list(SPECIAL_TOKENS)
    # Each kept character can also need its "##" continuation form; half the room at most goes to them.
    alphabet = min(ALPHABET_LIMIT, (vocab_size - len(special)) // 2)
    if algorithm == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, limit_alphabet=alphabet,
                                            show_progress=False)
        backend.pre_tokenizer, backend.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    elif algorithm == "bpe":
        backend = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, limit_alphabet=alphabet,
                                      continuing_subword_prefix="##", show_progress=False)
        backend.pre_tokenizer, backend.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    elif algorithm == "unigram":
        backend = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token="[UNK]",
                                          show_progress=False)
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace()])
        backend.decoder = decoders.Metaspace()
    else:
        raise ValueError(f"unknown tokenizer algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=not cased, lowercase=not cased)
    return backend, trainer


# --------------------------------------------------------------------------- measuring


@dataclass
class TokenCounts:
    """How a tokenizer cuts a set of documents (special tokens left out)."""

    tokenizer: str
    documents: int = 0
    words: int = 0  # whitespace-separated
    tokens: int = 0
    unknown: int | None = 0  # None: the tokenizer has no unknown token (byte-level ones need none)

    @property
    def fertility(self) -> float:
        """Tokens per whitespace-separated word."""
        return self.tokens / max(self.words, 1)

    @property
    def unknown_rate(self) -> float | None:
        """The share of tokens that are the unknown token."""
        return None if self.unknown is None else self.unknown / max(self.tokens, 1)

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), fertility=self.fertility, unknown_rate=self.unknown_rate)


def count_tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], name: str) -> TokenCounts:
    counts = TokenCounts(name, unknown=None if tokenizer.unk_token_id is None else 0)
    for start in range(0, len(texts), EVAL_BATCH):
        batch = texts[start:start + EVAL_BATCH]
        for text, ids in zip(batch, tokenizer(batch, add_special_tokens=False)["input_ids"]):
            counts.documents += 1
            counts.words += len(text.split())
            counts.tokens += len(ids)
            if counts.unknown is not None:
                counts.unknown += ids.count(tokenizer.unk_token_id)
    return counts


# --------------------------------------------------------------------------- training on a corpus


@dataclass(frozen=True)
class TrainingRequest:
    vocab_size: int  # as asked; trained at vocab_size_to_train(vocab_size)
    algorithm: str = "wordpiece"
    cased: bool = False
    max_docs: int | None = None  # training documents; None: all of them
    max_eval_docs: int = 2000


@dataclass
class TokenizerReport:
    out: str
    source: str
    algorithm: str
    cased: bool
    documents: int  # training documents used
    vocab_size_requested: int
    vocab_size_target: int  # rounded up to VOCAB_MULTIPLE
    vocab_size: int  # trained: len(tokenizer)
    model_vocab_size: int  # what the model pads the trained vocabulary to
    training_seconds: float
    validation_split: str  # how validation documents were chosen
    evaluation: list[dict[str, Any]] = field(default_factory=list)  # TokenCounts.as_dict(), new tokenizer first

    def lines(self) -> list[str]:
        out = [f"trained a {self.algorithm} tokenizer ({'cased' if self.cased else 'uncased'}) on {self.documents:,} "
               f"documents from {self.source} in {self.training_seconds:.1f} s -> {self.out}"]
        if self.vocab_size < self.vocab_size_target:
            out.append(f"vocabulary: {self.vocab_size:,} tokens, fewer than the {self.vocab_size_target:,} trained "
                       "for: the training documents hold too few distinct words and pieces for more. The model pads "
                       f"it to {self.model_vocab_size:,} rows (a multiple of {VOCAB_MULTIPLE}); train on more "
                       "documents for the full vocabulary.")
        else:
            out.append(f"vocabulary: {self.vocab_size:,} tokens (the model's {self.model_vocab_size:,} rows)")
        if not self.evaluation:
            out.append(f"no validation documents to measure on (validation {self.validation_split}); raise "
                       "--val-fraction or --max-eval-docs, or name a validation split in the input.")
            return out
        out.append(f"on {self.evaluation[0]['documents']:,} validation documents (validation {self.validation_split}):")
        width = max(len("tokenizer"), *(len(row["tokenizer"]) for row in self.evaluation))
        out.append(f"  {'tokenizer':<{width}}  {'fertility':>9}  {'unknown':>8}  {'tokens':>12}")
        for row in self.evaluation:
            unknown = "n/a" if row["unknown_rate"] is None else f"{row['unknown_rate']:.3%}"
            out.append(f"  {row['tokenizer']:<{width}}  {row['fertility']:>9.3f}  {unknown:>8}  {row['tokens']:>12,}")
        return out


def train_on_corpus(out_dir: Path, name: str, texts: Iterator[str], source: str, held_out: Callable[[], Iterator[str]],
                    request: TrainingRequest, compare: tuple[str, PreTrainedTokenizerBase] | None,
                    validation_split: str) -> TokenizerReport:
    """Train on the training documents' `texts` (read from `source`), save to `out_dir` (the folder `name`
    once in place), and measure the result (and `compare`, a named reference tokenizer) on up to
    `request.max_eval_docs` documents from `held_out()`. The report goes to `<out_dir>/tokenizer_report.json` too."""
    from mosaicbert.files import write_json_atomically

    target = vocab_size_to_train(request.vocab_size)
    training = TrainingTexts(texts, source, request.max_docs)
    start = time.perf_counter()
    tokenizer = train_tokenizer(training, out_dir, target, request.algorithm, request.cased)
    report = TokenizerReport(
        out=name, source=source, algorithm=request.algorithm, cased=request.cased, documents=training.taken,
        vocab_size_requested=request.vocab_size, vocab_size_target=target, vocab_size=len(tokenizer),
        model_vocab_size=padded_vocab_size(len(tokenizer), VOCAB_MULTIPLE),
        training_seconds=time.perf_counter() - start, validation_split=validation_split)
    evaluation_texts = _bounded(held_out(), request.max_eval_docs) if request.max_eval_docs else []
    if evaluation_texts:
        measured = [(f"{Path(name).name} (new)", tokenizer), *([compare] if compare else [])]
        report.evaluation = [count_tokens(tok, evaluation_texts, label).as_dict() for label, tok in measured]
    write_json_atomically(out_dir / REPORT, asdict(report))
    return report


class TrainingTexts:
    """Texts for the trainer, at most `max_docs`, with progress in documents per second; `taken` counts them.
    The first is read before training starts, so a corpus without one fails at once."""

    def __init__(self, texts: Iterator[str], source: str, max_docs: int | None):
        from tqdm import tqdm

        self.texts = iter(texts)
        self.max_docs = max_docs
        self.taken = 0
        self.first = next(self.texts, None)
        if self.first is None:
            raise UserError(f"no training documents in {source}: every document is empty or went to validation; "
                            "check the inputs, or lower --val-fraction.")
        self.progress = tqdm(total=max_docs, desc="training documents", unit="doc", dynamic_ncols=True)

    def __iter__(self) -> Iterator[str]:
        text = self.first
        while text is not None and (self.max_docs is None or self.taken < self.max_docs):
            yield text
            self.taken += 1
            self.progress.update()
            text = next(self.texts, None)
        self.progress.close()
        print(f"read {self.taken:,} training documents; computing the vocabulary", flush=True)


def _bounded(texts: Iterator[str], limit: int) -> list[str]:
    """Up to `limit` texts, with progress: the validation sample, kept in memory to measure every tokenizer on."""
    from tqdm import tqdm

    kept: list[str] = []
    with tqdm(total=limit, desc="validation documents", unit="doc", dynamic_ncols=True) as progress:
        for text in texts:
            kept.append(text)
            progress.update()
            if len(kept) == limit:
                break
    return kept
