"""Sweep report: the Pareto frontier against a brute-force reference, seed statistics, costs and the written files."""

from __future__ import annotations

import csv
import json
import os
import random
import statistics

import numpy as np
import pytest

from mosaicbert.errors import UserError
from mosaicbert.sweep.report import (
    CSV_COLUMNS,
    ROW_KEYS,
    add_costs,
    aggregate,
    pareto_frontier,
    write_report,
)


def row(model="mosaicbert", seed=17, point="step 100", hours=1.0, quality=0.5, gpus=8, **extra):
    step = int(point.split()[-1]) if point.startswith("step") else 100
    values = {"run": f"{model}-seed{seed}", "model": model, "seed": seed, "point": point, "step": step,
              "tokens": step * 4096, "wall_clock_hours": hours, "gpus": gpus, "metric": "glue_average",
              "quality": quality}
    return {**values, **extra}


def sweep_rows():
    """Two models, three seeds each; hf-bert's step 300 is slower and worse than its step 200 (off its frontier)."""
    rows = []
    for seed, jitter in zip((17, 18, 19), (-0.01, 0.0, 0.02)):
        for point, hours, quality in (("step 100", 1.0, 70.0), ("step 200", 2.0, 76.0), ("step 300", 3.0, 79.0)):
            rows.append(row("mosaicbert", seed, point, hours + jitter, quality + 10 * jitter))
        for point, hours, quality in (("step 100", 1.5, 65.0), ("step 200", 3.0, 74.0), ("step 300", 4.5, 73.0)):
            rows.append(row("hf-bert", seed, point, hours + jitter, quality - 10 * jitter))
    return rows


# --------------------------------------------------------------------------- frontier


def brute_force_frontier(points):
    """Indices no other point dominates (no slower, no worse, strictly one), by time then index."""
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    kept = [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]
    return sorted(kept, key=lambda i: (points[i][0], i))


def test_frontier_matches_brute_force_on_random_point_sets():
    rng = random.Random(0)
    for trial in range(300):
        # A coarse grid in half the trials makes equal times, equal qualities and exact duplicates common.
        coarse = trial % 2 == 0
        points = [(rng.randint(0, 5) if coarse else rng.random(), rng.randint(0, 5) if coarse else rng.random())
                  for _ in range(rng.randint(1, 25))]
        frontier = pareto_frontier(points)
        assert frontier == brute_force_frontier(points), points
        qualities = [points[i][1] for i in frontier]
        assert qualities == sorted(qualities)  # records only go up


def test_frontier_ties_and_edge_cases():
    assert pareto_frontier([]) == []
    assert pareto_frontier([(2.0, 0.3)]) == [0]
    # Equal time: only the better point stays.
    assert pareto_frontier([(1.0, 0.4), (1.0, 0.6)]) == [1]
    # Equal quality: only the earlier point stays.
    assert pareto_frontier([(2.0, 0.5), (1.0, 0.5)]) == [1]
    # Exact duplicates dominate neither each other: both stay, in input order.
    assert pareto_frontier([(1.0, 0.5), (0.5, 0.1), (1.0, 0.5)]) == [1, 0, 2]
    # A later, worse point drops off; a later, better one is a new record.
    assert pareto_frontier([(1.0, 0.5), (2.0, 0.4), (3.0, 0.7)]) == [0, 2]


# --------------------------------------------------------------------------- costs and aggregation


def test_costs_are_wall_clock_times_gpus_times_price():
    rows = [row(hours=2.5, gpus=8), row(seed=18, hours=0.5, gpus=0)]
    costed = add_costs(rows, price_per_gpu_hour=1.5)
    assert costed[0]["gpu_hours"] == 20.0 and costed[0]["cost"] == 30.0
    assert costed[1]["gpu_hours"] == 0.0 and costed[1]["cost"] == 0.0  # a CPU run costs no GPU-hours
    assert "cost" not in rows[0]  # the input is left alone


def test_aggregate_means_and_sample_std_over_seeds():
    rows = add_costs(sweep_rows(), price_per_gpu_hour=2.0)
    points = aggregate(rows)
    assert [(p["model"], p["point"]) for p in points] == [
        ("mosaicbert", f"step {s}") for s in (100, 200, 300)] + [("hf-bert", f"step {s}") for s in (100, 200, 300)]
    for p in points:
        mine = [r for r in rows if (r["model"], r["point"]) == (p["model"], p["point"])]
        quality = [r["quality"] for r in mine]
        hours = [r["wall_clock_hours"] for r in mine]
        assert p["n_seeds"] == 3 and p["seeds"] == [17, 18, 19]
        assert p["quality_mean"] == pytest.approx(statistics.mean(quality))
        assert p["quality_std"] == pytest.approx(np.std(quality, ddof=1))
        assert p["wall_clock_hours_mean"] == pytest.approx(np.mean(hours))
        assert p["wall_clock_hours_std"] == pytest.approx(statistics.stdev(hours))
        assert p["cost_mean"] == pytest.approx(np.mean(hours) * 8 * 2.0)
        assert p["tokens_mean"] == p["step_mean"] * 4096
    assert [p["on_frontier"] for p in points] == [True, True, True, True, True, False]


