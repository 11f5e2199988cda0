"""Training your own tokenizer (data_prep/train_tokenizer.py): three algorithms, BERT's special tokens and
post-processor, the validation split the shard writer uses, vocabulary rounding, the report, bad input.

The corpora are generated here: words made of Latin (some accented) or Cyrillic syllables, so that the
trainers find shared pieces, and the cased/uncased normalisers have case and accents to keep or fold.
"""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer

import train_tokenizer
from mosaicbert.data.mlm import IGNORE_INDEX, MLMCollator
from mosaicbert.data.sources import Document, ReadStats, corpus_from_args
from mosaicbert.data.tokenizer import REPORT, SPECIAL_TOKENS, padded_vocab_size, train_tokenizer as train_backend
from mosaicbert.model.composer import build_mosaic_bert

from conftest import DEMO_YAML, tiny_overrides

LATIN = ["ka", "to", "ri", "mé", "lu", "sa", "ne", "pü", "dor", "an", "el", "vi", "ño", "ste", "gra", "qu"]
CYRILLIC = ["ка", "то", "ри", "ме", "лу", "са", "не", "дор", "ан", "ел", "ви", "но", "сте", "гра", "жи", "щу"]
TINY_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def make_documents(count: int, seed: int) -> list[str]:
    """Sentences of 2-3 syllable words, a third of the documents in Cyrillic, some words capitalised."""
    rng = random.Random(seed)
    documents = []
    for number in range(count):
        syllables = CYRILLIC if number % 3 == 0 else LATIN
        words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(rng.randint(8, 20))]
        words = [w.capitalize() if rng.random() < 0.2 else w for w in words]
        documents.append(" ".join(words) + rng.choice([".", "!", "?"]))
    return documents


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder with named splits: train.jsonl (300 documents) and validation.jsonl (60)."""
    root = tmp_path_factory.mktemp("corpus")
    write_jsonl(root / "train.jsonl", make_documents(300, seed=1))
    write_jsonl(root / "validation.jsonl", make_documents(60, seed=2))
    return root


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """A reference tokenizer for --compare: a small cased WordPiece one trained on the first documents."""
    folder = tmp_path_factory.mktemp("reference") / "ref"
    texts = [json.loads(line)["text"] for line in (corpus / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    train_backend(texts[:100], folder, 128, "wordpiece", cased=True)
    return folder


def run(*argv: str) -> int:
    return train_tokenizer.main([str(a) for a in argv])


def independent_counts(tokenizer_json: Path, texts: list[str]) -> tuple[float, float, int]:
    """Fertility, unknown rate and tokens counted with the raw `tokenizers` library, not transformers."""
    raw = Tokenizer.from_file(str(tokenizer_json))
    unknown_id = raw.token_to_id("[UNK]")
    encodings = raw.encode_batch(texts, add_special_tokens=False)
    tokens = sum(len(e.ids) for e in encodings)
    unknown = sum(e.ids.count(unknown_id) for e in encodings)
    words = sum(len(t.split()) for t in texts)
    return tokens / words, unknown / tokens, tokens


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe", "unigram"])
def test_each_algorithm_gives_a_bert_tokenizer_with_a_checked_report(algorithm, corpus, reference, tmp_path, capsys):
    out = tmp_path / "tok"
    assert run("--input", corpus, "--out", out, "--vocab-size", 300, "--algorithm", algorithm,
               "--compare", reference) == 0
    printed = capsys.readouterr().out
    assert "--vocab-size 300 rounded up to 320, a multiple of 64" in printed

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (0, 1, 4)
    pair = tokenizer("katori melu", "sane dor")
    ids, types = pair["input_ids"], pair["token_type_ids"]
    first_sep = ids.index(tokenizer.sep_token_id)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and first_sep < len(ids) - 1
    assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
    assert tokenizer.decode(tokenizer("katori melu sane")["input_ids"], skip_special_tokens=True) == "katori melu sane"

    report = json.loads((out / REPORT).read_text())
    assert report["algorithm"] == algorithm and report["documents"] == 300  # validation.jsonl is not trained on
    assert report["vocab_size"] == len(tokenizer) <= report["vocab_size_target"] == 320
    assert report["model_vocab_size"] == padded_vocab_size(len(tokenizer), 64)
    model = build_mosaic_bert(tokenizer, TINY_MODEL)  # the recipes' vocab_multiple: 64
    assert model.model.config.vocab_size == report["model_vocab_size"]

    validation = read_texts(corpus / "validation.jsonl")
    new, compared = report["evaluation"]
    assert new["documents"] == compared["documents"] == len(validation)
    for row, folder in ((new, out), (compared, reference)):
        fertility, unknown_rate, tokens = independent_counts(folder / "tokenizer.json", validation)
        assert row["tokens"] == tokens
        assert row["fertility"] == pytest.approx(fertility) and row["unknown_rate"] == pytest.approx(unknown_rate)
    # The reference's 128 tokens keep 61 characters (half the room beside the special tokens): the rest are [UNK].
    assert compared["tokenizer"] == str(reference) and compared["unknown_rate"] > 0
    assert f"{new['fertility']:.3f}" in printed and f"{compared['fertility']:.3f}" in printed

    # The MLM collator masks ordinary tokens only, and its random replacements come from this vocabulary.
    batch = tokenizer(validation[:4], padding=True, truncation=True, max_length=32, return_tensors="pt")
    collator = MLMCollator.for_tokenizer(tokenizer, mlm_probability=0.5)
    masked = collator([{k: v[i] for k, v in batch.items()} for i in range(4)])
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert (masked["labels"][special] == IGNORE_INDEX).all() and (masked["labels"] != IGNORE_INDEX).any()
    assert int(masked["input_ids"].max()) < len(tokenizer)


def strip_accents_and_lower(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def test_uncased_folds_case_and_accents_cased_keeps_them(corpus, tmp_path):
    text = "Жищу Mépü Ñostegra Доран"  # capitals only where the corpus has them (capitalised words)
    for cased in (False, True):
        out = tmp_path / f"cased-{cased}"
        assert run("--input", corpus, "--out", out, "--vocab-size", 256, *(["--cased"] if cased else [])) == 0
        tokenizer = AutoTokenizer.from_pretrained(out)
        normalised = tokenizer.backend_tokenizer.normalizer.normalize_str(text)
        assert normalised == (text if cased else strip_accents_and_lower(text))
        decoded = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
        assert decoded == normalised  # every character of it was seen in training: no [UNK]
        assert (tokenizer.tokenize("ДОРАН МЕПЮ") == tokenizer.tokenize("доран мепю")) is not cased
        assert json.loads((out / REPORT).read_text())["cased"] is cased


def key_by_formula(text: str) -> int:
    """The shard writer's document key, written out from its specification."""
    normalised = " ".join(unicodedata.normalize("NFC", text).split())
    return int.from_bytes(hashlib.blake2b(normalised.encode(), digest_size=8).digest(), "little")


