"""EarlyBERT inside Composer runs: search, draw, in-run pruning, resume, two-phase with rewind, DDP."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mosaicbert.config import load_config
from mosaicbert.model.loading import load_classifier
from mosaicbert.train import train

from conftest import DEMO_YAML, CrashAtBatch, tiny_overrides
from helpers.training import checkpoint_weights, run_two_processes

pytestmark = pytest.mark.slow


def earlybert_overrides(sample_root, folder, **extra):
    settings = {
        "model.model_config.num_attention_heads": 4, "model.model_config.hidden_size": 64,
        "algorithms.earlybert.mode": "in_run", "algorithms.earlybert.check_interval": 2,
        "algorithms.earlybert.window": 3, "algorithms.earlybert.min_search_steps": 4,
        "algorithms.earlybert.max_search_steps": 6, "algorithms.earlybert.min_units_per_layer": 8,
        "algorithms.earlybert.unit_prune_ratio": 0.3, "max_duration": "16ba", "save_interval": "4ba",
        "eval_interval": "8ba",
    }
    settings.update(extra)
    return tiny_overrides(sample_root, folder, **settings)


def run(sample_root, folder, callbacks=None, **extra):
    return train(load_config(DEMO_YAML, earlybert_overrides(sample_root, folder, **extra)), extra_callbacks=callbacks)


def test_in_run_pruning_resumes_and_fine_tunes(clean_env, sample_root, tmp_path):
    straight = run(sample_root, tmp_path / "straight")
    ticket = json.loads((tmp_path / "straight" / "ticket.json").read_text())
    assert ticket["step"] <= 6 and ticket["reason"] in ("masks stable", "max_search_steps")
    assert all(len(kept) == 3 for kept in ticket["kept_heads"])  # 1 of 4 heads per layer pruned
    assert (tmp_path / "straight" / "earlybert_masks.png").is_file()
    weights = checkpoint_weights(straight["checkpoint"])
    assert weights["model.bert.encoder.layer.0.attention.Wqkv.weight"].shape == (3 * 3 * 16, 64)  # q, k, v x 3 heads x head_dim 16
    assert not any("coef" in key for key in weights)  # folded into the weights at the draw
    saved_config = json.loads((tmp_path / "straight" / "checkpoints" / "model_config.json").read_text())
    assert [len(h) for h in saved_config["head_indices_per_layer"]] == [3, 3]

    with pytest.raises(KeyboardInterrupt):
        run(sample_root, tmp_path / "resumed", [CrashAtBatch(10)])
    resumed = run(sample_root, tmp_path / "resumed", autoresume=True)  # loads the pruned batch-8 checkpoint
    assert resumed["batches"] == 16 and resumed["batches_this_run"] == 8
    other = checkpoint_weights(resumed["checkpoint"])
    for key in weights:
        torch.testing.assert_close(other[key], weights[key], rtol=1e-4, atol=1e-5, msg=key)
    report = json.loads((tmp_path / "resumed" / "earlybert_report.json").read_text())
    # The crashed part never reached FIT_END; the draw is known from the ticket the search wrote.
    resumed_ticket = json.loads((tmp_path / "resumed" / "ticket.json").read_text())
    assert report["drawn"] and report["draw_step"] == resumed_ticket["step"] == ticket["step"]
    assert resumed_ticket["search_seconds"] > 0

    # A plain run (no EarlyBERT) that loads the pruned weights trains every one of them.
    from mosaicbert.train import build_trainer

    plain = load_config(DEMO_YAML, earlybert_overrides(sample_root, tmp_path / "plain", algorithms="null",
                                                       load_path=resumed["checkpoint"], load_weights_only=True))
    trainer, _ = build_trainer(plain)
    model_params = {id(p) for p in trainer.state.model.parameters()}
    optimized = {id(p) for group in trainer.state.optimizers[0].param_groups for p in group["params"]}
    assert optimized == model_params
    trainer.close()

    from mosaicbert.export import export_model
    from mosaicbert.model import MosaicBertForMaskedLM

    # And export it: the pruned widths travel, and plain transformers computes the same logits.
    report = export_model(resumed["checkpoint"], str(tmp_path / "exported"), progress=lambda message: None)
    assert report.max_abs_diff <= 1e-5 and report.pipeline == "fill-mask"
    exported = MosaicBertForMaskedLM.from_pretrained(tmp_path / "exported")
    assert exported.bert.encoder.layer[1].attention.num_heads == 3
    torch.testing.assert_close(exported.bert.encoder.layer[1].mlp.wo.weight, other["model.bert.encoder.layer.1.mlp.wo.weight"])

    classifier = load_classifier(resumed["checkpoint"], "mosaic_bert", num_labels=2)  # GLUE from the pruned model
    assert classifier.bert.encoder.layer[0].attention.num_heads == 3
    assert classifier.bert.encoder.layer[0].mlp.intermediate_size == weights["model.bert.encoder.layer.0.mlp.wo.weight"].shape[1]


def test_two_phase_search_then_pruned_training_with_rewind(clean_env, sample_root, tmp_path):
    search = run(sample_root, tmp_path / "search", **{"algorithms.earlybert.mode": "two_phase"})
    assert search["batches"] <= 6  # stopped at the draw
    folder = tmp_path / "search"
    assert (folder / "ticket.json").is_file()
    start = torch.load(folder / "earlybert_search_start.pt", weights_only=True)
    searched = torch.load(folder / "earlybert_searched.pt", weights_only=True)
    coefficients = [key for key in start if key.endswith("_coef")]
    assert coefficients and all(torch.equal(start[k], torch.ones_like(start[k])) for k in coefficients)  # before step 1
    assert any(not torch.equal(searched[k], start[k]) for k in coefficients)

    pruned = run(sample_root, tmp_path / "pruned", **{
        "algorithms.earlybert.ticket": str(folder / "ticket.json"), "algorithms.earlybert.rewind": True,
        "max_duration": "8ba"})
    assert pruned["batches"] == 8
    weights = checkpoint_weights(pruned["checkpoint"])
    ticket = json.loads((folder / "ticket.json").read_text())
    kept_units = [len(units) for units in ticket["kept_units"]]
    assert [weights[f"model.bert.encoder.layer.{i}.mlp.wo.weight"].shape[1] for i in range(2)] == kept_units


def test_search_on_a_pruned_model_is_refused(clean_env, sample_root, tmp_path, capsys):
    from mosaicbert.train import main

    pruned = {"model.model_config.head_indices_per_layer": "[[0,1,3],[1,2,3]]"}
    # A config with pruned widths (a ticket's model_config.json, say): the search would cut 3 heads to 2.
    assert main([str(DEMO_YAML), *earlybert_overrides(sample_root, tmp_path / "config", **pruned)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "EarlyBERT cannot search this model: it is already structurally pruned (heads per layer [3, 3] of 4" in err

    # A pruned checkpoint loaded weights-only: its widths used to end the search silently, before it began.
    plain = run(sample_root, tmp_path / "plain", algorithms="null", max_duration="2ba", save_interval="2ba",
                eval_interval="2ba", **pruned)
    overrides = earlybert_overrides(sample_root, tmp_path / "search", load_path=plain["checkpoint"], load_weights_only=True)
    assert main([str(DEMO_YAML), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"EarlyBERT cannot search the checkpoint loaded from {plain['checkpoint']}: it is already structurally pruned" in err
    assert os.path.isfile(plain["checkpoint"])


def test_ranks_hold_identical_weights_after_in_run_pruning(clean_env, sample_root, tmp_path):
    run_two_processes(earlybert_overrides(sample_root, tmp_path / "ddp", max_duration="10ba", save_interval="10ba"))
    report = json.loads((tmp_path / "ddp" / "earlybert_report.json").read_text())
    assert report["drawn"]
    checksums = report["segments"][-1]["rank_parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
