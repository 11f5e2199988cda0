"""The original MosaicBERT release (mosaicml/mosaic-bert-base) read into this package: a folder in the release's
layout, built here from its published parameter names, against an fp64 reference of the release's forward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from mosaicbert.errors import UserError
from mosaicbert.export import export_model
from mosaicbert.glue.runner import check_starts
from mosaicbert.model.composer import build_mosaic_bert
from mosaicbert.model.loading import folder_model_name, load_classifier, load_weights_into

from conftest import REPO

HIDDEN, HEADS, LAYERS, UNITS, ROWS = 64, 4, 2, 96, 2112  # 2112: the tokenizer's 2048 padded to a multiple of 64


def release_config(**changes) -> dict:
    """config.json as the hub release has it, at a small size."""
    config = {"architectures": ["BertForMaskedLM"], "alibi_starting_size": 512, "attention_probs_dropout_prob": 0.0,
              "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM"},
              "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": HIDDEN, "initializer_range": 0.02,
              "intermediate_size": UNITS, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
              "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "pad_token_id": 0,
              "position_embedding_type": "absolute", "tokenizer_name": "bert-base-uncased", "torch_dtype": "float32",
              "transformers_version": "4.26.0", "type_vocab_size": 2, "use_cache": True, "vocab_size": ROWS}
    config.update(changes)
    return config


def release_state(classifier: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the release's parameter names (bert_layers.py), tied decoder included as saved."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape, mean=0.0):
        return torch.randn(*shape, generator=g) * 0.05 + mean

    state = {"bert.embeddings.word_embeddings.weight": normal(ROWS, HIDDEN),
             "bert.embeddings.token_type_embeddings.weight": normal(2, HIDDEN)}

    def layer_norm(prefix):
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = normal(HIDDEN, mean=1.0), normal(HIDDEN)

    layer_norm("bert.embeddings.LayerNorm")
    for n in range(LAYERS):
        p = f"bert.encoder.layer.{n}"
        state[f"{p}.attention.self.Wqkv.weight"], state[f"{p}.attention.self.Wqkv.bias"] = normal(3 * HIDDEN, HIDDEN), normal(3 * HIDDEN)
        state[f"{p}.attention.output.dense.weight"], state[f"{p}.attention.output.dense.bias"] = normal(HIDDEN, HIDDEN), normal(HIDDEN)
        layer_norm(f"{p}.attention.output.LayerNorm")
        state[f"{p}.mlp.gated_layers.weight"] = normal(2 * UNITS, HIDDEN)
        state[f"{p}.mlp.wo.weight"], state[f"{p}.mlp.wo.bias"] = normal(HIDDEN, UNITS), normal(HIDDEN)
        layer_norm(f"{p}.mlp.layernorm")
    if classifier:
        state["bert.pooler.dense.weight"], state["bert.pooler.dense.bias"] = normal(HIDDEN, HIDDEN), normal(HIDDEN)
        state["classifier.weight"], state["classifier.bias"] = normal(3, HIDDEN), normal(3)
    else:
        state["cls.predictions.transform.dense.weight"] = normal(HIDDEN, HIDDEN)
        state["cls.predictions.transform.dense.bias"] = normal(HIDDEN)
        layer_norm("cls.predictions.transform.LayerNorm")
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
        state["cls.predictions.decoder.bias"] = normal(ROWS)
    return state


def write_release(folder: Path, state: dict[str, torch.Tensor], **config_changes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(release_config(**config_changes)))
    torch.save(state, folder / "pytorch_model.bin")  # the release ships a .bin; read with weights_only=True
    return folder


def release_forward(w: dict[str, torch.Tensor], ids: list[int], types: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64, one sequence, straight from bert_layers.py's description: (last hidden states, MLM logits)."""
    w = {k: v.double() for k, v in w.items()}
    d = HIDDEN // HEADS

    def ln(x, prefix):
        return F.layer_norm(x, (HIDDEN,), w[f"{prefix}.weight"], w[f"{prefix}.bias"], eps=1e-12)

    x = ln(w["bert.embeddings.word_embeddings.weight"][ids] + w["bert.embeddings.token_type_embeddings.weight"][types],
           "bert.embeddings.LayerNorm")
    n = len(ids)
    slopes = torch.tensor([2 ** (-8 * (h + 1) / HEADS) for h in range(HEADS)], dtype=torch.float64)
    distance = (torch.arange(n)[None, :] - torch.arange(n)[:, None]).abs().double()
    for layer in range(LAYERS):
        p = f"bert.encoder.layer.{layer}"
        qkv = (x @ w[f"{p}.attention.self.Wqkv.weight"].T + w[f"{p}.attention.self.Wqkv.bias"]).view(n, 3, HEADS, d)
        scores = torch.einsum("ihd,jhd->hij", qkv[:, 0], qkv[:, 1]) / math.sqrt(d) - slopes[:, None, None] * distance
        context = torch.einsum("hij,jhd->ihd", scores.softmax(-1), qkv[:, 2]).reshape(n, HIDDEN)
        x = ln(context @ w[f"{p}.attention.output.dense.weight"].T + w[f"{p}.attention.output.dense.bias"] + x,
               f"{p}.attention.output.LayerNorm")
        gated = x @ w[f"{p}.mlp.gated_layers.weight"].T
        units = F.gelu(gated[:, :UNITS]) * gated[:, UNITS:]  # GELU on the first half
        x = ln(units @ w[f"{p}.mlp.wo.weight"].T + w[f"{p}.mlp.wo.bias"] + x, f"{p}.mlp.layernorm")
    if "cls.predictions.decoder.bias" not in w:
        return x, None
    head = F.gelu(x @ w["cls.predictions.transform.dense.weight"].T + w["cls.predictions.transform.dense.bias"])
    head = ln(head, "cls.predictions.transform.LayerNorm")
    return x, head @ w["bert.embeddings.word_embeddings.weight"].T + w["cls.predictions.decoder.bias"]


