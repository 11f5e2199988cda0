"""The GPU peak FLOP/s that training's MFU is measured against (mosaicbert/callbacks/speed.py)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from composer.callbacks import SpeedMonitor

from conftest import DEMO_YAML
from mosaicbert.builders import build_section
from mosaicbert.callbacks.speed import gpu_peak_flops
from mosaicbert.config import load_config

HOPPER_SXM = (989.5e12, 989.5e12, 494.5e12)
HOPPER_NVL = (835.5e12, 835.5e12, 417.5e12)
A100 = (312e12, 312e12, 156e12)
UNLISTED = (None, None, None)

# torch.cuda.get_device_name's answer -> dense peak at amp_bf16, amp_fp16, fp32 (TF32 where the GPU has it).
EXPECTED = {
    "NVIDIA H100 80GB HBM3": HOPPER_SXM,
    "NVIDIA H100 PCIe": (756.5e12, 756.5e12, 378e12),
    "NVIDIA H100 NVL": HOPPER_NVL,
    "NVIDIA H200": HOPPER_SXM,
    "NVIDIA H200 NVL": HOPPER_NVL,  # not the SXM part's figure
    "NVIDIA GH200 480GB": HOPPER_SXM,
    "NVIDIA B200": (2.25e15, 2.25e15, 1.1e15),
    "NVIDIA A100-SXM4-80GB": A100,
    "NVIDIA A100 80GB PCIe": A100,
    "NVIDIA A100-PCIE-40GB": A100,
    "NVIDIA A30": (165e12, 165e12, 82e12),
    "NVIDIA A40": (149.7e12, 149.7e12, 74.8e12),
    "NVIDIA A10": (125e12, 125e12, 62.5e12),
    "NVIDIA A10G": UNLISTED,  # not an A10, and NVIDIA publishes no sheet for it
    "NVIDIA L40S": (362.05e12, 362.05e12, 183e12),
    "NVIDIA L40": (181.05e12, 181.05e12, 90.5e12),  # not the L4's
    "NVIDIA L4": (121e12, 121e12, 60e12),
    "Tesla V100-SXM2-32GB": (None, 125e12, 15.7e12),  # no bf16 tensor cores, no TF32
    "Tesla V100-PCIE-32GB": (None, 112e12, 14e12),
    "Tesla T4": (None, 65e12, 8.1e12),
    "NVIDIA RTX A1000": UNLISTED,  # not an A100
    "NVIDIA GeForce RTX 2060": UNLISTED,
}


@pytest.mark.parametrize("name", EXPECTED)
def test_peak_is_the_whole_model_names_dense_figure_at_each_precision(name):
    found = tuple(gpu_peak_flops(name, precision) for precision in ("amp_bf16", "amp_fp16", "fp32"))
    assert found == EXPECTED[name]


def built_speed_monitor(precision: str, device_name: str) -> SpeedMonitor:
    """The speed monitor training builds from a config on a (mocked) GPU."""
    with mock.patch.object(torch.cuda, "is_available", return_value=True), \
            mock.patch.object(torch.cuda, "get_device_name", return_value=device_name):
        config = load_config(DEMO_YAML, ["device=gpu", f"precision={precision}"])
        config = config.model_copy(update={"callbacks": {"speed_monitor": {"window_size": 2}}})
        (monitor,) = build_section(config, "callbacks")
    return monitor


@pytest.mark.parametrize("precision, peak", [("amp_bf16", 181.05e12), ("fp32", 90.5e12)])
def test_speed_monitor_uses_the_runs_precision(precision, peak):
    assert built_speed_monitor(precision, "NVIDIA L40").gpu_flops_available == peak


def test_speed_monitor_reports_no_mfu_on_an_unlisted_gpu():
    # 0, not None: with None Composer looks the name up itself, by substring ("rtx a1000" contains "a100").
    assert built_speed_monitor("amp_bf16", "NVIDIA RTX A1000").gpu_flops_available == 0
