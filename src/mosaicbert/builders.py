"""Registry entries for Composer's optimizers, schedulers, algorithms, callbacks and loggers.

Project-specific entries register themselves next to their code (models in `model/`);
this module holds the ones that come straight from Composer, plus the `build_*`
helpers the training entry uses.
"""

from __future__ import annotations

from typing import Any

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
from mosaicbert.config import TrainConfig, named_entries, split_named

registry.optimizers.register("decoupled_adamw", DecoupledAdamW, provided=("params",))

registry.schedulers.register("linear_decay_with_warmup", LinearWithWarmupScheduler)
registry.schedulers.register("cosine_decay_with_warmup", CosineAnnealingWithWarmupScheduler)
registry.schedulers.register("constant_with_warmup", ConstantWithWarmupScheduler)

registry.algorithms.register("low_precision_layernorm", LowPrecisionLayerNorm)
registry.algorithms.register("gradient_clipping", GradientClipping)

registry.callbacks.register("speed_monitor", SpeedMonitor)
registry.callbacks.register("lr_monitor", LRMonitor)
registry.callbacks.register("memory_monitor", MemoryMonitor)
registry.callbacks.register("runtime_estimator", RuntimeEstimator)
registry.callbacks.register("optimizer_monitor", OptimizerMonitor)

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
    """Build every entry of `algorithms`, `callbacks` or `loggers`."""
    reg = getattr(registry, section)
    return [reg.build(name, kwargs, f"{section}.{name}") for name, kwargs in named_entries(getattr(config, section), section)]
