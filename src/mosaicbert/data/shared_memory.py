"""Streaming's shared memory and lock files left by ended runs, told apart from those of runs still going.

A StreamingDataset keeps its state in POSIX shared-memory segments, `/dev/shm/<prefix>_<name>` (`locals`,
`barrier`, `shard_states`, `epoch_shape`, ...; streaming/base/constant.py), beside two lock files,
`<prefix>_barrier_filelock` and `<prefix>_cache_filelock`, in the temporary folder. A run killed outright
leaves them behind. Streaming's own `clean_stale_shared_memory` unlinks every segment it finds, those of
runs still going included: a second job started on the same host pulls a running job's data from under it
and may give the freed names to its own datasets.

Here a segment belongs to the processes that use it, as the kernel records them: it is in use while some
process on the host maps it (`/proc/<pid>/maps`) or holds it open (`/proc/<pid>/fd`). That covers every
process a run has without anyone registering anything: the local leader that creates the segments, the
other local ranks that attach to them, dataloader workers (forked ones inherit the mappings; workers create
and attach the per-epoch segments themselves), and a process that is between creating a segment and mapping
it (Python's SharedMemory holds the descriptor from `shm_open` on, until it closes the segment). Before a
run creates a segment there is nothing of it to remove, so the gap between choosing a prefix and creating
its segments is no window; and segments are listed before processes are read, so whatever the listing saw
of a live run is held by then. A record of owner pids per prefix, written when datasets are built, would
miss all of that unless every process that touches a segment wrote to it (Streaming itself does not, nor do
other Streaming jobs on the host), and a recorded pid can be reused by an unrelated process.

The rules:
- A prefix is stale only when none of its segments is in use; then all of them go. A live run keeps its
  `locals` segment mapped as long as its dataset lives, so a segment it has just closed and not yet
  unlinked (an epoch's `epoch_shape`) stays too.
- Segments are matched by device and inode, not by name: a process that still maps an unlinked segment says
  nothing about a new one of the same name, and a private /dev/shm in another mount namespace is another
  device.
- Only the caller's own segments are considered (in the sticky /dev/shm no one else's can be unlinked).
  Processes whose maps the caller may not read are not counted. Those of other users cannot open the
  segments: Python creates them readable by their owner only (root's could, but do not run a user's
  Streaming job). Those of the caller are ones that made themselves undumpable (ssh-agent) or live in an
  enclosing namespace (a sandbox's init); a Streaming run the user starts is a plain Python process, which
  its user can always inspect. Counting them as users of every segment instead would stop all cleaning on
  such hosts (a sandbox's init maps shared memory).
- Cleaners of one user take turns (a lock file of their own), so one never unlinks a name that another
  cleaner freed and a new run has taken since.
- Lock files go when their prefix has no segment left. They are listed before segments are looked for: a
  live run creates its `locals` segment before its lock files and removes its lock files first.

Not seen: processes in another PID namespace sharing this /dev/shm (a container started with `--ipc=host`);
such hosts keep `clean_stale_shared_memory: false`. Streaming's search for a free prefix leaves handles open
on the segments of every lower prefix until the searching process ends, so a killed run's segments that a
live run looked at stay until that run ends too: kept too long, never removed too early.
"""

from __future__ import annotations

import atexit
import fcntl
import gc
import os
import re
from pathlib import Path
from tempfile import gettempdir
from typing import Any

from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, SHM_TO_CLEAN
from streaming.base.shared.memory import SharedMemory

SHM_DIR = Path("/dev/shm")
PROC = Path("/proc")
SEGMENT = re.compile(rf"(\d+)_({'|'.join(SHM_TO_CLEAN)})")
LOCK_FILE = re.compile(rf"(\d+)_({BARRIER_FILELOCK}|{CACHE_FILELOCK})")

FileId = tuple[int, int]  # (device, inode)


