"""The registries filled, checked against a config, and built from it.

Importing this module fills every registry, here and nowhere else: the two models,
Composer's optimizers, schedulers, algorithms, callbacks and loggers, and this package's
EarlyBERT and non-finite guard. `validate_entries` checks a config's
entries against their constructors before anything is built; the `build_*` helpers
build them for the training entry.
"""

from __future__ import annotations

from typing import Any

from composer.algorithms import GradientClipping, LowPrecisionLayerNorm
from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator
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
from mosaicbert.callbacks.speed import speed_monitor
from mosaicbert.config import TrainConfig
from mosaicbert.model.composer import build_hf_bert, build_mosaic_bert
from mosaicbert.registry import named_entries, split_named

registry.models.register("hf_bert", build_hf_bert, provided=("tokenizer",))
registry.models.register("mosaic_bert", build_mosaic_bert, provided=("tokenizer",))

registry.optimizers.register("decoupled_adamw", DecoupledAdamW, provided=("params",))

registry.schedulers.register("linear_decay_with_warmup", LinearWithWarmupScheduler)
registry.schedulers.register("cosine_decay_with_warmup", CosineAnnealingWithWarmupScheduler)
registry.schedulers.register("constant_with_warmup", ConstantWithWarmupScheduler)

registry.algorithms.register("low_precision_layernorm", LowPrecisionLayerNorm)
registry.algorithms.register("gradient_clipping", GradientClipping)
registry.algorithms.register("earlybert", EarlyBERT, provided=("run_folder",))

registry.callbacks.register("speed_monitor", speed_monitor, provided=("precision", "device"))
registry.callbacks.register("lr_monitor", LRMonitor)
registry.callbacks.register("memory_monitor", MemoryMonitor)
registry.callbacks.register("runtime_estimator", RuntimeEstimator)
registry.callbacks.register("optimizer_monitor", OptimizerMonitor)
registry.callbacks.register("nonfinite_guard", NonFiniteGuard, provided=("run_folder",))

registry.loggers.register("wandb", WandBLogger)
registry.loggers.register("mlflow", MLFlowLogger)
registry.loggers.register("tensorboard", TensorboardLogger)


SECTIONS = ("algorithms", "callbacks", "loggers")  # the config's sections of named entries


def validate_entries(config: TrainConfig) -> None:
    """Every registry entry of `config` (model, optimizer, scheduler, and the SECTIONS) against its constructor's
    signature: an unknown name or argument is one ConfigError naming the nearest valid one."""
    registry.models.validate(*split_named(config.model, "model"), "model")
    registry.optimizers.validate(*split_named(config.optimizer, "optimizer"), "optimizer")
    registry.schedulers.validate(*split_named(config.scheduler, "scheduler"), "scheduler")
    for section in SECTIONS:
        for name, kwargs in named_entries(getattr(config, section), section):
            getattr(registry, section).validate(name, kwargs, f"{section}.{name}")


def build_model(config: TrainConfig, tokenizer: Any) -> Any:
    """The config's Composer model (the encoder is its `.model`)."""
    return registry.models.build(*split_named(config.model, "model"), "model", tokenizer=tokenizer)


def build_optimizer(config: TrainConfig, params: Any) -> Any:
    name, kwargs = split_named(config.optimizer, "optimizer")
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return registry.optimizers.build(name, kwargs, "optimizer", params=params)


def build_scheduler(config: TrainConfig) -> Any:
    name, kwargs = split_named(config.scheduler, "scheduler")
    return registry.schedulers.build(name, kwargs, "scheduler")


def build_section(config: TrainConfig, section: str) -> list[Any]:
    """Build every entry of `algorithms`, `callbacks` or `loggers`; an entry's provided arguments get the config's
    values of those names (run_folder for reports, the run's precision and device for the speed monitor)."""
    reg = getattr(registry, section)
    built = []
    for name, kwargs in named_entries(getattr(config, section), section):
        provided = {arg: getattr(config, arg) for arg in reg.provided(name)}
        built.append(reg.build(name, kwargs, f"{section}.{name}", **provided))
    return built
