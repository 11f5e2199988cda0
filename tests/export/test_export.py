"""Hugging Face export: parity with plain transformers in a process without this package, round trips, errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

import mosaicbert.model.configuration_mosaicbert as configuration_module
import mosaicbert.model.modeling_mosaicbert as modeling_module
from mosaicbert.config import load_config
from mosaicbert.errors import UserError
from mosaicbert.export import check_parity, export_model, parity
from mosaicbert.model import (
    MosaicBertConfig,
    MosaicBertForMaskedLM,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
)
from mosaicbert.model.composer import ComposerMosaicBert, build_hf_bert, build_mosaic_bert
from mosaicbert.model.loading import load_classifier, load_weights_into
from mosaicbert.model.pruning import prune
from mosaicbert.train import build_trainer

from conftest import DEMO_YAML, HF_BERT_YAML, REPO, pretrain, tiny_overrides
quiet = {"progress": lambda message: None}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def mosaic_checkpoint(sample_root, tmp_path_factory) -> Path:
    return pretrain(DEMO_YAML, sample_root, tmp_path_factory.mktemp("runs") / "mosaic")


@pytest.fixture(scope="module")
def tokenizer(sample_root):
    return AutoTokenizer.from_pretrained(str(sample_root / "tokenizer"))


def composer_model_from(checkpoint: Path, tokenizer) -> ComposerMosaicBert:
    """The Composer model as training builds it, its weights loaded strictly from the checkpoint: independent
    of the export's own reading of the checkpoint."""
    config = json.loads((checkpoint.parent / "model_config.json").read_text())
    architecture = {k: config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                          "vocab_size")}
    model = build_mosaic_bert(tokenizer, model_config=architecture)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"])
    return model.eval()


@pytest.mark.slow
def test_export_loads_with_plain_transformers_and_matches_the_composer_model(mosaic_checkpoint, tokenizer, tmp_path):
    out = tmp_path / "exported"
    report = export_model(str(mosaic_checkpoint), str(out), **quiet)
    assert report.loaded_module.startswith("transformers_modules.")  # the folder's code, not the package's
    assert report.max_abs_diff <= 1e-5 and report.pipeline == "fill-mask"
    assert report.longest_input == parity.LONG_INPUT_TOKENS  # ALiBi past BERT's 512 positions, in the other process

    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_mosaicbert.py", "configuration_mosaicbert.py", "README.md",
            "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]  # no pickles
    # One model file: the exported code is the package's, byte for byte.
    assert (out / "modeling_mosaicbert.py").read_bytes() == Path(modeling_module.__file__).read_bytes()
    assert (out / "configuration_mosaicbert.py").read_bytes() == Path(configuration_module.__file__).read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mosaic_bert" and config["attention_backend"] == "auto"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM",
                                       "AutoModelForSequenceClassification", "AutoModelForTokenClassification"}

    # Independently of the export's reading: the Composer model as training builds it, against the folder.
    composer = composer_model_from(mosaic_checkpoint, tokenizer)
    again = check_parity(composer.model, tokenizer, out, "AutoModelForMaskedLM")
    assert again.max_abs_diff <= 1e-5 and again.pipeline == "fill-mask"
    # Fine-tuning starts from the MLM folder (the original release's auto_map lacked the classifier); the
    # fine-tuned model saves as a folder that loads without the package too.
    classifier = MosaicBertForSequenceClassification.from_pretrained(out, num_labels=3)
    classifier.save_pretrained(tmp_path / "fine-tuned")
    with pytest.raises(UserError, match="has no tokenizer"):  # the pipeline reads it from the folder
        check_parity(classifier, tokenizer, tmp_path / "fine-tuned", "AutoModelForSequenceClassification")
    tokenizer.save_pretrained(tmp_path / "fine-tuned")
    report = check_parity(classifier, tokenizer, tmp_path / "fine-tuned", "AutoModelForSequenceClassification")
    assert report.loaded_class == "MosaicBertForSequenceClassification" and report.max_abs_diff <= 1e-5

    card = (out / "README.md").read_text()
    assert "4 steps" in card and "masked-LM on the held-out split at step 4" in card
    assert "trust_remote_code=True" in card and "30% of tokens masked" in card


