"""A small GLUE-format task set made from the offline sample corpus, for `make glue-demo`.

Each of the 8 tasks keeps its real file layout (columns, header or not, label spelling) and
gets a label that can be learned from the text: acceptability is word order, sentiment is
an appended verdict, paraphrase and similarity are word overlap, inference is containment
or negation. The point is to exercise the whole flow offline, not to measure language skill.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import shutil
from pathlib import Path

from mosaicbert.data.prep import sample_corpus

POSITIVE = ("useful", "clear", "reliable", "fast", "elegant", "helpful")
NEGATIVE = ("broken", "confusing", "slow", "fragile", "wrong", "useless")


def sentences(texts: list[str]) -> list[list[str]]:
    """Docstrings split into sentences; a docstring's sentences stay together, in order."""
    docs = []
    for text in texts:
        parts = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
        parts = [p for p in parts if 6 <= len(p.split()) <= 40 and "\t" not in p]
        if parts:
            docs.append(parts)
    return docs


def _drop_words(sentence: str, rng: random.Random, keep: float) -> str:
    words = sentence.split()
    kept = [w for w in words if rng.random() < keep] or words[:1]
    return " ".join(kept)


def _negate(sentence: str) -> str:
    words = sentence.split()
    return " ".join(words[:1] + ["never"] + words[1:])


def make_rows(task: str, docs: list[list[str]], n: int, rng: random.Random) -> list[list[str]]:
    flat = [s for doc in docs for s in doc]
    pairs_in_doc = [doc for doc in docs if len(doc) >= 2]
    rows = []
    for i in range(n):
        s = rng.choice(flat)
        other = rng.choice(flat)
        if task == "CoLA":
            good = rng.random() < 0.5
            words = s.split()
            if not good:
                rng.shuffle(words)
            rows.append(["demo", str(int(good)), "" if good else "*", " ".join(words)])
        elif task == "SST-2":
            positive = rng.random() < 0.5
            verdict = rng.choice(POSITIVE if positive else NEGATIVE)
            rows.append([f"{s} This is {verdict}.", str(int(positive))])
        elif task in ("MRPC", "QQP"):
            same = rng.random() < 0.5
            second = _drop_words(s, rng, 0.85) if same else other
            if task == "MRPC":
                rows.append([str(int(same)), str(2 * i), str(2 * i + 1), s, second])
            else:
                rows.append([str(i), str(2 * i), str(2 * i + 1), s, second, str(int(same))])
        elif task == "STS-B":
            keep = rng.random()
            second = _drop_words(s, rng, keep) if rng.random() < 0.8 else other
            overlap = len(set(second.split()) & set(s.split())) / max(len(set(s.split())), 1)
            rows.append([str(i), "demo", "demo", "2026", str(i), "demo", "demo", s, second, f"{5 * overlap:.3f}"])
        elif task == "MNLI":
            doc = rng.choice(pairs_in_doc)
            j = rng.randrange(len(doc) - 1)
            premise = f"{doc[j]} {doc[j + 1]}"
            kind = rng.randrange(3)
            hypothesis = [doc[j + rng.randrange(2)], other, _negate(doc[j + rng.randrange(2)])][kind]
            label = ("entailment", "neutral", "contradiction")[kind]
            rows.append([str(i), str(i), str(i), "demo", "", "", "", "", premise, hypothesis, label, label])
        elif task in ("QNLI", "RTE"):
            doc = rng.choice(pairs_in_doc)
            j = rng.randrange(len(doc) - 1)
            follows = rng.random() < 0.5
            label = "entailment" if follows else "not_entailment"
            rows.append([str(i), doc[j], doc[j + 1] if follows else other, label])
        else:
            raise ValueError(task)
    return rows


HEADERS: dict[str, list[str] | None] = {
    "CoLA": None,
    "SST-2": ["sentence", "label"],
    "MRPC": ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],  # the real files start with a byte-order mark
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "STS-B": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
    "MNLI": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
}


