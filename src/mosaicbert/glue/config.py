"""Typed GLUE configuration (`yamls/glue/*.yaml`), checked like the pretraining config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mosaicbert.config import build_dataclass, read_yaml
from mosaicbert.errors import ConfigError, nearest
from mosaicbert.glue.tasks import PAPER, TASKS, Hyperparameters

PROTOCOLS = ("paper", "sane")


@dataclass
class SaneSettings:
    """One setting for every task, no MNLI warm start (Cramming, Geiping & Goldstein 2022, arXiv 2212.14034)."""

    lr: float = 4e-5
    weight_decay: float = 4e-7  # decoupled; torch AdamW 0.01 at lr 4e-5
    batch_size: int = 16
    epochs: int = 5
    seeds: list[int] = field(default_factory=lambda: [19])


@dataclass
class GlueConfig:
    starting_checkpoint: str  # Composer pretraining checkpoint (.pt) or Hugging Face model folder
    run_name: str | None = None
    run_folder: str | None = None
    model_name: str = "mosaic_bert"  # mosaic_bert or hf_bert: what the checkpoint must hold
    model_config: dict[str, Any] | None = None  # architecture, when no model_config.json sits beside the checkpoint
    tokenizer_name: str = "bert-base-uncased"
    max_seq_len: int = 256
    data_source: str = "hub"  # hub: nyu-mll/glue; local: classic GLUE TSV folders under data_local
    data_local: str | None = None
    protocol: str = "paper"
    round_2_start: str | None = None  # paper protocol: start RTE, MRPC, STS-B here instead of this run's MNLI model
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    parallel: bool = True  # one job per GPU at a time; CPU runs jobs one after another
    precision: str | None = None  # None: amp_bf16 on GPU, fp32 on CPU
    shuffle_train: bool = True  # the reference did not shuffle GLUE training data; we do
    save_finetuned: bool = False  # keep every fine-tuned model (the MNLI models for round 2 are always kept)
    task_overrides: dict[str, Any] = field(default_factory=dict)  # {task: {lr, weight_decay, batch_size, epochs, seeds}}
    sane: SaneSettings = field(default_factory=SaneSettings)
    earlybert: dict[str, Any] | None = None  # EarlyBERT in every job: search, prune, train the ticket (glue/earlybert.py)


def load_glue_config(yaml_path: str | os.PathLike, overrides: list[str] | None = None) -> GlueConfig:
    config = build_dataclass(GlueConfig, read_yaml(yaml_path, overrides))
    if config.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got '{config.protocol}'.{nearest(config.protocol, PROTOCOLS)}")
    if config.round_2_start and config.protocol != "paper":
        raise ConfigError(f"round_2_start applies to protocol=paper only; protocol={config.protocol} starts every task "
                          "from starting_checkpoint.")
    if config.model_name not in ("mosaic_bert", "hf_bert"):
        raise ConfigError(f"model_name must be mosaic_bert or hf_bert, got '{config.model_name}'.")
    if config.data_source not in ("hub", "local"):
        raise ConfigError(f"data_source must be hub or local, got '{config.data_source}'.")
    if config.data_source == "local" and not config.data_local:
        raise ConfigError("data_source=local needs data_local, the folder holding MNLI/, QNLI/, ... with TSV files.")
    for task in list(config.tasks) + list(config.task_overrides):
        if task not in TASKS:
            raise ConfigError(f"unknown GLUE task '{task}'.{nearest(task, TASKS)} Tasks: {', '.join(TASKS)}.")
    if config.earlybert is not None:
        if config.model_name != "mosaic_bert":
            raise ConfigError("earlybert works on model_name=mosaic_bert only.")
        from mosaicbert import registry
        import mosaicbert.builders  # noqa: F401  (registers earlybert)
        from mosaicbert.glue.earlybert import GLUE_KEYS, parse_settings

        algorithm = parse_settings(config.earlybert).algorithm
        try:
            registry.algorithms.validate("earlybert", algorithm, "earlybert")
        except ConfigError as err:
            raise ConfigError(f"{err} GLUE jobs also take {', '.join(GLUE_KEYS)}.") from None
        registry.algorithms.build("earlybert", algorithm, "earlybert", run_folder=config.run_folder)  # value checks
    for task, values in config.task_overrides.items():
        build_dataclass(Hyperparameters, {**_as_dict(PAPER[task]), **values}, f"task_overrides.{task}")
    return config


def _as_dict(hp: Hyperparameters) -> dict[str, Any]:
    return {"lr": hp.lr, "weight_decay": hp.weight_decay, "batch_size": hp.batch_size, "epochs": hp.epochs,
            "seeds": list(hp.seeds)}


def hyperparameters(config: GlueConfig, task: str) -> Hyperparameters:
    """The protocol's setting for a task, with the config's overrides applied."""
    if config.protocol == "sane":
        s = config.sane
        base = Hyperparameters(s.lr, s.weight_decay, s.batch_size, s.epochs, list(s.seeds))
    else:
        base = PAPER[task]
    return build_dataclass(Hyperparameters, {**_as_dict(base), **config.task_overrides.get(task, {})})
