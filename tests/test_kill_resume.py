"""SIGKILL at any point of a pretraining run, then `autoresume=true`: nothing lost or repeated, same result.

Each run is a separate process (`kill_run.py` below: the training entry plus two test callbacks). One logs a
fingerprint of every batch it trains (a hash of each row's masked token ids: same samples, same masks, same
order); the other SIGKILLs its own process at a chosen point: inside a step (after backward, before the
optimizer), inside an evaluation, or inside a checkpoint write (the file written, not yet renamed into place).
The killed run is resumed with autoresume and compared with an uninterrupted run of the same seed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import DEMO_YAML, REPO, tiny_overrides
from helpers.training import EARLYBERT, checkpoint_weights

KILL_RUN = textwrap.dedent('''
    import hashlib, json, os, signal, sys
    from composer.core import Callback
    from composer.utils import dist
    import mosaicbert.checkpointing as checkpointing
    from mosaicbert.config import load_config
    from mosaicbert.train import train

    log_path, kill, yaml, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    where, _, at = kill.partition(":")
    at = int(at or 0)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Fingerprints(Callback):
        def after_dataloader(self, state, logger):
            rows = [hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:16] for row in state.batch["input_ids"]]
            line = {"batch": int(state.timestamp.batch) + 1, "rank": dist.get_global_rank(), "pid": os.getpid(),
                    "rows": rows}
            with open(log_path, "a") as f:
                f.write(json.dumps(line) + "\\n")
                f.flush()
                os.fsync(f.fileno())

    class Kill(Callback):
        def after_backward(self, state, logger):  # mid-step: gradients computed, optimizer not stepped
            if where == "step" and int(state.timestamp.batch) + 1 == at and dist.get_global_rank() == 0:
                die()

        def eval_batch_end(self, state, logger):  # mid-evaluation, after training batch `at`
            if where == "eval" and int(state.timestamp.batch) == at and int(state.eval_timestamp.batch) >= 1:
                die()

    if where == "checkpoint":  # the at-th checkpoint write dies after writing, before the rename
        write, count = checkpointing._original_write, [0]

        def dying_write(state_dict, filename):
            write(state_dict, filename)
            count[0] += 1
            if count[0] == at:
                die()

        checkpointing._original_write = dying_write

    train(load_config(yaml, overrides), extra_callbacks=[Fingerprints(), Kill()])
''')
SETTINGS = {"max_duration": "10ba", "save_interval": "3ba", "save_num_checkpoints_to_keep": -1, "eval_interval": "5ba",
            "eval_subset_num_batches": 3}


def launch(tmp_path: Path, sample_root: Path, run: str, kill: str = "none", nproc: int = 1, **extra):
    script = tmp_path / "kill_run.py"
    script.write_text(KILL_RUN)
    folder = tmp_path / run
    overrides = tiny_overrides(sample_root, folder, **{**SETTINGS, **extra})
    launcher = [sys.executable, str(script)] if nproc == 1 else [str(Path(sys.executable).parent / "composer"),
                                                                 "-n", str(nproc), str(script)]
    done = subprocess.run([*launcher, str(tmp_path / f"{run}.jsonl"), kill, str(DEMO_YAML), *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    return done, folder


def fingerprints(tmp_path: Path, run: str) -> tuple[dict[tuple[int, int], list[str]], list[dict]]:
    """(the rows each rank trained at each step, the last process's word winning; every logged line)."""
    lines = [json.loads(line) for line in (tmp_path / f"{run}.jsonl").read_text().splitlines()]
    return {(line["batch"], line["rank"]): line["rows"] for line in lines}, lines


def shm_entries() -> set[str]:
    """Streaming's shared-memory blocks and the lock files beside them in the temporary folder."""
    blocks = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    return blocks | {p.name for p in Path(tempfile.gettempdir()).glob("[0-9]*_*filelock")}


@pytest.fixture(scope="module")
def straight(sample_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    done, run = launch(folder, sample_root, "straight")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, run


# A seeded random step, mid-evaluation, and a checkpoint write cut after its bytes, before the rename.
KILLS = [f"step:{random.Random(17).randint(2, 9)}", "eval:5", "checkpoint:2"]


def assert_resumed_exactly(straight_dir: Path, straight_run: Path, tmp_path: Path, folder: Path, save_every: int,
                           steps: int) -> None:
    """The killed-and-resumed run trained every step on the straight run's samples, the resumed process exactly
    the steps after its checkpoint, and ended with the straight run's weights and evaluation."""
    want, _ = fingerprints(straight_dir, "straight")
    got, lines = fingerprints(tmp_path, "run")
    assert got == want  # every step trained on the same samples with the same masks, none missing
    resumed_pid = [line for line in lines if line["rank"] == 0][-1]["pid"]
    resumed_steps = [line["batch"] for line in lines if line["pid"] == resumed_pid and line["rank"] == 0]
    first = resumed_steps[0]
    assert resumed_steps == list(range(first, steps + 1))  # the remaining steps, each once
    assert (first - 1) % save_every == 0  # right after a checkpoint
    summary = json.loads((folder / "summary.json").read_text())
    reference = json.loads((straight_run / "summary.json").read_text())
    assert summary["batches"] == steps and summary["last_eval"] == pytest.approx(reference["last_eval"], rel=1e-4)
    final = f"ep0-ba{steps}-rank0.pt"
    a, b = checkpoint_weights(straight_run / "checkpoints" / final), checkpoint_weights(folder / "checkpoints" / final)
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.serial  # compares machine-wide /dev/shm and temporary-folder listings
@pytest.mark.slow
@pytest.mark.parametrize("kill", KILLS)
def test_sigkill_then_autoresume_loses_and_repeats_nothing(kill, clean_env, sample_root, straight, tmp_path):
    shm_before = shm_entries()
    killed, folder = launch(tmp_path, sample_root, "run", kill)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL, as the OOM killer or a preemption does
    resumed, _ = launch(tmp_path, sample_root, "run", autoresume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_exactly(*straight, tmp_path, folder, save_every=3, steps=10)
    assert not list((folder / "checkpoints").glob(".partial-*"))  # a write cut by the kill was cleared at start-up
    assert shm_entries() <= shm_before  # the killed run's shared memory and lock files were cleaned up


@pytest.fixture(scope="module")
def earlybert_straight(sample_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("earlybert-straight")
    done, run = launch(folder, sample_root, "straight", **EARLYBERT)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, run


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "during", "after"])
def test_earlybert_killed_around_the_draw_resumes_to_the_same_ticket(when, clean_env, sample_root, earlybert_straight,
                                                                      tmp_path):
    draw = json.loads((earlybert_straight[1] / "ticket.json").read_text())["step"]
    step = {"before": draw - 1, "during": draw, "after": draw + 1}[when]  # "during": the step that draws
    killed, folder = launch(tmp_path, sample_root, "run", f"step:{step}", **EARLYBERT)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed, _ = launch(tmp_path, sample_root, "run", autoresume=True, **EARLYBERT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((folder / "ticket.json").read_text())["kept_heads"] == \
        json.loads((earlybert_straight[1] / "ticket.json").read_text())["kept_heads"]
    assert_resumed_exactly(*earlybert_straight, tmp_path, folder, save_every=4, steps=16)


@pytest.mark.slow
def test_sigkill_of_one_rank_under_composer_n2(clean_env, sample_root, tmp_path_factory):
    extra = {"global_train_batch_size": 16, "device_train_microbatch_size": 8}
    reference_dir = tmp_path_factory.mktemp("n2-straight")
    done, reference = launch(reference_dir, sample_root, "straight", nproc=2, **extra)
    assert done.returncode == 0, done.stderr[-3000:]
    tmp_path = tmp_path_factory.mktemp("n2-killed")
    killed, folder = launch(tmp_path, sample_root, "run", "step:5", nproc=2, **extra)
    assert killed.returncode != 0
    resumed, _ = launch(tmp_path, sample_root, "run", nproc=2, autoresume=True, **extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, lines = fingerprints(tmp_path, "run")
    assert {line["rank"] for line in lines} == {0, 1}
    assert_resumed_exactly(reference_dir, reference, tmp_path, folder, save_every=3, steps=10)