@contextlib.contextmanager
def staged(out: Path):
    """A folder to write into, put in `out`'s place (replacing it) only once everything is written."""
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_demo_tasks(out_dir: str | os.PathLike, train_size: int = 320, dev_size: int = 96, seed: int = 0,
                     texts: list[str] | None = None) -> Path:
    """Write `<out_dir>/<TASK>/{train,dev}.tsv` (MNLI: dev_matched and dev_mismatched) atomically."""
    out = Path(out_dir)
    docs = sentences(texts if texts is not None else sample_corpus()["train"])
    half = len(docs) // 2
    with staged(out) as staging:
        for task, header in HEADERS.items():
            rng = random.Random(f"{seed}-{task}")
            folder = staging / task
            folder.mkdir(parents=True)
            # Training and dev sentences come from different halves of the corpus.
            files = [("train.tsv", docs[:half], train_size * (2 if task == "MNLI" else 1))]
            if task == "MNLI":
                files += [("dev_matched.tsv", docs[half:], dev_size), ("dev_mismatched.tsv", docs[half:][::-1], dev_size)]
            else:
                files.append(("dev.tsv", docs[half:], dev_size))
            for name, source, size in files:
                lines = ([header] if header else []) + make_rows(task, source, size, rng)
                (folder / name).write_text("".join("\t".join(row) + "\n" for row in lines), encoding="utf-8")
    return out


# Own-task demo (`make finetune-demo`): a 3-way topic classification in CSV and a small NER task in CoNLL,
# both learnable from the words that carry the label, like the GLUE demo tasks.
TOPICS = {"storage": ("disk", "file", "folder", "archive"), "network": ("socket", "server", "packet", "proxy"),
          "math": ("integer", "fraction", "matrix", "vector")}
ENTITIES = {"PER": ("Ada Lovelace", "Guido van Rossum", "Grace Hopper", "Alan Turing"),
            "ORG": ("Python Software Foundation", "Mozilla", "Apache Software Foundation"),
            "LOC": ("Amsterdam", "New York", "Zurich", "Cambridge")}


def _topic_rows(flat: list[str], n: int, rng: random.Random, first_id: int) -> list[list[str]]:
    rows = []
    for i in range(n):
        topic = rng.choice(sorted(TOPICS))
        rows.append([f"ex{first_id + i}", f"On the {rng.choice(TOPICS[topic])}: {rng.choice(flat)}", topic])
    return rows


def _ner_sentence(sentence: str, rng: random.Random) -> list[tuple[str, str]]:
    """A sentence's words tagged O, with an entity (IOB2) inserted at a random word boundary."""
    words = [(w, "O") for w in sentence.split()]
    kind = rng.choice(sorted(ENTITIES))
    name = rng.choice(ENTITIES[kind]).split()
    at = rng.randrange(len(words) + 1)
    return words[:at] + [(w, ("B-" if j == 0 else "I-") + kind) for j, w in enumerate(name)] + words[at:]


def write_own_demo_tasks(out_dir: str | os.PathLike, train_size: int = 240, dev_size: int = 60, seed: int = 0,
                         texts: list[str] | None = None) -> Path:
    """Write `<out_dir>/topic/{train,dev,test}.csv` and `<out_dir>/ner/{train,dev,test}.conll` atomically;
    training and dev/test sentences come from different halves of the corpus."""
    import csv
    import io

    out = Path(out_dir)
    docs = sentences(texts if texts is not None else sample_corpus()["train"])
    half = len(docs) // 2
    splits = {"train": ([s for d in docs[:half] for s in d], train_size),
              "dev": ([s for d in docs[half:] for s in d], dev_size), "test": ([s for d in docs[half:] for s in d], dev_size)}
    with staged(out) as staging:
        (staging / "topic").mkdir(parents=True)
        (staging / "ner").mkdir()
        first_id = 0
        for split, (flat, size) in splits.items():
            rng = random.Random(f"{seed}-{split}")
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows([["id", "text", "label"]] + _topic_rows(flat, size, rng, first_id))
            (staging / "topic" / f"{split}.csv").write_text(text.getvalue(), encoding="utf-8")
            first_id += size
            blocks = ["\n".join(f"{w} {t}" for w, t in _ner_sentence(rng.choice(flat), rng)) for _ in range(size)]
            (staging / "ner" / f"{split}.conll").write_text("-DOCSTART- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")
    return out


