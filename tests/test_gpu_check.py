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


def test_the_check_runs_end_to_end_on_cpu_with_a_tiny_model(tmp_path, capsys):
    import gpu_check

    gpu_check.main(["--cpu-dry-run", "--steps", "40", "--batch-size", "2", "--seq-len", "24", "--out", str(tmp_path)])
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