def test_round_trip_composer_to_hf_to_composer_keeps_every_weight(mosaic_checkpoint, tokenizer, sample_root, tmp_path):
    out = tmp_path / "exported"
    export_model(str(mosaic_checkpoint), str(out), check=False, **quiet)
    original = composer_model_from(mosaic_checkpoint, tokenizer).state_dict()
    assert load_file(out / "model.safetensors").keys() <= {k.removeprefix("model.") for k in original}

    def same(state):
        assert state.keys() == original.keys()
        for key, value in original.items():
            assert torch.equal(state[key], value) if isinstance(value, torch.Tensor) else state[key] == value, key

    same(build_mosaic_bert(tokenizer, pretrained_model_name=str(out)).state_dict())  # model.pretrained_model_name
    # load_path naming the folder: weights in before the first step, the YAML's architecture kept.
    config = load_config(DEMO_YAML, tiny_overrides(sample_root, tmp_path / "resumed", load_path=str(out),
                                                   save_folder="null"))
    trainer, _ = build_trainer(config)
    same(trainer.state.model.state_dict())
    trainer.close()


def test_load_path_with_other_widths_says_to_use_pretrained_model_name(mosaic_checkpoint, tokenizer, tmp_path):
    out = tmp_path / "exported"
    export_model(str(mosaic_checkpoint), str(out), check=False, **quiet)
    wider = build_mosaic_bert(tokenizer, model_config={"hidden_size": 96, "num_hidden_layers": 2,
                                                       "num_attention_heads": 2, "intermediate_size": 128})
    with pytest.raises(UserError, match="other widths.*pretrained_model_name"):
        load_weights_into(wider.model, str(out), "mosaic_bert")


def pruned_checkpoint(folder: Path, tokenizer) -> tuple[Path, MosaicBertForMaskedLM]:
    """A Composer-format checkpoint of a structurally pruned model, as ComposerMosaicBert saves its state."""
    model = MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=96))
    prune(model, keep_heads=[[0, 2, 3], [1]], keep_units=[list(range(0, 96, 2)), list(range(70))])
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps({k: v for k, v in model.config.to_dict().items()
                                                          if not k.endswith("_per_layer")}))
    checkpoint = folder / "ep0-ba1-rank0.pt"
    torch.save({"state": {"model": ComposerMosaicBert(model).state_dict()}}, checkpoint)
    return checkpoint, model.eval()


@pytest.mark.slow
def test_pruned_model_exports_with_its_widths_and_matches(tokenizer, sample_root, tmp_path):
    checkpoint, model = pruned_checkpoint(tmp_path / "run", tokenizer)
    with pytest.raises(UserError, match="--tokenizer"):  # no run record beside it names the tokenizer
        export_model(str(checkpoint), str(tmp_path / "out"), **quiet)
    assert not (tmp_path / "out").exists()
    report = export_model(str(checkpoint), str(tmp_path / "out"), tokenizer_name=str(sample_root / "tokenizer"), **quiet)
    assert report.max_abs_diff <= 1e-5 and report.pipeline == "fill-mask"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["head_indices_per_layer"] == [[0, 2, 3], [1]] and config["intermediate_size_per_layer"] == [48, 70]
    assert check_parity(model, tokenizer, tmp_path / "out", "AutoModelForMaskedLM").max_abs_diff <= 1e-5
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 1 | 1 of 4 (1; 16 wide) | 70 of 96 |" in card


def labelled(names: list[str]) -> dict[str, dict]:
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


