"""Time to quality: interpolated times against numpy, bounded ratios, the seed bootstrap against its known
censoring probability, learning-rate tuning's range extension, the study's checks, and (slow) a whole tiny study."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import REPO
from mosaicbert.errors import ConfigError
from mosaicbert.sweep import study
from mosaicbert.sweep.plan import make_plan, read_sweep
from mosaicbert.sweep.time_to_quality import (Point, analyse, bootstrap_ratios, default_targets, earlybert_role,
                                              ratio_bounds, targets_table, time_to_target)
from mosaicbert.sweep.tuning import LR_KEY, best_rate, next_rate, tune_models, tuning_sweep, tuning_table, with_rates
from helpers.sweeps import TINY_MODEL

SHIPPED = REPO / "yamls" / "sweeps" / "time-to-quality.yaml"


def point(model, seed, minutes, quality):
    return Point(run=f"{model}-{seed}-{minutes}", model=model, seed=seed, budget=f"{minutes}m",
                 budget_seconds=60.0 * minutes, train_seconds=60.0 * minutes, quality=quality, steps=100, tokens=1000,
                 median_step_seconds=0.5)


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize("target", [0.31, 0.35, 0.399, 0.41, 0.47])
def test_time_to_target_interpolates_in_log_time_as_numpy_does(target):
    minutes, qualities = [2.0, 4.0, 8.0], [0.30, 0.40, 0.48]
    expected = float(np.exp(np.interp(target, qualities, np.log(minutes))))
    found, how = time_to_target(minutes, qualities, target)
    assert how == "interpolated" and math.isclose(found, expected, rel_tol=1e-12)


def test_a_target_outside_the_budgets_is_a_bound_and_the_first_crossing_counts():
    assert time_to_target([2.0, 4.0], [0.30, 0.40], 0.25) == (2.0, "at most")
    assert time_to_target([2.0, 4.0], [0.30, 0.40], 0.45) == (4.0, "more than")
    # A curve that dips after crossing: the first crossing is the time to the target.
    found, _ = time_to_target([1.0, 2.0, 4.0], [0.2, 0.4, 0.3], 0.3)
    assert math.isclose(found, math.sqrt(2.0))


def test_default_targets_lie_in_the_range_every_model_reaches_else_around_the_others_and_the_baselines_best():
    by_model = {"fast": [point("fast", 17, m, q) for m, q in ((2, 0.35), (4, 0.45), (8, 0.50))],
                "slow": [point("slow", 17, m, q) for m, q in ((2, 0.30), (4, 0.38), (8, 0.44))]}
    assert np.allclose(default_targets(by_model, "slow"), [0.3725, 0.395, 0.4175])
    # "slow" never reaches where "fast" starts: three targets in fast's range, and slow's best.
    by_model["fast"] = [point("fast", 17, m, q) for m, q in ((2, 0.46), (4, 0.48), (8, 0.50))]
    assert np.allclose(default_targets(by_model, "slow"), [0.44, 0.47, 0.48, 0.49])
    # A baseline on its plateau, best at its shortest budget: every model reaches that "at most" at once, so no target.
    by_model["slow"] = [point("slow", 17, m, q) for m, q in ((2, 0.056), (4, 0.053), (8, 0.055))]
    assert np.allclose(default_targets(by_model, "slow"), [0.47, 0.48, 0.49])
    # Every model on that plateau (CI's seconds-long budgets): no target, and the report says how to give one.
    plateau = by_model["slow"] + [point("fast", 17, m, 0.055) for m in (2, 4, 8)]
    assert default_targets({"slow": by_model["slow"]}, "slow") == []
    analysis = analyse(plateau, ["slow"])
    assert analysis["targets"] == [] and analysis["times"] == []
    assert "No default target" in targets_table(analysis) and "--targets" in targets_table(analysis)


@pytest.mark.parametrize("algorithms, role", [
    (None, (False, None)),
    ({"low_precision_layernorm": {}}, (False, None)),
    ({"earlybert": None}, (True, None)),  # a null entry is the algorithm with its defaults
    ({"earlybert": {"mode": "in_run"}}, (True, None)),
    ({"earlybert": {"ticket": "runs/p/ticket.json", "rewind": True}}, (False, "runs/p/ticket.json")),
])
def test_a_runs_earlybert_role_is_a_search_or_a_reused_ticket(algorithms, role):
    assert earlybert_role(algorithms) == role


@pytest.mark.parametrize("model, reference, bounds", [
    ((3.0, "interpolated"), (6.0, "interpolated"), (0.5, 0.5)),
    ((1.5, "at most"), (6.0, "more than"), (0.0, 0.25)),    # reached by 1.5 min against not by 6: at most a quarter
    ((3.0, "interpolated"), (6.0, "more than"), (0.0, 0.5)),
    ((3.0, "interpolated"), (1.5, "at most"), (2.0, math.inf)),
    ((6.0, "more than"), (3.0, "interpolated"), (2.0, math.inf)),
    ((1.5, "at most"), (1.5, "at most"), (0.0, math.inf)),  # both below the budgets: nothing to say
    ((6.0, "more than"), (6.0, "more than"), (0.0, math.inf)),  # both beyond them: nothing either
])
def test_a_ratio_of_times_is_exact_or_bounded_by_the_budgets(model, reference, bounds):
    assert ratio_bounds(model, reference) == bounds


def test_bootstrap_resamples_whole_seeds_and_widens_to_a_bound_where_a_resample_misses_the_target():
    """Seed 19 of `model` is so poor that any resample holding it misses the target within the budgets,
    which bounds that resample's ratio from below only; a resample leaves seed 19 out with probability
    (2/3)^3, so 19/27 of them are censored and the interval's upper end is unbounded."""
    baseline = [point("base", s, m, q) for s in (17, 18, 19) for m, q in ((2, 0.30), (4, 0.40), (8, 0.50))]
    model = [point("model", s, m, q + (-0.5 if s == 19 else 0.0)) for s in (17, 18, 19)
             for m, q in ((2, 0.35), (4, 0.45), (8, 0.55))]
    ratio = time_to_target([2, 4, 8], [0.35, 0.45, 0.55], 0.42)[0] / time_to_target([2, 4, 8], [0.30, 0.40, 0.50], 0.42)[0]
    result = bootstrap_ratios(model, baseline, 0.42)
    assert abs(result["censored_share"] - 19 / 27) < 0.035
    assert math.isclose(result["low"], ratio) and result["high"] is None
    # Identical seeds: every resample gives the same curves, so the interval is the ratio itself.
    same = [p for p in model if p.seed != 19]
    steady = bootstrap_ratios(same, [p for p in baseline if p.seed != 19], 0.42)
    assert steady["censored_share"] == 0 and math.isclose(steady["low"], ratio) and math.isclose(steady["high"], ratio)


