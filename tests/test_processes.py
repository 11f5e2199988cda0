"""Stopping a runner stops its job processes: SIGTERM and Ctrl-C reach every process of each job's group."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mosaicbert.glue.demo_data import write_demo_tasks
from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM

from conftest import REPO

# A job that, like `composer -n 1 src/main.py`, is a launcher with a worker in its process group; the worker
# takes a moment to "checkpoint" on SIGTERM, and the launcher exits at once (as Composer's launcher does).
JOB = textwrap.dedent("""
    import signal, subprocess, sys, time
    out = sys.argv[1]
    if sys.argv[2] == "worker":
        def stop(signum, frame):
            time.sleep(1.0)  # writing a checkpoint
            open(out + "/worker", "w").write(str(signum))
            sys.exit(128 + signum)
        signal.signal(signal.SIGTERM, stop)
        open(out + "/worker-started", "w").write("")
        while True:
            time.sleep(0.05)
    subprocess.Popen([sys.executable, __file__, out, "worker"])
    time.sleep(600)
""")
RUNNER = textwrap.dedent("""
    import sys
    from mosaicbert.errors import Stopped
    from mosaicbert.processes import ChildProcesses
    with ChildProcesses(grace_seconds=30) as children:
        code = children.run([sys.executable, sys.argv[1], sys.argv[2], "launcher"])
    if children.received is not None:
        children.wait_for_all()
        print(Stopped(children.received), flush=True)
        sys.exit(128 + children.received)
    sys.exit(code)
""")


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_runner_signal_reaches_every_process_of_the_job_and_waits_for_them(tmp_path, signum):
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "runner.py").write_text(RUNNER)
    runner = subprocess.Popen([sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "job.py"), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (tmp_path / "worker-started").exists(), 60, "the job's worker did not start")
    runner.send_signal(signum)  # the runner only, as Slurm's scancel or a Kubernetes stop signals it
    output, _ = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signum, output
    assert f"stopped on {signal.Signals(signum).name}" in output
    # The worker got SIGTERM (a graceful stop, Ctrl-C included) and finished its checkpoint before the runner exited.
    assert (tmp_path / "worker").read_text() == str(int(signal.SIGTERM))


def test_a_signal_while_a_job_starts_neither_deadlocks_nor_misses_the_job(monkeypatch):
    """The handler runs in the main thread, which may be inside start() (holding the lock) when the signal comes."""
    import signal as signals

    from mosaicbert.errors import Stopped
    from mosaicbert.processes import ChildProcesses

    real_popen = subprocess.Popen

    def popen_interrupted(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        signals.raise_signal(signals.SIGTERM)  # arrives during start(), before the child is registered
        return process

    monkeypatch.setattr(subprocess, "Popen", popen_interrupted)
    with ChildProcesses(grace_seconds=30) as children:
        process = children.start([sys.executable, "-c", "import time; time.sleep(60)"])
        assert children.received == signals.SIGTERM
        assert process.wait(timeout=30) == -signals.SIGTERM  # the late child was signalled too
        with pytest.raises(Stopped):  # and nothing new starts
            children.start([sys.executable, "-c", "pass"])
        children.finished(process)


@pytest.mark.slow
def test_stopping_glue_stops_its_running_job_and_marks_it_unfinished(tmp_path, sample_root):
    torch.manual_seed(0)
    start = tmp_path / "start"
    MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=64)).save_pretrained(start)
    texts = [f"Sentence number {i} talks about parsing files. It returns a value for item {i}. Then it stops here now."
             for i in range(60)]
    data = write_demo_tasks(tmp_path / "glue", train_size=24, dev_size=8, texts=texts)
    run = tmp_path / "run"
    command = [sys.executable, "src/glue.py", "yamls/glue/demo.yaml", f"starting_checkpoint={start}",
               f"run_folder={run}", f"data_local={data}", f"tokenizer_name={sample_root / 'tokenizer'}",
               "tasks=[sst2]", "task_overrides.sst2.epochs=1000"]
    runner = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import psutil

    wait_for(lambda: psutil.Process(runner.pid).children(), 120, "no GLUE job process started")
    job = psutil.Process(runner.pid).children()[0]
    wait_for(lambda: (log := next(iter((run / "logs").glob("*.log")), None)) is not None and log.stat().st_size > 0,
             120, "the job did not get going")
    runner.send_signal(signal.SIGTERM)
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "interrupted" in output and "stopped on SIGTERM" in output
    assert not job.is_running() or job.status() == psutil.STATUS_ZOMBIE  # nothing left behind, still training
    assert not list((run / "results").glob("*.json"))  # not finished: the next run of the command runs it again


@pytest.mark.slow
def test_stopping_a_local_sweep_checkpoints_its_pretraining_and_leaves_nothing(tmp_path, sample_root):
    import psutil
    from helpers.sweeps import write_sweep

    path = write_sweep(tmp_path, sample_root, models={"mosaicbert": {"recipe": "yamls/demo.yaml"}},
                       checkpoint_interval="1000ba")
    text = path.read_text().replace("max_duration: 6ba", "max_duration: 100000ba")
    path.write_text(text)
    sweep = subprocess.Popen([sys.executable, "src/sweep.py", str(path), "--launcher", "local"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def training() -> bool:
        return any(m.read_text().count('"time/train"') >= 3 for m in (tmp_path / "sweep").rglob("metrics.jsonl"))

    wait_for(training, 180, "the sweep's pretraining did not start")
    descendants = psutil.Process(sweep.pid).children(recursive=True)
    sweep.send_signal(signal.SIGTERM)
    output, _ = sweep.communicate(timeout=180)
    assert sweep.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped on SIGTERM" in output and "resumes next time" in output
    log = next((tmp_path / "sweep").rglob("sweep.log")).read_text()
    assert "stopped on SIGTERM after batch" in log  # the training rank checkpointed before it stopped
    assert list((tmp_path / "sweep").rglob("signal-checkpoints.txt"))
    assert not [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
