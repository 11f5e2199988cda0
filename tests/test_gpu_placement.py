"""Jobs started by the GLUE and sweep runners run on the runner's own GPUs: a child's CUDA_VISIBLE_DEVICES
names physical devices, so a runner started on 4,5 must hand out 4 and 5, not 0 and 1."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO
from mosaicbert.errors import UserError
from mosaicbert.glue import runner
from mosaicbert.glue.config import load_glue_config
from mosaicbert.processes import visible_gpus
from mosaicbert.sweep import launch
from mosaicbert.sweep.plan import make_plan, read_sweep
from helpers.sweeps import write_sweep


def gpus(monkeypatch, listed: str | None, count: int) -> None:
    """This process sees `count` GPUs, started with CUDA_VISIBLE_DEVICES=`listed` (None: unset)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # jobs pick their precision
    if listed is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)


@pytest.mark.parametrize(
    "listed, count, expected",
    [
        (None, 2, ["0", "1"]),
        ("4,5", 2, ["4", "5"]),
        (" GPU-1a2b , GPU-3c4d,", 2, ["GPU-1a2b", "GPU-3c4d"]),
        ("0,1,7", 2, ["0", "1"]),  # CUDA stops at the first device it cannot find: 7 is none
        ("", 0, []),  # set but empty: no GPU
    ],
)
def test_visible_gpus_name_the_parents_devices(monkeypatch, listed, count, expected):
    gpus(monkeypatch, listed, count)
    assert visible_gpus() == expected


class FakeProcess:
    returncode = 1

    def poll(self) -> int:
        return self.returncode


class RecordingChildren:
    """ChildProcesses that start nothing and keep the CUDA_VISIBLE_DEVICES each child would get."""

    received = None

    def __init__(self):
        self.devices: list[tuple[str, str | None]] = []  # (command line, CUDA_VISIBLE_DEVICES)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self, command: list[str], env: dict[str, str], **kwargs) -> FakeProcess:
        self.devices.append((" ".join(command), env.get("CUDA_VISIBLE_DEVICES")))
        return FakeProcess()

    def run(self, command: list[str], env: dict[str, str], **kwargs) -> int:
        self.start(command, env)
        return 0

    def finished(self, process) -> None:
        pass


@pytest.mark.parametrize(
    "listed, count, expected",
    [
        ("4,5", 2, ["4", "5"]),
        ("2,3", 2, ["2", "3"]),  # a GLUE evaluation in slot 1 of a local sweep on 2 GPUs per run
        ("GPU-1a2b,GPU-3c4d", 2, ["GPU-1a2b", "GPU-3c4d"]),
        ("MIG-5e6f", 1, ["MIG-5e6f"]),
        ("4,5,6,7", 2, ["4", "5"]),  # more entries than devices: the first ones are the devices
    ],
)
def test_glue_jobs_start_on_the_runners_gpus(tmp_path, monkeypatch, listed, count, expected):
    start = tmp_path / "start.pt"
    start.write_bytes(b"weights")
    overrides = [f"starting_checkpoint={start}", f"run_folder={tmp_path / 'run'}"]
    config = load_glue_config(REPO / "yamls" / "glue" / "demo.yaml", overrides)
    gpus(monkeypatch, listed, count)
    jobs = runner.make_jobs(config, ["sst2", "cola"], str(start), set())[:count]
    children = RecordingChildren()
    runner.execute(jobs, runner.gpu_slots(config), 0, len(jobs), children)
    assert [device for _, device in children.devices] == expected
    config.parallel = False
    assert runner.gpu_slots(config) == expected[:1]


def test_local_sweep_runs_start_on_the_launchers_gpus(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = write_sweep(tmp_path, tmp_path, gpus_per_node=2, grid={"seed": [17, 18]},  # no data is read
                       overrides={"data_local": str(tmp_path), "global_train_batch_size": 8})
    plan = make_plan(read_sweep(path))
    gpus(monkeypatch, "4,5,6,7", 4)
    children = RecordingChildren()
    monkeypatch.setattr(launch, "ChildProcesses", lambda: children)
    assert launch.run_local(plan)
    by_run: dict[str, set[str | None]] = {}
    for command, device in children.devices:  # pretraining and evaluation name the run (its folder, its id)
        run = next(r.run_id for r in plan.runs if r.run_id in command)
        by_run.setdefault(run, set()).add(device)
    assert len(children.devices) == 2 * len(plan.runs)
    assert all(len(devices) == 1 and devices <= {"4,5", "6,7"} for devices in by_run.values()), by_run
    assert launch.local_slots(plan) == ["4,5", "6,7"]
    gpus(monkeypatch, "4", 1)
    with pytest.raises(UserError, match="gpus_per_node is 2 but this process sees 1 GPU"):
        launch.local_slots(plan)
