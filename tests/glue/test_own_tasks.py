"""Own fine-tuning tasks from YAML: file formats and their quirks, label sets, metrics against scikit-learn and
seqeval, bad input stopped before anything is written, and whole runs whose saved predictions re-give the
reported scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mosaicbert.errors import ConfigError, UserError
from mosaicbert.glue import metrics, runner
from mosaicbert.glue.config import load_glue_config
from mosaicbert.glue.demo_data import write_own_demo_tasks
from mosaicbert.glue.job import predictions_path
from mosaicbert.glue.own_task import OwnTask, definitions, load_examples, read_tagged, resolve
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

from conftest import REPO

TEXTS = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
         for i in range(60)]


def task(tmp_path: Path, train: str | bytes, dev: str, suffix: str = ".csv", **keys) -> OwnTask:
    (tmp_path / f"train{suffix}").write_bytes(train.encode() if isinstance(train, str) else train)
    (tmp_path / f"dev{suffix}").write_bytes(dev.encode() if isinstance(dev, str) else dev)
    return OwnTask(name="mine", train=str(tmp_path / f"train{suffix}"), dev=str(tmp_path / f"dev{suffix}"), **keys)


# --------------------------------------------------------------------------- files


def test_every_table_format_reads_the_same_examples(tmp_path):
    import pandas

    rows = [{"id": "a", "text": "first, with a comma", "label": "pos"}, {"id": "b", "text": 'a "quoted" word', "label": "neg"},
            {"id": "c", "text": "NA", "label": "pos"}]
    frame = pandas.DataFrame(rows)
    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "t.tsv").write_text("id\ttext\tlabel\n" + "".join(f"{r['id']}\t{r['text']}\t{r['label']}\n" for r in rows))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame.to_parquet(tmp_path / "t.parquet")
    for suffix in (".csv", ".tsv", ".jsonl", ".parquet"):
        path = str(tmp_path / f"t{suffix}")
        resolved = resolve(OwnTask(name="mine", train=path, dev=path, id="id"))
        assert resolved.labels == ["neg", "pos"]  # sorted
        ids, examples = load_examples(resolved, "dev")
        assert ids == ["a", "b", "c"], suffix
        assert examples.text_a == ["first, with a comma", 'a "quoted" word', "NA"], suffix  # "NA" stays a word
        assert examples.labels == [1, 0, 1]


def test_byte_order_mark_crlf_and_blank_rows(tmp_path):
    resolved = resolve(task(tmp_path, b"\xef\xbb\xbftext,label\r\nhello,1\r\n\r\nworld,2\r\n", "text,label\nhi,2\n"))
    ids, examples = load_examples(resolved, "train")
    assert examples.text_a == ["hello", "world"] and ids == ["0", "1"] and resolved.labels == ["1", "2"]


def test_label_sets_numeric_order_given_order_pairs_and_regression(tmp_path):
    numeric = resolve(task(tmp_path, "text,label\na,10\nb,9\nc,-1\n", "text,label\na,9\n"))
    assert numeric.labels == ["-1", "9", "10"]
    given = resolve(task(tmp_path, "text,label\na,x\nb,y\n", "text,label\na,y\n", labels=["y", "x", "z"]))
    assert given.labels == ["y", "x", "z"] and load_examples(given, "dev")[1].labels == [0]
    pair = resolve(task(tmp_path, "q,a,score\nwhy,because,1.5\n", "q,a,score\nhow,so,0.25\n", kind="regression",
                        text="q", text_pair="a", label="score"))
    examples = load_examples(pair, "dev")[1]
    assert examples.text_b == ["so"] and examples.labels == [0.25] and pair.num_labels == 1


def test_multilabel_from_lists_and_separated_cells(tmp_path):
    lists = resolve(task(tmp_path, '{"text": "a", "label": ["x", "y"]}\n{"text": "b", "label": []}\n',
                         '{"text": "c", "label": ["y"]}\n', suffix=".jsonl", kind="multilabel"))
    assert lists.labels == ["x", "y"] and load_examples(lists, "train")[1].labels == [[1.0, 1.0], [0.0, 0.0]]
    cells = resolve(task(tmp_path, "text,label\na,x|z\nb,\n", "text,label\nc,z\n", kind="multilabel"))
    assert cells.labels == ["x", "z"] and load_examples(cells, "dev")[1].labels == [[0.0, 1.0]]


def test_test_split_without_labels_and_a_dataset_from_a_local_folder(tmp_path):
    import datasets

    unlabelled = task(tmp_path, "text,label\na,x\nb,y\n", "text,label\nc,x\n")
    (tmp_path / "test.csv").write_text("text\nd\ne\n")
    resolved = resolve(OwnTask(**{**unlabelled.__dict__, "test": str(tmp_path / "test.csv")}))
    assert load_examples(resolved, "test")[1].text_a == ["d", "e"]
    # A dataset with class ids (ClassLabel), read through datasets.load_dataset, offline, from a folder.
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"]),
                                  "tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner": datasets.Sequence(datasets.ClassLabel(names=["O", "B-X"]))})
    folder = tmp_path / "hub"
    folder.mkdir()
    for split, label in (("train", 1), ("validation", 0)):
        datasets.Dataset.from_dict({"sentence": ["s"], "label": [label], "tokens": [["a", "b"]], "ner": [[1, 0]]},
                                   features=features).to_parquet(folder / f"{split}.parquet")
    hub = resolve(OwnTask(name="hub", dataset=str(folder), train="train", dev="validation", text="sentence"))
    assert hub.labels == ["bad", "good"]  # the dataset's classes, the unseen one too
    assert load_examples(hub, "train")[1].labels == [1] and load_examples(hub, "dev")[1].labels == [0]
    tags = OwnTask(name="tags", kind="token_classification", dataset=str(folder), train="train", dev="train",
                   text="tokens", label="ner")
    assert resolve(tags).labels == ["O", "B-X"] and read_tagged(tags, "train")[0].tags == ["B-X", "O"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("train, dev, keys, message", [
    ("text,label\na,x\nb,y\n", "text,label\nb,q\n", {}, r"dev.csv, line 2: label 'q' never occurs in the training data \(its labels: x, y\)"),
    ("text,label\na,1.5\n", "text,label\nb,high\n", {"kind": "regression"}, r"dev.csv, line 2: label 'high' is not a number"),
    ("text,label\na,1.5\n", "text,label\nb,nan\n", {"kind": "regression"}, r"label 'nan' is not a number; .* finite"),
    ("sentence,label\na,x\n", "sentence,label\nb,x\n", {}, r"train.csv has no column 'text'\. Its columns: sentence, label\. Set own_tasks.mine.text"),
    ("sentence,label\na,x\n", "sentence,label\nb,x\n", {"text": "sentense"}, r"no column 'sentense'\. Did you mean 'sentence'"),
    (b"text,label\n\xff\xfe,x\n", "text,label\nb,x\n", {}, r"train.csv is not UTF-8"),
    ("text,label\na,x,extra\nb,y\n", "text,label\nb,x\n", {}, r"train.csv:2: 3 fields where the header has 2 \(text, label\); quote fields"),  # not a shifted row
    ("text,label\na,x\nb,\nc,y\n", "text,label\nb,x\n", {}, r"train.csv, line 3: no label"),
    ('{"text": "a", "label": "x"}\n\n{"label": "y"}\n', '{"text": "b", "label": "x"}\n', {"suffix": ".jsonl"},
     r"train.jsonl, line 3: no 'text' text"),
    ("text,label\na,x\nb,x\n", "text,label\nb,x\n", {}, r"1 label\(s\) \(x\) in the training data; a classification task needs at least 2"),
    ("text,label\na,x\nb,y\nc,z\n", "text,label\nb,x\n", {"metrics": ["f1"]}, r"metric f1 is binary .* 3 labels; use macro_f1"),
])
def test_bad_files_are_named_with_the_fix(tmp_path, train, dev, keys, message):
    with pytest.raises(UserError, match=message):
        resolve(task(tmp_path, train, dev, **keys))


def tagged(tmp_path: Path, train: str, dev: str, test: str | None = None, **keys) -> OwnTask:
    for split, text in (("train", train), ("dev", dev), ("test", test)):
        if text is not None:
            (tmp_path / f"{split}.conll").write_text(text)
    return OwnTask(name="tags", kind="token_classification", train=str(tmp_path / "train.conll"),
                   dev=str(tmp_path / "dev.conll"), test=str(tmp_path / "test.conll") if test else None, **keys)


def test_tag_sets_entity_scores_cannot_read_are_refused_before_training(tmp_path):
    pos = "The DET\ncat NOUN\nruns VERB\n"
    with pytest.raises(UserError, match=r"tag 'DET' is not IOB2 .* metrics: \[token_accuracy\]"):
        resolve(tagged(tmp_path, pos, pos))
    assert resolve(tagged(tmp_path, pos, pos, metrics=["token_accuracy"])).extra_metrics == ()
    iob1 = "EU I-ORG\nrejects O\n"  # the original CoNLL-2003 files open entities with I-
    with pytest.raises(UserError, match=r"train.conll, sentence 1: I-ORG follows O, so the file is IOB1"):
        resolve(tagged(tmp_path, iob1 + "\nPeter B-PER\n", "Peter B-PER\n"))


def test_token_test_files_may_hold_words_only(tmp_path):
    resolved = resolve(tagged(tmp_path, "Peter B-PER\nruns O\n", "Anna B-PER\n", test="Oslo\nrains\n\nHi\n"))
    sentences = read_tagged(resolved, "test")
    assert [s.words for s in sentences] == [["Oslo", "rains"], ["Hi"]] and sentences[0].tags is None
    with pytest.raises(UserError, match="dev.conll:1: a word without a tag"):
        resolve(tagged(tmp_path, "Peter B-PER\nruns O\n", "Anna\n"))


def test_jsonl_lines_split_at_newlines_only_and_multilabel_numbers(tmp_path):
    resolved = resolve(task(tmp_path, '{"text": "a\u2028b", "label": 3}\n{"text": "c", "label": [3, 4]}\n',
                            '{"text": "d", "label": null}\n', suffix=".jsonl", kind="multilabel"))
    assert load_examples(resolved, "train")[1].text_a == ["a\u2028b", "c"] and resolved.labels == ["3", "4"]
    assert load_examples(resolved, "dev")[1].labels == [[0.0, 0.0]]


def write_config(tmp_path: Path, own_tasks: dict, **keys) -> Path:
    path, start = tmp_path / "task.yaml", tmp_path / "start"
    if not start.exists():
        MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                               intermediate_size=32)).save_pretrained(start)
    path.write_text(yaml.safe_dump({"starting_checkpoint": str(start), "run_folder": str(tmp_path / "run"),
                                    "own_tasks": own_tasks, **keys}))
    return path


@pytest.mark.parametrize("definition, message", [
    ({"train": "missing.csv", "dev": "missing.csv"}, "data file missing.csv does not exist"),
    ({"kind": "token_classification", "train": "BAD", "dev": "BAD"}, r"bad.conll:3: 3 columns where the file's lines have 2"),
    ({"kind": "sorting", "train": "x", "dev": "x"}, "kind must be one of classification, multilabel"),
    ({"train": "x", "dev": "x", "metrics": ["acuracy"]}, "'acuracy' is not a classification metric. Did you mean 'accuracy'"),
    ({"train": "x"}, r"own_tasks.mine.dev is missing"),
    ({"kind": "regression", "train": "x", "dev": "x", "metrics": ["mse"]}, r"mse is an error \(lower is better\), reported"),
    (["train.csv", "dev.csv"], r"own_tasks.mine must be a task definition"),
    ("no-such.yaml", r"own_tasks.mine: no-such.yaml is not a readable file"),
])
def test_bad_tasks_stop_the_run_with_one_line_and_nothing_written(tmp_path, capsys, definition, message):
    (tmp_path / "bad.conll").write_text("EU B-ORG\nrejects O\nGerman B-MISC extra\n")
    if isinstance(definition, dict):
        definition = {k: str(tmp_path / "bad.conll") if v == "BAD" else v for k, v in definition.items()}
    assert runner.main([str(write_config(tmp_path, {"mine": definition}))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and re.search(message, err), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_task_named_like_a_glue_task_is_refused(tmp_path):
    for name in ("rte", "WNLI", "ax"):
        with pytest.raises(ConfigError, match=f"{name} is a GLUE task; give your task another name"):
            load_glue_config(write_config(tmp_path, {name: {"train": "a.csv", "dev": "a.csv"}}))


def test_submission_needs_a_glue_task(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,y\n")
    definition = {"train": str(tmp_path / "t.csv"), "dev": str(tmp_path / "t.csv")}
    assert runner.main([str(write_config(tmp_path, {"mine": definition})), "--submission", str(tmp_path / "sub")]) == 2
    assert "no GLUE task is among tasks (mine)" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_adding_a_seed_keeps_the_results_of_the_others(tmp_path):
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,y\n")
    definition = {"train": str(tmp_path / "t.csv"), "dev": str(tmp_path / "t.csv"), "seeds": [19]}

    def hashes(**changes) -> dict[int, str]:
        config = load_glue_config(write_config(tmp_path, {"mine": {**definition, **changes}}))
        own = {"mine": resolve(definitions(config)["mine"])}
        return {job.seed: job.spec_hash for job in runner.make_jobs(config, ["mine"], config.starting_checkpoint, set(), own=own)}

    first = hashes()
    assert hashes(seeds=[19, 20])[19] == first[19] and hashes(epochs=5)[19] == first[19]  # 5: the sane default
    assert hashes(epochs=2)[19] != first[19] and hashes(labels=["y", "x"])[19] != first[19]
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,y\nc,y\n")  # new data
    assert hashes()[19] != first[19]


# --------------------------------------------------------------------------- metrics


def test_own_task_metrics_agree_with_sklearn():
    from sklearn import metrics as reference

    rng = np.random.default_rng(0)
    for n in (9, 200):
        labels = rng.integers(0, 4, n)
        predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 4, n))
        table = metrics.KIND_METRICS["classification"]
        for average in ("macro", "micro", "weighted"):
            assert table[f"{average}_f1"](predicted, labels, 5) == pytest.approx(
                reference.f1_score(labels, predicted, average=average), abs=1e-6)
        assert table["matthews"](predicted, labels, 5) == pytest.approx(reference.matthews_corrcoef(labels, predicted), abs=1e-6)
        multi = rng.integers(0, 2, (n, 3))
        guess = np.where(rng.random((n, 3)) < 0.7, multi, 1 - multi)
        table = metrics.KIND_METRICS["multilabel"]
        assert table["exact_match"](guess, multi, 3) == pytest.approx(reference.accuracy_score(multi, guess))
        assert table["hamming_accuracy"](guess, multi, 3) == pytest.approx(1 - reference.hamming_loss(multi, guess))
        for average in ("micro", "macro"):
            assert table[f"{average}_f1"](guess, multi, 3) == pytest.approx(reference.f1_score(multi, guess, average=average), abs=1e-6)
        values, truth = rng.normal(size=n), rng.normal(size=n)
        table = metrics.KIND_METRICS["regression"]
        assert table["mse"](values, truth) == pytest.approx(reference.mean_squared_error(truth, values))
        assert table["mae"](values, truth) == pytest.approx(reference.mean_absolute_error(truth, values))


# --------------------------------------------------------------------------- whole runs


def test_example_yamls_validate():
    for path in sorted((REPO / "yamls" / "finetune").glob("*.yaml")):
        config = load_glue_config(path, ["starting_checkpoint=x"])
        assert config.tasks == list(config.own_tasks), path


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["mosaic_bert", "hf_bert"])
def test_own_tasks_run_and_their_saved_predictions_regive_the_scores(tmp_path, sample_root, model_name):
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2
    from sklearn.metrics import accuracy_score, f1_score as sk_f1
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    start = tmp_path / "start"
    sizes = dict(vocab_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = MosaicBertForMaskedLM(MosaicBertConfig(**sizes)) if model_name == "mosaic_bert" else BertForMaskedLM(BertConfig(**sizes))
    model.save_pretrained(start)
    data = write_own_demo_tasks(tmp_path / "own", train_size=32, dev_size=12, texts=TEXTS)
    own = yaml.safe_load((REPO / "yamls" / "finetune" / "ner.yaml").read_text())["own_tasks"]["ner"]
    own.update({s: str(data / "ner" / f"{s}.conll") for s in ("train", "dev", "test")}, epochs=1)
    (tmp_path / "ner.yaml").write_text(yaml.safe_dump(own))  # a task defined in its own file
    config = load_glue_config(REPO / "yamls" / "finetune" / "topic.yaml", [
        f"starting_checkpoint={start}", f"model_name={model_name}", f"run_folder={tmp_path / 'run'}",
        f"tokenizer_name={sample_root / 'tokenizer'}", "max_seq_len=64", "own_tasks.topic.epochs=1",
        "own_tasks.topic.seeds=[19]", *[f"own_tasks.topic.{s}={data / 'topic' / s}.csv" for s in ("train", "dev", "test")],
        f"own_tasks.ner={tmp_path / 'ner.yaml'}", "tasks=[topic,ner]", "save_finetuned=true",
    ])
    report = runner.run_glue(config)
    assert [row["status"] for row in report["jobs"]] == ["ok", "ok"], report["jobs"]
    topic, ner = report["jobs"]
    reported = json.loads(Path(topic["result"]).read_text())["metrics"]["dev"]
    rows = [json.loads(line) for line in Path(predictions_path(topic["result"], "dev")).read_text().splitlines()]
    gold = [line.rsplit(",", 1)[1] for line in (data / "topic" / "dev.csv").read_text().splitlines()[1:]]
    assert [r["id"] for r in rows] == [line.split(",")[0] for line in (data / "topic" / "dev.csv").read_text().splitlines()[1:]]
    assert sorted(rows[0]["probabilities"]) == ["math", "network", "storage"]
    predicted = [r["prediction"] for r in rows]
    assert accuracy_score(gold, predicted) == pytest.approx(reported["accuracy"])
    assert sk_f1(gold, predicted, average="macro") == pytest.approx(reported["macro_f1"], abs=1e-6)
    assert len(Path(predictions_path(topic["result"], "test")).read_text().splitlines()) == 12
    # NER: word-level tags, scored again by seqeval from the file.
    reported = json.loads(Path(ner["result"]).read_text())["metrics"]["dev"]
    sentences = read_tagged(OwnTask(train=str(data / "ner" / "dev.conll")), "train")
    rows = [json.loads(line) for line in Path(predictions_path(ner["result"], "dev")).read_text().splitlines()]
    assert [r["words"] for r in rows] == [s.words for s in sentences]
    gold_tags = [s.tags for s in sentences]
    assert f1_score(gold_tags, [r["prediction"] for r in rows], mode="strict", scheme=IOB2) == pytest.approx(reported["f1"])
    assert set(reported) == {"f1", "precision", "recall", "token_accuracy"}
    saved = json.loads((Path(ner["result"]).parent.parent / "models" / Path(ner["result"]).stem / "config.json").read_text())
    assert saved["id2label"]["0"] == "O" and set(saved["label2id"]) == set(own_labels(data))
    markdown = (tmp_path / "run" / "glue_results.md").read_text()
    assert markdown.startswith("# Fine-tuning dev results") and "| topic | accuracy, macro_f1 (own task) |" in markdown
    if model_name == "mosaic_bert":
        check_pipelines_give_the_saved_predictions(tmp_path, sample_root, data, topic, ner, sentences)


def check_pipelines_give_the_saved_predictions(tmp_path, sample_root, data, topic, ner, sentences) -> None:
    """Exported, the fine-tuned models' transformers pipelines, in a process without this package, answer
    what the harness saved: the topic labels, and each word's tag (the tag of its first subword)."""
    import pandas
    from transformers import AutoTokenizer

    from mosaicbert.export.parity import check_parity
    from mosaicbert.export.writer import export_model
    from mosaicbert.model.modeling_mosaicbert import (MosaicBertForSequenceClassification,
                                                      MosaicBertForTokenClassification)

    tokenizer = AutoTokenizer.from_pretrained(sample_root / "tokenizer")
    for row, head, auto_class in ((topic, MosaicBertForSequenceClassification, "AutoModelForSequenceClassification"),
                                  (ner, MosaicBertForTokenClassification, "AutoModelForTokenClassification")):
        source = Path(row["result"]).parent.parent / "models" / Path(row["result"]).stem
        out = tmp_path / "exported" / row["task"]
        # check=False: check_parity below runs the same isolated check, on the dev texts
        export_model(str(source), str(out), tokenizer_name=str(sample_root / "tokenizer"), check=False,
                     progress=lambda _: None)
        saved = [json.loads(line) for line in Path(predictions_path(row["result"], "dev")).read_text().splitlines()]
        model = head.from_pretrained(source)
        if row["task"] == "topic":
            texts = pandas.read_csv(data / "topic" / "dev.csv")["text"].tolist()
            report = check_parity(model, tokenizer, out, auto_class, texts=texts)
            assert report.pipeline_outputs == [r["prediction"] for r in saved]
            continue
        report = check_parity(model, tokenizer, out, auto_class, texts=[" ".join(s.words) for s in sentences])
        for sentence, answer, row_saved in zip(sentences, report.pipeline_outputs, saved):
            tag_at = {index: tag for index, _, tag in answer["tokens"]}
            word_ids = tokenizer(sentence.words, is_split_into_words=True).word_ids()
            first = [word_ids.index(w) for w in range(len(sentence.words))]
            assert [tag_at[i] for i in first] == row_saved["prediction"], sentence.words


def own_labels(data: Path) -> set[str]:
    return {line.split()[-1] for line in (data / "ner" / "train.conll").read_text().splitlines()
            if line.strip() and not line.startswith("-DOCSTART-")}
