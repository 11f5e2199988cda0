"""Sweeps through a real Slurm: a small CPU sweep submitted with --launcher slurm, a preempted run that
resumes on resubmission, a refused submission shown verbatim, and the per-node launch line run as two
nodes of one job on this machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO
from helpers import free_port
from helpers.sweeps import read_rows, sweep_cli, write_sweep

pytestmark = pytest.mark.slow  # every test runs sweeps or launches through a real Slurm


def submitted(folder) -> dict[str, str]:
    """The job ids of the sweep's latest submission."""
    return json.loads((folder / "slurm" / "submitted.json").read_text())[-1]


def test_sweep_runs_through_slurm_and_collects_the_table(slurm_cluster, tmp_path, sample_root):
    path = write_sweep(tmp_path, sample_root)
    done = sweep_cli(str(path), "--launcher", "slurm", "--wait", env=slurm_cluster.env)
    folder = tmp_path / "sweep"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = read_rows(folder)
    assert sorted((r["model"], int(r["step"])) for r in rows) == [("hf-bert", 3), ("hf-bert", 6), ("mosaicbert", 3), ("mosaicbert", 6)]
    jobs = submitted(folder)
    assert set(jobs) == {"pretrain", "report"} | {f"evaluate {run.name}" for run in (folder / "runs").iterdir()}
    states = slurm_cluster.wait_for_jobs(jobs.values())
    assert set(states.values()) == {"COMPLETED"}, states
    assert {f"{jobs['pretrain']}_0", f"{jobs['pretrain']}_1"} <= set(states)  # one array, a task per run
    # The report job redrew the table after the evaluations (afterany), on the cluster.
    assert (folder / "pareto.png").is_file() and list((folder / "slurm" / "logs").glob("report-*.out"))


def test_preempted_run_checkpoints_and_resumes_on_resubmission(slurm_cluster, tmp_path, sample_root):
    changes = {"models": {"mosaicbert": {"recipe": "yamls/demo.yaml"}}, "checkpoint_interval": "40ba"}
    path = write_sweep(tmp_path, sample_root, **changes)
    folder = tmp_path / "sweep"
    # Loader workers too: Slurm signals every process of the step, and a worker must not die of it.
    settings = ["overrides.max_duration=400ba", "overrides.train_loader.num_workers=2"]
    first = sweep_cli(str(path), "--launcher", "slurm", *settings, env=slurm_cluster.env)
    assert first.returncode == 0, first.stderr[-3000:]
    again = sweep_cli(str(path), "--launcher", "slurm", *settings, env=slurm_cluster.env)
    assert again.returncode == 2 and "still queued or running" in again.stderr  # no second trainer on the same run
    (planned,) = json.loads((folder / "plan.json").read_text())["runs"]
    run = folder / "runs" / planned["run_id"]
    deadline = time.monotonic() + 300
    while not (run / "checkpoints").is_dir() or not list((run / "checkpoints").glob("ep0-ba*-rank0.pt")):
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    array = submitted(folder)["pretrain"]
    # What Slurm does --signal seconds before the time limit, or on preemption: SIGTERM to the job's steps.
    subprocess.run(["scancel", "--signal=TERM", f"{array}_0"], env=slurm_cluster.env, check=True)
    states = slurm_cluster.wait_for_jobs(submitted(folder).values(), timeout=180)
    assert states[f"{array}_0"] == "FAILED", states  # stopped early, so its evaluation did not start
    log = next((folder / "slurm" / "logs").glob(f"pretrain-{array}_0.out")).read_text()
    stopped_at = int(re.search(r"stopped on SIGTERM after batch (\d+)", log).group(1))
    assert 0 < stopped_at < 400 and (run / "checkpoints" / f"ep0-ba{stopped_at}-rank0.pt").is_file(), log[-3000:]
    assert not (run / "summary.json").exists()
    if stopped_at % 40:  # off the interval: listed, so the sweep's points stay on the interval
        assert (run / "checkpoints" / "signal-checkpoints.txt").read_text().split() == [f"ep0-ba{stopped_at}-rank0.pt"]

    second = sweep_cli(str(path), "--launcher", "slurm", "--wait", *settings, env=slurm_cluster.env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "to resume from" in second.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["batches"] == 400 and summary["batches_this_run"] == 400 - stopped_at
    assert sorted(int(r["step"]) for r in read_rows(folder)) == list(range(40, 401, 40))


def test_refused_submission_is_shown_verbatim_with_its_command(slurm_cluster, tmp_path, sample_root):
    path = write_sweep(tmp_path, sample_root, slurm={"partition": "no-such-partition"})
    done = sweep_cli(str(path), "--launcher", "slurm", env=slurm_cluster.env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Slurm refused the submission" in done.stderr and "$ sbatch --parsable" in done.stderr
    assert "invalid partition" in done.stderr.lower()  # sbatch's own words


def node_isolation() -> tuple[bool, str]:
    """Two "nodes" on one host must not share /dev/shm: streaming's local leaders would claim the same
    shared-memory names. A private mount namespace with its own tmpfs gives each its own, as real nodes have."""
    if shutil.which("unshare") is None:
        return False, "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"cannot create a private mount namespace here ({probe.stderr.strip()})"
    return True, ""


def test_the_per_node_launch_line_runs_as_two_nodes_with_identical_weights(tmp_path, sample_root, monkeypatch):
    usable, reason = node_isolation()
    if not usable:
        pytest.skip(f"two nodes on one machine need separate /dev/shm: {reason}")
    from mosaicbert.sweep.launch import slurm_scripts
    from mosaicbert.sweep.plan import make_plan, read_sweep

    monkeypatch.chdir(REPO)
    path = write_sweep(tmp_path, sample_root, nodes=2, models={"mosaicbert": {"recipe": "yamls/demo.yaml"}})
    plan = make_plan(read_sweep(path))
    (run,) = plan.runs
    script = tmp_path / "launch-node.sh"
    script.write_text(slurm_scripts(plan, plan.runs, str(REPO))["launch-node.sh"])
    port = str(free_port())
    nodes = []
    for node in (0, 1):
        (tmp_path / f"tmp{node}").mkdir()
        env = {**os.environ, "SLURM_NNODES": "2", "SLURM_NODEID": str(node), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "TMPDIR": str(tmp_path / f"tmp{node}")}
        command = ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c",
                   'mount -t tmpfs -o size=512m tmpfs /dev/shm && exec bash "$@"', "_", str(script), run.run_id]
        log = open(tmp_path / f"node{node}.log", "w")
        nodes.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in nodes:
        process.wait(timeout=300)
        log.close()
    logs = "\n".join((tmp_path / f"node{n}.log").read_text()[-2000:] for n in (0, 1))
    assert [p.returncode for p, _ in nodes] == [0, 0], logs
    digests = [(REPO / run.folder / f"weights-rank{rank}.sha256").read_text() for rank in (0, 1)]
    assert digests[0] == digests[1], logs
    summary = json.loads((REPO / run.folder / "summary.json").read_text())
    assert summary["batches"] == 6
