"""Typed, validated training configuration.

`load_config(yaml_path, overrides)` merges a YAML file with OmegaConf dotlist overrides
(`max_duration=50ba train_loader.num_workers=0`), resolves interpolations and turns the
result into a `TrainConfig`. Every key is checked against the dataclasses below: an
unknown key names itself and the nearest valid one, a wrong type names the expected
type, and the batch arithmetic is checked against the world size. Device-dependent
defaults (precision, microbatch size) are filled in last and reported by
`describe_defaults`. The registry entries (`model`, `optimizer`, `scheduler`,
`algorithms`, `callbacks`, `loggers`) are checked against their constructors'
signatures by `builders.validate_entries`, which the training and sweep entries call.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from mosaicbert.errors import ConfigError, nearest
from mosaicbert.registry import split_named

CPU_PRECISIONS = ("fp32",)
GPU_PRECISIONS = ("fp32", "amp_bf16", "amp_fp16")


@dataclass
class LoaderConfig:
    """One MLM dataloader over an MDS text dataset."""

    split: str
    local: str | None = None  # defaults to the top-level data_local
    remote: str | None = None  # defaults to the top-level data_remote
    mlm_probability: float = 0.15
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


@dataclass
class LengthPhase:
    """One phase of `seq_len_schedule`: sequences of `max_seq_len` tokens until `until` (0.9dur, 60000ba)."""

    max_seq_len: int
    until: str
    # Sequences per microbatch in this phase (a short phase fits more); default: the run's microbatch.
    device_train_microbatch_size: int | None = None


@dataclass
class TrainConfig:
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
    variables: dict[str, Any] = field(default_factory=dict)  # free-form values for ${variables.x}

    eval_loader: LoaderConfig | None = None
    eval_interval: Union[str, int] = "1ep"
    eval_subset_num_batches: int = -1
    eval_first: bool = False
    device_train_microbatch_size: Union[int, str, None] = None  # None: device batch on CPU, 'auto' on GPU
    device_eval_batch_size: int | None = None  # None: the train microbatch size

    device: str | None = None  # None: gpu when CUDA is available, else cpu
    precision: str | None = None  # None: amp_bf16 on GPU (amp_fp16 before Ampere), fp32 on CPU
    # torch.compile's keyword arguments, which Composer applies to the model ({} for the defaults,
    # e.g. {dynamic: true}); null trains eagerly. See docs/benchmarks.md for where it helps.
    compile_config: dict[str, Any] | None = None

    # `name: {kwargs}` mappings; null (e.g. algorithms=null on the command line) means none.
    algorithms: dict[str, Any] | None = field(default_factory=dict)
    callbacks: dict[str, Any] | None = field(default_factory=dict)
    loggers: dict[str, Any] | None = field(default_factory=dict)

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

    # Filled in by `finalize`, never read from YAML.
    world_size: int = field(default=1, metadata={"derived": True})
    device_train_batch_size: int = field(default=0, metadata={"derived": True})
    time_budget_seconds: float | None = field(default=None, metadata={"derived": True})  # a wall-clock max_duration
    filled_defaults: dict[str, Any] = field(default_factory=dict, metadata={"derived": True})


# --------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin.__name__
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and return it in that type."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}.")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}.")
        return build_dataclass(tp, value, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        (item_type,) = typing.get_args(tp) or (Any,)
        if item_type is Any:
            return value
        return [_convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"schema type {tp} at {where} is not supported")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}.")


def build_dataclass(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Type-check a resolved mapping against dataclass `cls`, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("derived")}
    prefix = f"{where}." if where else ""
    for key in values:
        if key not in fields:
            raise ConfigError(f"unknown key '{prefix}{key}'.{nearest(key, fields, prefix)}")
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            kwargs[name] = _convert(values[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{prefix}{name}' ({_type_name(hints[name])}).")
    return cls(**kwargs)


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
    return finalize(build_dataclass(TrainConfig, read_yaml(yaml_path, overrides)), world_size)


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
    """Fill device-dependent defaults and check the batch arithmetic."""
    filled: dict[str, Any] = {}
    if config.device is None:
        config.device = "gpu" if cuda_available() else "cpu"
        filled["device"] = config.device
    if config.device not in ("cpu", "gpu"):
        raise ConfigError(f"device: expected 'cpu' or 'gpu', got '{config.device}'.")
    if config.device == "gpu" and not cuda_available():
        raise ConfigError("device=gpu but CUDA is not available here; use device=cpu (or leave it unset).")

    if config.precision is None:
        from mosaicbert.precision import default_gpu_precision  # torch, imported only when a config is finalised

        config.precision, filled["precision"] = default_gpu_precision() if config.device == "gpu" else ("fp32",) * 2
    elif config.precision not in GPU_PRECISIONS:
        raise ConfigError(f"precision '{config.precision}' is unknown; use one of {', '.join(GPU_PRECISIONS)}.")
    elif config.device == "cpu" and config.precision not in CPU_PRECISIONS:
        # GPU recipes still run on a CPU for a smoke test; mixed precision does not exist there.
        filled["precision"] = f"fp32 (the recipe's {config.precision} needs a GPU)"
        config.precision = "fp32"

    world = env_world_size() if world_size is None else world_size
    config.world_size = world
    if config.global_train_batch_size <= 0:
        raise ConfigError("global_train_batch_size must be positive.")
    if config.global_train_batch_size % world:
        raise ConfigError(
            f"global_train_batch_size={config.global_train_batch_size} is not divisible by the world size {world}."
        )
    device_batch = config.global_train_batch_size // world
    config.device_train_batch_size = device_batch

    micro = config.device_train_microbatch_size
    if micro is None or (micro == "auto" and config.device == "cpu"):
        micro = device_batch if config.device == "cpu" else "auto"
        filled["device_train_microbatch_size"] = micro
    elif isinstance(micro, str):
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

    for name, loader in (("train_loader", config.train_loader), ("eval_loader", config.eval_loader)):
        if loader is None:
            continue
        if not 0.0 < loader.mlm_probability < 1.0:
            raise ConfigError(f"{name}.mlm_probability must lie in (0, 1), got {loader.mlm_probability}.")
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
    return dataclasses.asdict(config)
