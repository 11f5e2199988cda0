"""Token-classification data (NER, tagging): CoNLL-style and JSONL files, words aligned to subwords and back.

Alignment: each word's first subword carries the word's tag; its other subwords, the special tokens and
the words cut off by `max_seq_len` are -100 (not trained on, not scored). This is the usual choice (BERT's
CoNLL-2003 setup); the prediction for a word is its first subword's. A word cut off by truncation gets the
tag "O" in the word-level predictions, so they stay as long as the sentence, and is counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mosaicbert.errors import UserError

IGNORE_INDEX = -100
OUTSIDE = "O"
TAGGING_METRICS = ("f1", "precision", "recall", "token_accuracy")  # what tagging_metrics returns


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None  # None: a test file without tags


def read_sentences(path: Path, tags_required: bool = True) -> list[Sentence]:
    """Sentences of a CoNLL-style file (a word per line, its tag in the last column, blank lines between
    sentences, `-DOCSTART-` lines skipped) or of JSONL (`{"tokens": [...], "tags": [...]}` per line). Without
    `tags_required` (a test file), words alone are read too: one column, or no "tags"."""
    if not path.is_file():
        raise UserError(f"token-classification file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first word
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t UTF-8.") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]  # \n and \r\n; U+2028 may sit inside a JSON string
    jsonl = path.suffix in (".jsonl", ".json")
    sentences = _read_jsonl(path, lines, tags_required) if jsonl else _read_conll(path, lines, tags_required)
    if not sentences:
        raise UserError(f"{path} holds no sentences.")
    return sentences


def _read_conll(path: Path, lines: list[str], tags_required: bool) -> list[Sentence]:
    sentences, words, tags, width = [], [], [], None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(words, tags if width > 1 else None))
                words, tags = [], []
            continue
        width = width or len(fields)
        if width < 2 and tags_required:
            raise UserError(f"{path}:{number}: a word without a tag; each line holds a word, optional feature "
                            "columns, and its tag last.")
        if len(fields) != width:
            raise UserError(f"{path}:{number}: {len(fields)} columns where the file's lines have {width} "
                            "(a word, optional feature columns, its tag last).")
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append(Sentence(words, tags if width > 1 else None))
    return sentences


def _read_jsonl(path: Path, lines: list[str], tags_required: bool) -> list[Sentence]:
    sentences = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            words, tags = record["tokens"], record["tags"] if tags_required or "tags" in record else None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: expected a JSON object with 'tokens' and 'tags' lists.") from None
        if tags is not None and len(words) != len(tags):
            raise UserError(f"{path}:{number}: {len(words)} tokens but {len(tags)} tags.")
        sentences.append(Sentence([str(w) for w in words], None if tags is None else [str(t) for t in tags]))
    return sentences


def label_names(train: list[Sentence]) -> list[str]:
    """The training data's tags, sorted, "O" first."""
    tags = {tag for sentence in train for tag in sentence.tags}
    return sorted(tags, key=lambda tag: (tag != OUTSIDE, tag))


def check_tags(sentences: list[Sentence], names: list[str], path: Path) -> None:
    """Every tag is in the label set; in IOB2 label sets, an I- tag continues an entity of its type."""
    known, iob2 = set(names), is_iob2(names)
    for number, sentence in enumerate(sentences, start=1):
        unknown = next((tag for tag in sentence.tags or () if tag not in known), None)
        if unknown is not None:
            raise UserError(f"{path}: tag {unknown!r} never occurs in the training data (its tags: "
                            f"{', '.join(names)}).")
        for before, tag in zip([OUTSIDE, *(sentence.tags or ())], sentence.tags or ()):
            if iob2 and tag.startswith("I-") and before[2:] != tag[2:]:
                raise UserError(f"{path}, sentence {number}: {tag} follows {before}, so the file is IOB1 or broken; "
                                "entity scores (seqeval, strict IOB2) need an entity to open with B-. Convert to IOB2.")


def is_iob2(names: list[str] | None, name_offender: bool = False):
    """Whether every tag is O, B-<type> or I-<type>; with `name_offender`, the first tag that is not."""
    offender = next((n for n in names or () if n != OUTSIDE and not (n[:2] in ("B-", "I-") and len(n) > 2)), None)
    return offender if name_offender else offender is None


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    word_ids: list[int | None]  # the word each subword belongs to; None for special tokens


def encode(tokenizer, sentence: Sentence, label_ids: dict[str, int], max_seq_len: int) -> Encoded:
    """Subwords of a pre-split sentence, the first subword of each word labelled with the word's tag (none
    labelled without tags)."""
    encoded = tokenizer(sentence.words, is_split_into_words=True, truncation=True, max_length=max_seq_len)
    word_ids = encoded.word_ids()
    labels, previous = [], None
    for word in word_ids:
        first = word is not None and word != previous and sentence.tags is not None
        labels.append(label_ids[sentence.tags[word]] if first else IGNORE_INDEX)
        previous = word
    return Encoded(encoded["input_ids"], labels, word_ids)


def word_tags(predicted: list[int], word_ids: list[int | None], num_words: int, names: list[str]) -> tuple[list[str], int]:
    """Each word's tag from its first subword's prediction; words truncation cut off get "O".
    Returns the tags and how many words were cut off."""
    tags: list[str | None] = [None] * num_words
    for label, word in zip(predicted, word_ids):
        if word is not None and tags[word] is None:
            tags[word] = names[label]
    cut = sum(tag is None for tag in tags)
    return [tag or OUTSIDE for tag in tags], cut


def tagging_metrics(gold: list[list[str]], predicted: list[list[str]], names=TAGGING_METRICS) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro) by seqeval in strict IOB2 mode (an entity is a B- tag and
    the I- tags of the same type that follow it; a stray I- tag opens none), and word-level accuracy; the
    ones in `names` (entity scores need IOB2 tags)."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    entity = {"f1": f1_score, "precision": precision_score, "recall": recall_score}
    scores = {name: float(entity[name](gold, predicted, mode="strict", scheme=IOB2, zero_division=0))
              for name in names if name in entity}
    if "token_accuracy" in names:
        words = sum(len(sentence) for sentence in gold)
        scores["token_accuracy"] = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)) / words
    return scores
