"""Typed GLUE configuration (`yamls/glue/*.yaml`), checked like the pretraining config."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from mosaicbert.config import Schema, build_config, read_yaml
from mosaicbert.errors import ConfigError, nearest
from mosaicbert.glue.own_task import OwnTask, definitions
from mosaicbert.glue.tasks import PAPER, TASKS, Hyperparameters

class SaneSettings(Schema):
    """One setting for every task, no MNLI warm start (Cramming, Geiping & Goldstein 2022, arXiv 2212.14034)."""

    lr: float = 4e-5
    weight_decay: float = 4e-7  # decoupled; torch AdamW 0.01 at lr 4e-5
    batch_size: int = 16
    epochs: int = 5
    seeds: list[int] = Field(default_factory=lambda: [19])


class GlueConfig(Schema):
    starting_checkpoint: str  # Composer pretraining checkpoint (.pt) or Hugging Face model folder
    run_name: str | None = None
    run_folder: str | None = None
    model_name: Literal["mosaic_bert", "hf_bert"] = "mosaic_bert"  # what the checkpoint must hold
    # YAML `model_config` (pydantic keeps that name for itself): the architecture, when no model_config.json sits
    # beside the checkpoint.
    architecture: dict[str, Any] | None = Field(None, alias="model_config")
    tokenizer_name: str = "bert-base-uncased"
    max_seq_len: int = 256
    data_source: Literal["hub", "local"] = "hub"  # hub: nyu-mll/glue; local: classic GLUE TSV folders under data_local
    data_local: str | None = None
    protocol: Literal["paper", "sane"] = "paper"
    round_2_start: str | None = None  # paper protocol: start RTE, MRPC, STS-B here instead of this run's MNLI model
    tasks: list[str] | None = None  # GLUE and own tasks to run; default: the own tasks if any, else the 8 GLUE tasks
    own_tasks: dict[str, Any] = Field(default_factory=dict)  # {name: definition or YAML file} (glue/own_task.py)
    parallel: bool = True  # one job per GPU at a time; CPU runs jobs one after another
    precision: str | None = None  # None: amp_bf16 on GPU, fp32 on CPU
    shuffle_train: bool = True  # the reference did not shuffle GLUE training data; we do
    save_finetuned: bool = False  # keep every fine-tuned model (the MNLI models for round 2 are always kept)
    task_overrides: dict[str, Any] = Field(default_factory=dict)  # {task: {lr, weight_decay, batch_size, epochs, seeds}}
    sane: SaneSettings = Field(default_factory=SaneSettings)
    earlybert: dict[str, Any] | None = None  # EarlyBERT in every job: search, prune, train the ticket (glue/earlybert.py)


def load_glue_config(yaml_path: str | os.PathLike, overrides: list[str] | None = None) -> GlueConfig:
    config = build_config(GlueConfig, read_yaml(yaml_path, overrides))
    if config.round_2_start and config.protocol != "paper":
        raise ConfigError(f"round_2_start applies to protocol=paper only; protocol={config.protocol} starts every task "
                          "from starting_checkpoint.")
    if config.data_source == "local" and not config.data_local:
        raise ConfigError("data_source=local needs data_local, the folder holding MNLI/, QNLI/, ... with TSV files.")
    own = definitions(config)  # keys checked here, files when the run starts
    if config.tasks is None:
        config.tasks = list(own) or list(TASKS)
    known = [*TASKS, *own]
    for task in list(config.tasks) + list(config.task_overrides):
        if task not in known:
            raise ConfigError(f"unknown task '{task}'.{nearest(task, known)} GLUE tasks: {', '.join(TASKS)}; own tasks "
                              f"(own_tasks): {', '.join(own) or 'none defined'}.")
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
    for task in config.task_overrides:
        hyperparameters(config, task, own.get(task))
    return config


def hyperparameters(config: GlueConfig, task: str, own: OwnTask | None = None) -> Hyperparameters:
    """The protocol's setting for a GLUE task (an own task's: the sane settings with its definition's), with the
    config's overrides applied."""
    s = config.sane
    if own is not None:
        values = {**config.sane.model_dump(), **own.hyperparameters}
    else:
        values = (config.sane if config.protocol == "sane" else PAPER[task]).model_dump()
    return build_config(Hyperparameters, {**values, **config.task_overrides.get(task, {})}, f"task_overrides.{task}")
