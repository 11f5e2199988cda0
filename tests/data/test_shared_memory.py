"""Start-up removes the Streaming shared memory and lock files of ended runs, never those of runs still going.

The unit tests hold segments in small child processes the way Streaming's processes do (created with
`shm_open`'s flags under /dev/shm, then mapped, or only open) and kill some of them: which process still
uses what is known by construction. The end-to-end test starts a second run while a `composer -n 2` run
holds its segments, and checks the first run's segments survive and both runs end with the weights each
gets alone.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import DEMO_YAML, REPO, tiny_overrides
from mosaicbert.config import load_config
from mosaicbert.data.shared_memory import remove_stale_streaming_files
from mosaicbert.train import train
from helpers.training import checkpoint_weights

SHM = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not (SHM.is_dir() and Path("/proc/self/maps").is_file()),
                                reason="needs Linux's /dev/shm and /proc")

# Creates its segments as shm_open does, holds them mapped (with no descriptor left: libc's mmap, as a C
# library would; Python's mmap keeps a duplicate descriptor) or only open (the moment between shm_open and
# mmap), says "ready", and keeps them until killed. `attach` maps existing segments, as non-leader ranks do.
HOLDER = textwrap.dedent('''
    import ctypes, mmap, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    names, how = sys.argv[1].split(","), sys.argv[2]
    for name in names:
        flags = os.O_RDWR if how == "attach" else os.O_RDWR | os.O_CREAT | os.O_EXCL
        fd = os.open("/dev/shm/" + name, flags, 0o600)
        if how != "attach":
            os.ftruncate(fd, mmap.PAGESIZE)
        if how == "open":
            continue
        address = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        assert address != ctypes.c_void_p(-1).value, os.strerror(ctypes.get_errno())
        os.close(fd)
    print("ready", flush=True)
    sys.stdin.read()
''')


class Holders:
    """Child processes holding segments; all killed, and every test segment and lock file removed, at the end."""

    def __init__(self):
        self.processes: list[subprocess.Popen] = []
        self.files: list[Path] = []

    def start(self, names: list[str], how: str = "mapped") -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-S", "-c", HOLDER, ",".join(names), how], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        self.processes.append(process)
        self.files += [SHM / name for name in names]
        assert process.stdout.readline() == "ready\n"
        return process

    def file(self, path: Path) -> Path:
        """A segment nobody holds (created and closed) or a lock file."""
        path.touch()
        self.files.append(path)
        return path

    def close(self):
        for process in self.processes:
            process.kill()
            process.wait()
        for path in self.files:
            path.unlink(missing_ok=True)


@pytest.fixture
def holders():
    held = Holders()
    yield held
    held.close()


def free_prefixes(count: int) -> list[str]:
    """Prefixes no Streaming run on the host uses (it numbers from 000000 up): high ones, with nothing of theirs."""
    taken = {name.split("_", 1)[0] for name in os.listdir(SHM)} | \
        {name.split("_", 1)[0] for name in os.listdir(tempfile.gettempdir())}
    return random.sample(sorted({f"{n}" for n in range(900000, 1000000)} - taken), count)


def lock_file(prefix: str, kind: str = "barrier") -> Path:
    return Path(tempfile.gettempdir()) / f"{prefix}_{kind}_filelock"


def file_ids(paths: list[Path]) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_dev, p.stat().st_ino) for p in paths if p.exists()}


@pytest.mark.serial  # a run starting in another worker cleans stale files too, before this call can
@pytest.mark.parametrize("how", ["mapped", "open"])
def test_live_runs_keep_their_segments_and_lock_files_ended_ones_lose_them(holders, how):
    live, dead, orphan = free_prefixes(3)
    holders.start([f"{live}_locals", f"{live}_barrier"], how)
    # The live run's per-epoch segment, closed by its creator and not yet unlinked: kept with its prefix.
    closed = holders.file(SHM / f"{live}_epoch_shape")
    killed = holders.start([f"{dead}_locals", f"{dead}_shard_states"], how)
    killed.kill()
    killed.wait()
    locks = [holders.file(lock_file(live)), holders.file(lock_file(dead, "cache")), holders.file(lock_file(orphan))]
    kept = [SHM / f"{live}_locals", SHM / f"{live}_barrier", closed, locks[0]]
    before = file_ids(kept)

    removed = set(remove_stale_streaming_files())

    assert {f"{dead}_locals", f"{dead}_shard_states", locks[1].name, locks[2].name} <= removed
    assert not {p.name for p in kept} & removed
    assert file_ids(kept) == before  # the very same files, not new ones of the same names
    assert not (SHM / f"{dead}_locals").exists() and not locks[1].exists() and not locks[2].exists()


@pytest.mark.serial  # a run starting in another worker cleans stale files too, before this call can
def test_a_segment_stays_while_any_process_attached_to_it_lives(holders):
    (prefix,) = free_prefixes(1)
    names = [f"{prefix}_locals", f"{prefix}_next_epoch"]
    leader = holders.start(names)
    other_rank = holders.start(names, "attach")
    leader.kill()  # one rank of a multi-process run dies first
    leader.wait()
    assert not set(names) & set(remove_stale_streaming_files())
    assert all((SHM / name).exists() for name in names)
    other_rank.kill()
    other_rank.wait()
    assert set(names) <= set(remove_stale_streaming_files())


@pytest.mark.serial  # a run starting in another worker cleans stale files too, before this call can
def test_a_process_mapping_an_unlinked_segment_does_not_keep_a_new_one_of_its_name(holders):
    (prefix,) = free_prefixes(1)
    name = f"{prefix}_locals"
    holders.start([name])
    (SHM / name).unlink()  # the holder maps it still, as "/dev/shm/<name> (deleted)"
    holders.file(SHM / name)  # a new segment of the same name, that nobody uses
    assert name in remove_stale_streaming_files()


# The training entry plus a callback that, after the first batch, writes the run's Streaming prefixes to a
# file and, if asked, waits for another file before going on (all ranks).
RUN = textwrap.dedent('''
    import json, os, sys, time
    from composer.core import Callback
    from composer.utils import dist
    from mosaicbert.config import load_config
    from mosaicbert.train import train

    mark, wait, yaml, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

    class Rendezvous(Callback):
        def batch_end(self, state, logger):
            if int(state.timestamp.batch) != 1 or mark == "-":
                return
            if dist.get_global_rank() == 0:
                loaders = [state.train_dataloader] + [e.dataloader.dataloader for e in state.evaluators]
                with open(mark + ".tmp", "w") as f:
                    json.dump([loader.dataset._shm_prefix_int for loader in loaders], f)
                os.replace(mark + ".tmp", mark)
            while wait != "-" and not os.path.exists(wait):
                time.sleep(0.05)

    train(load_config(yaml, overrides), extra_callbacks=[Rendezvous()])
''')
SETTINGS = {"max_duration": "4ba", "eval_interval": "4ba", "save_interval": "4ba", "eval_subset_num_batches": 1}


@pytest.fixture
def launched():
    """The runs a test starts; any still going at its end (a failed test) are stopped."""
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.terminate()  # composer's launcher stops its ranks on SIGTERM
            process.wait(timeout=60)


def start_run(tmp_path: Path, sample_root: Path, name: str, nproc: int, mark: str = "-", wait: str = "-"):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    launcher = [sys.executable] if nproc == 1 else [str(Path(sys.executable).parent / "composer"), "-n", str(nproc)]
    log = open(tmp_path / f"{name}.log", "w")
    process = subprocess.Popen([*launcher, str(script), mark, wait, str(DEMO_YAML),
                                *tiny_overrides(sample_root, tmp_path / name, **SETTINGS)],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return process


def finish(process: subprocess.Popen, tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    assert process.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return checkpoint_weights(tmp_path / name / "checkpoints" / "ep0-ba4-rank0.pt")


def wait_for(path: Path, process: subprocess.Popen, tmp_path: Path, name: str) -> None:
    deadline = time.monotonic() + 600
    while not path.exists():
        assert process.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{name} never wrote {path.name}"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_run_started_beside_a_two_rank_run_leaves_its_shared_memory_and_both_train_as_alone(
        clean_env, sample_root, tmp_path, launched):
    # Each configuration alone, one after the other: the reference weights (the single process one in this
    # process, which has paid for its imports already).
    launched.append(start_run(tmp_path, sample_root, "two-rank-alone", 2))
    alone = {"two-rank": finish(launched[-1], tmp_path, "two-rank-alone")}
    train(load_config(DEMO_YAML, tiny_overrides(sample_root, tmp_path / "single-alone", **SETTINGS)))
    alone["single"] = checkpoint_weights(tmp_path / "single-alone" / "checkpoints" / "ep0-ba4-rank0.pt")

    holding, go, started = tmp_path / "holding.json", tmp_path / "go", tmp_path / "started.json"
    first = start_run(tmp_path, sample_root, "two-rank", 2, mark=str(holding), wait=str(go))
    launched.append(first)
    wait_for(holding, first, tmp_path, "two-rank")
    prefixes = [f"{p:06}" for p in json.loads(holding.read_text())]
    held = [path for prefix in prefixes for folder in (SHM, Path(tempfile.gettempdir()))
            for path in folder.glob(f"{prefix}_*")]
    before = file_ids(held)
    assert sum(path.parent == SHM for path in held) == 2 * 6  # six segments per dataset (train, eval)

    second = start_run(tmp_path, sample_root, "single", 1, mark=str(started))
    launched.append(second)
    wait_for(started, second, tmp_path, "single")  # its start-up, cleaning included, is over
    assert file_ids(held) == before  # every segment and lock file of the first run, the very same files
    go.touch()  # both train on at once from here

    for name, process in (("two-rank", first), ("single", second)):
        torch.testing.assert_close(finish(process, tmp_path, name), alone[name], rtol=0, atol=0,
                                   msg=lambda detail: f"{name} differs from the run alone: {detail}")
