"""Continued pretraining (yamls/pretrain/continue-*.yaml): a run starts from the source model, so its first
evaluation is the source's own MLM loss on the same batches, not a fresh model's; the tokenizer's vocabulary is
checked against the model's on every path (the mosaic_bert-from-scratch case is in tests/test_bad_input.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from composer.core import Callback
from transformers import AutoModelForMaskedLM, AutoTokenizer

from mosaicbert.config import load_config
from mosaicbert.errors import UserError
from mosaicbert.export import export_model
from mosaicbert.model.loading import MASKED_LMS, VOCAB_PADDING, check_vocabulary
from mosaicbert.model.modeling_mosaicbert import IGNORE_INDEX
from mosaicbert.train import main, train

from conftest import DEMO_YAML, HF_BERT_YAML, REPO, pretrain, tiny_overrides

CONTINUE_MOSAICBERT = REPO / "yamls" / "pretrain" / "continue-mosaicbert.yaml"
CONTINUE_BERT = REPO / "yamls" / "pretrain" / "continue-bert.yaml"
ARCHITECTURE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class Recipe:
    pretrain_yaml: Path  # trains the source model
    continue_yaml: Path
    naming_source: tuple[str, ...]  # the overrides that point the recipe at a source folder, as the README does
    from_scratch: dict[str, str]  # the same recipe with a freshly initialised model instead


RECIPES = {
    "mosaic_bert": Recipe(DEMO_YAML, CONTINUE_MOSAICBERT, ("model.pretrained_model_name", "tokenizer_name"),
                          {"model.pretrained_model_name": "null"}),
    "hf_bert": Recipe(HF_BERT_YAML, CONTINUE_BERT, ("model.pretrained_model_name",),  # the tokenizer follows
                      {"model.use_pretrained": "false"}),
}


def continued_overrides(sample_root: Path, run_folder: Path, **extra) -> list[str]:
    """A short continued run on the sample corpus: the first evaluation (two batches), one step, evaluation again."""
    values = {"data_local": sample_root, "run_folder": run_folder, "max_seq_len": 64, "global_train_batch_size": 8,
              "max_duration": "1ba", "eval_interval": "1ba", "eval_subset_num_batches": 2,
              "train_loader.num_workers": 0, "eval_loader.num_workers": 0, "save_folder": "null", "autoresume": "false"}
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


class FirstEvaluationBatches(Callback):
    """Keeps the batches of a run's first evaluation, as the model received them."""

    def __init__(self):
        self.evaluations = 0
        self.batches: list[dict[str, torch.Tensor]] = []

    def eval_start(self, state, logger):
        self.evaluations += 1

    def eval_batch_start(self, state, logger):
        if self.evaluations == 1:
            self.batches.append({key: value.clone() for key, value in state.batch.items()})


def mlm_loss(folder: Path, batches: list[dict[str, torch.Tensor]]) -> float:
    """The MLM loss of the model in `folder` over `batches`, computed here: the folder loaded by transformers, its
    logits at every position, fp64 cross-entropy summed over the masked positions of all batches and averaged."""
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    total, masked = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch.get("token_type_ids")).logits
            targets = batch["labels"] != IGNORE_INDEX
            total += F.cross_entropy(logits[targets].double(), batch["labels"][targets], reduction="sum").item()
            masked += int(targets.sum())
    return total / masked


@pytest.fixture(scope="module", params=list(RECIPES))
def source(request, sample_root, tmp_path_factory) -> tuple[str, Path]:
    """(model name, folder): a tiny model trained 4 steps on the sample corpus, so its loss lies below a fresh
    model's, exported with its tokenizer as `make export` writes it (a plain BertForMaskedLM folder for hf_bert)."""
    folder = tmp_path_factory.mktemp(request.param)
    checkpoint = pretrain(RECIPES[request.param].pretrain_yaml, sample_root, folder / "run")
    export_model(str(checkpoint), str(folder / "exported"), check=False, progress=lambda message: None)
    return request.param, folder / "exported"


@pytest.mark.slow
def test_first_evaluation_is_the_source_models_mlm_loss(source, sample_root, tmp_path, clean_env):
    name, folder = source
    recipe = RECIPES[name]
    batches = FirstEvaluationBatches()
    naming = {key: folder for key in recipe.naming_source}
    config = load_config(recipe.continue_yaml, continued_overrides(sample_root, tmp_path / "continued", **naming))
    first = train(config, extra_callbacks=[batches])["first_eval"]
    assert first["batch"] == 0 and len(batches.batches) == 2
    source_loss = mlm_loss(folder, batches.batches)
    assert first["eval/LanguageCrossEntropy"] == pytest.approx(source_loss, rel=1e-6, abs=0)

    # The same recipe and batches from a fresh model of the source's architecture: the loss the source moved away from.
    architecture = json.loads((folder / "config.json").read_text())
    fresh = {**naming, **recipe.from_scratch,
             **{f"model.model_config.{key}": architecture[key] for key in ARCHITECTURE}}
    scratch = train(load_config(recipe.continue_yaml, continued_overrides(sample_root, tmp_path / "scratch", **fresh)))
    assert scratch["first_eval"]["eval/LanguageCrossEntropy"] > source_loss + 0.1


def saved_masked_lm(name: str, folder: Path, vocab_size: int) -> Path:
    """A tiny masked LM of `name` with `vocab_size` rows, saved by save_pretrained."""
    config_cls, model_cls = MASKED_LMS[name]
    model_cls(config_cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["hf_bert from scratch", "mosaic_bert from a folder", "hf_bert from a folder",
                                  "a folder of another, larger vocabulary"])
def test_a_vocabulary_that_does_not_fit_the_tokenizer_is_one_message(case, sample_root, tmp_path, capsys, clean_env):
    tokenizer = sample_root / "tokenizer"  # 2048 tokens
    run = tmp_path / "run"
    if case == "hf_bert from scratch":
        vocab_size = 64
        argv = [HF_BERT_YAML, *tiny_overrides(sample_root, run, **{"model.model_config.vocab_size": vocab_size})]
    else:
        name = "hf_bert" if case.startswith("hf_bert") else "mosaic_bert"
        vocab_size = 4096 if "larger" in case else 64
        start = saved_masked_lm(name, tmp_path / "source", vocab_size)
        argv = [RECIPES[name].continue_yaml, *continued_overrides(sample_root, run, **{
            "model.pretrained_model_name": start, "tokenizer_name": tokenizer})]
    assert main([str(arg) for arg in argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(rf"\b{vocab_size}\b", errors[0]) and "2048 tokens" in errors[0] and str(tokenizer) in errors[0]
    assert not run.exists()


def test_padding_rows_pass_and_more_do_not(sample_root):
    tokenizer = AutoTokenizer.from_pretrained(str(sample_root / "tokenizer"))
    tokens = len(tokenizer)
    check_vocabulary(tokens, tokenizer, "source")
    check_vocabulary(tokens + VOCAB_PADDING, tokenizer, "source")  # more than rounding up to 64 adds (30522 -> 30528)
    check_vocabulary(tokens + 128, tokenizer, "source", vocab_multiple=128)
    for rows in (tokens - 1, tokens + VOCAB_PADDING + 1):
        with pytest.raises(UserError, match=f"vocabulary of {rows} tokens"):
            check_vocabulary(rows, tokenizer, "source")
    check_vocabulary(tokens + 1000, tokenizer)  # from scratch, a larger vocabulary is the recipe's choice
    with pytest.raises(UserError, match=f"vocab_size={tokens - 1} is smaller than the tokenizer's {tokens} tokens"):
        check_vocabulary(tokens - 1, tokenizer)
