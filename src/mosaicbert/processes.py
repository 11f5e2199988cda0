"""Child processes of the GLUE and sweep runners: given the parent's GPUs, and stopped with their parent.

A runner (`src/glue.py`, `src/sweep.py --launcher local`) starts each job as its own process. Stopping
the runner must stop them: Slurm and Kubernetes send SIGTERM to the runner only, and a job left
behind goes on training on a machine nobody accounts for. `ChildProcesses` starts each child as the
leader of its own process group (so a terminal's Ctrl-C reaches it once, through the runner) and,
while active, answers SIGTERM and SIGINT by sending SIGTERM to every child's whole group, as Slurm
signals every process of a job step: `composer -n` launchers and their training ranks alike, which
checkpoint and stop (callbacks/checkpoint_on_signal.py). The runner sees `received`, starts nothing
new, waits until each group has exited (up to `grace_seconds`, then SIGKILL), and ends with `Stopped`.

A child's CUDA_VISIBLE_DEVICES names physical GPUs, not positions in its parent's list: `visible_gpus`
gives the names a runner can hand on, so a runner started on GPUs 4,5 starts its jobs on 4 and 5.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

from mosaicbert.errors import Stopped

FORWARDED = (signal.SIGTERM, signal.SIGINT)


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES entries for its children: the entries of its own list
    (indices, GPU-/MIG- UUIDs, kept as written) or, without one, 0..n-1. CUDA stops at the first entry
    it cannot find, so only the first `device_count()` entries name devices; an empty list means no GPU."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]


class ChildProcesses:
    def __init__(self, grace_seconds: float = 120.0):
        self.grace_seconds = grace_seconds
        self.received: int | None = None
        self._running: set[subprocess.Popen] = set()
        # Re-entrant: the signal handler runs in the main thread, possibly while that thread is inside start().
        self._lock = threading.RLock()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> ChildProcesses:
        if threading.current_thread() is threading.main_thread():
            for signum in FORWARDED:
                self._previous[signum] = signal.signal(signum, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _forward(self, signum: int, frame) -> None:
        self.received = signum
        with self._lock:
            for process in self._running:
                _signal_group(process, signal.SIGTERM)

    def start(self, command: list[str], **popen_kwargs) -> subprocess.Popen:
        """Popen, unless a signal has arrived (then Stopped: nothing new starts)."""
        with self._lock:
            if self.received is not None:
                raise Stopped(self.received)
            process = subprocess.Popen(command, start_new_session=True, **popen_kwargs)
            self._running.add(process)
            if self.received is not None:  # the signal came while Popen ran, after the handler's forwarding
                _signal_group(process, signal.SIGTERM)
        return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(process)

    def run(self, command: list[str], **popen_kwargs) -> int:
        """subprocess.run's return code, the process stopped with the runner. After a signal it returns once the
        child's whole group has exited (a launcher may exit before its training ranks finish checkpointing)."""
        process = self.start(command, **popen_kwargs)
        try:
            code = process.wait()
            if self.received is not None:
                _wait_for_group(process, time.monotonic() + self.grace_seconds)
            return code
        finally:
            self.finished(process)

    def wait_for_all(self) -> None:
        """After a signal: give every child's process group `grace_seconds` to shut down (a training rank
        checkpoints first, possibly after its launcher has exited), then kill what is left."""
        deadline = time.monotonic() + self.grace_seconds
        with self._lock:
            running = list(self._running)
        for process in running:
            _wait_for_group(process, deadline)


def _wait_for_group(process: subprocess.Popen, deadline: float) -> None:
    while _group_alive(process) and time.monotonic() < deadline:
        process.poll()  # reaps the leader once it exits, so the group can empty
        try:  # and members orphaned to us: a runner that is PID 1 in a container adopts them
            os.waitpid(-process.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if _group_alive(process):
        _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # the child leads its group (start_new_session)
    except ProcessLookupError:
        pass


def _group_alive(process: subprocess.Popen) -> bool:
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True
