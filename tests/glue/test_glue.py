"""GLUE harness: metrics, TSV layouts, starting points, scheduling and reporting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sklearn.metrics import accuracy_score

from mosaicbert.errors import ConfigError, UserError
from mosaicbert.glue import metrics, runner
from mosaicbert.glue.config import hyperparameters, load_glue_config
from mosaicbert.glue.data import load_examples, load_test, read_tsv
from mosaicbert.glue.demo_data import write_demo_tasks
from mosaicbert.files import write_json_atomically
from mosaicbert.glue.job import job_to_json, predictions_path
from mosaicbert.glue.report import seed_score
from mosaicbert.glue.tasks import TASKS
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification
from mosaicbert.model.loading import load_classifier

from conftest import REPO

GLUE_YAMLS = REPO / "yamls" / "glue"


# --------------------------------------------------------------------------- metrics


def test_metrics_against_hand_computed_values():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # tp 2, fp 1, fn 1 -> 2*2 / (2*2 + 1 + 1)
    assert metrics.f1([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(4 / 6)
    # tp 2, tn 2, fp 1, fn 1 -> (4 - 1) / sqrt(3 * 3 * 3 * 3)
    assert metrics.matthews([1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]) == pytest.approx(1 / 3)
    assert metrics.matthews([1, 1, 1], [1, 0, 1]) == 0.0  # one class never predicted
    # x = [-1, 0, 1], y = [-7/3, -1/3, 8/3] -> 5 / sqrt(2 * 38/3)
    assert metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / np.sqrt(76 / 3))
    # ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5)
    assert metrics.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / np.sqrt(22.5))
    # torchmetrics adds 1e-6 to the denominator: 1.5e-6 off at 3 examples, < 1e-10 at STS-B's 1,500.
    assert metrics.spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0, abs=2e-6)


def test_metrics_agree_with_sklearn_and_scipy():
    from scipy import stats
    from sklearn import metrics as reference

    rng = np.random.default_rng(0)
    for n in (7, 50, 1000):
        labels = rng.integers(0, 2, n)
        predictions = np.where(rng.random(n) < 0.7, labels, 1 - labels)
        assert metrics.accuracy(predictions, labels) == pytest.approx(reference.accuracy_score(labels, predictions))
        assert metrics.f1(predictions, labels) == pytest.approx(reference.f1_score(labels, predictions), abs=1e-6)
        assert metrics.matthews(predictions, labels) == pytest.approx(reference.matthews_corrcoef(labels, predictions), abs=1e-6)
        three_way = rng.integers(0, 3, n)  # MNLI
        guesses = np.where(rng.random(n) < 0.6, three_way, rng.integers(0, 3, n))
        assert metrics.accuracy(guesses, three_way) == pytest.approx(reference.accuracy_score(three_way, guesses))
        # STS-B-like scores: labels on a 0.2 grid and rounded predictions, so both sides hold ties.
        scores = rng.integers(0, 26, n) / 5
        predicted = np.round(scores + rng.normal(0, 1, n), 1)
        assert metrics.pearson(predicted, scores) == pytest.approx(stats.pearsonr(predicted, scores)[0], abs=1e-6)
        assert metrics.spearman(predicted, scores) == pytest.approx(stats.spearmanr(predicted, scores)[0], abs=1e-6)
    # A single predicted or true class: GLUE's scorer (sklearn) says 0.
    for predictions, labels in (([1, 1, 1], [1, 0, 1]), ([0] * 9, [0] * 9), ([1, 0, 1, 0], [1, 1, 1, 1])):
        assert metrics.matthews(predictions, labels) == reference.matthews_corrcoef(labels, predictions) == 0.0
    assert metrics.f1([0, 0, 0], [0, 0, 0]) == reference.f1_score([0, 0, 0], [0, 0, 0], zero_division=0.0) == 0.0


def test_matthews_correlation_is_right_beyond_int64_products():
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120_000)  # (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) ~ 60k^4 > 2^63
    predictions = np.where(rng.random(120_000) < 0.8, labels, 1 - labels)
    assert metrics.matthews(predictions, labels) == pytest.approx(matthews_corrcoef(labels, predictions), abs=1e-6)


def test_correlations_of_constant_predictions_are_nan_in_metrics_and_report(tmp_path, monkeypatch):
    from scipy import stats

    for constant, varying in (([2.5] * 4, [1.0, 2.0, 3.0, 4.0]), ([1.0, 2.0, 3.0, 4.0], [3.0] * 4)):
        with pytest.warns(stats.ConstantInputWarning):
            assert np.isnan(stats.spearmanr(constant, varying)[0])  # the reference says undefined too
        assert np.isnan(metrics.pearson(constant, varying)) and np.isnan(metrics.spearman(constant, varying))

    config = load_glue_config(GLUE_YAMLS / "demo.yaml", [f"starting_checkpoint={tmp_path}/start.pt", "protocol=sane",
                                                         f"run_folder={tmp_path / 'run'}", "tasks=[stsb,sst2]",
                                                         "task_overrides.stsb.seeds=[19,8364]"])
    collapsed = {"dev": {"spearman": float("nan"), "pearson": float("nan")}}
    monkeypatch.setattr(runner, "execute", fake_execute([], metrics_of=lambda job: collapsed if job.seed == 8364 else None))
    report = runner.run_glue(config)
    assert np.isnan(report["tasks"]["stsb"]["score"]) and np.isnan(report["glue_score"])
    markdown = (tmp_path / "run" / "glue_results.md").read_text()
    # Not 75.00-75.00: min and max of [75, nan] ignore the NaN in plain Python.
    assert "| stsb | spearman | nan | nan | nan-nan | 2/2 | dev/spearman nan, dev/pearson nan |" in markdown
    assert "| stsb-seed8364 | ok | nan | dev spearman nan, pearson nan |" in markdown
    assert "| sst2 | accuracy | 75.00 |" in markdown
    # The JSON twin stays strict JSON: null, never the bare token NaN.
    text = (tmp_path / "run" / "glue_results.json").read_text()
    assert "NaN" not in text and json.loads(text)["tasks"]["stsb"]["score"] is None


def test_task_score_averages_evaluators_and_scored_metrics_only():
    assert seed_score(TASKS["mnli"], {"matched": {"accuracy": 0.8}, "mismatched": {"accuracy": 0.9}}) == pytest.approx(85.0)
    assert seed_score(TASKS["qqp"], {"dev": {"accuracy": 0.9, "f1": 0.8}}) == pytest.approx(85.0)
    assert seed_score(TASKS["stsb"], {"dev": {"spearman": 0.88, "pearson": 0.5}}) == pytest.approx(88.0)


# --------------------------------------------------------------------------- data


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(fields) + "\n" for fields in lines), encoding="utf-8")


def test_tsv_layouts_of_every_task(tmp_path):
    write(tmp_path / "CoLA" / "dev.tsv", [["gj04", "1", "", "The book was read."], ["gj04", "0", "*", "Book the read was."]])
    write(tmp_path / "SST-2" / "dev.tsv", [["sentence", "label"], ["a fine film", "1"]])
    write(tmp_path / "MRPC" / "dev.tsv", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["1", "7", "8", "He left.", "He went away."]])
    write(tmp_path / "QQP" / "dev.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["0", "1", "2", "Why?", "How?", "0"]])
    write(tmp_path / "STS-B" / "dev.tsv", [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
                                           ["0", "main", "f", "2012", "1", "s", "s", "A man plays.", "A man is playing.", "4.750"]])
    mnli_header = ["index", "promptID", "pairID", "genre", "s1bp", "s2bp", "s1p", "s2p", "sentence1", "sentence2", "label1", "gold_label"]
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        write(tmp_path / "MNLI" / name, [mnli_header, ["0", "1", "1e", "fiction", "", "", "", "", "It rains.", "It is dry.", "contradiction", "contradiction"]])
    write(tmp_path / "QNLI" / "dev.tsv", [["index", "question", "sentence", "label"], ["0", "Who?", "Ann did.", "entailment"]])
    write(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "A cat sat.", "A dog sat.", "not_entailment"]])

    cola = load_examples(TASKS["cola"], "dev", "local", str(tmp_path))
    assert cola.text_a == ["The book was read.", "Book the read was."] and cola.text_b is None and cola.labels == [1, 0]
    assert load_examples(TASKS["sst2"], "dev", "local", str(tmp_path)).labels == [1]
    mrpc = load_examples(TASKS["mrpc"], "dev", "local", str(tmp_path))
    assert (mrpc.text_a, mrpc.text_b, mrpc.labels) == (["He left."], ["He went away."], [1])
    assert load_examples(TASKS["qqp"], "dev", "local", str(tmp_path)).text_b == ["How?"]
    assert load_examples(TASKS["stsb"], "dev", "local", str(tmp_path)).labels == [4.75]
    for split in ("matched", "mismatched"):
        assert load_examples(TASKS["mnli"], split, "local", str(tmp_path)).labels == [2]  # contradiction
    assert load_examples(TASKS["qnli"], "dev", "local", str(tmp_path)).labels == [0]  # entailment
    rte = load_examples(TASKS["rte"], "dev", "local", str(tmp_path))
    assert (rte.text_a, rte.text_b, rte.labels) == (["A cat sat."], ["A dog sat."], [1])


def test_real_glue_files_byte_order_mark_and_malformed_rows(tmp_path, capsys):
    # MRPC's files start with a UTF-8 byte-order mark; QQP's hold rows with missing fields.
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "train.tsv").write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                                  "1\t7\t8\tHe left.\tHe went away.\n0\t9\t10\tIt rains.\tIt is dry.\n",
                                                  encoding="utf-8")
    mrpc = load_examples(TASKS["mrpc"], "train", "local", str(tmp_path))
    assert (mrpc.text_a, mrpc.text_b, mrpc.labels) == (["He left.", "It rains."], ["He went away.", "It is dry."], [1, 0])
    write(tmp_path / "QQP" / "train.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                           ["0", "1", "2", "Why?", "How?", "0"],
                                           ["1", "3", "4", "What is"],  # a row split over two lines
                                           ["a question?", "Where?", "1"],
                                           ["2", "5", "6", "Who?", "Whom?", "1"],
                                           [""]])  # a trailing blank line is no malformed row
    qqp = load_examples(TASKS["qqp"], "train", "local", str(tmp_path))
    assert (qqp.text_a, qqp.text_b, qqp.labels) == (["Why?", "Who?"], ["How?", "Whom?"], [0, 1])
    assert f"skipped 2 malformed rows in {tmp_path / 'QQP' / 'train.tsv'}" in capsys.readouterr().out
    write(tmp_path / "QQP" / "dev.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["0", "1"]])
    with pytest.raises(UserError, match="dev.tsv has no rows with the 6 fields QQP needs"):
        load_examples(TASKS["qqp"], "dev", "local", str(tmp_path))


def test_missing_task_file_and_bad_label_are_named(tmp_path):
    with pytest.raises(UserError, match=r"RTE/train.tsv is missing"):
        load_examples(TASKS["rte"], "train", "local", str(tmp_path))
    write(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"]])
    with pytest.raises(UserError, match=r"dev.tsv:2: label 'maybe' is not one of entailment, not_entailment"):
        read_tsv(TASKS["rte"], tmp_path / "RTE" / "dev.tsv")


def test_demo_tasks_read_back_in_their_layouts(tmp_path):
    texts = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
             for i in range(60)]
    write_demo_tasks(tmp_path / "glue", train_size=20, dev_size=8, texts=texts)
    for name, task in TASKS.items():
        train = load_examples(task, "train", "local", str(tmp_path / "glue"))
        assert len(train) == (40 if name == "mnli" else 20)
        for split in task.eval_splits:
            assert len(load_examples(task, split, "local", str(tmp_path / "glue"))) == 8
    assert not list(tmp_path.glob(".glue.partial-*"))


# --------------------------------------------------------------------------- starting points


def tiny(**overrides):
    values = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, attention_backend="sdpa")
    return MosaicBertConfig(**{**values, **overrides})


def test_round_2_start_reinitialises_the_classifier(tmp_path):
    torch.manual_seed(0)
    mnli = MosaicBertForSequenceClassification(tiny(num_labels=3))
    mnli.save_pretrained(tmp_path / "mnli")
    for labels in (2, 1):
        model = load_classifier(str(tmp_path / "mnli"), "mosaic_bert", labels)
        assert model.classifier.weight.shape == (labels, 32) and model.config.num_labels == labels
        torch.testing.assert_close(model.bert.pooler.dense.weight, mnli.bert.pooler.dense.weight)
        torch.testing.assert_close(model.bert.encoder.layer[1].mlp.wo.weight, mnli.bert.encoder.layer[1].mlp.wo.weight)
    same_width = load_classifier(str(tmp_path / "mnli"), "mosaic_bert", 3)
    assert not torch.equal(same_width.classifier.weight, mnli.classifier.weight)  # fresh even when shapes match


def test_composer_pretraining_checkpoint_start(tmp_path):
    torch.manual_seed(0)
    mlm = MosaicBertForMaskedLM(tiny())
    torch.save({"state": {"model": {f"model.{k}": v for k, v in mlm.state_dict().items()}}}, tmp_path / "ep0-ba1-rank0.pt")
    with pytest.raises(UserError, match="no model_config.json"):
        load_classifier(str(tmp_path / "ep0-ba1-rank0.pt"), "mosaic_bert", 2)
    mlm.config.to_json_file(tmp_path / "model_config.json")
    model = load_classifier(str(tmp_path / "ep0-ba1-rank0.pt"), "mosaic_bert", 2)
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)
    with pytest.raises(UserError, match="holds a mosaic_bert model, but the GLUE config says model_name=hf_bert"):
        load_classifier(str(tmp_path / "ep0-ba1-rank0.pt"), "hf_bert", 2)


def tiny_bert(**overrides):
    from transformers import BertConfig

    values = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64)
    return BertConfig(**{**values, **overrides})


@pytest.mark.parametrize("saved_as", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification"])
def test_hugging_face_bert_folders_of_every_layout(tmp_path, saved_as):
    import transformers

    torch.manual_seed(0)
    saved = getattr(transformers, saved_as)(tiny_bert(num_labels=3, problem_type="single_label_classification"))
    saved.save_pretrained(tmp_path / saved_as)
    encoder = (saved if saved_as == "BertModel" else saved.bert).state_dict()
    for labels in (2, 3, 1):
        model = load_classifier(str(tmp_path / saved_as), "hf_bert", labels)
        assert model.classifier.out_features == model.config.num_labels == labels
        loaded = model.bert.state_dict()
        for key, value in encoder.items():
            torch.testing.assert_close(loaded[key], value, msg=f"{key} was not loaded")
    if saved_as == "BertForSequenceClassification":
        fresh = load_classifier(str(tmp_path / saved_as), "hf_bert", 3)
        assert not torch.equal(fresh.classifier.weight, saved.classifier.weight)  # fresh even when the widths match
    # One label is regression (STS-B), whatever problem the folder was fine-tuned for.
    scores = torch.tensor([0.5, 4.0])
    output = model(input_ids=torch.tensor([[2, 5, 3], [2, 6, 3]]), labels=scores)
    torch.testing.assert_close(output.loss, torch.nn.functional.mse_loss(output.logits.squeeze(-1), scores))


def test_folders_of_other_models_are_refused_naming_what_they_hold(tmp_path, capsys):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match=r"gpt2 holds a model of type 'gpt2' \(config.json model_type\)"):
        load_classifier(str(tmp_path / "gpt2"), "hf_bert", 2)
    MosaicBertForMaskedLM(tiny()).save_pretrained(tmp_path / "mosaic")
    with pytest.raises(UserError, match="holds a mosaic_bert model, but the GLUE config says model_name=hf_bert"):
        load_classifier(str(tmp_path / "mosaic"), "hf_bert", 2)
    # Said before the weights are read: a folder whose weights are missing too gets the same message.
    for weights in (tmp_path / "mosaic").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(UserError, match="holds a mosaic_bert model, but the GLUE config says model_name=hf_bert"):
        load_classifier(str(tmp_path / "mosaic"), "hf_bert", 2)
    # The command line says so once, before any job starts.
    code = runner.main([str(GLUE_YAMLS / "hf-bert-base.yaml"), f"starting_checkpoint={tmp_path / 'gpt2'}",
                        f"run_folder={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "'gpt2'" in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- config and scheduling


def test_glue_yamls_validate_and_carry_the_paper_settings():
    config = load_glue_config(GLUE_YAMLS / "mosaicbert-base.yaml", ["starting_checkpoint=x.pt"])
    rte = hyperparameters(config, "rte")
    assert (rte.lr, rte.batch_size, rte.epochs, rte.seeds) == (1e-5, 16, 3, [19, 8364, 717, 10536, 90166])
    assert hyperparameters(config, "mnli").batch_size == 48
    assert load_glue_config(GLUE_YAMLS / "hf-bert-base.yaml", ["starting_checkpoint=x.pt"]).model_name == "hf_bert"
    sane = load_glue_config(GLUE_YAMLS / "mosaicbert-base.yaml", ["starting_checkpoint=x.pt", "protocol=sane"])
    assert hyperparameters(sane, "rte").lr == hyperparameters(sane, "cola").lr == 4e-5
    earlybert = load_glue_config(REPO / "yamls" / "earlybert" / "finetune.yaml", ["starting_checkpoint=x.pt"])
    assert earlybert.earlybert["unit_prune_ratio"] == 0.4
    with pytest.raises(ConfigError, match="GLUE jobs run two_phase"):
        load_glue_config(REPO / "yamls" / "earlybert" / "finetune.yaml", ["starting_checkpoint=x.pt", "earlybert.mode=in_run"])
    with pytest.raises(ConfigError, match="has no argument 'unit_ratio'"):
        load_glue_config(GLUE_YAMLS / "mosaicbert-base.yaml", ["starting_checkpoint=x.pt", "earlybert.unit_ratio=0.4"])
    with pytest.raises(ConfigError, match="leaves 'starting_checkpoint' to be set"):
        load_glue_config(GLUE_YAMLS / "mosaicbert-base.yaml")
    with pytest.raises(ConfigError, match="unknown task 'mrcp'. Did you mean 'mrpc'"):
        load_glue_config(GLUE_YAMLS / "mosaicbert-base.yaml", ["starting_checkpoint=x.pt", "tasks=[mrcp]"])


def fake_execute(launched: list[str], metrics_of=lambda job: None, fail=()):
    """Stands in for `runner.execute`: records the jobs it gets and writes what a finished job writes (its
    result, 0.75 for every metric unless `metrics_of` says otherwise, its predictions, and the model it keeps)."""

    def execute(jobs, slots, done_before, total, children):
        statuses = {}
        for job in jobs:
            launched.append(job.name)
            if job.task in fail:
                statuses[job.name] = {"status": "failed", "log": job.log_path, "error": "failed in this test"}
                continue
            task = TASKS[job.task]
            scores = metrics_of(job) or {split: {name: 0.75 for name in task.metrics + task.extra_metrics}
                                         for split in task.eval_splits}
            write_json_atomically(job.result_path, {"task": job.task, "seed": job.seed, "status": "ok", "start": job.start,
                                                    "metrics": scores, "spec_hash": job.spec_hash, "job": job_to_json(job)})
            for split in task.eval_splits:
                Path(predictions_path(job.result_path, split)).write_text('{"id": 0, "prediction": 1}\n')
            for test_set in task.test_sets if job.test_sets else ():  # a prediction per example: seed, or 7.5
                ids, _ = load_test(test_set, job.data_source, job.data_local)
                value = 7.5 if task.num_labels == 1 else (task.tsv.label_names or (0, 1))[job.seed % 2]
                Path(predictions_path(job.result_path, test_set.name)).write_text(
                    "".join(json.dumps({"id": i, "prediction": value}) + "\n" for i in ids))
            if job.save_model_dir:
                os.makedirs(job.save_model_dir)
                (Path(job.save_model_dir) / "config.json").write_text("{}")
            statuses[job.name] = {"status": "ok"}
        return statuses

    return execute


def test_results_are_reused_only_for_the_same_specification(tmp_path, monkeypatch, capsys):
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    overrides = [f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}", "tasks=[sst2,cola]"]
    legacy = tmp_path / "run" / "results" / "sst2-seed19.json"  # as results were named before they had a hash
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"task": "sst2", "seed": 19, "status": "ok", "start": "s", "metrics": {"dev": {"accuracy": 0.5}}}))
    launched = []
    monkeypatch.setattr(runner, "execute", fake_execute(launched))

    def run(*extra):
        launched.clear()
        report = runner.run_glue(load_glue_config(GLUE_YAMLS / "demo.yaml", overrides + list(extra)))
        return {row["task"]: row["result"] for row in report["jobs"]}, capsys.readouterr().out

    first, out = run()
    assert launched == ["sst2-seed19", "cola-seed19"] and "cola-seed19 runs: no result yet" in out
    assert f"sst2-seed19 runs: {legacy} records no job specification" in out and legacy.is_file()
    assert json.loads(legacy.read_text())["metrics"] == {"dev": {"accuracy": 0.5}}

    again, out = run()
    assert launched == [] and again == first
    assert f"reusing sst2-seed19: {first['sst2']} has the same settings" in out

    changed, out = run("task_overrides.sst2.lr=1.0e-4")
    assert launched == ["sst2-seed19"] and changed["cola"] == first["cola"] and changed["sst2"] != first["sst2"]
    assert f"sst2-seed19 runs: settings differ from {first['sst2']} (lr 0.0003 -> 0.0001)" in out
    assert Path(first["sst2"]).is_file()  # the result of the other settings stays

    start.write_bytes(b"other weights")  # a new checkpoint at the same path
    _, out = run()
    assert launched == ["sst2-seed19", "cola-seed19"] and out.count("the start's files changed") == 2

    config = load_glue_config(GLUE_YAMLS / "demo.yaml", overrides)
    plain = runner.make_jobs(config, ["sst2"], str(start), set())[0]
    config.earlybert = {"head_prune_ratio": 0.25}
    assert runner.make_jobs(config, ["sst2"], str(start), set())[0].result_path != plain.result_path


def test_a_result_without_its_predictions_runs_again(tmp_path, monkeypatch, capsys):
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    config = load_glue_config(GLUE_YAMLS / "demo.yaml", [f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}",
                                                         "tasks=[sst2]"])
    launched = []
    monkeypatch.setattr(runner, "execute", fake_execute(launched))
    result = runner.run_glue(config)["jobs"][0]["result"]
    Path(predictions_path(result, "dev")).unlink()  # as a result of an older version, which saved none
    launched.clear()
    runner.run_glue(config)
    assert launched == ["sst2-seed19"] and "its dev predictions are missing" in capsys.readouterr().out


def test_regression_trains_in_fp32_and_the_cache_keys_on_the_precision_that_runs(monkeypatch):
    config = load_glue_config(GLUE_YAMLS / "mosaicbert-base.yaml", ["starting_checkpoint=x.pt", "run_folder=unused"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = {job.task: job for job in runner.make_jobs(config, ["stsb", "mrpc"], "x.pt", set())}
    assert {task: job.precision for task, job in gpu.items()} == {"stsb": "fp32", "mrpc": "amp_bf16"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = {job.task: job for job in runner.make_jobs(config, ["stsb", "mrpc"], "x.pt", set())}
    assert {task: job.precision for task, job in cpu.items()} == {"stsb": "fp32", "mrpc": "fp32"}
    # A CPU result in fp32 is not reused by a GPU run in bf16 in the same run folder.
    assert cpu["mrpc"].result_path != gpu["mrpc"].result_path and cpu["stsb"].result_path == gpu["stsb"].result_path


def test_fp32_jobs_run_a_flash_attn_model_through_sdpa():
    from mosaicbert.glue.job import fp32_attention

    torch.manual_seed(0)
    model = MosaicBertForSequenceClassification(tiny(attention_backend="flash_attn", num_labels=1)).eval()
    ids = torch.randint(5, 64, (2, 8))
    with pytest.raises(RuntimeError, match="attention_backend=flash_attn cannot run"):
        model(ids)
    fp32_attention(model, "amp_bf16")
    assert model.config.attention_backend == "flash_attn"  # bf16 jobs keep the strict setting
    fp32_attention(model, "fp32")
    assert model.config.attention_backend == "auto" and torch.isfinite(model(ids).logits).all()


def test_round_2_without_an_mnli_model_stops_before_any_job(tmp_path, monkeypatch, capsys):
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    earlier = tmp_path / "run" / "results" / "rte-seed19-0123456789ab.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("{}")
    launched = []
    monkeypatch.setattr(runner, "execute", fake_execute(launched))
    overrides = [f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}", "tasks=[rte]"]
    with pytest.raises(UserError, match=r"round 2 \(rte\) starts from the fine-tuned MNLI model under protocol=paper.*"
                                        r"Add mnli to tasks.*protocol=sane.*round_2_start=") as raised:
        runner.run_glue(load_glue_config(GLUE_YAMLS / "demo.yaml", overrides))
    assert launched == [] and sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["results", earlier.name]
    assert runner.main([str(GLUE_YAMLS / "demo.yaml"), *overrides]) == 2
    assert capsys.readouterr().err == f"error: {raised.value}\n"
    with pytest.raises(ConfigError, match="round_2_start applies to protocol=paper only"):
        load_glue_config(GLUE_YAMLS / "demo.yaml", overrides + ["protocol=sane", f"round_2_start={start}"])


def test_round_2_starts_from_the_mnli_model_or_the_start_the_config_names(tmp_path, monkeypatch):
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    launched = []
    monkeypatch.setattr(runner, "execute", fake_execute(launched, fail=("mnli",)))
    overrides = [f"starting_checkpoint={start}", "task_overrides.rte.seeds=[19]"]

    def run(folder, *extra):
        launched.clear()
        report = runner.run_glue(load_glue_config(GLUE_YAMLS / "demo.yaml", overrides + [f"run_folder={tmp_path / folder}", *extra]))
        return report, {row["task"]: row for row in report["jobs"]}

    # MNLI fails: round 2 does not fall back to the pretraining checkpoint.
    report, rows = run("failed", "tasks=[mnli,rte]")
    assert launched == ["mnli-seed19"] and rows["rte"]["status"] == "not run"
    assert "no MNLI model to start from: mnli-seed19 did not produce" in rows["rte"]["error"]
    assert "| rte-seed19 | not run |" in (tmp_path / "failed" / "glue_results.md").read_text()

    monkeypatch.setattr(runner, "execute", fake_execute(launched))
    report, rows = run("ok", "tasks=[mnli,rte]")
    mnli_model = Path(rows["rte"]["start"])
    assert launched == ["mnli-seed19", "rte-seed19"] and (mnli_model / "config.json").is_file()
    assert mnli_model.parent == tmp_path / "ok" / "models" and mnli_model.name.startswith("mnli-seed19-")
    assert report["round_2_start"] == f"fine-tuned MNLI model {mnli_model}"
    report, rows = run("ok", "tasks=[rte]")  # later, alone: the MNLI model of these settings is there
    assert launched == [] and rows["rte"]["start"] == str(mnli_model)

    report, rows = run("opt-in", "tasks=[rte]", f"round_2_start={start}")
    assert launched == ["rte-seed19"] and rows["rte"]["start"] == str(start)
    assert report["round_2_start"].startswith(f"round_2_start={start}, set in the config")
    assert f"Round 2 started from the round_2_start={start}" in (tmp_path / "opt-in" / "glue_results.md").read_text()


@pytest.mark.slow
def test_a_failing_job_leaves_the_others_intact(tmp_path, sample_root):
    torch.manual_seed(0)
    start = tmp_path / "start"
    # attention_backend flash_attn, as a GPU recipe sets it: fp32 jobs (all on CPU) must still run.
    MosaicBertForMaskedLM(tiny(vocab_size=2048, attention_backend="flash_attn")).save_pretrained(start)
    texts = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
             for i in range(60)]
    data = write_demo_tasks(tmp_path / "glue", train_size=24, dev_size=8, texts=texts)
    (data / "CoLA" / "train.tsv").unlink()  # this job must fail
    write_test_files(data)
    config = load_glue_config(GLUE_YAMLS / "demo.yaml", [
        f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}", f"data_local={data}",
        f"tokenizer_name={sample_root / 'tokenizer'}", "tasks=[sst2,cola,rte]",
        "task_overrides.sst2.epochs=1", "task_overrides.cola.epochs=1", "task_overrides.rte.epochs=1",
        "task_overrides.rte.seeds=[19]", f"round_2_start={start}",
    ])
    report = runner.run_glue(config, submission=tmp_path / "submit")
    status = {f"{r['task']}-seed{r['seed']}": r["status"] for r in report["jobs"]}
    assert status == {"sst2-seed19": "ok", "cola-seed19": "failed", "rte-seed19": "ok"}
    # The jobs predicted their test files; the submission holds what the finished tasks give.
    assert set(report["submission"]["files"]) == {"SST-2.tsv", "RTE.tsv", "WNLI.tsv"}
    assert "each task's seed with the best dev score" in (tmp_path / "run" / "glue_results.md").read_text()
    rte = (tmp_path / "submit" / "RTE.tsv").read_text().splitlines()
    assert rte[0] == "index\tprediction" and len(rte) == 6
    assert all(line.split("\t")[1] in ("entailment", "not_entailment") for line in rte[1:])
    assert "CoLA/train.tsv is missing" in next(r for r in report["jobs"] if r["task"] == "cola")["error"]
    assert Path(next(r for r in report["jobs"] if r["task"] == "sst2")["result"]).is_file()
    assert report["round_2_start"].startswith(f"round_2_start={start}, set in the config")
    saved = json.loads((tmp_path / "run" / "glue_results.json").read_text())
    assert saved["glue_complete"] is False and saved["glue_tasks_scored"] == 2
    for task in ("sst2", "rte"):  # the saved predictions give the reported score again, by scikit-learn
        result_path = next(r for r in report["jobs"] if r["task"] == task)["result"]
        rows = [json.loads(line) for line in Path(predictions_path(result_path, "dev")).read_text().splitlines()]
        gold = read_tsv(TASKS[task], data / TASKS[task].folder / "dev.tsv").labels
        names = TASKS[task].tsv.label_names
        predicted = [names.index(r["prediction"]) if names else r["prediction"] for r in rows]
        assert [r["id"] for r in rows] == list(range(len(gold)))
        assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
        reported = json.loads(Path(result_path).read_text())["metrics"]["dev"]["accuracy"]
        assert accuracy_score(gold, predicted) == pytest.approx(reported)


@pytest.mark.slow
@pytest.mark.parametrize("rewind", [True, False])
def test_glue_job_with_earlybert_searches_and_prunes(tmp_path, sample_root, rewind):
    torch.manual_seed(0)
    start = tmp_path / "start"
    full = MosaicBertForMaskedLM(tiny(vocab_size=2048, num_attention_heads=4, intermediate_size=96))
    full.save_pretrained(start)
    texts = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
             for i in range(60)]
    data = write_demo_tasks(tmp_path / "glue", train_size=32, dev_size=8, texts=texts)
    config = load_glue_config(REPO / "yamls" / "earlybert" / "finetune.yaml", [
        f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}", "data_source=local", f"data_local={data}",
        f"tokenizer_name={sample_root / 'tokenizer'}", "max_seq_len=64", "precision=null", "tasks=[sst2]",
        "task_overrides.sst2.epochs=2", "task_overrides.sst2.seeds=[19]", "earlybert.check_fraction=0.5",
        "earlybert.window=2", "earlybert.min_search_fraction=0.5", "earlybert.max_search_fraction=1.0",  # 2 steps an epoch
        "earlybert.min_units_per_layer=8", "earlybert.round_units_to=1", f"earlybert.rewind={rewind}",
    ])
    report = runner.run_glue(config)
    assert report["jobs"][0]["status"] == "ok", report["jobs"][0]
    result_path = report["jobs"][0]["result"]
    result = json.loads(Path(result_path).read_text())
    assert result["earlybert_draw_step"] in (1, 2)
    classifier_params = sum(p.numel() for p in MosaicBertForSequenceClassification(tiny(vocab_size=2048, num_attention_heads=4, intermediate_size=96, num_labels=2)).parameters())
    assert result["parameters"] < classifier_params
    assert (Path(os.path.splitext(result_path)[0] + "-earlybert") / "ticket.json").is_file()


def test_hf_bert_pretraining_checkpoint_start(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64))
    torch.save({"state": {"model": {f"model.{k}": v for k, v in mlm.state_dict().items()}}}, tmp_path / "ep0-ba1-rank0.pt")
    mlm.config.to_json_file(tmp_path / "model_config.json")
    model = load_classifier(str(tmp_path / "ep0-ba1-rank0.pt"), "hf_bert", 3)
    assert type(model).__name__ == "BertForSequenceClassification" and model.classifier.out_features == 3
    torch.testing.assert_close(model.bert.encoder.layer[1].output.dense.weight, mlm.bert.encoder.layer[1].output.dense.weight)
    with pytest.raises(UserError, match="holds a hf_bert model, but the GLUE config says model_name=mosaic_bert"):
        load_classifier(str(tmp_path / "ep0-ba1-rank0.pt"), "mosaic_bert", 3)


TEST_HEADERS = {  # the classic GLUE download's test files: an index column, the texts, no label
    "CoLA/test.tsv": ["index", "sentence"],
    "SST-2/test.tsv": ["index", "sentence"],
    "MRPC/test.tsv": ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "QQP/test.tsv": ["id", "question1", "question2"],
    "STS-B/test.tsv": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
    "MNLI/test_matched.tsv": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                              "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"],
    "QNLI/test.tsv": ["index", "question", "sentence"],
    "RTE/test.tsv": ["index", "sentence1", "sentence2"],
    "WNLI/test.tsv": ["index", "sentence1", "sentence2"],
    "diagnostic/diagnostic.tsv": ["index", "sentence1", "sentence2"],
}
TEST_HEADERS["MNLI/test_mismatched.tsv"] = TEST_HEADERS["MNLI/test_matched.tsv"]


def write_test_files(data: Path, rows: int = 5) -> None:
    for name, header in TEST_HEADERS.items():
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(header)] + ["\t".join(str(i) if c in ("index", "id") else f"words {i} of {c}" for c in header)
                                        for i in range(rows)]
        path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


def test_submission_files_come_from_each_tasks_best_seed_in_the_leaderboard_format(tmp_path, monkeypatch):
    import zipfile

    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    data = tmp_path / "glue"
    write_test_files(data)
    overrides = [f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}", "data_source=local",
                 f"data_local={data}", "protocol=sane", "sane.seeds=[19,20]"]
    launched = []
    best_seed = {"mnli": 20}  # the demo runs mnli, qnli, qqp with seeds 19 and 20; qnli's and qqp's tie
    monkeypatch.setattr(runner, "execute", fake_execute(launched, metrics_of=lambda job: {
        split: {name: 0.9 if best_seed.get(job.task) == job.seed else 0.5
                for name in TASKS[job.task].metrics + TASKS[job.task].extra_metrics}
        for split in TASKS[job.task].eval_splits}))
    code = runner.main([str(GLUE_YAMLS / "demo.yaml"), *overrides, "--submission", str(tmp_path / "submit")])
    assert code == 0
    submit = tmp_path / "submit"
    expected = {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv",
                "RTE.tsv", "WNLI.tsv", "AX.tsv"}
    assert set(zipfile.ZipFile(submit / "submission.zip").namelist()) == expected
    table = {name: [line.split("\t") for line in (submit / name).read_text().splitlines()] for name in expected}
    assert all(rows[0] == ["index", "prediction"] and [r[0] for r in rows[1:]] == [str(i) for i in range(5)]
               for rows in table.values())
    # Each job predicts its seed's parity: label 0 for seed 20, label 1 for seed 19.
    assert {r[1] for r in table["MNLI-m.tsv"][1:]} == {r[1] for r in table["AX.tsv"][1:]} == {"entailment"}
    assert {r[1] for r in table["QNLI.tsv"][1:]} == {"not_entailment"}  # a tie: the lower seed, 19
    assert {r[1] for r in table["QQP.tsv"][1:]} == {r[1] for r in table["CoLA.tsv"][1:]} == {"1"}
    assert {r[1] for r in table["RTE.tsv"][1:]} == {"not_entailment"}
    assert {r[1] for r in table["STS-B.tsv"][1:]} == {"5.000"}  # 7.5 clipped to the scale
    assert {r[1] for r in table["WNLI.tsv"][1:]} == {"0"}
    report = json.loads((tmp_path / "run" / "glue_results.json").read_text())
    assert report["submission"]["seeds"]["mnli"] == 20 and report["submission"]["missing"] == []


def test_submission_needs_a_folder_and_the_test_files(tmp_path, capsys):
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    args = [str(GLUE_YAMLS / "demo.yaml"), f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}"]
    assert runner.main(args + ["--submission"]) == 2
    assert "--submission needs a folder" in capsys.readouterr().err
    from mosaicbert.glue.data import load_test

    with pytest.raises(UserError, match=r"RTE/test.tsv is missing; --submission needs"):
        load_test(TASKS["rte"].test_sets[0], "local", str(tmp_path))


def test_the_best_seed_is_never_a_collapsed_one():
    from mosaicbert.glue.submission import best_jobs

    rows = [{"task": "stsb", "seed": 19, "status": "ok", "score": float("nan")},
            {"task": "stsb", "seed": 8364, "status": "ok", "score": 80.0}]
    assert best_jobs({"jobs": rows})["stsb"]["seed"] == 8364


def test_hub_test_sets_without_a_task_read_their_own_columns(monkeypatch):
    """AX has MNLI's columns on the hub, WNLI its own (nyu-mll/glue's configs)."""
    from mosaicbert.glue import data
    from mosaicbert.glue.tasks import WNLI_TEST

    columns = {"ax": {"idx": [0], "premise": ["p"], "hypothesis": ["h"]},
               "wnli": {"idx": [5], "sentence1": ["s1"], "sentence2": ["s2"]}}
    monkeypatch.setattr(data, "_hub_split", lambda config, split: columns[config])
    ax = next(t for t in TASKS["mnli"].test_sets if t.name == "ax")
    assert load_test(ax, "hub", None)[1].text_a == ["p"]
    ids, examples = load_test(WNLI_TEST, "hub", None)
    assert ids == ["5"] and examples.text_b == ["s2"]
