"""Small named registries: YAML `name: {kwargs}` entries become Python objects.

Each registry maps a name to a constructor. `validate` checks a name and its kwargs
against the constructor's signature without building anything, so a typo fails before
the first tensor is allocated; `build` then constructs. Arguments the trainer supplies
itself (the model's parameters for an optimizer, the tokenizer for a model) are declared
as `provided` and may not be set from YAML.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from mosaicbert.errors import ConfigError, nearest


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {}

    def register(self, name: str, constructor: Callable[..., Any], provided: Iterable[str] = ()) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = (constructor, tuple(provided))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def provided(self, name: str) -> tuple[str, ...]:
        """The arguments the trainer supplies to `name` (empty for an unknown name)."""
        return self._entries[name][1] if name in self._entries else ()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def validate(self, name: str, kwargs: dict[str, Any], where: str) -> None:
        """Raise ConfigError if `name` is unknown or `kwargs` do not fit its signature."""
        if name not in self._entries:
            raise ConfigError(
                f"{where}: unknown {self.kind} '{name}'.{nearest(name, self._entries)} "
                f"Registered {self.kind}s: {', '.join(self.names())}."
            )
        constructor, provided = self._entries[name]
        params = inspect.signature(constructor).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        accepted = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL} - set(provided)
        for key in kwargs:
            if key in provided:
                raise ConfigError(f"{where}.{key}: set by the trainer, not from the config; remove it.")
            if key not in accepted:
                raise ConfigError(
                    f"{where}: {self.kind} '{name}' has no argument '{key}'.{nearest(key, accepted)} "
                    f"Valid arguments: {', '.join(sorted(accepted))}."
                )
        missing = [
            n for n, p in params.items()
            if p.default is inspect.Parameter.empty and n not in provided and n not in kwargs
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        if missing:
            raise ConfigError(f"{where}: {self.kind} '{name}' needs {', '.join(missing)}.")

    def build(self, name: str, kwargs: dict[str, Any], where: str, **provided: Any) -> Any:
        self.validate(name, kwargs, where)
        constructor, _ = self._entries[name]
        return constructor(**provided, **kwargs)


# How YAML writes registry entries -------------------------------------------------


def split_named(entry: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """`{name: x, **kwargs}` (model, optimizer, scheduler) -> (x, kwargs)."""
    if "name" not in entry:
        raise ConfigError(f"{where}: missing 'name' (the registered {where} to build).")
    kwargs = dict(entry)
    return kwargs.pop("name"), kwargs


def named_entries(section: dict[str, Any] | None, where: str) -> list[tuple[str, dict[str, Any]]]:
    """`{name: kwargs-or-null, ...}` (algorithms, callbacks, loggers) -> [(name, kwargs)]."""
    entries = []
    for name, kwargs in (section or {}).items():
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of arguments (or {{}}), got {kwargs!r}.")
        entries.append((name, kwargs))
    return entries


models = Registry("model")
optimizers = Registry("optimizer")
schedulers = Registry("scheduler")
algorithms = Registry("algorithm")
callbacks = Registry("callback")
loggers = Registry("logger")