def test_one_seed_has_no_standard_deviation():
    (point,) = aggregate(add_costs([row(quality=0.4)], price_per_gpu_hour=1.0))
    assert point["n_seeds"] == 1 and point["quality_std"] is None and point["wall_clock_hours_std"] is None
    assert point["on_frontier"]


@pytest.mark.parametrize("rows, message", [
    ([], "no results"),
    ([{k: v for k, v in row().items() if k != "quality"}], "lacks 'quality'"),
    ([row(wallclock_hours=1.0)], "unknown key 'wallclock_hours'. Did you mean 'wall_clock_hours'?"),
    ([row(quality=float("nan"))], "quality = nan must be a finite number"),
    ([row(gpus=-1)], "gpus = -1 must be not negative"),
    ([row(seed="17")], "seed = '17' must be an integer"),
    ([row(), row(metric="mlm_accuracy", seed=18)], "mix the metrics"),
    ([row(), row(run="again")], "seed 17 appears twice"),
])
def test_bad_rows_are_refused_by_name(rows, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?")):
        add_costs(rows, price_per_gpu_hour=1.0)


def test_aggregate_needs_costs_and_costs_need_a_sane_price():
    with pytest.raises(UserError, match="lacks 'gpu_hours', 'cost' \\(add_costs adds them\\)"):
        aggregate([row()])
    with pytest.raises(UserError, match="price_per_gpu_hour"):
        add_costs([row()], price_per_gpu_hour=-1.0)


# --------------------------------------------------------------------------- files


def test_write_report_files(tmp_path):
    from matplotlib.image import imread

    rows = sweep_rows()
    rows[0] = {**rows[0], "seed": np.int64(17), "quality": np.float64(rows[0]["quality"])}  # numpy values are fine
    table = write_report(tmp_path / "report", rows, price_per_gpu_hour=2.0, title="MosaicBERT vs HF BERT")
    folder = tmp_path / "report"
    assert sorted(os.listdir(folder)) == ["pareto.png", "results.csv", "results.json"]  # no partial files left

    with open(folder / "results.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        read = list(reader)
    costed = add_costs(rows, price_per_gpu_hour=2.0)
    assert len(read) == len(costed)
    for written, expected in zip(read, costed):
        for key in CSV_COLUMNS:
            kind = type(expected[key])
            assert kind(written[key]) == expected[key], key  # floats round-trip exactly through repr

    report = json.loads((folder / "results.json").read_text())
    assert report["title"] == "MosaicBERT vs HF BERT" and report["metric"] == "glue_average"
    assert report["price_per_gpu_hour"] == 2.0
    assert report["rows"] == costed
    assert report["points"] == aggregate(costed)
    assert report["frontier"] == {"mosaicbert": ["step 100", "step 200", "step 300"],
                                  "hf-bert": ["step 100", "step 200"]}
    assert set(ROW_KEYS) <= set(report["rows"][0])

    image = imread(folder / "pareto.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)

    lines = table.splitlines()
    assert lines[0].startswith("| model | point | seeds |") and "glue_average" in lines[0]
    assert len(lines) == 2 + 6
    assert lines[2].endswith("| yes |") and lines[-1].endswith("|  |")  # hf-bert step 300 is off its frontier
    assert "±" in lines[2]


def test_a_short_single_seed_cpu_sweep_reports_too(tmp_path):
    # Minutes on the x axis, no error bars, no GPU-hours: the path a CPU demo takes.
    rows = [row("tiny", 0, f"step {s}", hours=s / 3600, quality=q, gpus=0, metric="mlm_accuracy")
            for s, q in ((10, 0.05), (20, 0.11), (30, 0.10))]
    table = write_report(tmp_path, rows, price_per_gpu_hour=3.0)
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["title"] == "mlm_accuracy against pretraining wall clock"
    assert report["frontier"] == {"tiny": ["step 10", "step 20"]}
    assert all(p["cost_mean"] == 0.0 for p in report["points"])
    assert "mlm_accuracy" in table.splitlines()[0]


def test_a_failed_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(tmp_path, sweep_rows(), price_per_gpu_hour=1.0)
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.json"]
