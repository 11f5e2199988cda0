"""glibc malloc tuning by re-exec (mosaicbert/allocator.py)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mosaicbert.allocator import SWITCH, TUNABLES

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tunables are glibc's")

SCRIPT = """
import os, sys
from mosaicbert.allocator import reexec_with_malloc_tuning
print("start", os.getpid(), sys.argv[1:], flush=True)
reexec_with_malloc_tuning()
print("tunables", os.environ.get("GLIBC_TUNABLES"))
"""


def run(env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", SWITCH)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, "a", "b"], capture_output=True, text=True,
                          env={**clean, **env}, check=True)
    return done.stdout.splitlines()


def test_the_process_restarts_once_with_the_tunables_and_its_arguments():
    lines = run({})
    starts = [line for line in lines if line.startswith("start")]
    assert len(starts) == 2 and starts[0] == starts[1]  # same pid and arguments, run twice: before and after
    assert lines[-1] == f"tunables {TUNABLES}"


def test_existing_tunables_are_kept_and_the_switch_turns_it_off():
    assert run({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})[-1] == f"tunables glibc.pthread.rseq=0:{TUNABLES}"
    lines = run({SWITCH: "0"})
    assert len([line for line in lines if line.startswith("start")]) == 1 and lines[-1] == "tunables None"


@pytest.mark.slow
def test_the_tunables_cut_the_page_faults_of_repeated_large_allocations():
    """What the tuning is for: a freed 32 MiB activation is reused from the heap, not unmapped and faulted in
    again at the next step (by default each of the 40 faults in all of its 8192 pages; tuned, a few
    allocations early in the process still do, so the bound is loose)."""
    probe = ("import resource, torch\n"
             "torch.set_num_threads(1)\n"
             "x, w = torch.randn(256, 256), torch.randn(256, 32768)\n"
             "for _ in range(2): (x @ w).sum()\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "for _ in range(40): (x @ w).sum()\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    faults = {}
    for name, extra in {"default": {}, "tuned": {"GLIBC_TUNABLES": TUNABLES}}.items():
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             env={**clean, **extra}).stdout
        faults[name] = int(out.split()[-1])
    pages = 40 * 32 * 2**20 // 4096
    assert faults["default"] > pages / 2 and faults["tuned"] < faults["default"] / 4, faults


def test_a_large_block_comes_from_the_heap_not_mmap():
    """glibc caps some malloc settings silently; mallinfo2 shows the 4 GiB mmap threshold took effect here."""
    probe = ("import ctypes\n"
             "libc = ctypes.CDLL('libc.so.6')\n"
             "class Info(ctypes.Structure):\n"
             "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',\n"
             "                'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
             "libc.mallinfo2.restype = Info\n"
             "libc.malloc.restype = ctypes.c_void_p\n"
             "libc.malloc(64 * 2**20)\n"
             "print(libc.mallinfo2().hblkhd)")
    clean = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    mapped = {name: int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                       env={**clean, **extra}).stdout)
              for name, extra in {"default": {}, "tuned": {"GLIBC_TUNABLES": TUNABLES}}.items()}
    assert mapped["default"] >= 64 * 2**20 and mapped["tuned"] == 0, mapped
