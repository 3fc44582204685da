"""A throwaway single-node SLURM on this machine, for the tests: munged, slurmctld and slurmd
started as root from a temporary folder (configuration, key, state, logs), and stopped by PID.

    cluster = slurm_cluster.start(folder)   # raises Unavailable(reason) where it cannot
    cluster.run("sbatch", ...)              # SLURM's own commands, talking to this cluster
    cluster.stop()

Nothing outside `folder` is written or read: the MUNGE key and socket are the cluster's own,
so a SLURM or munged already on the machine is neither used nor disturbed."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "sinfo", "squeue", "scontrol", "scancel", "srun")
# More CPUs than this machine has, so that the tests' 1-CPU jobs run side by side even on 2
# cores (SLURM does not check the count against the hardware with config_overrides).
NODE_CPUS = 16


class Unavailable(Exception):
    """SLURM cannot run here; the message says why."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_memory_mb():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise Unavailable("no MemTotal in /proc/meminfo")


def slurm_conf(folder, host):
    """A minimal slurm.conf: this machine as the one node of one partition without GPUs,
    no accounting, no cgroups (linuxproc tracks a job's processes by parentage)."""
    return f"""\
ClusterName=pytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/builtin
# Pending jobs are looked at every 2 s (default 60): a requeued job starts as soon as SLURM's
# own wait before a restart (cred_expire, 120 s) is over, not up to a minute later.
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to `scontrol show job` (state, Restarts, ExitCode) for 10 min:
# the tests read them after the end; the cluster itself lives for one test session.
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={real_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons = []   # Popen of each daemon started, in start order

    def run(self, *command, check=True, timeout=30, **kwargs):
        """A SLURM command against this cluster; returns its stdout."""
        result = subprocess.run(command, env=self.env, capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: "
                               f"{result.stderr.strip()}")
        return result.stdout

    def _start_daemon(self, name, *args):
        """In the foreground (-D/-F), so that the PID is the Popen's and stop() needs no PID
        file; its output goes to NAME.out next to its log."""
        with open(self.folder / f"{name}.out", "w") as out:
            proc = subprocess.Popen([name, *args], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.daemons.append(proc)
        return proc

    def _wait(self, what, condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition():
            for proc in self.daemons:
                if proc.poll() is not None:
                    raise Unavailable(f"{proc.args[0]} exited {proc.returncode} while waiting "
                                      f"for {what}: {self.log_tail(proc.args[0])}")
            if time.monotonic() > deadline:
                newest = self.daemons[-1].args[0]
                raise Unavailable(f"no {what} within {timeout} s: {self.log_tail(newest)}")
            time.sleep(0.2)

    def log_tail(self, name, lines=5):
        texts = [p.read_text(errors="replace") for p in
                 (self.folder / f"{name}.log", self.folder / f"{name}.out") if p.exists()]
        return " | ".join("\n".join(texts).strip().splitlines()[-lines:])

    def start(self):
        host = socket.gethostname().split(".")[0]
        for sub in ("state", "spool"):
            (self.folder / sub).mkdir(exist_ok=True)
        self.conf.write_text(slurm_conf(self.folder, host))
        key = self.folder / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        # --force: munged refuses a socket in a folder that other users cannot enter (a
        # temporary folder is 0700); here every client runs as root.
        self._start_daemon("munged", "--foreground", "--force",
                           f"--socket={self.folder}/munge.socket", f"--key-file={key}",
                           f"--pid-file={self.folder}/munged.pid",
                           f"--log-file={self.folder}/munged.log",
                           f"--seed-file={self.folder}/munged.seed")
        self._wait("munge socket", (self.folder / "munge.socket").exists, 20)
        self._start_daemon("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._wait("slurmctld answer",
                   lambda: "UP" in self.run("scontrol", "ping", check=False), 30)
        self._start_daemon("slurmd", "-D", "-f", str(self.conf))
        self._wait("idle node in sinfo", lambda: self.node_state() == "idle", 60)
        return self

    def node_state(self):
        return self.run("sinfo", "--noheader", "--format=%T", check=False).strip()

    def stop(self, timeout=60):
        """Cancel every job left (a failed test may leave one running), wait until none is
        left, then stop the daemons by PID, newest first."""
        controller = [p for p in self.daemons if p.args[0] == "slurmctld" and p.poll() is None]
        try:
            if controller and self.run("squeue", "--noheader", check=False).strip():
                self.run("scancel", "--partition=debug", check=False)
                deadline = time.monotonic() + timeout
                while (self.run("squeue", "--noheader", check=False).strip()
                       and time.monotonic() < deadline):
                    time.sleep(0.5)
        except subprocess.TimeoutExpired:
            pass   # slurmctld does not answer: nothing more to ask it
        finally:
            for proc in reversed(self.daemons):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.daemons = []


def start(folder):
    """A running single-node cluster whose files live in `folder`.

    Raises:
        Unavailable: not root, SLURM or MUNGE not installed, or a daemon failed to start.
    """
    if os.geteuid() != 0:
        raise Unavailable("the daemons run as root (SlurmUser=root) and this is not root")
    missing = [name for name in (*DAEMONS, *COMMANDS) if shutil.which(name) is None]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (Debian: apt-get install "
                          f"slurm-wlm munge)")
    cluster = Cluster(folder)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