@pytest.mark.slow
def test_fine_tuned_classifier_exports_with_its_label_names_and_matches(tokenizer, sample_root, tmp_path):
    torch.manual_seed(0)
    names = ["entailment", "neutral", "contradiction"]
    classifier = MosaicBertForSequenceClassification(MosaicBertConfig(
        vocab_size=len(tokenizer), **TINY, **labelled(names))).eval()
    classifier.save_pretrained(tmp_path / "job")  # as a GLUE job saves its model
    report = export_model(str(tmp_path / "job"), str(tmp_path / "out"), tokenizer_name=str(sample_root / "tokenizer"),
                          **quiet)
    assert report.auto_class == "AutoModelForSequenceClassification" and report.positions == 5  # the long row too
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    assert config["label2id"] == {"entailment": 0, "neutral": 1, "contradiction": 2}
    # The pipeline labelled every sample text, the pair too, with the model's own label names.
    assert report.pipeline == "text-classification" and len(report.pipeline_outputs) == len(parity.SAMPLE_TEXTS)
    assert set(report.pipeline_outputs) <= set(names) and "text-classification pipeline" in report.describe()
    assert check_parity(classifier, tokenizer, tmp_path / "out", "AutoModelForSequenceClassification").max_abs_diff <= 1e-5

    # Same logits, other label names than the folder's: only the pipeline's labels tell them apart.
    renamed = copy.deepcopy(classifier)
    renamed.config.id2label = {i: f"LABEL_{i}" for i in range(3)}
    with pytest.raises(UserError, match=r"text-classification pipeline .* answers '(entailment|neutral|contradiction)' "
                                        r"for 'The function returns a new list.'; the source model here gives 'LABEL_"):
        check_parity(renamed, tokenizer, tmp_path / "out", "AutoModelForSequenceClassification")


@pytest.mark.slow
def test_multi_label_classifier_pipeline_gives_the_labels_above_one_half(tokenizer, sample_root, tmp_path):
    torch.manual_seed(0)
    classifier = MosaicBertForSequenceClassification(MosaicBertConfig(
        vocab_size=len(tokenizer), **TINY, **labelled(["sports", "politics", "science"]),
        problem_type="multi_label_classification"))
    with torch.no_grad():
        classifier.classifier.bias.copy_(torch.tensor([2.0, -2.0, 0.0]))  # sports always, politics never
    classifier.save_pretrained(tmp_path / "job")
    report = export_model(str(tmp_path / "job"), str(tmp_path / "out"), tokenizer_name=str(sample_root / "tokenizer"),
                          **quiet)
    assert all("sports" in labels and "politics" not in labels for labels in report.pipeline_outputs)


TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def token_classifier(model_name: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if model_name == "mosaic_bert":
        return MosaicBertForTokenClassification(MosaicBertConfig(vocab_size=vocab_size, **TINY, **labelled(TAGS))).eval()
    return BertForTokenClassification(BertConfig(vocab_size=vocab_size, **TINY, **labelled(TAGS))).eval()


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["mosaic_bert", "hf_bert"])
def test_token_classifier_exports_and_its_pipeline_tags_as_the_source_model(model_name, tokenizer, sample_root,
                                                                             tmp_path):
    token_classifier(model_name, len(tokenizer)).save_pretrained(tmp_path / "job")
    report = export_model(str(tmp_path / "job"), str(tmp_path / "out"), tokenizer_name=str(sample_root / "tokenizer"),
                          **quiet)
    assert report.auto_class == "AutoModelForTokenClassification" and report.loaded_class.endswith("ForTokenClassification")
    long_input = parity.LONG_INPUT_TOKENS if model_name == "mosaic_bert" else None  # BERT's table ends at 512
    assert report.positions == int(parity.sample_batch(tokenizer, False, long_input)["attention_mask"].sum())
    assert report.longest_input == parity.LONG_INPUT_TOKENS if long_input else report.longest_input < 512
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {str(i): tag for i, tag in enumerate(TAGS)} and config["label2id"]["I-LOC"] == 4
    assert "pipeline_tag: token-classification" in (tmp_path / "out" / "README.md").read_text()
    # The comparison had something to compare: "O", B- and I- tokens, groups joining several tokens.
    assert report.pipeline == "token-classification" and len(report.pipeline_outputs) == 3
    tokens = [label for output in report.pipeline_outputs for _, _, label in output["tokens"]]
    groups = [group for output in report.pipeline_outputs for group in output["groups"]]
    assert {"O", "B-PER", "I-PER"} <= set(tokens) and 0 < len(groups) < len([tag for tag in tokens if tag != "O"])
    assert {entity for entity, _, _ in groups} <= {"PER", "LOC"}


