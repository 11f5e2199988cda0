"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd on loopback.

Everything the cluster writes (munge key, slurm.conf, state, spool, logs) lives in one folder,
its munge socket and pid files in a private temporary folder, and its two TCP ports are picked
free at start, so it never touches a system Slurm or a second test cluster on the same machine.
Debian's packages provide the daemons; run `.ci/install-slurm.sh` as root to install them.

The first job after start() waits about 3 s for slurmctld's first scheduling pass; later jobs
start within about 1 s of submission.

    cluster = SlurmCluster(folder)
    cluster.start()
    try:
        job = cluster.sbatch("--wrap", "hostname")
        assert cluster.wait_for_jobs([job]) == {job: "COMPLETED"}
    finally:
        cluster.stop()
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from helpers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
# Debian installs the daemons into sbin, which a non-login shell's PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# Job states after which a job never runs again (squeue's and scontrol's long names).
FINAL_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
}


def available() -> tuple[bool, str]:
    """Whether the daemons and client commands are installed, and if not, why the tests skip."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name, path=SEARCH_PATH) is None]
    if missing:
        return False, f"Slurm is not installed ({', '.join(missing)} missing): run .ci/install-slurm.sh as root"
    return True, ""


def memory_mib() -> int:
    """Physical memory in MiB as slurmd counts it; a configured RealMemory above it drains the node."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie that nobody reaped yet counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class SlurmCluster:
    """One node named after this host, all of its CPUs, partition `debug`; see the module docstring."""

    def __init__(self, folder: Path, timeout: float = 30.0):
        self.folder = Path(folder)
        self.timeout = timeout
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.log_dir = self.folder / "log"
        self.munge_dir = self.folder / "munge"
        # Set by start(): munged refuses a socket below a folder that not everyone may enter, as
        # pytest's temporary folders are (0700), and a socket path has at most 107 characters.
        self.run_dir: Path | None = None

    @property
    def munge_socket(self) -> Path:
        return self.run_dir / "munge.socket"

    @property
    def pid_files(self) -> dict[str, Path]:
        return {name: self.run_dir / f"{name}.pid" for name in DAEMONS} if self.run_dir else {}

    @property
    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF pointing at this cluster: every client command needs it."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        """Starts the three daemons and waits for the node to be idle; on failure, stops what started."""
        for folder in (self.log_dir, self.folder / "state", self.folder / "spool"):
            folder.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="slurm-run-"))
        self.run_dir.chmod(0o755)
        try:
            self._start_munged()
            self._write_conf()
            self._run("slurmctld", "-f", str(self.conf))
            self._run("slurmd", "-f", str(self.conf), "-N", self.host)
            self._wait_until(lambda: self._client("sinfo", "-h", "-o", "%T").stdout.strip() == "idle",
                             "the node to be idle")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Cancels every job, waits for their processes to end, then stops the daemons by pid file."""
        try:
            if self._daemon_alive("slurmctld"):
                self._cancel_all_jobs()
        finally:
            pids = self.daemon_pids()
            self._signal(pids.values(), signal.SIGTERM)
            deadline = time.monotonic() + self.timeout
            while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._signal([pid for pid in pids.values() if alive(pid)], signal.SIGKILL)
            if self.run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def daemon_pids(self) -> dict[str, int]:
        """The running daemons' pids, from their pid files; a stale pid that another program reuses is left out."""
        pids = {}
        for name, pid_file in self.pid_files.items():
            try:
                pid = int(pid_file.read_text().split()[0])
            except (FileNotFoundError, IndexError, ValueError):
                continue
            # Checking the command name keeps stop() from signalling a stranger after pid reuse.
            try:
                command = Path(f"/proc/{pid}/comm").read_text().strip()
            except FileNotFoundError:
                continue
            if command == name and alive(pid):
                pids[name] = pid
        return pids

    def sbatch(self, *args: str, cwd: Path | None = None) -> str:
        """Submits a batch job (`sbatch --parsable *args`) and returns its job id."""
        out = self._client("sbatch", "--parsable", *args, cwd=cwd, check=True).stdout
        # --parsable prints "<id>" or "<id>;<cluster>".
        return out.strip().split(";")[0]

    def job_states(self, job_id: str) -> dict[str, str]:
        """The state of a job, or of each task of an array job, keyed "<id>" or "<id>_<task>".

        A pending array's tasks that have not started share one record keyed by their range,
        e.g. "12_[1-2]"; that state is never final, so waiting on it keeps waiting.
        """
        result = self._client("scontrol", "-o", "show", "job", job_id)
        if result.returncode != 0:
            # Finished jobs stay listed for MinJobAge, so an unknown id is a caller's mistake.
            raise RuntimeError(f"scontrol show job {job_id}: {result.stderr.strip() or result.stdout.strip()}")
        states = {}
        for record in result.stdout.splitlines():
            fields = dict(re.findall(r"\b(JobId|ArrayJobId|ArrayTaskId|JobState)=(\S+)", record))
            if not fields:
                continue
            name = fields["JobId"]
            if "ArrayTaskId" in fields:
                task = fields["ArrayTaskId"]
                name = f"{fields['ArrayJobId']}_{task if task.isdigit() else f'[{task}]'}"
            states[name] = fields["JobState"]
        return states

    def wait_for_jobs(self, job_ids: Iterable[str], timeout: float = 60.0) -> dict[str, str]:
        """Waits until every job (every task of an array job) has ended; returns the final states.

        Ids are sbatch's ("12") or one array task ("12_1"); an array job's id expands to its tasks.
        """
        job_ids = list(job_ids)
        states: dict[str, str] = {}

        def all_final() -> bool:
            states.clear()
            for job_id in job_ids:
                states.update(self.job_states(job_id))
            return all(state in FINAL_STATES for state in states.values())

        self._wait_until(all_final, f"jobs {job_ids} to end", timeout=timeout, logs=lambda: f"states: {states}")
        return dict(states)

    def _start_munged(self) -> None:
        # munged refuses a key that others can read, in a folder that others can write.
        self.munge_dir.mkdir(mode=0o700, exist_ok=True)
        key = self.munge_dir / "key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self._run(
            "munged",
            f"--key-file={key}",
            f"--socket={self.munge_socket}",
            f"--pid-file={self.pid_files['munged']}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--seed-file={self.munge_dir / 'seed'}",
        )

    def _write_conf(self) -> None:
        lines = [
            "ClusterName=test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            # Fresh ports each start, so a real Slurm (6817/6818) or a second test cluster never clashes.
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.folder / 'state'}",
            f"SlurmdSpoolDir={self.folder / 'spool'}",
            f"SlurmctldPidFile={self.pid_files['slurmctld']}",
            f"SlurmdPidFile={self.pid_files['slurmd']}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            # pgid kills a cancelled job's processes without cgroups; linuxproc let a step that
            # ignores SIGTERM outlive its job.
            "ProctrackType=proctrack/pgid",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            # Without it the scheduler starts batch jobs about every 3 s.
            "SchedulerParameters=batch_sched_delay=0",
            "KillWait=5",
            "MailProg=/bin/true",
            "ReturnToService=2",
            # There is no accounting (sacct): finished jobs must stay visible to `scontrol show job`.
            "MinJobAge=3600",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mib()} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _cancel_all_jobs(self) -> None:
        job_ids = self._client("squeue", "-h", "-o", "%A").stdout.split()
        if job_ids:
            self._client("scancel", *job_ids)

        def no_jobs_left() -> bool:
            # squeue can be empty before a cancelled job's processes are gone; listpids sees those.
            queued = self._client("squeue", "-h", "-o", "%A").stdout.strip()
            pids = self._client("scontrol", "listpids").stdout.splitlines()[1:]
            return not queued and not pids

        self._wait_until(no_jobs_left, "cancelled jobs to end")

    @staticmethod
    def _signal(pids: Iterable[int], signum: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # it exited since we looked

    def _daemon_alive(self, name: str) -> bool:
        return name in self.daemon_pids()

    def _run(self, daemon: str, *args: str) -> None:
        """Runs a daemon, which forks into the background, and waits for its pid file."""
        result = subprocess.run([shutil.which(daemon, path=SEARCH_PATH), *args], env=self.env,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{daemon} failed to start ({result.returncode}): {result.stderr.strip()}\n{self._logs()}")
        self._wait_until(lambda: self._daemon_alive(daemon), f"{daemon}'s pid file")

    def _client(self, *command: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=self.timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def _wait_until(self, condition, what: str, timeout: float | None = None, logs=None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}\n{logs() if logs else self._logs()}")
            time.sleep(0.1)

    def _logs(self) -> str:
        """The end of each daemon's log, for error messages."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-20:]
            parts.append(f"--- {log} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(parts) or f"(no logs in {self.log_dir})"