def held_out_by_formula(texts: list[str], fraction: float) -> list[str]:
    """The shard writer's validation rule."""
    return [t for t in texts if key_by_formula(t) < fraction * 2**64]


def test_unnamed_input_holds_out_the_shard_writers_hash_split(tmp_path):
    texts = make_documents(200, seed=3)
    source = write_jsonl(tmp_path / "docs.jsonl", texts)
    validation = held_out_by_formula(texts, 0.2)
    assert 20 < len(validation) < 60
    out = tmp_path / "tok"
    assert run("--input", source, "--out", out, "--vocab-size", 256, "--val-fraction", 0.2) == 0
    report = json.loads((out / REPORT).read_text())
    assert report["documents"] == len(texts) - len(validation)
    assert report["evaluation"][0]["documents"] == len(validation)
    assert report["evaluation"][0]["tokens"] == independent_counts(out / "tokenizer.json", validation)[2]

    # --max-docs samples the training documents; --max-eval-docs caps the measured ones.
    assert run("--input", source, "--out", out, "--overwrite", "--vocab-size", 256, "--val-fraction", 0.2,
               "--max-docs", 50, "--max-eval-docs", 7) == 0
    report = json.loads((out / REPORT).read_text())
    assert report["documents"] == 50 and report["evaluation"][0]["documents"] == 7
    args = train_tokenizer.parse_args(["--input", str(source), "--out", str(out), "--val-fraction", "0.2",
                                       "--max-docs", "50"])
    drawn = list(train_tokenizer.training_texts(args, corpus_from_args(args, ReadStats()).documents, False))
    training = [t for t in texts if t not in validation]
    assert sorted(drawn) == sorted(sorted(training, key=key_by_formula)[-50:])  # the 50 highest keys
    assert max(map(texts.index, drawn)) > 0.9 * len(texts)  # from the whole file, not its first 50 documents
    doubled = [Document(text, None) for text in texts + texts]  # exact copies are trained on once
    assert sorted(train_tokenizer.training_texts(args, iter(doubled), False)) == sorted(drawn)
    assert report["evaluation"][0]["tokens"] == independent_counts(out / "tokenizer.json", validation[:7])[2]