# Long-document demo (docs/long-context.md): documents of 600-2,000 tokens of corpus sentences whose label
# (4 classes) is named by two cue sentences, one after at least 128 tokens and one followed by at least 128 (a
# draw of 128-320, rounded up to whole sentences). No 128-token window (head, tail, or head+tail) reaches
# either cue; the whole document holds both.
LONG_OFFICES = ("harbor", "summit")
LONG_VERDICTS = ("approved", "rejected")
LONG_LENGTHS = (600, 2000)
CUE_DISTANCE = (128, 320)


def long_document(flat: list[str], count_tokens, rng: random.Random) -> tuple[str, str]:
    """(text, label): filler sentences, the office cue after at least 128-320 filler tokens (whole sentences, so
    a little more), more filler, the verdict cue, and at least 128-320 filler tokens after it; 600-2,000 tokens in all (counted with `count_tokens`,
    which adds up over sentences as a WordPiece tokenizer's counts do; drawn again when outside)."""
    office, verdict = rng.choice(LONG_OFFICES), rng.choice(LONG_VERDICTS)
    cues = (f"This case was opened by the {office} office.", f"In the end the case was {verdict}.")
    while True:
        target = rng.randrange(*LONG_LENGTHS)
        lead, trail = rng.randrange(*CUE_DISTANCE), rng.randrange(*CUE_DISTANCE)
        middle = max(0, target - lead - trail - sum(count_tokens(c) for c in cues))
        parts = [_filler(flat, count_tokens, lead, rng), cues[0], _filler(flat, count_tokens, middle, rng),
                 cues[1], _filler(flat, count_tokens, trail, rng)]
        if LONG_LENGTHS[0] <= sum(count_tokens(p) for p in parts if p) + 2 <= LONG_LENGTHS[1]:  # with [CLS], [SEP]
            return " ".join(p for p in parts if p), f"{office}-{verdict}"


def _filler(flat: list[str], count_tokens, at_least: int, rng: random.Random) -> str:
    """Whole sentences of at least `at_least` tokens."""
    chosen, tokens = [], 0
    while tokens < at_least:
        chosen.append(rng.choice(flat))
        tokens += count_tokens(chosen[-1])
    return " ".join(chosen)


def write_long_document_task(out_dir: str | os.PathLike, count_tokens, train_size: int = 400, dev_size: int = 200,
                             seed: int = 0, texts: list[str] | None = None) -> Path:
    """Write `<out_dir>/{train,dev}.csv` (id, text, label) atomically; training and dev filler come from
    different halves of the corpus."""
    import csv
    import io

    out = Path(out_dir)
    docs = sentences(texts if texts is not None else sample_corpus()["train"])
    half = len(docs) // 2
    splits = {"train": (docs[:half], train_size), "dev": (docs[half:], dev_size)}
    count_tokens = functools.lru_cache(maxsize=None)(count_tokens)  # sentences recur across documents
    with staged(out) as staging:
        staging.mkdir(parents=True, exist_ok=True)
        for split, (source, size) in splits.items():
            rng = random.Random(f"{seed}-long-{split}")
            flat = [s for d in source for s in d]
            rows = [[f"{split}{i}", *long_document(flat, count_tokens, rng)] for i in range(size)]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows([["id", "text", "label"]] + rows)
            (staging / f"{split}.csv").write_text(text.getvalue(), encoding="utf-8")
    return out
