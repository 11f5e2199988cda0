"""GLUE harness: metrics, TSV layouts, starting points, scheduling and reporting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mosaicbert.errors import ConfigError, UserError
from mosaicbert.glue import metrics, runner
from mosaicbert.glue.config import hyperparameters, load_glue_config
from mosaicbert.glue.data import load_examples, read_tsv
from mosaicbert.glue.demo_data import write_demo_tasks
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
    assert metrics.spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)


def test_task_score_averages_evaluators_and_scored_metrics_only():
    assert seed_score("mnli", {"matched": {"accuracy": 0.8}, "mismatched": {"accuracy": 0.9}}) == pytest.approx(85.0)
    assert seed_score("qqp", {"dev": {"accuracy": 0.9, "f1": 0.8}}) == pytest.approx(85.0)
    assert seed_score("stsb", {"dev": {"spearman": 0.88, "pearson": 0.5}}) == pytest.approx(88.0)


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
    with pytest.raises(ConfigError, match="unknown GLUE task 'mrcp'. Did you mean 'mrpc'"):
        load_glue_config(GLUE_YAMLS / "mosaicbert-base.yaml", ["starting_checkpoint=x.pt", "tasks=[mrcp]"])


def test_finished_jobs_are_skipped(tmp_path, monkeypatch):
    config = load_glue_config(GLUE_YAMLS / "demo.yaml", [f"starting_checkpoint={tmp_path}/start.pt",
                                                         f"run_folder={tmp_path / 'run'}", "tasks=[sst2,cola]"])
    done = tmp_path / "run" / "results" / "sst2-seed19.json"
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"task": "sst2", "seed": 19, "status": "ok", "start": "s",
                                "metrics": {"dev": {"accuracy": 0.75}}}))
    launched = []

    def fake_execute(jobs, slots, done_before, total):
        launched.extend(job.name for job in jobs)
        return {job.name: {"status": "failed", "log": job.log_path, "error": "not run in this test"} for job in jobs}

    monkeypatch.setattr(runner, "execute", fake_execute)
    report = runner.run_glue(config)
    assert launched == ["cola-seed19"]
    assert report["tasks"]["sst2"]["score"] == pytest.approx(75.0)
    assert "score" not in report["tasks"]["cola"]
    assert "| cola | matthews | failed |" in (tmp_path / "run" / "glue_results.md").read_text()


@pytest.mark.slow
def test_a_failing_job_leaves_the_others_intact(tmp_path, sample_root):
    torch.manual_seed(0)
    start = tmp_path / "start"
    MosaicBertForMaskedLM(tiny(vocab_size=2048)).save_pretrained(start)
    texts = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
             for i in range(60)]
    data = write_demo_tasks(tmp_path / "glue", train_size=24, dev_size=8, texts=texts)
    (data / "CoLA" / "train.tsv").unlink()  # this job must fail
    config = load_glue_config(GLUE_YAMLS / "demo.yaml", [
        f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}", f"data_local={data}",
        f"tokenizer_name={sample_root / 'tokenizer'}", "tasks=[sst2,cola,rte]",
        "task_overrides.sst2.epochs=1", "task_overrides.cola.epochs=1", "task_overrides.rte.epochs=1",
        "task_overrides.rte.seeds=[19]",
    ])
    report = runner.run_glue(config)
    status = {f"{r['task']}-seed{r['seed']}": r["status"] for r in report["jobs"]}
    assert status == {"sst2-seed19": "ok", "cola-seed19": "failed", "rte-seed19": "ok"}
    assert "CoLA/train.tsv is missing" in next(r for r in report["jobs"] if r["task"] == "cola")["error"]
    assert (tmp_path / "run" / "results" / "sst2-seed19.json").is_file()
    assert "pretraining checkpoint (no fine-tuned MNLI model" in report["round_2_start"]
    saved = json.loads((tmp_path / "run" / "glue_results.json").read_text())
    assert saved["glue_complete"] is False and saved["glue_tasks_scored"] == 2


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
    result = json.loads((tmp_path / "run" / "results" / "sst2-seed19.json").read_text())
    assert result["earlybert_draw_step"] in (1, 2)
    classifier_params = sum(p.numel() for p in MosaicBertForSequenceClassification(tiny(vocab_size=2048, num_attention_heads=4, intermediate_size=96, num_labels=2)).parameters())
    assert result["parameters"] < classifier_params
    assert (tmp_path / "run" / "results" / "sst2-seed19-earlybert" / "ticket.json").is_file()


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
