"""Composer's SpeedMonitor with MFU measured against the run's GPU at the run's precision."""

from __future__ import annotations

import logging
import re

import torch
from composer.callbacks import SpeedMonitor

log = logging.getLogger("mosaicbert")

# Dense peaks in FLOP/s (no 2:4 sparsity) by GPU model and run precision, from NVIDIA's spec sheets:
#   H100 SXM, PCIe, NVL  https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
#   H200, H200 NVL       https://www.nvidia.com/en-us/data-center/h200/
#   GH200 (its H100)     https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/
#   B200 (HGX B200)      https://www.nvidia.com/en-us/data-center/hgx/
#   A100 SXM4, PCIe      https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
#   A30                  https://www.nvidia.com/en-us/data-center/products/a30-gpu/
#   A40                  https://www.nvidia.com/en-us/data-center/a40/
#   A10                  https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
#   L40S                 https://www.nvidia.com/en-us/data-center/l40s/
#   L40                  https://www.nvidia.com/en-us/data-center/l40/
#   L4                   https://www.nvidia.com/en-us/data-center/l4/
#   V100 SXM2, PCIe      https://images.nvidia.com/content/technologies/volta/pdf/volta-v100-datasheet-update-us-1165301-r5.pdf
#   T4                   https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf
# Where a sheet prints only sparse tensor figures (Hopper, Blackwell, L4), these are half of them.
# amp_bf16/amp_fp16: the bf16/fp16 tensor-core peak. fp32: the TF32 tensor-core peak, because Composer's DeviceGPU
# sets torch.backends.cuda.matmul.allow_tf32 (its default; nothing in this repo changes it or calls
# set_float32_matmul_precision), so an fp32 run's matmuls run in TF32. V100 and T4 have no TF32 (fp32: their plain
# fp32 peak) and no bf16 tensor cores (bf16 is emulated), so their amp_bf16 MFU is unknown. The A10G has no NVIDIA
# sheet and is left out, like every unlisted model: MFU unknown rather than wrong.


def _peaks(half: float, tf32: float) -> dict[str, float]:
    return {"amp_bf16": half, "amp_fp16": half, "fp32": tf32}


_HOPPER_SXM = _peaks(989.5e12, 494.5e12)
_HOPPER_NVL = _peaks(835.5e12, 417.5e12)
_A100 = _peaks(312e12, 156e12)
GPU_PEAK_FLOPS = {
    "h100": _HOPPER_SXM,
    "h100 pcie": _peaks(756.5e12, 378e12),
    "h100 nvl": _HOPPER_NVL,
    "h200": _HOPPER_SXM,
    "h200 nvl": _HOPPER_NVL,
    "gh200": _HOPPER_SXM,
    "b200": _peaks(2.25e15, 1.1e15),
    "a100": _A100,
    "a100 pcie": _A100,
    "a30": _peaks(165e12, 82e12),
    "a40": _peaks(149.7e12, 74.8e12),
    "a10": _peaks(125e12, 62.5e12),
    "l40s": _peaks(362.05e12, 183e12),
    "l40": _peaks(181.05e12, 90.5e12),
    "l4": _peaks(121e12, 60e12),
    "v100": {"amp_fp16": 125e12, "fp32": 15.7e12},
    "v100 pcie": {"amp_fp16": 112e12, "fp32": 14e12},
    "t4": {"amp_fp16": 65e12, "fp32": 8.1e12},
}
# Words of a device name that say nothing about the peak: the vendor, memory sizes ("80GB", "144G") and the marks
# of a model's standard SXM part ("SXM4", "HBM3"), which the table lists under the bare model name.
_NEUTRAL_WORD = re.compile(r"nvidia|tesla|\d+gb?|sxm\d*|hbm3e?")


def gpu_model(device_name: str) -> str:
    """The whole model name in torch.cuda.get_device_name's answer: "NVIDIA A100-SXM4-80GB" -> "a100",
    "NVIDIA A100 80GB PCIe" -> "a100 pcie", "NVIDIA RTX A1000" -> "rtx a1000" (not an A100)."""
    words = re.split(r"[\s-]+", device_name.lower().strip())
    return " ".join(w for w in words if w and not _NEUTRAL_WORD.fullmatch(w))


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """The dense peak of this GPU at this Composer precision, or None where the table does not list it."""
    return GPU_PEAK_FLOPS.get(gpu_model(device_name), {}).get(precision)


def run_peak_flops(device: str, precision: str) -> float | None:
    """The peak a run on `device` ("gpu" or "cpu") at `precision` is measured against; None on a CPU or an
    unlisted GPU."""
    if device != "gpu":
        return None
    name = torch.cuda.get_device_name()
    peak = gpu_peak_flops(name, precision)
    if peak is None:
        log.warning("no dense peak FLOP/s listed for %s at %s: MFU is not reported", name, precision)
    return peak


def speed_monitor(precision: str, device: str, window_size: int = 100, gpu_flops_available: float | None = None,
                  time_unit: str = "hours") -> SpeedMonitor:
    """SpeedMonitor with MFU against the GPU's peak at the run's precision, and none where that peak is unknown."""
    if gpu_flops_available is None:
        # 0 is Composer's "no MFU"; None would make it guess from its own table, which matches names by substring.
        gpu_flops_available = run_peak_flops(device, precision) or 0
    return SpeedMonitor(window_size=window_size, gpu_flops_available=gpu_flops_available, time_unit=time_unit)