def test_analysis_gives_each_model_its_time_and_its_ratio_to_every_reference():
    points = [point("base", s, m, q + 0.01 * (s - 18)) for s in (17, 18, 19) for m, q in ((2, 0.30), (4, 0.40), (8, 0.50))]
    points += [point("fast", s, m, q + 0.01 * (s - 18)) for s in (17, 18, 19) for m, q in ((2, 0.36), (4, 0.46), (8, 0.52))]
    points += [point("pruned", s, m, q) for s in (17, 18, 19) for m, q in ((2, 0.37), (4, 0.47), (8, 0.53))]
    analysis = analyse(points, ["base", "fast"], [0.38, 0.31])
    rows = {(r["target"], r["model"]): r for r in analysis["times"]}
    fast = rows[(0.38, "fast")]
    base_time = time_to_target([2, 4, 8], [0.30, 0.40, 0.50], 0.38)[0]
    expected = time_to_target([2, 4, 8], [0.36, 0.46, 0.52], 0.38)[0] / base_time
    ratio = fast["ratios"]["base"]
    assert fast["how"] == "interpolated" and math.isclose(ratio["low"], expected) and ratio["high"] == ratio["low"]
    assert ratio["interval"]["low"] <= expected <= ratio["interval"]["high"]
    # The second reference is for the models that are no reference: base ÷ fast would only invert fast ÷ base.
    pruned = rows[(0.38, "pruned")]["ratios"]
    own = time_to_target([2, 4, 8], [0.37, 0.47, 0.53], 0.38)[0]
    assert math.isclose(pruned["base"]["low"], own / base_time)
    assert math.isclose(pruned["fast"]["low"], own / time_to_target([2, 4, 8], [0.36, 0.46, 0.52], 0.38)[0])
    # 0.31: "fast" reaches it within the shortest budget, the base only after it, so fast needs at most 2/t.
    early = rows[(0.31, "fast")]["ratios"]["base"]
    assert rows[(0.31, "fast")]["how"] == "at most" and early["low"] == 0
    assert math.isclose(early["high"], 2 / time_to_target([2, 4, 8], [0.30, 0.40, 0.50], 0.31)[0])
    assert set(fast["ratios"]) == {"base"} and rows[(0.38, "base")]["ratios"] == {}
    table = targets_table(analysis)
    assert "time ÷ base's" in table and f"≤ {early['high']:.2f}" in table