def padded_batch(lengths=(7, 12, 3), seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 2048, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    types = (torch.arange(ids.shape[1]) >= 2).long().expand_as(ids) * mask
    return ids * mask, mask, types


@pytest.fixture(scope="module")
def tokenizer(sample_root):
    return AutoTokenizer.from_pretrained(str(sample_root / "tokenizer"))


def test_release_mlm_loads_for_pretraining_and_computes_the_release_forward(tokenizer, tmp_path):
    state = release_state()
    folder = write_release(tmp_path / "mosaic-bert-base", state)
    assert folder_model_name(folder) == "mosaic_bert"  # model_type "bert", told apart by its markers
    model = build_mosaic_bert(tokenizer, pretrained_model_name=str(folder)).model.eval()
    assert model.config.vocab_size == ROWS and model.config.model_type == "mosaic_bert"
    ids, mask, types = padded_batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    for row, n in enumerate(mask.sum(1).tolist()):
        _, expected = release_forward(state, ids[row, :n].tolist(), types[row, :n].tolist())
        torch.testing.assert_close(logits[row, :n].double(), expected, atol=1e-4, rtol=1e-4)

    # load_path: the release's weights into a YAML architecture of the same widths.
    same = build_mosaic_bert(tokenizer, model_config={"hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                                                      "num_attention_heads": HEADS, "intermediate_size": UNITS,
                                                      "vocab_size": ROWS}).model
    load_weights_into(same, str(folder), "mosaic_bert")
    for key, value in model.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key


@pytest.mark.slow
def test_release_mlm_converts_and_loads_without_the_package(tokenizer, sample_root, tmp_path):
    folder = write_release(tmp_path / "mosaic-bert-base", release_state())
    report = export_model(str(folder), str(tmp_path / "converted"), tokenizer_name=str(sample_root / "tokenizer"),
                          progress=lambda m: None)
    assert report.max_abs_diff <= 1e-5 and report.pipeline == "fill-mask"


def test_release_with_unpadded_vocabulary_rows_keeps_them(tokenizer, tmp_path):
    state = release_state()
    for key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
        state[key] = state[key][:2048]  # exactly the tokenizer's 2048 rows, not a multiple-of-64 padding
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    folder = write_release(tmp_path / "release", state, vocab_size=2048)
    model = build_mosaic_bert(tokenizer, pretrained_model_name=str(folder)).model.eval()
    assert model.config.vocab_size == 2048  # the release's logits, not rows added here
    ids, mask, types = padded_batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    _, expected = release_forward(state, ids[0, :7].tolist(), types[0, :7].tolist())
    torch.testing.assert_close(logits[0, :7].double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_release_classifier_fine_tunes_and_exports_to_this_layout(tokenizer, sample_root, tmp_path):
    state = release_state(classifier=True)
    folder = write_release(tmp_path / "release-classifier", state, architectures=["BertForSequenceClassification"],
                           id2label={"0": "entailment", "1": "neutral", "2": "contradiction"})
    model = load_classifier(str(folder), "mosaic_bert", num_labels=2).eval()  # GLUE's starting_checkpoint
    torch.testing.assert_close(model.bert.pooler.dense.weight, state["bert.pooler.dense.weight"])
    ids, mask, types = padded_batch()
    with torch.no_grad():
        hidden = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    for row, n in enumerate(mask.sum(1).tolist()):
        expected, _ = release_forward(state, ids[row, :n].tolist(), types[row, :n].tolist())
        torch.testing.assert_close(hidden[row, :n].double(), expected, atol=1e-4, rtol=1e-4)

    out = tmp_path / "converted"  # the release as a folder of this package's layout, checked without the package
    report = export_model(str(folder), str(out), tokenizer_name=str(sample_root / "tokenizer"), progress=lambda m: None)
    assert report.auto_class == "AutoModelForSequenceClassification" and report.max_abs_diff <= 1e-5
    assert json.loads((out / "config.json").read_text())["model_type"] == "mosaic_bert"


def test_glue_accepts_the_release_folder_as_a_mosaicbert_start(tmp_path):
    from mosaicbert.glue.config import load_glue_config

    folder = write_release(tmp_path / "release", release_state())
    config = load_glue_config(REPO / "yamls" / "glue" / "demo.yaml",
                              [f"starting_checkpoint={folder}"])
    check_starts(config)  # model_name mosaic_bert: accepted
    hf = load_glue_config(REPO / "yamls" / "glue" / "demo.yaml",
                          [f"starting_checkpoint={folder}", "model_name=hf_bert"])
    with pytest.raises(UserError, match="holds a mosaic_bert model"):
        check_starts(hf)


def test_release_with_another_layer_norm_eps_is_refused(tokenizer, tmp_path):
    folder = write_release(tmp_path / "release", release_state(), layer_norm_eps=1e-5)
    with pytest.raises(UserError, match="MLM head used 1e-12"):
        build_mosaic_bert(tokenizer, pretrained_model_name=str(folder))


def test_hub_id_downloads_config_and_weights_only(tokenizer, tmp_path, monkeypatch):
    import huggingface_hub

    folder = write_release(tmp_path / "snapshot", release_state())
    asked = {}

    def snapshot_download(repo_id, allow_patterns):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = build_mosaic_bert(tokenizer, pretrained_model_name="mosaicml/mosaic-bert-base").model
    assert asked["repo_id"] == "mosaicml/mosaic-bert-base"
    assert not [p for p in asked["allow_patterns"] if p.endswith(".py")]  # never the release's code
    assert model.config.num_hidden_layers == LAYERS


def test_release_without_a_token_head_starts_a_token_classifier(tmp_path):
    """The release's code (bert_layers.py) has no token-classification head: the harness builds this package's,
    with the release's encoder weights, so NER fine-tunes from it too."""
    state = release_state()
    folder = write_release(tmp_path / "release", state)
    model = load_classifier(str(folder), "mosaic_bert", num_labels=5, label_names=("O", "B-A", "I-A", "B-B", "I-B"),
                            per_token=True).eval()
    assert type(model).__name__ == "MosaicBertForTokenClassification" and model.config.id2label[1] == "B-A"
    ids, mask, types = padded_batch()
    with torch.no_grad():
        hidden = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    assert logits.shape == (*ids.shape, 5)
    n = int(mask[0].sum())
    expected, _ = release_forward(state, ids[0, :n].tolist(), types[0, :n].tolist())
    torch.testing.assert_close(hidden[0, :n].double(), expected, atol=1e-4, rtol=1e-4)