def test_a_small_corpus_gives_a_smaller_vocabulary_and_says_so(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert run("--input", corpus, "--out", out, "--vocab-size", 8192) == 0
    report = json.loads((out / REPORT).read_text())
    assert report["vocab_size"] == len(AutoTokenizer.from_pretrained(out)) < report["vocab_size_target"] == 8192
    assert report["model_vocab_size"] == padded_vocab_size(report["vocab_size"], 64)
    assert "fewer than the 8,192 trained for" in capsys.readouterr().out


def test_overwrite_replaces_an_earlier_tokenizer(corpus, tmp_path):
    out = tmp_path / "tok"
    assert run("--input", corpus, "--out", out, "--vocab-size", 256) == 0
    assert run("--input", corpus, "--out", out, "--vocab-size", 256, "--algorithm", "bpe", "--overwrite") == 0
    assert json.loads((out / REPORT).read_text())["algorithm"] == "bpe"
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no staging or old folder left beside it


def bad_case(name: str, corpus: Path, tmp_path: Path) -> tuple[list, str]:
    """(arguments after --out, message fragment) of one bad-input case."""
    if name == "vocabulary too small for the special tokens":
        return ["--input", corpus, "--vocab-size", 5], "no room for ordinary tokens"
    if name == "unigram vocabulary smaller than the alphabet":
        ideographs = "".join(chr(0x4E00 + i) for i in range(100))  # 100 characters for 64 entries
        many = write_jsonl(tmp_path / "in" / "many.jsonl", [ideographs] * 10)
        return ["--input", many, "--vocab-size", 40, "--algorithm", "unigram"], "keeps every character"
    if name == "missing input":
        return ["--input", tmp_path / "nowhere.jsonl"], "no file or folder matches"
    if name == "no such text field":
        return ["--input", corpus, "--text-field", "body"], "no record has the text field 'body'"
    if name == "validation fraction of 1":
        return ["--input", corpus, "--val-fraction", 1], "--val-fraction 1.0 must be at least 0 and below 1"
    if name == "missing reference tokenizer":
        return ["--input", corpus, "--compare", tmp_path / "no-tokenizer"], "does not exist"
    if name == "every document held out":
        only = write_jsonl(tmp_path / "in" / "validation.jsonl", ["a b c"])
        return ["--input", only], "no training documents"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["vocabulary too small for the special tokens", "unigram vocabulary smaller than "
                                  "the alphabet", "missing input", "no such text field", "validation fraction of 1",
                                  "missing reference tokenizer", "every document held out"])
def test_bad_input_is_one_message_exit_2_and_nothing_written(name, corpus, tmp_path, capsys):
    arguments, message = bad_case(name, corpus, tmp_path)
    out = tmp_path / "out" / "tok"
    assert run(*arguments, "--out", out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not out.parent.exists() or not any(out.parent.iterdir())  # neither the folder nor a staging copy


def test_existing_folders_are_kept_unless_overwrite_names_a_tokenizer(corpus, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    assert run("--input", corpus, "--out", data) == 2
    assert "already exists; choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert run("--input", corpus, "--out", data, "--overwrite") == 2
    assert "is not a tokenizer folder" in capsys.readouterr().err
    assert [p.name for p in data.iterdir()] == ["train"]


@pytest.mark.slow
def test_trained_tokenizer_as_tokenizer_name_in_a_tiny_run(corpus, sample_root, clean_env, tmp_path):
    from mosaicbert.train import main as train_main

    out = tmp_path / "tok"
    assert run("--input", corpus, "--out", out, "--vocab-size", 300, "--algorithm", "unigram") == 0
    report = json.loads((out / REPORT).read_text())
    folder = tmp_path / "run"
    overrides = tiny_overrides(sample_root, folder, max_duration="2ba", save_interval="2ba", eval_interval="2ba")
    assert train_main([str(DEMO_YAML), *overrides, f"tokenizer_name={out}"]) == 0
    state = torch.load(folder / "checkpoints" / "ep0-ba2-rank0.pt", map_location="cpu", weights_only=False)
    embeddings = next(v for k, v in state["state"]["model"].items() if k.endswith("word_embeddings.weight"))
    assert embeddings.shape[0] == report["model_vocab_size"]


@pytest.mark.parametrize("source", ["--input", "--hf-dataset"])
def test_the_validation_sample_does_not_read_a_named_training_split(source, corpus):
    args = train_tokenizer.parse_args([source, str(corpus), "--out", "unused"])
    documents, named = train_tokenizer.validation_first(args, ReadStats())
    assert named and [d.text for d in documents] == read_texts(corpus / "validation.jsonl")
