"""`make gpu-check` where there is no GPU (one line, exit 0, nothing written), and its script run end to end on
CPU with a tiny model (`--cpu-dry-run`), so the GPU's few minutes are not where its bugs surface."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_make_gpu_check_without_a_gpu_says_so_in_one_line_and_measures_nothing(tmp_path):
    out = tmp_path / "gpu-check"
    done = subprocess.run(["make", "-s", "gpu-check", f"GPU_CHECK_OUT={out}"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["gpu-check: no CUDA GPU on this machine; nothing measured "
                                        "(run it on a GPU machine: docs/benchmarks.md)"]
    assert not out.exists()


@pytest.mark.slow
def test_the_check_runs_end_to_end_on_cpu_with_a_tiny_model(tmp_path, capsys):
    import gpu_check

    gpu_check.main(["--cpu-dry-run", "--steps", "60", "--batch-size", "2", "--seq-len", "24", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    agreement = result["agreement"]["backends"]
    assert set(agreement) == {"sdpa", "flex"} and all(entry["ok"] for entry in agreement.values()), agreement
    models = result["training"]["models"]
    assert set(models) == {"mosaicbert", "bert"}
    for entry in models.values():
        assert entry["tokens_per_second"] > 0 and entry["flops_per_step"] > 0 and entry["mfu"] is None
        assert entry["loss_last_20"] < entry["loss_first_20"]
    assert "low-precision LayerNorm" not in models["mosaicbert"]["note"]  # CPU training keeps torch's LayerNorm
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| mosaicbert |" in table and "| flex |" in table


def test_too_few_steps_for_a_timed_window_are_refused(capsys):
    import gpu_check

    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(["--steps", "39"])
    assert stop.value.code == 2 and "--steps must be at least 60" in capsys.readouterr().err


def test_syncs_are_counted_from_cudas_sync_debug_warnings(monkeypatch):
    """The count reads the warnings torch's sync debug mode emits (here emitted by a stand-in step, as
    torch words them), one per sync, per step; and the mode is switched back off."""
    import warnings

    import gpu_check

    modes = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    def step(batch):
        for _ in range(batch):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)

    assert gpu_check.count_syncs(step, [1, 2, 0]) == 1.0
    assert modes == ["warn", "default"]
