"""A sweep YAML in, a validated plan of pretraining runs out.

    name: pareto-demo
    models:                        # label -> pretraining recipe (+ its GLUE recipe for kind: glue)
      mosaicbert: {recipe: yamls/demo.yaml}
      hf-bert: {recipe: yamls/pretrain/hf-bert-demo.yaml}
    grid:                          # the cartesian product; `model` picks labels (default: all)
      seed: [17, 18]
      max_duration: [300ba]
    overrides: {data_local: data/sample}     # every run; a model's own `overrides` and the cell win over these

Every cell of `models x grid` is one run. Its config is the recipe plus the overrides, checked by the
same schema `composer src/main.py` uses before anything starts; a bad cell is named. A run is
identified by a hash of its resolved config (run and folder names excluded), so re-running a sweep
finds its finished runs and evaluations, and a changed setting gets a new run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mosaicbert.config import Schema, build_config, load_config, read_mapping, read_yaml
from mosaicbert.errors import ConfigError, UserError
from mosaicbert.files import write_json_atomically

PLAN_FILE = "plan.json"
# Set by the sweep for every run, so they never enter the run's identity.
SWEEP_OWNED_KEYS = ("run_name", "run_folder", "save_folder", "autoresume", "save_overwrite", "save_num_checkpoints_to_keep",
                    "clean_stale_shared_memory")


class ModelEntry(Schema):
    recipe: str  # pretraining YAML
    glue_recipe: str | None = None  # GLUE YAML for evaluation kind glue
    overrides: dict[str, Any] = Field(default_factory=dict)


class Evaluation(Schema):
    """How each checkpoint is scored: held-out MLM accuracy (quick) or the GLUE harness (the paper)."""

    kind: Literal["mlm", "glue"] = "mlm"
    checkpoints: Literal["all", "last"] = "all"  # all: every checkpoint is a point; last: a finished run's last one (budget sweeps)
    split: str = "val"  # mlm: the held-out split of the run's data_local
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    batches: int = -1  # mlm: evaluation batches per checkpoint; -1 for the whole split
    batch_size: int = 64
    mask_seed: int = 0  # the same masks for every run and checkpoint, so points are comparable
    glue_overrides: dict[str, Any] = Field(default_factory=dict)  # glue: key=value for src/glue.py


class Slurm(Schema):
    account: str | None = None
    partition: str | None = None
    time: str = "24:00:00"  # per pretraining job
    evaluation_time: str = "04:00:00"
    signal_seconds: int = 300  # SIGTERM this long before the time limit: the run checkpoints and stops
    cpus_per_task: int | None = None
    master_port: int = 29500  # plus the job id modulo 1000, so jobs sharing a node do not collide
    extra_sbatch: list[str] = Field(default_factory=list)  # more `#SBATCH` lines, e.g. "--qos=high"


class SweepConfig(Schema):
    name: str
    models: dict[str, Any]  # label -> ModelEntry, each read on its own (read_sweep)
    grid: dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict)
    folder: str | None = None  # default runs/sweeps/<name>
    checkpoint_interval: str | None = None  # save_interval of every run (e.g. 3500ba, 600sec); None: the recipe's
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU runs, one process per node
    price_per_gpu_hour: float = 2.0
    evaluation: Evaluation = Field(default_factory=Evaluation)
    slurm: Slurm = Field(default_factory=Slurm)


@dataclass
class Run:
    """One pretraining run of the plan."""

    run_id: str
    model: str
    cell: dict[str, Any]  # this run's grid values, model included
    recipe: str
    overrides: list[str]  # key=value for `composer src/main.py <recipe>`, the sweep-owned keys included
    folder: str
    config_hash: str
    glue_recipe: str | None = None

    @property
    def checkpoint_folder(self) -> str:
        return os.path.join(self.folder, "checkpoints")

    @property
    def point_group(self) -> str:
        """The cell without its seed: runs that differ only in seed are repeats of one point."""
        rest = {k: v for k, v in self.cell.items() if k not in ("model", "seed")}
        return " ".join(f"{k}={v}" for k, v in rest.items()) or "default"


@dataclass
class Plan:
    sweep: SweepConfig
    folder: str
    runs: list[Run]


def dot(key: str, value: Any) -> str:
    """One `key=value` override in the form OmegaConf's dotlist parser reads back as `value`."""
    if isinstance(value, str) and re.fullmatch(r"[\w.:/+-]+", value):
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{optimizer: {lr: 1}}` -> `{optimizer.lr: 1}`: overrides in dotted form, leaves kept whole."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepConfig:
    """The sweep YAML (plus `key=value` overrides of it), type-checked."""
    values = read_mapping(path, overrides, kind="sweep", example="folder=runs/sweeps/try2",
                          look_in="Shipped sweeps live in yamls/sweeps/, e.g. yamls/sweeps/demo.yaml.")
    sweep = build_config(SweepConfig, values)
    # `grid.optimizer.lr=[...]` on the command line nests; in the YAML it is one dotted key. Same thing.
    sweep.grid = flatten(sweep.grid)
    sweep.models = {label: build_config(ModelEntry, entry or {}, f"models.{label}") for label, entry in sweep.models.items()}
    check_sweep(sweep)
    return sweep


def check_sweep(sweep: SweepConfig) -> None:
    if not sweep.models:
        raise ConfigError("models is empty: name at least one pretraining recipe, e.g. models: {mosaicbert: {recipe: yamls/base.yaml}}.")
    for label, entry in sweep.models.items():
        if not Path(entry.recipe).is_file():
            raise ConfigError(f"models.{label}.recipe: {entry.recipe} does not exist (pretraining recipes live under yamls/).")
        if sweep.evaluation.kind == "glue":
            if entry.glue_recipe is None:
                raise ConfigError(f"models.{label}: evaluation.kind is glue but glue_recipe is not set (e.g. yamls/glue/mosaicbert-base.yaml).")
            if not Path(entry.glue_recipe).is_file():
                raise ConfigError(f"models.{label}.glue_recipe: {entry.glue_recipe} does not exist.")
            from mosaicbert.glue.config import load_glue_config

            try:  # now, not after hours of pretraining; the checkpoint is each evaluation's own
                load_glue_config(entry.glue_recipe, glue_overrides(sweep, "<checkpoint>"))
            except ConfigError as err:
                raise ConfigError(f"models.{label}.glue_recipe {entry.glue_recipe} with evaluation.glue_overrides: {err}") from None
    if not sweep.grid:
        raise ConfigError("grid is empty: give at least one key with a list of values, e.g. grid: {seed: [17, 18]}.")
    for key, values in sweep.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}.")
        if key in SWEEP_OWNED_KEYS:
            raise ConfigError(f"grid.{key}: the sweep sets {key} for every run; remove it from the grid.")
    unknown = [m for m in sweep.grid.get("model", []) if m not in sweep.models]
    if unknown:
        raise ConfigError(f"grid.model names '{unknown[0]}', which is not under models ({', '.join(sweep.models)}).")
    if sweep.nodes < 1 or sweep.gpus_per_node < 0:
        raise ConfigError("nodes must be at least 1 and gpus_per_node at least 0 (0: CPU runs).")


def glue_overrides(sweep: SweepConfig, checkpoint: str) -> list[str]:
    return [f"starting_checkpoint={checkpoint}", *(dot(k, v) for k, v in flatten(sweep.evaluation.glue_overrides).items())]


def cells(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's values (all models unless the grid picks some), `model` first in
    each cell but varying fastest: the models' runs alternate, so a busy spell of a shared machine
    falls on both rather than on one model's seeds."""
    models = sweep.grid.get("model", list(sweep.models))
    rest = {k: v for k, v in sweep.grid.items() if k != "model"}
    return [{"model": model, **dict(zip(rest, values))}
            for values in itertools.product(*rest.values()) for model in models]


def describe(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items())


def run_id(cell: dict[str, Any], config_hash: str) -> str:
    """Readable and unique: `hf-bert-seed17-max_duration300ba-1a2b3c4d`."""
    parts = [str(cell["model"])] + [f"{k.split('.')[-1]}{v}" for k, v in cell.items() if k != "model"]
    name = re.sub(r"[^\w.+-]+", "_", "-".join(parts))[:80]
    return f"{name}-{config_hash[:8]}"


def make_plan(sweep: SweepConfig) -> Plan:
    """One validated run per cell. Every config goes through the training schema (with the sweep's world
    size) before anything is launched; the first bad cell stops the sweep with its values named."""
    from mosaicbert.builders import validate_entries  # Composer's classes, for their signatures

    folder = sweep.folder or f"runs/sweeps/{sweep.name}"
    world_size = sweep.nodes * max(sweep.gpus_per_node, 1)
    runs = []
    for index, cell in enumerate(cells(sweep)):
        entry = sweep.models[cell["model"]]
        values = {**flatten(sweep.overrides), **flatten(entry.overrides), **{k: v for k, v in cell.items() if k != "model"}}
        if sweep.checkpoint_interval is not None:
            values["save_interval"] = sweep.checkpoint_interval
        overrides = [dot(k, v) for k, v in values.items()]
        where = f"sweep cell {index} ({describe(cell)}; recipe {entry.recipe})"
        try:
            resolved = read_yaml(entry.recipe, overrides)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        # The hardware too: the same config on other hardware is another point on the time axis.
        identity = {k: v for k, v in resolved.items() if k not in SWEEP_OWNED_KEYS}
        identity["hardware"] = {"nodes": sweep.nodes, "gpus_per_node": sweep.gpus_per_node}
        config_hash = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        name = run_id(cell, config_hash)
        run_folder = os.path.join(folder, "runs", name)
        overrides += [
            f"run_name={name}", f"run_folder={run_folder}", f"save_folder={run_folder}/checkpoints",
            "autoresume=true", "save_overwrite=false", "save_num_checkpoints_to_keep=-1",
            # Runs and evaluations of a sweep may share a machine: start-up removes only the shared memory of
            # ended runs, never that of the others (data/shared_memory.py).
            "clean_stale_shared_memory=true",
        ]
        try:
            validate_entries(load_config(entry.recipe, overrides, world_size=world_size))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        runs.append(Run(run_id=name, model=cell["model"], cell=cell, recipe=entry.recipe, overrides=overrides,
                        folder=run_folder, config_hash=config_hash, glue_recipe=entry.glue_recipe))
    duplicates = len(runs) - len({r.run_id for r in runs})
    if duplicates:
        raise ConfigError(f"the grid gives {duplicates} run(s) with identical configs; remove the repeated values.")
    return Plan(sweep=sweep, folder=folder, runs=runs)


def save_plan(plan: Plan) -> str:
    """plan.json in the sweep folder: what evaluation and report jobs read (on any node)."""
    os.makedirs(plan.folder, exist_ok=True)
    path = os.path.join(plan.folder, PLAN_FILE)
    payload = {"sweep": plan.sweep.model_dump(), "folder": plan.folder, "runs": [dataclasses.asdict(r) for r in plan.runs]}
    write_json_atomically(path, payload)
    return path


def load_plan(folder: str) -> Plan:
    path = os.path.join(folder, PLAN_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{folder} holds no {PLAN_FILE}: is it a sweep folder? (python src/sweep.py yamls/sweeps/<name>.yaml makes one)")
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    sweep = build_config(SweepConfig, payload["sweep"])
    sweep.models = {k: build_config(ModelEntry, v, f"models.{k}") for k, v in sweep.models.items()}
    return Plan(sweep=sweep, folder=payload["folder"], runs=[Run(**r) for r in payload["runs"]])
