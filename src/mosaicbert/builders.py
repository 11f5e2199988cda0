"""Registry entries for Composer's optimizers, schedulers, algorithms, callbacks and loggers.

Project-specific entries register themselves next to their code (models in `model/`);
this module holds the ones that come straight from Composer, plus the `build_*`
helpers the training entry uses.
"""

from __future__ import annotations

from typing import Any

import torch

from composer.algorithms import GradientClipping, LowPrecisionLayerNorm
from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor
from composer.loggers import MLFlowLogger, TensorboardLogger, WandBLogger
from composer.optim import (
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
    LinearWithWarmupScheduler,
)

from mosaicbert import registry
from mosaicbert.algorithms.earlybert import EarlyBERT
from mosaicbert.callbacks.nonfinite_guard import NonFiniteGuard
from mosaicbert.config import TrainConfig, named_entries, split_named

registry.optimizers.register("decoupled_adamw", DecoupledAdamW, provided=("params",))

registry.schedulers.register("linear_decay_with_warmup", LinearWithWarmupScheduler)
registry.schedulers.register("cosine_decay_with_warmup", CosineAnnealingWithWarmupScheduler)
registry.schedulers.register("constant_with_warmup", ConstantWithWarmupScheduler)

registry.algorithms.register("low_precision_layernorm", LowPrecisionLayerNorm)
registry.algorithms.register("gradient_clipping", GradientClipping)
registry.algorithms.register("earlybert", EarlyBERT, provided=("run_folder",))

# Dense bf16/fp16 tensor-core peaks (FLOP/s, no sparsity) by device-name fragment, most specific first.
# Composer's own table misses several of these (H100 NVL, L40S, L4) and then reports no MFU at all.
GPU_PEAK_FLOPS = (
    ("h200", 989e12),
    ("h100 nvl", 835e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10", 125e12),
)


def gpu_peak_flops(device_name: str) -> float | None:
    name = device_name.lower()
    return next((flops for fragment, flops in GPU_PEAK_FLOPS if fragment in name), None)


def speed_monitor(window_size: int = 100, gpu_flops_available: float | None = None, time_unit: str = "hours") -> SpeedMonitor:
    """SpeedMonitor with `gpu_flops_available` filled in for known GPUs, so MFU is always reported there."""
    if gpu_flops_available is None and torch.cuda.is_available():
        gpu_flops_available = gpu_peak_flops(torch.cuda.get_device_name())
    return SpeedMonitor(window_size=window_size, gpu_flops_available=gpu_flops_available, time_unit=time_unit)


registry.callbacks.register("speed_monitor", speed_monitor)
registry.callbacks.register("lr_monitor", LRMonitor)
registry.callbacks.register("memory_monitor", MemoryMonitor)
registry.callbacks.register("runtime_estimator", RuntimeEstimator)
registry.callbacks.register("optimizer_monitor", OptimizerMonitor)
registry.callbacks.register("nonfinite_guard", NonFiniteGuard, provided=("run_folder",))

registry.loggers.register("wandb", WandBLogger)
registry.loggers.register("mlflow", MLFlowLogger)
registry.loggers.register("tensorboard", TensorboardLogger)


def build_optimizer(config: TrainConfig, params: Any) -> Any:
    name, kwargs = split_named(config.optimizer, "optimizer")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return registry.optimizers.build(name, kwargs, "optimizer", params=params)


def build_scheduler(config: TrainConfig) -> Any:
    name, kwargs = split_named(config.scheduler, "scheduler")
    return registry.schedulers.build(name, kwargs, "scheduler")


def build_section(config: TrainConfig, section: str) -> list[Any]:
    """Build every entry of `algorithms`, `callbacks` or `loggers`; entries that declare `run_folder`
    as provided get the run's folder for their reports."""
    reg = getattr(registry, section)
    built = []
    for name, kwargs in named_entries(getattr(config, section), section):
        provided = {"run_folder": config.run_folder} if "run_folder" in reg.provided(name) else {}
        built.append(reg.build(name, kwargs, f"{section}.{name}", **provided))
    return built
