"""Errors that carry a message meant for the person running the recipe.

Entry scripts catch `UserError` (`entry_point`), print its message once and exit 2; anything
else is a bug and keeps its traceback.
"""

import difflib
import functools
import signal
import sys
from collections.abc import Callable, Iterable


class UserError(Exception):
    """Bad input: the message names the problem and the fix."""


class ConfigError(UserError):
    """The resolved YAML config does not match the schema."""


class DataNotFoundError(UserError):
    """A dataset folder the config points at does not exist."""


class Interrupted(Exception):
    """Training stopped on a signal (SIGTERM) after saving a checkpoint; entry scripts exit 128 + signum."""

    def __init__(self, signum: int, batch: int, checkpoint: str | None):
        self.signum, self.batch, self.checkpoint = signum, batch, checkpoint
        saved = f"checkpoint {checkpoint} saved" if checkpoint else "no checkpoint saved (save_folder unset)"
        super().__init__(f"stopped on {signal.Signals(signum).name} after batch {batch}; {saved}. "
                         "Run the same command with autoresume=true to continue.")


class Stopped(Exception):
    """A runner (GLUE, sweep) stopped on a signal after its job processes ended; entry scripts exit 128 + signum."""

    def __init__(self, signum: int, detail: str = ""):
        self.signum = signum
        super().__init__(f"stopped on {signal.Signals(signum).name}{': ' + detail if detail else ''}. "
                         "Run the same command again to go on: finished jobs are kept, stopped ones run again.")


def nearest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """A ' Did you mean ...?' hint naming the closest valid spelling (after `prefix`), or ''."""
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.5)
    return f" Did you mean '{prefix}{match[0]}'?" if match else ""


def entry_point(name: str | None = None) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorates an entry script's `main`, whose int is the exit status (0 for anything else): a UserError
    becomes one `error: ...` line on stderr and exit status 2; a stop on a signal (Interrupted, Stopped)
    its message, prefixed `[name]`, and 128 + the signal number. Anything else is a bug and keeps its
    traceback."""

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                code = main(*args, **kwargs)
                return code if isinstance(code, int) else 0
            except UserError as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                return 2
            except (Interrupted, Stopped) as stop:
                print(f"[{name}] {stop}" if name else str(stop), file=sys.stderr, flush=True)
                return 128 + stop.signum

        return run

    return decorate