def test_simple_groups_follow_the_pipelines_rule():
    tokens = [("B-PER", 0, 3), ("I-PER", 4, 6), ("B-PER", 7, 9), ("O", 10, 11), ("I-PER", 12, 14), ("I-LOC", 15, 17),
              ("B-LOC", 18, 20)]
    assert parity.simple_groups(tokens) == [["PER", 0, 6], ["PER", 7, 9], ["PER", 12, 14], ["LOC", 15, 17],
                                            ["LOC", 18, 20]]


@pytest.mark.slow
def test_token_pipeline_groups_are_checked_against_the_source_model(tokenizer, sample_root, tmp_path, monkeypatch):
    model = token_classifier("mosaic_bert", len(tokenizer))
    model.save_pretrained(tmp_path / "job")
    export_model(str(tmp_path / "job"), str(tmp_path / "out"), tokenizer_name=str(sample_root / "tokenizer"),
                 check=False, **quiet)
    # Same logits and token labels; only the entity groups derived here differ from the pipeline's.
    monkeypatch.setattr(parity, "simple_groups", lambda tokens: [])
    with pytest.raises(UserError, match=r"token-classification pipeline .* answers .*'groups': \[\['(PER|LOC)'.*"
                                        r"the source model here gives .*'groups': \[\]"):
        check_parity(model, tokenizer, tmp_path / "out", "AutoModelForTokenClassification")


@pytest.mark.slow
def test_hf_bert_exports_as_plain_bert_and_fine_tunes(sample_root, tmp_path, tokenizer):
    checkpoint = pretrain(HF_BERT_YAML, sample_root, tmp_path / "hf")
    out = tmp_path / "bert"
    report = export_model(str(checkpoint), str(out), **quiet)
    assert report.loaded_class == "BertForMaskedLM" and report.loaded_module.startswith("transformers.models.bert")
    assert report.longest_input < 512  # no row past its position table
    assert report.max_abs_diff <= 1e-5 and report.pipeline == "fill-mask"
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert not list(out.glob("*.py"))
    classifier = load_classifier(str(out), "hf_bert", num_labels=2)  # GLUE from a stock BERT folder
    assert classifier.bert.encoder.layer[0].attention.self.query.weight.shape[0] == 64

    # Pretraining from the plain BERT folder: its architecture (use_pretrained), or its weights in the YAML's (load_path).
    exported = load_file(out / "model.safetensors")
    pretrained = build_hf_bert(tokenizer, pretrained_model_name=str(out), use_pretrained=True).model
    fresh = build_hf_bert(tokenizer, model_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                   "intermediate_size": 128}).model
    load_weights_into(fresh, str(out), "hf_bert")
    for model in (pretrained, fresh):
        state = model.state_dict()
        for key, value in exported.items():
            assert torch.equal(state[key], value), key