def remove_stale_streaming_files() -> list[str]:
    """Unlink the Streaming segments no process uses any more, then the lock files of prefixes without
    segments; returns the names removed. Does nothing where /dev/shm or /proc is missing."""
    if not (SHM_DIR.is_dir() and PROC.is_dir()):
        return []
    lock_path = Path(gettempdir()) / f"mosaicbert-shm-cleanup-{os.geteuid()}.lock"
    descriptor = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        return remove_stale_segments() + remove_stale_lock_files()
    finally:
        os.close(descriptor)  # releases the lock


def remove_stale_segments() -> list[str]:
    segments = own_segments()
    if not segments:
        return []
    in_use = files_in_use({inode for _, (_, inode) in segments.values()})
    live = {prefix for prefix, file_id in segments.values() if file_id in in_use}
    removed = []
    for name, (prefix, _) in sorted(segments.items()):
        if prefix in live:
            continue
        try:
            (SHM_DIR / name).unlink()
        except FileNotFoundError:  # the dead run's resource tracker unlinks what it registered, maybe just now
            continue
        removed.append(name)
    return removed


def remove_stale_lock_files() -> list[str]:
    """Streaming's lock files in the temporary folder whose prefix has no segment left in /dev/shm."""
    removed = []
    for lock in sorted(Path(gettempdir()).iterdir()):
        match = LOCK_FILE.fullmatch(lock.name)
        if match is None or any((SHM_DIR / f"{match[1]}_{name}").exists() for name in SHM_TO_CLEAN):
            continue
        try:
            lock.unlink()
        except OSError:  # another user's, in a shared temporary folder
            continue
        removed.append(lock.name)
    return removed


def own_segments() -> dict[str, tuple[str, FileId]]:
    """Streaming's segments in /dev/shm that belong to this user: name -> (prefix, (device, inode))."""
    segments = {}
    for entry in os.scandir(SHM_DIR):
        match = SEGMENT.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if info.st_uid == os.geteuid():
            segments[entry.name] = (match[1], (info.st_dev, info.st_ino))
    return segments


def files_in_use(inodes: set[int]) -> set[FileId]:
    """Which of the files with these inode numbers some process on the host maps or holds open."""
    found: set[FileId] = set()
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            found |= mapped_files(entry.path, inodes) | open_files(entry.path, inodes)
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
        except PermissionError:  # not inspectable by this user: see the module's docstring
            continue
    return found


def mapped_files(process: str, inodes: set[int]) -> set[FileId]:
    found = set()
    with open(f"{process}/maps") as maps:
        for line in maps:  # address perms offset major:minor inode [path]
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and int(fields[4]) in inodes:
                major, minor = fields[3].split(":")
                found.add((os.makedev(int(major, 16), int(minor, 16)), int(fields[4])))
    return found


def open_files(process: str, inodes: set[int]) -> set[FileId]:
    found = set()
    for descriptor in os.scandir(f"{process}/fd"):
        try:
            info = os.stat(descriptor.path)  # follows the link to the open file
        except (FileNotFoundError, PermissionError):  # closed meanwhile, or not a file one can stat
            continue
        if info.st_ino in inodes:
            found.add((info.st_dev, info.st_ino))
    return found


def streaming_handles() -> list[Any]:
    """Every Streaming shared-memory handle alive in this process (found through the garbage collector: the
    handles that matter are referenced only by Streaming's atexit registration)."""
    # type(), not isinstance(): isinstance consults __class__, which some objects (torch's deprecated
    # module attributes) answer with a warning.
    return [obj for obj in gc.get_objects() if type(obj) is SharedMemory]


def block_prefix(handle: Any) -> int | None:
    """The prefix number of the block a handle is on (`/000003_locals` -> 3)."""
    block = getattr(getattr(handle, "shm", None), "name", "") or ""
    prefix = block.lstrip("/").split("_", 1)[0]
    return int(prefix) if prefix.isdigit() else None


def release(handle: Any) -> None:
    """Close a handle now (and unlink its block if this process created it) instead of at exit."""
    atexit.unregister(handle.cleanup)
    try:
        handle.cleanup()
    except BufferError:  # a view on the block is still alive somewhere: leave it to process exit
        atexit.register(handle.cleanup)