# --------------------------------------------------------------------------- tuning


def test_the_best_rate_must_be_inside_the_range_tried():
    assert next_rate({5e-4: 0.3, 1e-3: 0.4, 2e-3: 0.35}) is None
    assert next_rate({5e-4: 0.3, 1e-3: 0.35, 2e-3: 0.4}) == 4e-3
    assert next_rate({5e-4: 0.4, 1e-3: 0.35, 2e-3: 0.3}) == 2.5e-4
    assert best_rate({5e-4: 0.4, 1e-3: 0.4}) == 5e-4  # of equals, the lower rate
    assert next_rate({5e-4: 0.3, 1e-3: 0.35, 2e-3: None}) is None  # a failed run is the worst


def fake_scorer(quality_of_rate, calls):
    """A one-run scorer that plans for real (the cell validated) and scores by a function of the model and rate."""
    def score(sweep):
        (run,) = make_plan(sweep).runs
        calls.append((run.model, run.cell[LR_KEY]))
        return quality_of_rate(run.model, run.cell[LR_KEY])
    return score


def tiny_sweep(tmp_path, sample_root):
    return read_sweep(SHIPPED, [f"folder={tmp_path}", f"overrides.data_local={sample_root}"])


def test_tuning_extends_past_an_edge_until_the_best_rate_is_inside_with_the_models_alternating(tmp_path, sample_root,
                                                                                                 in_repo):
    sweep = tiny_sweep(tmp_path, sample_root)
    calls = []
    peaks = {"hf-bert": 4e-3, "mosaicbert": 1e-3}  # hf-bert's lies two extensions above the recipe's 1e-3
    tunings = tune_models(sweep, ["hf-bert", "mosaicbert"], "3m", 17, str(tmp_path),
                          fake_scorer(lambda model, lr: -abs(math.log(lr / peaks[model])), calls))
    assert calls == [("hf-bert", 1e-3), ("mosaicbert", 1e-3), ("hf-bert", 5e-4), ("mosaicbert", 5e-4),
                     ("hf-bert", 2e-3), ("mosaicbert", 2e-3), ("hf-bert", 4e-3), ("hf-bert", 8e-3)]
    assert [(t.model, t.chosen, t.interior) for t in tunings] == [("hf-bert", 4e-3, True), ("mosaicbert", 1e-3, True)]
    assert list(tunings[0].results) == [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
    capped = tune_models(sweep, ["hf-bert"], "3m", 17, str(tmp_path), fake_scorer(lambda model, lr: lr, []), max_extensions=1)
    assert (capped[0].chosen, capped[0].interior) == (4e-3, False)
    cut = tuning_sweep(sweep, "earlybert", 1e-3, "3m", 17, str(tmp_path))
    assert cut.grid == {"model": ["earlybert"], "seed": [17], "max_duration": ["3m"], LR_KEY: [1e-3]}
    assert cut.folder == str(tmp_path / "tuning" / "earlybert")


def test_a_failed_run_counts_as_the_worst_rate_and_shows_in_the_table(tmp_path, sample_root, in_repo):
    sweep = tiny_sweep(tmp_path, sample_root)
    diverges = fake_scorer(lambda model, lr: None if lr >= 2e-3 else 0.3 + lr, [])
    (tuning,) = tune_models(sweep, ["mosaicbert"], "3m", 17, str(tmp_path), diverges)
    assert tuning.chosen == 1e-3 and tuning.interior and tuning.results[2e-3] is None
    assert "0.002: failed" in tuning_table([tuning])


def test_chosen_rates_become_model_overrides_and_a_grid_of_rates_is_refused(tmp_path, sample_root, in_repo):
    sweep = tiny_sweep(tmp_path, sample_root)
    plan = make_plan(with_rates(sweep, {"mosaicbert": 2e-3, "hf-bert": 2.5e-4, "earlybert": 1e-3}))
    from mosaicbert.config import read_yaml

    rates = {run.model: read_yaml(run.recipe, run.overrides)["optimizer"]["lr"] for run in plan.runs}
    assert rates == {"mosaicbert": 2e-3, "hf-bert": 2.5e-4, "earlybert": 1e-3}
    earlybert = next(run for run in plan.runs if run.model == "earlybert")
    assert read_yaml(earlybert.recipe, earlybert.overrides)["algorithms"]["earlybert"]["mode"] == "in_run"
    with pytest.raises(ConfigError, match="grid.optimizer.lr would override the tuned rates"):
        with_rates(read_sweep(SHIPPED, ["grid.optimizer.lr=[1e-3]"]), {"mosaicbert": 1e-3})


# --------------------------------------------------------------------------- the study


def test_the_shipped_study_plans_three_models_at_three_budgets_spanning_4x_and_three_seeds(in_repo, clean_env):
    sweep = read_sweep(SHIPPED)
    assert study.budgets(sweep) == ["1.5m", "3m", "6m"]
    plan = make_plan(sweep)
    assert len(plan.runs) == 27 and [run.model for run in plan.runs[:3]] == ["mosaicbert", "hf-bert", "earlybert"]
    from mosaicbert.config import read_yaml

    sizes = {run.model: read_yaml(run.recipe, run.overrides)["model"]["model_config"] for run in plan.runs}
    assert sizes["mosaicbert"] == sizes["hf-bert"] == sizes["earlybert"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make, to read the Makefile's pilot command")
def test_the_remedies_change_only_what_they_say_and_the_pilot_searches_as_the_study_does(in_repo, clean_env):
    """The remedies (outside the main grid) inherit models.earlybert's search settings; `make
    earlybert-remedies` spells those out for its two-phase pilot, so the two must agree."""
    sweep = read_sweep(SHIPPED)
    search = sweep.models["earlybert"].overrides["algorithms"]["earlybert"]
    changed = {name: {k: v for k, v in sweep.models[name].overrides["algorithms"]["earlybert"].items() if search.get(k) != v}
               for name in ("earlybert-short-search", "earlybert-half", "earlybert-reused", "earlybert-half-reused")}
    half = {"head_prune_ratio": 0.5, "unit_prune_ratio": 0.5}
    assert changed == {"earlybert-short-search": {"min_search_steps": 20, "max_search_steps": 40},
                       "earlybert-half": half,
                       "earlybert-reused": {"ticket": "runs/earlybert-pilot/ticket.json", "rewind": True},
                       "earlybert-half-reused": {**half, "ticket": "runs/earlybert-pilot-half/ticket.json", "rewind": True}}
    dry_run = subprocess.run(["make", "-n", "earlybert-remedies"], cwd=REPO, capture_output=True, text=True, check=True)
    pilots = {}
    for line in dry_run.stdout.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        name = next((word.removeprefix("run_name=") for word in words if word.startswith("run_name=")), None)
        if name:
            pilots[name] = OmegaConf.to_container(OmegaConf.from_dotlist([w for w in words if w.startswith("algorithms")]))
    assert pilots == {"earlybert-pilot": {"algorithms": {"earlybert": {**search, "mode": "two_phase"}}},
                      "earlybert-pilot-half": {"algorithms": {"earlybert": {**search, "mode": "two_phase", **half}}}}
    make_plan(read_sweep(SHIPPED, ["grid.model=[earlybert-short-search,earlybert-half]", "grid.seed=[17]"]))


@pytest.mark.parametrize("overrides, message", [
    (["grid.max_duration=[3m]"], "at least two wall-clock budgets"),
    (["grid.max_duration=[100ba,200ba]"], "at least two wall-clock budgets"),
    (["evaluation.checkpoints=all"], "evaluation must be {kind: mlm, checkpoints: last}"),
    (["grid.model=[mosaicbert,earlybert]", "--baseline", "hf-bert"], "--baseline hf-bert is not among the study's models"),
    (["grid.optimizer.lr=[1e-3,2e-3]"], "grid.optimizer.lr would override the tuned rates"),
    (["grid.seed=[17]", "overrides.max_seq_len=long"], "sweep cell 0"),
])
def test_a_study_that_cannot_give_times_is_one_message_before_anything_runs(overrides, message, tmp_path, in_repo,
                                                                            capsys):
    assert study.main([str(SHIPPED), f"folder={tmp_path / 'study'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "study").exists()


def test_report_of_a_folder_without_a_plan_is_one_message(tmp_path, capsys):
    assert study.main(["--report", str(tmp_path)]) == 2
    assert "holds no plan.json" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_study_tunes_trains_and_reports_then_resumes_with_nothing_to_do(tmp_path, sample_root, in_repo):
    """EarlyBERT alone (its pruned checkpoints are the ones a scorer could trip on), one seed, 2 and 4 s budgets.
    (CI's short form of `make time-to-quality` runs the Makefile's command, without tuning.)"""
    folder = tmp_path / "study"
    earlybert = "models.earlybert.overrides.algorithms.earlybert"
    overrides = [f"folder={folder}", f"overrides.data_local={sample_root}", "overrides.max_seq_len=64",
                 f"overrides.model.model_config={json.dumps(TINY_MODEL)}", "overrides.global_train_batch_size=8",
                 "evaluation.split=val_small", "evaluation.batches=2", "grid.seed=[17]", "grid.max_duration=[2s,4s]",
                 "grid.model=[earlybert]", f"{earlybert}.min_search_steps=2", f"{earlybert}.max_search_steps=4",
                 f"{earlybert}.check_interval=1", f"{earlybert}.window=2", f"{earlybert}.min_units_per_layer=8"]
    assert study.main([str(SHIPPED), *overrides, "--baseline", "earlybert", "--targets", "0.01"]) == 0
    (tuning,) = json.loads((folder / "tuning.json").read_text())
    assert tuning["model"] == "earlybert" and len(tuning["results"]) >= 3
    report = json.loads((folder / "time-to-quality.json").read_text())
    assert [p["budget"] for p in report["points"]] == ["2s", "4s"] and (folder / "time-to-quality.png").stat().st_size > 0
    assert all(p["draw_step"] is not None and p["draw_step"] <= min(4, p["steps"]) for p in report["points"])
    text = (folder / "time-to-quality.md").read_text()
    assert f"**{tuning['chosen']:g}: " in text and "## Time to target accuracies" in text
    trained = {p: p.stat().st_mtime_ns for p in folder.rglob("*.pt")}
    assert study.main([str(SHIPPED), *overrides, "--baseline", "earlybert", "--targets", "0.01"]) == 0
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.pt")} == trained  # a second run trains nothing


def test_a_tickets_flops_are_those_of_a_model_built_at_its_widths_and_the_head_share_its_formula():
    import torch

    from mosaicbert.model.configuration_mosaicbert import MosaicBertConfig
    from mosaicbert.model.modeling_mosaicbert import MosaicBertForMaskedLM
    from mosaicbert.model.composer import mlm_training_flops
    from mosaicbert.sweep.time_to_quality import ticket_flops

    kept_heads = [[0, 1, 3], [1, 2, 3], [0, 2, 3], [0, 1, 2]]
    kept_units = [list(range(0, 512, 2)), list(range(400)), list(range(512)), list(range(64))]
    width = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
             "vocab_size": 8192}
    mask = torch.ones(8, 128, dtype=torch.long)
    mask[:, 100:] = 0
    labels = torch.full((8, 128), -100)
    labels[:, :30] = 5  # 8 x 30 masked tokens
    full = MosaicBertForMaskedLM(MosaicBertConfig(**width))
    narrow = MosaicBertForMaskedLM(MosaicBertConfig(**width, head_indices_per_layer=kept_heads,
                                                    intermediate_size_per_layer=[len(u) for u in kept_units]))
    expected = mlm_training_flops(narrow, mask, labels) / mlm_training_flops(full, mask, labels)
    found = ticket_flops(full, {"kept_heads": kept_heads, "kept_units": kept_units},
                         {"attention_mask": mask, "labels": labels})
    assert math.isclose(found["flop_ratio"], expected) and expected < 0.9
    # The head: transform (256 x 256) and decoder (256 x 8192) on 240 tokens, forward and backward.
    head = 3 * 2 * 240 * (256 * 256 + 256 * 8192)
    tokens, squares = 8 * 100, 8 * 100**2
    layer = 2 * tokens * 256 * 3 * 256 + 4 * squares * 256
    layers = 3 * (layer + 2 * tokens * (256 * 256 + 3 * 512 * 256)) + layer + 2 * 240 * (256 * 256 + 3 * 512 * 256)
    assert math.isclose(found["head_share"], head / (3 * layers + head))


def test_the_study_reports_earlybert_step_costs_from_a_run_and_its_ticket_or_the_one_it_reused(tmp_path, sample_root,
                                                                                               in_repo):
    from mosaicbert.sweep.time_to_quality import diagnosis_table

    pilot = tmp_path / "pilot" / "ticket.json"
    pilot.parent.mkdir()
    pilot.write_text(json.dumps({"kept_heads": [[0, 1]] * 4, "kept_units": [list(range(256))] * 4, "step": 60,
                                 "search_seconds": 31.6}))
    plan = make_plan(read_sweep(SHIPPED, [f"folder={tmp_path}", f"overrides.data_local={sample_root}", "grid.seed=[17]",
                                          "grid.model=[mosaicbert,earlybert,earlybert-reused]", "grid.max_duration=[1m,2m]",
                                          f"models.earlybert-reused.overrides.algorithms.earlybert.ticket={pilot}"]))
    earlybert, reused = (next(run for run in plan.runs if run.model == model and run.cell["max_duration"] == "1m")
                         for model in ("earlybert", "earlybert-reused"))
    os.makedirs(earlybert.folder)
    ticket = {"kept_heads": [[0, 1, 2]] * 4, "kept_units": [list(range(358))] * 4}
    (Path(earlybert.folder) / "ticket.json").write_text(json.dumps(ticket))
    points = [point("mosaicbert", 17, 1, 0.3), point("earlybert", 17, 1, 0.3), point("earlybert-reused", 17, 1, 0.3)]
    points[1].run, points[1].draw_step = earlybert.run_id, 20
    points[1].median_step_seconds_before_draw, points[1].median_step_seconds_after_draw = 0.6, 0.4
    points[2].run, points[2].reused_ticket, points[2].median_step_seconds = reused.run_id, str(pilot), 0.35
    table = diagnosis_table(points, plan, "mosaicbert")
    rows = {run.model: [cell.strip() for cell in line.strip("|").split("|")]
            for run in (earlybert, reused) for line in table.splitlines() if line.startswith(f"| {run.run_id}")}
    assert rows["earlybert"][3:6] == ["step 20 (20%)", "1.20", "0.80"]
    assert 0.5 < float(rows["earlybert"][6]) < 0.9 and rows["earlybert"][7].endswith("%")
    # The reused run: every step pruned, FLOPs of the pilot's smaller ticket, the pilot's search beside it.
    assert rows["earlybert-reused"][3:6] == ["reused (the pilot drew it at step 60, after 32 s)", "-", "0.70"]
    assert float(rows["earlybert-reused"][6]) < float(rows["earlybert"][6])
