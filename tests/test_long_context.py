"""Long context: the 512 / 1024 / 2048-token recipes, and scoring models at several lengths."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from streaming import LocalDataset

from mosaicbert.config import load_config
from mosaicbert.train import train

from conftest import DEMO_YAML, REPO, pretrain, tiny_overrides

BASE = REPO / "yamls" / "base.yaml"
LENGTH_KEYS = {"run_name", "max_seq_len", "global_train_batch_size", "device_train_microbatch_size", "max_duration"}


def recipe(seq_len: int):
    return REPO / "yamls" / "pretrain" / f"mosaicbert-base-seqlen-{seq_len}.yaml"


@pytest.mark.parametrize("seq_len", [512, 1024, 2048])
def test_long_recipes_are_the_base_recipe_at_the_same_tokens_per_batch(clean_env, seq_len):
    base, long = (yaml.safe_load(path.read_text()) for path in (BASE, recipe(seq_len)))
    assert {k: v for k, v in long.items() if k not in LENGTH_KEYS} == {k: v for k, v in base.items() if k not in LENGTH_KEYS}
    config = load_config(recipe(seq_len), [])  # validates, with this machine's defaults filled in
    assert config.max_seq_len == seq_len
    assert config.global_train_batch_size * seq_len == 4096 * 128
    assert config.device_train_microbatch_size * seq_len == 128 * 128
    assert long["max_duration"] == "70000ba" and base["max_duration"] == f"{70000 * 4096}sp"


@pytest.mark.slow
def test_the_2048_recipe_trains_a_tiny_model_on_cpu(clean_env, sample_root, tmp_path):
    overrides = tiny_overrides(sample_root, tmp_path / "run", max_seq_len=2048, global_train_batch_size=4,
                               device_train_microbatch_size=2, max_duration="3ba", eval_interval="3ba",
                               save_interval="3ba", **{"train_loader.num_workers": 0, "eval_loader.num_workers": 0,
                                                       "tokenizer_name": sample_root / "tokenizer"})
    config = load_config(recipe(2048), overrides)
    assert config.max_seq_len == 2048 and config.precision == "fp32"  # the recipe's amp_bf16, on this CPU
    summary = train(config)
    assert summary["batches"] == 3
    assert 0 < summary["last_eval"]["eval/LanguageCrossEntropy"] < 20


# --------------------------------------------------------------------------- extrapolation (src/eval_lengths.py)


@pytest.fixture(scope="module")
def two_models(sample_root, tmp_path_factory):
    """A tiny MosaicBERT and a tiny Hugging Face BERT (position table of 512), each pretrained 4 steps at 64."""
    runs = tmp_path_factory.mktemp("runs")
    return (pretrain(DEMO_YAML, sample_root, runs / "mosaic"),
            pretrain(REPO / "yamls" / "pretrain" / "hf-bert-demo.yaml", sample_root, runs / "hf"))


def test_lengths_are_scored_on_the_same_masks_and_bert_stops_at_its_position_table(two_models, sample_root, tmp_path):
    from mosaicbert.evaluation.lengths import evaluate_lengths

    texts = lambda source: iter(LocalDataset(local=str(sample_root / "val_small"))[i]["text"] for i in range(200))
    mosaic, bert = evaluate_lengths([str(path) for path in two_models], [32, 128, 600], texts,
                                    tokens_per_length=1200, progress=lambda line: None)
    assert [s.length for s in mosaic.scores] == [32, 128, 600]
    assert all(s.cross_entropy is not None and s.masked_tokens > 0 for s in mosaic.scores)
    assert mosaic.position_limit is None and bert.position_limit == 512
    assert [s.masked_tokens for s in bert.scores[:2]] == [s.masked_tokens for s in mosaic.scores[:2]]  # same masks
    assert bert.scores[2].cross_entropy is None and bert.scores[2].note == "position table ends at 512"
    assert mosaic.trained_at == bert.trained_at == 64


def test_a_lengths_score_is_the_models_own_mean_loss_on_those_pieces(two_models, sample_root):
    """Independent check of the scoring: the mean cross-entropy the model's forward reports for the same pieces
    (all in one batch), and the accuracy recomputed from full logits."""
    from mosaicbert.evaluation.lengths import masked_pieces, score_pieces, token_stream
    from mosaicbert.export.writer import read_source, source_tokenizer

    source = read_source(two_models[0])
    _, tokenizer = source_tokenizer(source, str(sample_root / "tokenizer"), two_models[0])
    texts = (LocalDataset(local=str(sample_root / "val_small"))[i]["text"] for i in range(200))
    pieces = masked_pieces(token_stream(texts, tokenizer, 5 * 254), 256, 5, tokenizer, 0.15)
    model = source.model.eval()
    loss, error, accuracy, count = score_pieces(model, pieces, tokens_per_batch=512)  # three batches
    with torch.no_grad():
        reference = model(**pieces)
        full = model(**{k: v for k, v in pieces.items() if k != "labels"}).logits
    selected = pieces["labels"] != -100
    assert count == int(selected.sum()) > 0
    assert loss == pytest.approx(float(reference.loss), rel=1e-5)
    assert 0 < error < loss / 10
    assert accuracy == pytest.approx(float((full[selected].argmax(-1) == pieces["labels"][selected]).double().mean()))
    assert (pieces["input_ids"][:, 0] == tokenizer.cls_token_id).all() and (pieces["input_ids"][:, -1] == tokenizer.sep_token_id).all()


def test_eval_lengths_writes_a_table_and_a_plot(two_models, sample_root, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "src/eval_lengths.py", str(two_models[0]), "--lengths", "32", "96",
               "--tokens-per-length", "600", "--data", str(sample_root), "--split", "val_small", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"results.json", "table.md", "lengths.png"}
    assert "| 32 | 96 |" in (out / "table.md").read_text()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.startswith("error:") and "--overwrite" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "missing.pt does not exist"),
    (["{ckpt}", "--lengths", "4"], "at least 8 tokens"),
    (["{ckpt}", "--tokens-per-length", "100000000"], "fewer than the"),
    (["{ckpt}", "--data", "{tmp}/nowhere"], "no MDS dataset at"),
])
def test_eval_lengths_bad_input_is_one_error_line(two_models, sample_root, tmp_path, capsys, args, message):
    sys.path.insert(0, str(REPO / "src"))
    import eval_lengths

    args = [a.format(ckpt=two_models[0], tmp=tmp_path) for a in args]
    if "--data" not in args:
        args += ["--data", str(sample_root), "--split", "val_small"]
    assert eval_lengths.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()
