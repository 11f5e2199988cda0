"""Mixed precision in one place: the default for a GPU, and the autocast that runs a model as it trained."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


def default_gpu_precision() -> tuple[str, str]:
    """(precision, why): amp_bf16 from Ampere (compute capability 8.0) on; before it bf16 has no tensor cores
    and is emulated, slowly, so amp_fp16 (with Composer's loss scaling)."""
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) >= (8, 0):
        return "amp_bf16", "amp_bf16"
    return "amp_fp16", (f"amp_fp16 ({torch.cuda.get_device_name()}, compute capability {major}.{minor}, has no bf16 "
                        "tensor cores; set precision=amp_bf16 to use emulated bf16)")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """Evaluation in the precision a model trained in: Composer's `amp_bf16` / `amp_fp16` autocast (fp32 is
    autocast off). Evaluating an amp model in fp32 would be slower and, with `attention_backend: flash_attn`,
    fail (FlashAttention-2 runs in fp16/bf16 only)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
