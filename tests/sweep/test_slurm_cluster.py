"""The test Slurm cluster itself: batch jobs, job arrays, dependencies, and a clean shutdown.

These run real munged, slurmctld and slurmd (tests/helpers/slurm_cluster.py); they skip where the
packages are not installed (.ci/install-slurm.sh installs them).
"""

from __future__ import annotations

import time

import pytest

from helpers.slurm_cluster import SlurmCluster, alive

pytestmark = pytest.mark.slow  # a real Slurm cluster


def test_a_batch_job_runs_and_writes_its_output(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch("--output", str(tmp_path / "out.txt"), "--wrap", "echo ran job $SLURM_JOB_ID")

    assert slurm_cluster.wait_for_jobs([job]) == {job: "COMPLETED"}
    assert (tmp_path / "out.txt").read_text() == f"ran job {job}\n"


def test_each_array_task_gets_its_task_id(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch("--array=0-2", "--output", str(tmp_path / "task-%a.txt"),
                               "--wrap", "echo $SLURM_ARRAY_TASK_ID")

    assert slurm_cluster.wait_for_jobs([job]) == {f"{job}_{task}": "COMPLETED" for task in range(3)}
    assert [(tmp_path / f"task-{task}.txt").read_text() for task in range(3)] == ["0\n", "1\n", "2\n"]


def test_afterok_runs_after_success_and_is_cancelled_after_failure(slurm_cluster, tmp_path):
    succeeds = slurm_cluster.sbatch("--output", "/dev/null", "--wrap", "true")
    fails = slurm_cluster.sbatch("--output", "/dev/null", "--wrap", "exit 3")
    # Without --kill-on-invalid-dep the dependent of a failed job would stay PENDING forever.
    dependents = {
        parent: slurm_cluster.sbatch(f"--dependency=afterok:{parent}", "--kill-on-invalid-dep=yes",
                                     "--output", "/dev/null", "--wrap", f"touch {tmp_path / parent}")
        for parent in (succeeds, fails)
    }

    states = slurm_cluster.wait_for_jobs([succeeds, fails, *dependents.values()])

    assert states == {succeeds: "COMPLETED", fails: "FAILED",
                      dependents[succeeds]: "COMPLETED", dependents[fails]: "CANCELLED"}
    assert (tmp_path / succeeds).exists() and not (tmp_path / fails).exists()


def test_stop_ends_the_daemons_and_running_jobs(slurm_cluster, tmp_path):
    # The fixture skips where Slurm is missing. A second cluster beside the fixture's: free ports and its own folder keep them apart.
    cluster = SlurmCluster(tmp_path / "cluster")
    cluster.start()
    try:
        job_pid_file = tmp_path / "job.pid"
        job = cluster.sbatch("--output", "/dev/null", "--wrap", f"echo $$ > {job_pid_file}; exec sleep 300")
        deadline = time.monotonic() + 20
        while cluster.job_states(job)[job] != "RUNNING" or not job_pid_file.exists():
            assert time.monotonic() < deadline, f"job {job} did not start: {cluster.job_states(job)}"
            time.sleep(0.1)
        daemon_pids = cluster.daemon_pids()
        assert sorted(daemon_pids) == ["munged", "slurmctld", "slurmd"]
    finally:
        cluster.stop()

    assert not [name for name, pid in daemon_pids.items() if alive(pid)]
    assert not alive(int(job_pid_file.read_text()))
    # The fixture's cluster still serves jobs.
    survivor = slurm_cluster.sbatch("--output", "/dev/null", "--wrap", "true")
    assert slurm_cluster.wait_for_jobs([survivor]) == {survivor: "COMPLETED"}
