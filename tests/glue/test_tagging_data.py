"""Token-classification files (CoNLL, JSONL) with their quirks, and the word <-> subword alignment."""

from __future__ import annotations

import pytest

from mosaicbert.errors import UserError
from mosaicbert.glue.tagging import Sentence, check_tags, encode, label_names, read_sentences, word_tags

CONLL = "-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-ORG\r\nrejects VBZ O\r\nGerman JJ B-MISC\r\n\r\nPeter NNP B-PER\r\nBlackburn NNP I-PER\r\n"


def test_conll_with_a_byte_order_mark_crlf_and_docstart(tmp_path):
    path = tmp_path / "train.conll"
    path.write_bytes(b"\xef\xbb\xbf" + CONLL.encode())
    sentences = read_sentences(path)
    assert sentences == [Sentence(["EU", "rejects", "German"], ["B-ORG", "O", "B-MISC"]),
                         Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    assert label_names(sentences) == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]


def test_jsonl_sentences(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text('{"tokens": ["Peter", "runs"], "tags": ["B-PER", "O"]}\n\n{"tokens": ["Oslo"], "tags": ["B-LOC"]}\n')
    assert read_sentences(path) == [Sentence(["Peter", "runs"], ["B-PER", "O"]), Sentence(["Oslo"], ["B-LOC"])]


@pytest.mark.parametrize("name, content, message", [
    ("bad.conll", b"EU NNP B-ORG\nrejects O\n", r"bad.conll:2: 2 columns where the file's lines have 3"),
    ("bad.conll", b"EU \xff B-ORG\n", "is not UTF-8"),
    ("bad.jsonl", b'{"tokens": ["a", "b"], "tags": ["O"]}\n', r"bad.jsonl:1: 2 tokens but 1 tags"),
    ("bad.jsonl", b'{"words": ["a"]}\n', r"bad.jsonl:1: expected a JSON object with 'tokens' and 'tags'"),
    ("empty.conll", b"\n\n-DOCSTART- O\n", "holds no sentences"),
])
def test_bad_files_are_named_with_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_sentences(path)


def test_a_dev_tag_training_never_saw_is_named(tmp_path):
    with pytest.raises(UserError, match="tag 'B-LOC' never occurs in the training data"):
        check_tags([Sentence(["Oslo"], ["B-LOC"])], ["O", "B-PER"], tmp_path / "dev.conll")


def test_first_subword_carries_the_tag_and_predictions_map_back_to_words(sample_root):
    from mosaicbert.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(str(sample_root / "tokenizer"), 64)
    sentence = Sentence(["Internationalization", "of", "zyxwvutsrq", "modules"], ["B-MISC", "O", "B-PER", "O"])
    names = ["O", "B-MISC", "B-PER"]
    encoded = encode(tokenizer, sentence, {n: i for i, n in enumerate(names)}, 64)
    pieces = [len(tokenizer.tokenize(word)) for word in sentence.words]
    assert max(pieces) >= 2  # some words split, so the alignment is exercised
    expected = [-100]  # [CLS]
    for word, count in enumerate(pieces):
        expected += [names.index(sentence.tags[word])] + [-100] * (count - 1)
    assert encoded.labels == expected + [-100]  # [SEP]
    predicted = [label if label != -100 else 0 for label in encoded.labels]
    assert word_tags(predicted, encoded.word_ids, len(sentence.words), names) == (sentence.tags, 0)

    short = encode(tokenizer, sentence, {n: i for i, n in enumerate(names)}, 2 + pieces[0])  # room for word 0 only
    tags, cut = word_tags([label if label != -100 else 1 for label in short.labels], short.word_ids, 4, names)
    assert tags == ["B-MISC", "O", "O", "O"] and cut == 3


def test_entity_scores_match_a_hand_count():
    """Gold entities: PER(0-1), LOC(3) | ORG(0). Predicted: PER(0-1), ORG(3) | a stray I-ORG, which strict IOB2
    does not count as an entity. 1 of 2 predicted entities right, 1 of 3 gold found; 3 of 5 words right."""
    from mosaicbert.glue.tagging import tagging_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG"]]
    scores = tagging_metrics(gold, predicted)
    assert scores["precision"] == pytest.approx(1 / 2) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert scores["token_accuracy"] == pytest.approx(3 / 5)
