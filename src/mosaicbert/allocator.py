"""glibc malloc settings for CPU training, applied by re-executing the process before torch loads.

By default glibc serves every allocation above 32 MiB (and, adaptively, many smaller ones) with a fresh
`mmap` and returns it with `munmap` when freed. A training step allocates and frees the same large
activations every step, so each one comes back as new pages that the kernel must fault in and zero
(tests/test_allocator.py counts the faults; docs/benchmarks.md, runs cpu-base-before and cpu-base-malloc,
the effect on a training step). Raising the mmap and trim thresholds keeps freed memory in the heap for
reuse. The cost: the process keeps its high-water mark of memory instead of returning it.

glibc reads these tunables only at start-up, hence the re-exec. It is skipped where they are set
already (so it happens once), off glibc, or with MOSAICBERT_MALLOC_TUNING=0.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736"
SWITCH = "MOSAICBERT_MALLOC_TUNING"


def tuning_applies() -> bool:
    return (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
            and os.environ.get(SWITCH, "1") != "0" and "glibc.malloc" not in os.environ.get("GLIBC_TUNABLES", ""))


def reexec_with_malloc_tuning() -> None:
    """Restart this Python process (same pid, arguments and environment) with the malloc tunables set."""
    if not tuning_applies():
        return
    existing = os.environ.get("GLIBC_TUNABLES")
    env = {**os.environ, "GLIBC_TUNABLES": f"{existing}:{TUNABLES}" if existing else TUNABLES}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def malloc_tuning_active() -> bool:
    return "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")
