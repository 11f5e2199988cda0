"""Typed, validated training configuration.

`load_config(yaml_path, overrides)` merges a YAML file with OmegaConf dotlist overrides
(`max_duration=50ba train_loader.num_workers=0`), resolves interpolations and turns the
result into a `TrainConfig`. Every key is checked against the schemas below (pydantic): an
unknown key names itself and the nearest valid one, a wrong type names the expected
type, and the batch arithmetic is checked against the world size. Device-dependent
defaults (precision, microbatch size) are filled in last and reported by
`describe_defaults`. The registry entries (`model`, `optimizer`, `scheduler`,
`algorithms`, `callbacks`, `loggers`) are checked against their constructors'
signatures by `builders.validate_entries`, which the training and sweep entries call.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mosaicbert.errors import ConfigError, nearest
from mosaicbert.registry import split_named

CPU_PRECISIONS = ("fp32",)
Precision = Literal["fp32", "amp_bf16", "amp_fp16"]  # Composer's names


class Schema(BaseModel):
    """A config section read from YAML: an unknown key is refused, types are checked strictly (no "5" for
    5, no 1 for true), and the object stays mutable for the defaults filled in after reading."""

    model_config = ConfigDict(extra="forbid", strict=True)


class LoaderConfig(Schema):
    """One MLM dataloader over an MDS text dataset."""

    split: str
    local: str | None = None  # defaults to the top-level data_local
    remote: str | None = None  # defaults to the top-level data_remote
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    shuffle: bool = False
    drop_last: bool = False
    num_workers: int = 0
    pretokenized: bool = False  # read the `input_ids` column instead of tokenizing `text`
    fixed_masks: bool = False  # the same mask for a sample every epoch (for evaluation)
    shuffle_seed: int = 9176
    num_canonical_nodes: int | None = None
    predownload: int | None = None
    # Pack each batch's documents into full rows (best fit): a microbatch of N rows then holds about
    # N x max_seq_len real tokens. MosaicBERT only (docs/benchmarks.md, "Sequence packing").
    packing: bool = False


class LengthPhase(Schema):
    """One phase of `seq_len_schedule`: sequences of `max_seq_len` tokens until `until` (0.9dur, 60000ba)."""

    max_seq_len: int
    until: str
    # Sequences per microbatch in this phase (a short phase fits more); default: the run's microbatch.
    device_train_microbatch_size: int | None = None


class TrainConfig(Schema):
    # Filled in by `finalize`, never read from YAML.
    DERIVED: ClassVar[tuple[str, ...]] = ("world_size", "device_train_batch_size", "time_budget_seconds",
                                          "filled_defaults")

    model: dict[str, Any]
    tokenizer_name: str
    train_loader: LoaderConfig
    global_train_batch_size: int
    max_duration: Union[str, int]  # a training length (600ba, 2ep) or a wall-clock budget (2h, 90m, 45s)
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]

    run_name: str | None = None  # default: $COMPOSER_RUN_NAME, else the YAML file's stem
    run_folder: str | None = None  # default: runs/<run_name>; logs, config and summary go here
    seed: int = 17
    max_seq_len: int = 128
    # Shorter sequences for the early part of the run (BERT's 90% of steps at 128, then 512): phases in
    # order, the last at max_seq_len and covering the run (data/length_schedule.py). None: max_seq_len throughout.
    seq_len_schedule: list[LengthPhase] | None = None
    data_local: str | None = None
    data_remote: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)  # free-form values for ${variables.x}

    eval_loader: LoaderConfig | None = None
    eval_interval: Union[str, int] = "1ep"
    eval_subset_num_batches: int = -1
    eval_first: bool = False
    device_train_microbatch_size: Union[int, str, None] = None  # None: device batch on CPU, 'auto' on GPU
    device_eval_batch_size: int | None = None  # None: the train microbatch size

    device: Literal["cpu", "gpu"] | None = None  # None: gpu when CUDA is available, else cpu
    precision: Precision | None = None  # None: amp_bf16 on GPU (amp_fp16 before Ampere), fp32 on CPU
    # torch.compile's keyword arguments, which Composer applies to the model ({} for the defaults,
    # e.g. {dynamic: true}); null trains eagerly. See docs/benchmarks.md for where it helps.
    compile_config: dict[str, Any] | None = None

    # `name: {kwargs}` mappings; null (e.g. algorithms=null on the command line) means none.
    algorithms: dict[str, Any] | None = Field(default_factory=dict)
    callbacks: dict[str, Any] | None = Field(default_factory=dict)
    loggers: dict[str, Any] | None = Field(default_factory=dict)

    save_folder: str | None = None  # None: no checkpoints
    save_interval: Union[str, int] = "1000ba"
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    autoresume: bool = False
    # A Composer checkpoint (its training state, or weights only with load_weights_only), or a Hugging
    # Face model folder (its weights, into this YAML's architecture; docs/export.md).
    load_path: str | None = None
    load_weights_only: bool = False

    progress_bar: bool = True
    log_to_console: bool = False
    console_log_interval: Union[str, int] = "100ba"
    python_log_level: str | None = "warning"  # Composer's own logging
    dist_timeout: float = 300.0
    clean_stale_shared_memory: bool = True

    # DERIVED: filled in by `finalize`.
    world_size: int = 1
    device_train_batch_size: int = 0
    time_budget_seconds: float | None = None  # a wall-clock max_duration
    filled_defaults: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- reading a schema


S = TypeVar("S", bound=Schema)


def build_config(cls: type[S], values: dict[str, Any], where: str = "") -> S:
    """`values` (a resolved mapping) as a `cls`; the first mistake is one ConfigError naming the key, with the
    nearest valid key for a misspelt one and the expected type for a wrong one. `where` prefixes the keys."""
    prefix = f"{where}." if where else ""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {values!r}.")
    derived = getattr(cls, "DERIVED", ())
    for key in values:
        if key in derived:  # computed from the others, so not a setting
            readable = [name for name in _yaml_keys(cls) if name not in derived]
            raise ConfigError(f"unknown key '{prefix}{key}'.{nearest(key, readable, prefix)}")
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        # An unknown key first: a misspelt required key is reported as itself, not as the key it misses.
        first = min(err.errors(), key=lambda error: error["type"] != "extra_forbidden")
        raise ConfigError(describe_error(first, cls, where)) from None


def describe_error(error: dict[str, Any], schema: type[BaseModel], where: str = "") -> str:
    """One of pydantic's errors in this package's words."""
    names, annotation, parent = _follow(schema, error["loc"])
    path = ".".join(([where] if where else []) + names)
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        key, prefix = str(error["loc"][-1]), f"{path}." if path else ""
        readable = [name for name in _yaml_keys(parent) if name not in getattr(parent, "DERIVED", ())]
        return f"unknown key '{prefix}{key}'.{nearest(key, readable, prefix)}"
    if kind == "missing":
        return f"missing required key '{path}' ({_type_name(annotation)})."
    if kind == "literal_error":
        return f"{path} '{value}' is unknown; use one of {', '.join(map(str, typing.get_args(_without_none(annotation))))}."
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{path} must lie in {_interval(parent.model_fields[names[-1]].metadata)}, got {value}."
    return f"{path}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}."


def _interval(constraints: list) -> str:
    """A field's bounds (annotated_types' Gt, Ge, Lt, Le) as an interval: (0, 1)."""
    low, high = "(-inf", "inf)"
    for bound in constraints:
        low = f"({bound.gt}" if hasattr(bound, "gt") else f"[{bound.ge}" if hasattr(bound, "ge") else low
        high = f"{bound.lt})" if hasattr(bound, "lt") else f"{bound.le}]" if hasattr(bound, "le") else high
    return f"{low}, {high}"


def _follow(schema: type[BaseModel], loc: tuple) -> tuple[list[str], Any, type[BaseModel]]:
    """The key names an error's location walks through the schema (a list index joins its key, `phases[0]`),
    the annotation where it stops (at an unknown key or a union member's tag), and the schema around it."""
    names: list[str] = []
    annotation: Any = schema
    parent = schema
    for part in loc:
        model = _schema_in(annotation)
        if isinstance(part, int) and names:
            names[-1] += f"[{part}]"
            annotation = typing.get_args(_without_none(annotation))[0]
        elif typing.get_origin(_without_none(annotation)) is dict and isinstance(part, str) and names:
            names.append(part)  # a key of a mapping of schemas
            annotation = typing.get_args(_without_none(annotation))[1]
        elif model is not None and part in _yaml_keys(model):
            parent = model
            names.append(part)
            annotation = model.model_fields[_yaml_keys(model)[part]].annotation
        else:
            break
    return names, annotation, _schema_in(annotation) or parent


def _yaml_keys(schema: type[BaseModel]) -> dict[str, str]:
    """YAML key -> field name (they differ where a key is a name pydantic keeps, such as model_config)."""
    return {field.alias or name: name for name, field in schema.model_fields.items()}


def _without_none(annotation: Any) -> Any:
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    return options[0] if typing.get_origin(annotation) in (Union, types.UnionType) and len(options) == 1 else annotation


def _schema_in(annotation: Any) -> type[BaseModel] | None:
    annotation = _without_none(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin is not None:
        return origin.__name__
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------- loading


def read_yaml(yaml_path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """A recipe + dotlist overrides, with run_name (default: $COMPOSER_RUN_NAME or the file's stem) and
    run_folder (default: runs/<run_name>) filled in, interpolations resolved."""

    def fill_run_names(cfg: DictConfig, path: Path) -> None:
        if cfg.get("run_name") is None:
            cfg.run_name = os.environ.get("COMPOSER_RUN_NAME") or path.stem
        if cfg.get("run_folder") is None:
            cfg.run_folder = f"runs/{cfg.run_name}"

    return read_mapping(yaml_path, overrides, kind="config", fill=fill_run_names)


def read_mapping(yaml_path: str | os.PathLike, overrides: list[str] | None = None, kind: str = "config",
                 look_in: str = "Recipes live under yamls/, e.g. yamls/demo.yaml.", example: str = "max_duration=50ba",
                 fill: Callable[[DictConfig, Path], None] | None = None) -> dict[str, Any]:
    """A YAML mapping (a `kind` file: config, sweep) + dotlist overrides, `fill`ed, interpolations resolved;
    a missing or malformed file, a bad override or a missing value is one ConfigError naming the file."""
    path = Path(yaml_path)
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}. {look_in}")
    try:
        cfg = OmegaConf.merge(OmegaConf.load(path), _parse_overrides(overrides or [], example))
        if fill is not None:
            fill(cfg, path)
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{path} leaves '{err.full_key}' to be set: add {err.full_key}=... on the command line.") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"could not read {path}: {err}") from None
    except yaml.YAMLError as err:  # malformed YAML: the parser's own words say where
        where = getattr(err, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"could not read {path}: malformed YAML{at}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(resolved, dict):
        raise ConfigError(f"{path} must hold a mapping of {kind} keys.")
    return resolved


def load_config(yaml_path: str | os.PathLike, overrides: list[str] | None = None, world_size: int | None = None) -> TrainConfig:
    """Read, merge, resolve, type-check and finalize a training config. `world_size` checks the batch
    arithmetic for a launch elsewhere (a sweep planning Slurm jobs); by default this process's."""
    return finalize(build_config(TrainConfig, read_yaml(yaml_path, overrides)), world_size)


def _parse_overrides(overrides: list[str], example: str) -> Any:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override '{bad[0]}' is not of the form key=value (e.g. {example}).")
    try:
        return OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as err:
        raise ConfigError(f"could not parse overrides {overrides}: {err}") from None


# --------------------------------------------------------------------------- derived values


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def finalize(config: TrainConfig, world_size: int | None = None) -> TrainConfig:
    """Fill the device-dependent defaults (reported by `describe_defaults`), check the batch arithmetic for
    `world_size` (default: this process's), the loaders, and the time settings. Not a pydantic validator:
    it probes the machine (CUDA) and the launch (world size), which are not properties of the YAML."""
    filled: dict[str, Any] = {}
    _fill_device_and_precision(config, filled)
    _fill_batches(config, env_world_size() if world_size is None else world_size, filled)
    for name in ("train_loader", "eval_loader"):
        _fill_loader(config, name)
    check_compile_config(config.compile_config)
    if config.autoresume and config.save_folder is None:
        raise ConfigError("autoresume=true needs save_folder (where to look for the latest checkpoint).")
    config.time_budget_seconds = time_budget_seconds(config.max_duration)
    check_intervals(config)
    if config.time_budget_seconds is not None:
        check_budgeted_schedule(config)
    if config.seq_len_schedule is not None:
        check_length_schedule(config)
    config.filled_defaults = filled
    return config


def _fill_device_and_precision(config: TrainConfig, filled: dict[str, Any]) -> None:
    if config.device is None:
        config.device = "gpu" if cuda_available() else "cpu"
        filled["device"] = config.device
    if config.device == "gpu" and not cuda_available():
        raise ConfigError("device=gpu but CUDA is not available here; use device=cpu (or leave it unset).")
    if config.precision is None:
        from mosaicbert.precision import default_gpu_precision  # torch, imported only when a config is finalised

        config.precision, filled["precision"] = default_gpu_precision() if config.device == "gpu" else ("fp32",) * 2
    elif config.device == "cpu" and config.precision not in CPU_PRECISIONS:
        # GPU recipes still run on a CPU for a smoke test; mixed precision does not exist there.
        filled["precision"] = f"fp32 (the recipe's {config.precision} needs a GPU)"
        config.precision = "fp32"


def _fill_batches(config: TrainConfig, world: int, filled: dict[str, Any]) -> None:
    """The per-device batch from the global one, the microbatch (the device batch on CPU, 'auto' on GPU by
    default) dividing it, and the evaluation batch."""
    config.world_size = world
    if config.global_train_batch_size <= 0:
        raise ConfigError("global_train_batch_size must be positive.")
    if config.global_train_batch_size % world:
        raise ConfigError(
            f"global_train_batch_size={config.global_train_batch_size} is not divisible by the world size {world}."
        )
    device_batch = config.device_train_batch_size = config.global_train_batch_size // world
    micro = config.device_train_microbatch_size
    if micro is None or (micro == "auto" and config.device == "cpu"):
        micro = device_batch if config.device == "cpu" else "auto"
        filled["device_train_microbatch_size"] = micro
    elif isinstance(micro, str) and micro != "auto":
        raise ConfigError(f"device_train_microbatch_size: expected an integer or 'auto', got '{micro}'.")
    if isinstance(micro, int):
        if micro <= 0:
            raise ConfigError("device_train_microbatch_size must be positive.")
        if device_batch % micro:
            raise ConfigError(
                f"global_train_batch_size={config.global_train_batch_size} is not divisible by "
                f"world size {world} x device_train_microbatch_size {micro} = {world * micro}; "
                f"pick a microbatch that divides the per-device batch of {device_batch}."
            )
    config.device_train_microbatch_size = micro
    if config.device_eval_batch_size is None:
        config.device_eval_batch_size = micro if isinstance(micro, int) else device_batch
        filled["device_eval_batch_size"] = config.device_eval_batch_size


def _fill_loader(config: TrainConfig, name: str) -> None:
    """A loader's data from the top-level data_local/data_remote where it names none; packing only where the
    model keeps packed documents apart."""
    loader = getattr(config, name)
    if loader is None:
        return
    if loader.local is None:
        loader.local = config.data_local
    if loader.remote is None:
        loader.remote = config.data_remote
    if loader.local is None and loader.remote is None:
        raise ConfigError(f"{name}: set data_local (or {name}.local / {name}.remote) to the MDS dataset root.")
    if loader.packing and config.model.get("name") != "mosaic_bert":
        raise ConfigError(f"{name}.packing=true needs model.name=mosaic_bert: packed rows hold several documents, "
                          f"which only MosaicBERT keeps apart; {config.model.get('name')} would attend across "
                          f"them. Set {name}.packing=false.")


# Hours, minutes and seconds, alone or in that order: 2h, 1.5h, 90m, 30min, 45s, 7200sec, 1h30m.
# Composer's own parser reads only some of these (not 24h, 90m or 1.5h), so they are read here.
WALL_CLOCK = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)(?:min|m))?(?:(?P<s>\d+(?:\.\d+)?)(?:sec|s))?")
WALL_CLOCK_FORMS = "2h, 1.5h, 90m, 30min, 45s, 7200sec, 1h30m"
TRAINING_LENGTH_UNITS = ("ba", "ep", "sp", "tok")


def wall_clock_seconds(value: str | int) -> float | None:
    """Seconds of a wall-clock time such as `2h` or `90m`; None for anything else."""
    match = WALL_CLOCK.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or not any(match.groupdict().values()):
        return None
    return sum(float(match[unit] or 0) * factor for unit, factor in (("h", 3600), ("m", 60), ("s", 1)))


def time_budget_seconds(max_duration: str | int) -> float | None:
    """The budget of a wall-clock `max_duration` in seconds, None for a training length (600ba, 2ep).

    Composer's trainer refuses wall-clock durations; the `TimeBudget` callback trains to them."""
    seconds = wall_clock_seconds(max_duration)
    if seconds is not None:
        if seconds <= 0:
            raise ConfigError(f"max_duration: a time budget must be positive, got '{max_duration}'.")
        return seconds
    if isinstance(max_duration, int):
        return None  # epochs, as in Composer
    from composer.core import Time

    try:
        unit = Time.from_timestring(max_duration).unit.value
    except (ValueError, TypeError):
        unit = None
    if unit not in TRAINING_LENGTH_UNITS:
        raise ConfigError(
            f"max_duration: '{max_duration}' is neither a training length (600ba, 2ep, 100000sp, 5000000tok) "
            f"nor a wall-clock budget of training time ({WALL_CLOCK_FORMS})."
        )
    return None


def check_compile_config(compile_config: dict[str, Any] | None) -> None:
    """Keys are torch.compile's keyword arguments; a misspelt one is named before the run starts."""
    if compile_config is None:
        return
    import inspect

    import torch

    valid = set(inspect.signature(torch.compile).parameters) - {"model"}
    for key in compile_config:
        if key not in valid:
            raise ConfigError(f"compile_config: torch.compile has no argument '{key}'.{nearest(key, valid)} "
                              f"Valid: {', '.join(sorted(valid))}.")


def check_intervals(config: TrainConfig) -> None:
    """`eval_interval` and `save_interval` as Composer times; wall-clock forms (`10m`) become Composer's
    whole seconds of training (`600sec`). A budgeted run refuses `dur` intervals: its `max_duration`
    in batches moves after every batch, so a fraction of it would name a different batch every time."""
    from composer.core import Time, TimeUnit

    for name in ("eval_interval", "save_interval"):
        value = getattr(config, name)
        seconds = wall_clock_seconds(value)
        if seconds is not None:
            value = f"{max(1, round(seconds))}sec"
            setattr(config, name, value)
        try:
            interval = Time.from_input(value, TimeUnit.EPOCH)
        except (ValueError, TypeError):
            raise ConfigError(f"{name}: '{value}' is not a time such as 200ba, 1ep, 0.25dur, 10m or 60sec.") from None
        if interval.unit == TimeUnit.DURATION and config.time_budget_seconds is not None:
            seconds = max(1, round(interval.value * config.time_budget_seconds))
            raise ConfigError(
                f"{name}={value} is a fraction of a time budget ({config.max_duration}), which has no fixed number "
                f"of batches: give it in seconds of training instead ({name}={seconds}sec is that fraction) or in batches."
            )


def check_budgeted_schedule(config: TrainConfig) -> None:
    t_max = split_named(config.scheduler, "scheduler")[1].get("t_max")
    if t_max is not None and not str(t_max).endswith("dur"):
        raise ConfigError(
            f"scheduler.t_max={t_max}: a schedule trained to a time budget ends when the budget does; "
            "remove t_max or give it as a fraction of the budget (1dur)."
        )


def check_length_schedule(config: TrainConfig) -> None:
    """Phases of increasing length, ending at max_seq_len, whose ends increase in one unit and cover the run,
    each microbatch dividing the device batch and holding no more tokens than the run's microbatch at
    max_seq_len (the one sized to fit memory)."""
    phases = config.seq_len_schedule
    if not phases:
        raise ConfigError("seq_len_schedule: give at least one phase, or null for max_seq_len throughout.")
    lengths = [phase.max_seq_len for phase in phases]
    if any(b <= a for a, b in zip(lengths, lengths[1:])) or lengths[0] <= 0:
        raise ConfigError(f"seq_len_schedule: the phases' max_seq_len must be positive and increase phase by "
                          f"phase, got {', '.join(map(str, lengths))}.")
    if lengths[-1] != config.max_seq_len:
        raise ConfigError(f"seq_len_schedule: the last phase's max_seq_len is {lengths[-1]} but the run's is "
                          f"{config.max_seq_len}; set max_seq_len={lengths[-1]} (data is read at the longest length).")
    ends = [_phase_end(phase.until) for phase in phases]
    if len({unit for unit, _ in ends}) > 1 or any(b <= a for (_, a), (_, b) in zip(ends, ends[1:])):
        raise ConfigError(f"seq_len_schedule: the phases' until must increase, all in dur or all in ba, got "
                          f"{', '.join(phase.until for phase in phases)}.")
    _check_schedule_covers_run(config, *ends[-1])
    micro = config.device_train_microbatch_size
    for i, phase in enumerate(phases):
        if phase.device_train_microbatch_size is None:
            continue
        where = f"seq_len_schedule[{i}].device_train_microbatch_size={phase.device_train_microbatch_size}"
        if not isinstance(micro, int):
            raise ConfigError(f"{where}: the run's microbatch is '{micro}' (adapted on the fly); "
                              "set device_train_microbatch_size to an integer to give phases their own.")
        if phase.device_train_microbatch_size <= 0 or config.device_train_batch_size % phase.device_train_microbatch_size:
            raise ConfigError(f"{where}: a phase's microbatch must be positive and divide the per-device batch "
                              f"of {config.device_train_batch_size}.")
        if phase.device_train_microbatch_size * phase.max_seq_len > micro * config.max_seq_len:
            raise ConfigError(
                f"{where} x {phase.max_seq_len} tokens = {phase.device_train_microbatch_size * phase.max_seq_len} "
                f"tokens per microbatch, more than the run's {micro} x {config.max_seq_len} = "
                f"{micro * config.max_seq_len} that device_train_microbatch_size is sized for; use at most "
                f"{micro * config.max_seq_len // phase.max_seq_len} (or raise device_train_microbatch_size)."
            )


def _phase_end(until: str) -> tuple[str, float]:
    from composer.core import Time, TimeUnit

    try:
        end = Time.from_timestring(str(until))
    except (ValueError, TypeError):
        end = None
    if end is None or end.unit not in (TimeUnit.DURATION, TimeUnit.BATCH):
        raise ConfigError(f"seq_len_schedule: until={until} is not a fraction of the run (0.9dur) or a batch (60000ba).")
    return end.unit.value, float(end.value)


def _check_schedule_covers_run(config: TrainConfig, unit: str, end: float) -> None:
    from composer.core import Time, TimeUnit

    if unit == "dur":
        if end < 1:
            raise ConfigError(f"seq_len_schedule: the last phase ends at {end:g}dur, before the run does; "
                              "end it at 1dur.")
        return
    duration = None if config.time_budget_seconds is not None else Time.from_input(config.max_duration, TimeUnit.EPOCH)
    if duration is None or duration.unit != TimeUnit.BATCH:
        raise ConfigError(f"seq_len_schedule: max_duration={config.max_duration} has no fixed number of batches; "
                          "give the phases' until as fractions of the run (0.9dur, 1dur).")
    if end < duration.value:
        raise ConfigError(f"seq_len_schedule: the last phase ends at batch {end:g}, before the run's "
                          f"{duration.value}; end it at {duration.value}ba or 1dur.")


def describe_defaults(config: TrainConfig) -> str:
    if not config.filled_defaults:
        return "no device-dependent defaults needed"
    return ", ".join(f"{k}={v}" for k, v in config.filled_defaults.items()) + f" (device={config.device})"


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return config.model_dump()
