"""`make earlybert-demo`: arms interleaved over seeds, pairs aggregated, and a ticket the stability rule draws."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mosaicbert.reports.runs import compare_runs

from conftest import REPO


def write_run(folder, name, step_seconds, accuracy, draw=None):
    """A finished run's summary.json and metrics.jsonl (cumulative training hours per step), and a ticket."""
    folder.mkdir(parents=True)
    last_eval = {"batch": len(step_seconds), "eval/MaskedAccuracy": accuracy}
    (folder / "summary.json").write_text(json.dumps({"run_name": name, "batches": len(step_seconds),
                                                     "train_seconds": sum(step_seconds), "last_eval": last_eval}))
    cumulative = [sum(step_seconds[:i + 1]) / 3600 for i in range(len(step_seconds))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "time/train": hours}) + "\n"
                                                  for i, hours in enumerate(cumulative)))
    if draw is not None:
        (folder / "ticket.json").write_text(json.dumps({"step": draw, "reason": "masks stable"}))
    return str(folder)


@pytest.mark.slow
def test_pairs_of_runs_report_mean_and_spread(tmp_path):
    runs = [  # baseline step times, candidate step times (search up to the draw, then pruned), draw, accuracies
        ([1.0] * 9 + [9.0], [1.2] * 4 + [0.6] * 6, 4, 0.25, 0.26),  # a busy spell slowed the baseline's last step
        ([2.0] * 10, [2.0] * 5 + [1.5] * 5, 5, 0.27, 0.26),
        ([1.0] * 10, [1.1] * 6 + [0.5] * 4, 6, 0.26, 0.27),
    ]
    pairs = [(write_run(tmp_path / f"b{i}", f"b{i}", base, acc_b), write_run(tmp_path / f"e{i}", f"e{i}", cand, acc_e, draw))
             for i, (base, cand, draw, acc_b, acc_e) in enumerate(runs)]
    text = compare_runs(pairs)
    assert ("| e0 vs b0 | 18.0 -> 8.4 | +53.3% | 1.000; 1.200, 0.600 | +16.0% | step 4 (masks stable) | "
            "0.2500 -> 0.2600 |") in text
    assert "time saved: 26.6%, sd 23.2% (12.5% to 53.3%)" in text
    assert "time saved at median step times: 14.2%, sd 1.8% (12.5% to 16.0%)" in text
    assert ("eval/MaskedAccuracy: baseline 0.2600, sd 0.0100 (0.2500 to 0.2700); candidate 0.2633, sd 0.0058 "
            "(0.2600 to 0.2700); candidate - baseline +0.0033, sd 0.0115 (-0.0100 to +0.0100)") in text

    result = subprocess.run([sys.executable, str(REPO / "src" / "compare_runs.py"), pairs[0][0], str(tmp_path / "missing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {tmp_path / 'missing' / 'summary.json'} does not exist: is {tmp_path / 'missing'} a finished run?"


def test_make_target_interleaves_the_arms_with_the_given_overrides():
    dry_run = subprocess.run(["make", "-n", "earlybert-demo", "EARLYBERT_REPEATS=3", "EARLYBERT_RUN=r",
                              "EARLYBERT_DEMO_ARGS=max_duration=20ba eval_interval=10ba", "VENV=/nonexistent"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
    runs = re.findall(r"composer src/main.py yamls/earlybert/demo.yaml (run_name=\S+ seed=\d+)( algorithms=null)? "
                      r"max_duration=20ba eval_interval=10ba", dry_run)
    assert runs == [("run_name=r-seed17-baseline seed=17", " algorithms=null"), ("run_name=r-seed17 seed=17", ""),
                    ("run_name=r-seed18-baseline seed=18", " algorithms=null"), ("run_name=r-seed18 seed=18", ""),
                    ("run_name=r-seed19-baseline seed=19", " algorithms=null"), ("run_name=r-seed19 seed=19", "")]
    assert ("src/compare_runs.py runs/r-seed17-baseline runs/r-seed17 runs/r-seed18-baseline runs/r-seed18 "
            "runs/r-seed19-baseline runs/r-seed19") in dry_run


@pytest.mark.slow
def test_demo_ticket_is_drawn_by_the_stability_rule(clean_env, tmp_path):
    """yamls/earlybert/demo.yaml as `make earlybert-demo` runs it (on the corpus `make sample-shards`
    builds), up to the draw: two_phase stops there."""
    from mosaicbert.data import cli as prep_cli

    from mosaicbert.config import load_config
    from mosaicbert.train import train

    prep_cli.main(["sample", "--out-root", str(tmp_path / "sample")])
    config = load_config(REPO / "yamls" / "earlybert" / "demo.yaml", [
        f"data_local={tmp_path / 'sample'}", f"run_folder={tmp_path / 'run'}", "save_folder=null", "eval_first=false",
        "progress_bar=false", "algorithms.earlybert.mode=two_phase",
    ])
    train(config)
    ticket = json.loads((tmp_path / "run" / "ticket.json").read_text())
    assert ticket["reason"] == "masks stable" and ticket["step"] < config.algorithms["earlybert"]["max_search_steps"]