def test_existing_output_is_kept_unless_overwrite(mosaic_checkpoint, tmp_path):
    out = tmp_path / "exported"
    export_model(str(mosaic_checkpoint), str(out), check=False, **quiet)
    (out / "notes.txt").write_text("an earlier export, annotated")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        export_model(str(mosaic_checkpoint), str(out), check=False, **quiet)
    assert (out / "notes.txt").is_file()
    export_model(str(mosaic_checkpoint), str(out), check=False, overwrite=True, **quiet)
    assert (out / "config.json").is_file() and not (out / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no staging folder left behind


def test_overwrite_never_replaces_a_folder_of_other_things(mosaic_checkpoint, tmp_path):
    exported = tmp_path / "exported"
    export_model(str(mosaic_checkpoint), str(exported / "one"), check=False, **quiet)
    with pytest.raises(UserError, match="not a model folder"):
        export_model(str(mosaic_checkpoint), str(exported), check=False, overwrite=True, **quiet)
    assert (exported / "one" / "config.json").is_file()


def test_pruned_export_round_trips_into_pretraining(tokenizer, sample_root, tmp_path):
    checkpoint, model = pruned_checkpoint(tmp_path / "run", tokenizer)
    export_model(str(checkpoint), str(tmp_path / "out"), tokenizer_name=str(sample_root / "tokenizer"), check=False,
                 **quiet)
    again = build_mosaic_bert(tokenizer, pretrained_model_name=str(tmp_path / "out")).model
    assert again.config.head_indices_per_layer == [[0, 2, 3], [1]]
    for (key, value), (other_key, other) in zip(model.state_dict().items(), again.state_dict().items()):
        assert key == other_key and torch.equal(value, other), key


def test_card_lists_failed_glue_tasks_and_classifier_training(tmp_path):
    from mosaicbert.export.model_card import CardFacts, render_model_card

    config = MosaicBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              vocab_size=2112).to_dict()
    glue = {"protocol": "paper", "created": "today", "tasks": {
        "rte": {"seeds_ok": 0, "seeds_planned": 2},
        "mnli": {"seeds_ok": 1, "seeds_planned": 1, "score": 71.5}}}
    card = render_model_card(CardFacts(name="m", model_name="mosaic_bert", auto_class="AutoModelForMaskedLM",
                                       config=config, parameters=1, tokenizer="tok", tokenizer_size=2048, source="x.pt",
                                       run_config={"model": {"vocab_multiple": 64}}, glue=[glue]))
    assert "| rte | failed | 0/2 |" in card and "| mnli | 71.50 | 1/1 |" in card and "average of 1 tasks" in card
    assert "padded to a multiple of 64" in card and "tags: [mosaicbert, encoder, fill-mask]" in card


@pytest.mark.slow
def test_folder_missing_its_code_fails_the_isolated_load(mosaic_checkpoint, tokenizer, tmp_path):
    out = tmp_path / "exported"
    export_model(str(mosaic_checkpoint), str(out), check=False, **quiet)
    (out / "modeling_mosaicbert.py").unlink()
    with pytest.raises(UserError, match="does not load with plain transformers"):
        check_parity(composer_model_from(mosaic_checkpoint, tokenizer).model, tokenizer, out, "AutoModelForMaskedLM")


@pytest.mark.slow
def test_cli_errors_are_one_line_without_traceback(mosaic_checkpoint, tmp_path, capsys, monkeypatch):
    # One run of the script itself, in its own process; the other cases call its main() (same code, no start-up).
    missing = subprocess.run([sys.executable, str(REPO / "src" / "export.py"), str(tmp_path / "nope.pt"),
                              str(tmp_path / "out")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    monkeypatch.syspath_prepend(str(REPO / "src"))
    from export import main as export_main

    def export(*args) -> str:
        assert export_main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1 and "Traceback" not in err
        return err

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "type 'gpt2'" in export(gpt2, tmp_path / "out")

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("just text")
    assert "cannot be read as a checkpoint" in export(not_a_checkpoint, tmp_path / "out")

    weightless = tmp_path / "weightless"
    export_model(str(mosaic_checkpoint), str(weightless), check=False, **quiet)
    (weightless / "model.safetensors").unlink()
    assert "has no model.safetensors" in export(weightless, tmp_path / "out")
    assert not (tmp_path / "out").exists()
