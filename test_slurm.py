"""The SLURM batch scripts in examples/ under a real SLURM: a single-node cluster started for
this file (slurm_cluster.py: root, with Debian's slurm-wlm and munge, as CI runs the suite),
jobs submitted with sbatch and signalled with scancel or by a real time limit.

SLURM waits about 2 minutes before it restarts a requeued job, so one fixture submits every
case at once and drives them side by side (signals, as each job starts training); each test
then checks its own job. Where SLURM cannot be started, every test skips and says why."""

import math
import os
import re
import subprocess
import sys
import time
from datetime import datetime

import pytest

import checkpoint as ckpt
import slurm_cluster
from conftest import REPO, assert_same_run, load, run_train

# Long enough (169 steps an epoch) that a signal sent once training prints its first progress
# line lands well inside the run, short enough for the rest to finish in seconds.
GNN = ("--model", "gnn", "--num-samples", "3000", "--batch-size", "16",
       "--checkpoint-every-minutes", "0", "--keep-last", "1")
SHORT_EPOCHS = 8
# The time-limit case trains for this long alone at this machine's speed (measured first), so
# that it is still training when SLURM's warning comes: 30 s before the 2-minute limit, which
# slurmctld checks every 30 s, so 60 to 90 s after the start. Beside the other jobs it trains
# slower, which only widens the margin; what is left after the warning runs after the restart.
LONG_SECONDS = 100
# Thread counts change the sums' order: the jobs and the references use the same one.
ENV = {"OMP_NUM_THREADS": "1"}
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
RUN = "gnn_tiny"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    try:
        cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.Unavailable as e:
        pytest.skip(f"no single-node SLURM here: {e}")
    yield cluster
    cluster.stop()


class Job:
    """One sbatch submission of an example script with the training flags `args`, its own
    log and checkpoint folder. `signal`: scancel's options, sent once training has started."""

    def __init__(self, cluster, folder, script, args, sbatch=(), signal=None, env=None):
        self.cluster, self.signal = cluster, signal
        folder.mkdir()
        self.log = folder / "job.out"
        self.checkpoints = folder / "checkpoints"
        self.args = (*args, "--checkpoint-dir", str(self.checkpoints))
        job_env = {**cluster.env, **ENV, **(env or {}),
                   # the same python as this test's
                   "PATH": os.pathsep.join([os.path.dirname(sys.executable),
                                            os.environ["PATH"]])}
        # Submitted from the project folder, as the scripts' header says (they cd to it).
        out = subprocess.run(["sbatch", "--parsable", f"--output={self.log}", *sbatch,
                              str(REPO / "examples" / script), *self.args],
                             cwd=REPO, env=job_env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, f"sbatch {script}: {out.stderr}"
        self.id = out.stdout.strip().split(";")[0]
        self.info = {}
        self.signalled = False

    @property
    def output(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def update(self):
        """SLURM's view of the job (`scontrol show job`: JobState, Restarts, ExitCode...)."""
        text = self.cluster.run("scontrol", "--oneliner", "show", "job", self.id, check=False)
        self.info = dict(field.split("=", 1) for field in text.split() if "=" in field)

    @property
    def done(self):
        return self.info.get("JobState") in FINAL_STATES

    @property
    def restarts(self):
        return int(self.info["Restarts"])

    def training_started(self):
        return re.search(r"^Epoch 1/\d+ step ", self.output, re.MULTILINE) is not None

    def latest(self):
        return ckpt.load_checkpoint(self.checkpoints / f"{RUN}_latest.pt")

    def describe(self):
        return f"job {self.id}: {self.info}\n--- log ---\n{self.output}"

    def summary(self, stopped_at, resumed, identical):
        """One line for the record (pytest -rP shows it)."""
        how = " ".join(("scancel", *self.signal)) if self.signal is not None else \
            "time limit --time=2 --signal=B:USR1@30"
        return (f"{self.log.parent.name}: job {self.id}, {how}: state {self.info['JobState']}, "
                f"exit {self.info['ExitCode']}, Restarts={self.restarts}, stopped after "
                f"global step {stopped_at}, resumed from it: {resumed}, final checkpoint "
                f"identical to an uninterrupted run: {identical}")


def epoch_seconds(folder):
    """Seconds one epoch of GNN takes here, alone (its summary line ends with them)."""
    result = run_train([*GNN, "--epochs", 1], folder, env=ENV)
    assert result.returncode == 0, result.stderr
    return float(re.search(r"^Epoch 1/1 \|.*\| ([\d.]+)s$", result.stdout, re.MULTILINE)[1])


def start_reference(args, folder):
    """The same training, uninterrupted: plain python, in the background. Its output goes to
    a file: a pipe read only at the end would fill up and stall it."""
    folder.mkdir()
    with open(folder / "train.out", "w") as out:
        return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args,
                                 "--checkpoint-dir", str(folder)], cwd=folder,
                                env={**os.environ, **ENV}, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def jobs(cluster, tmp_path_factory):
    """Every case, submitted at once and driven to its end; returns {case: Job} and the
    references' final checkpoints."""
    root = tmp_path_factory.mktemp("slurm_jobs")
    calibration = root / "calibration"
    calibration.mkdir()
    long_epochs = math.ceil(LONG_SECONDS / epoch_seconds(calibration))
    short = (*GNN, "--epochs", str(SHORT_EPOCHS))
    long = (*GNN, "--epochs", str(long_epochs))

    def port():
        return {"RDZV_PORT": str(slurm_cluster.free_port())}

    one_node = ("--nodes=1",)   # the multi-node script on one node, one torchrun process
    cases = {
        "usr1": Job(cluster, root / "usr1", "slurm_requeue.sh", short,
                    signal=("--batch", "--signal=USR1")),
        "time_limit": Job(cluster, root / "time_limit", "slurm_requeue.sh", long,
                          sbatch=("--time=2", "--signal=B:USR1@30")),
        # Two processes under torchrun: SLURM's SIGTERM reaches torchrun itself, and the script
        # must not send it a second one (that cuts short torchrun's wait for the save).
        "cancel": Job(cluster, root / "cancel", "slurm_requeue.sh", short, signal=(),
                      env={"NPROC": "2"}),
        "multinode_usr1": Job(cluster, root / "multinode_usr1", "slurm_multinode.sh", short,
                              sbatch=one_node, signal=("--batch", "--signal=USR1"), env=port()),
        "multinode_term": Job(cluster, root / "multinode_term", "slurm_multinode.sh", short,
                              sbatch=one_node, signal=("--batch", "--signal=TERM"), env=port()),
        "multinode_cancel": Job(cluster, root / "multinode_cancel", "slurm_multinode.sh",
                                short, sbatch=one_node, signal=(), env=port()),
    }
    references = {"short": start_reference(short, root / "reference_short"),
                  "long": start_reference(long, root / "reference_long")}
    try:
        deadline = time.monotonic() + 540
        while time.monotonic() < deadline:
            for job in cases.values():
                job.update()
                if job.signal is not None and not job.signalled and job.training_started():
                    cluster.run("scancel", *job.signal, job.id)
                    job.signalled = True
            # The time-limit case tests one warning. Its restart gets the same 2 minutes, and
            # when what is left takes longer, a second warning and requeue (as it should, but
            # 2 more minutes): while it waits to restart, give it room to finish.
            waiting = cases["time_limit"]
            if waiting.info.get("JobState") == "PENDING" and waiting.restarts == 1 \
                    and waiting.info.get("TimeLimit") == "00:02:00":
                cluster.run("scontrol", "update", f"JobId={waiting.id}", "TimeLimit=30")
                waiting.update()
            if all(job.done for job in cases.values()):
                break
            time.sleep(0.5)
        finals = {}
        for name, proc in references.items():
            folder = root / f"reference_{name}"
            code = proc.wait(timeout=max(1, deadline - time.monotonic()) + 60)
            assert code == 0, f"reference {name}: {(folder / 'train.out').read_text()}"
            finals[name] = load(folder / f"{RUN}_latest.pt")
    finally:
        for proc in references.values():
            proc.kill()
            proc.wait()
    return cases, finals


def stop_step(job, signal_name):
    """The global step after which training stopped on the signal, from its log."""
    found = re.findall(rf"^Stopping on {signal_name}\b.* \((\d+) steps in all\)$", job.output,
                       re.MULTILINE)
    assert len(found) == 1, job.describe()
    return int(found[0])


def script_lines(job):
    return [line for line in job.output.splitlines()
            if re.search(r"slurm_(requeue|multinode): ", line)]


def assert_dated_and_truthful(job):
    """Every line the script prints starts with its date; after it asked for the requeue, the
    SIGTERM that SLURM sends to end the attempt is not reported as a stop request, and the
    shell reports no process of its own terminated."""
    for line in script_lines(job):
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d slurm_(requeue|multinode): ", line), \
            job.describe()
    if "; requeueing job" in job.output:
        after_requeue = job.output.split("; requeueing job", 1)[1].split("(restart 1)")[0]
        assert "TERM received" not in after_requeue, job.describe()
    assert "Terminated" not in job.output, job.describe()


def assert_requeued_once_resumed_and_identical(job, signal_name, reference):
    assert job.done, f"not finished in time: {job.describe()}"
    assert job.info["JobState"] == "COMPLETED" and job.info["ExitCode"] == "0:0", job.describe()
    assert job.restarts == 1, job.describe()
    assert job.output.count(f"{signal_name[3:]} received: asking training to save") == 1
    assert job.output.count("; requeueing job ") == 1, job.describe()
    step = stop_step(job, signal_name)
    resumed = re.findall(rf"^Resuming from {job.checkpoints}/{RUN}_latest.pt: .* \(global step "
                         rf"(\d+)\)", job.output, re.MULTILINE)
    assert resumed == [str(step)], job.describe()
    assert script_lines(job)[-1].endswith("training exited with status 0"), job.describe()
    assert_dated_and_truthful(job)
    assert_same_run(load(job.checkpoints / f"{RUN}_latest.pt"), reference)
    print(job.summary(step, "yes", "yes"))


def assert_saved_and_not_requeued(job, signal_name, state):
    """Stopped by `signal_name`, saved latest at that step, and ended without a requeue."""
    assert job.done, f"not finished in time: {job.describe()}"
    assert job.info["JobState"] == state and job.restarts == 0, job.describe()
    step = stop_step(job, signal_name)
    assert re.search(rf"^Checkpoint saved: {RUN}_latest.pt .*, global step {step}\)$",
                     job.output, re.MULTILINE), job.describe()
    assert job.latest()["global_step"] == step   # and it verifies
    assert "requeueing" not in job.output
    # srun reports a task that SLURM killed (SIGKILL) as "task 0: Killed", status 137.
    assert "Killed" not in job.output and "status 137" not in job.output, job.describe()
    # A second signal to torchrun while it waits for its ranks raises inside its handling of
    # the first, and torchrun exits without waiting.
    assert "During handling of the above exception" not in job.output, job.describe()
    assert_dated_and_truthful(job)
    print(job.summary(step, "no restart", "n/a"))


def test_warning_by_scancel_requeues_once_and_the_restart_ends_bit_identical(jobs):
    cases, references = jobs
    assert_requeued_once_resumed_and_identical(cases["usr1"], "SIGUSR1", references["short"])


def test_time_limit_warning_requeues_once_and_the_restart_ends_bit_identical(jobs):
    cases, references = jobs
    job = cases["time_limit"]
    assert "USR1 received" in job.output, \
        f"the run ended before SLURM's time-limit warning (this machine trains faster than " \
        f"measured?): {job.describe()}"
    # SLURM's own warning, 30 s before the limit (up to 30 s earlier: its check runs every 30 s)
    lines = script_lines(job)
    started = next(line for line in lines if "(restart 0)" in line)
    warned = next(line for line in lines if "USR1 received" in line)
    seconds = (datetime.fromisoformat(warned[:19]) - datetime.fromisoformat(started[:19]))
    assert 30 <= seconds.total_seconds() <= 95, job.describe()
    assert_requeued_once_resumed_and_identical(job, "SIGUSR1", references["long"])


def test_scancel_saves_without_a_requeue_and_torchrun_gets_one_sigterm(jobs):
    cases, _ = jobs
    job = cases["cancel"]
    assert_saved_and_not_requeued(job, "SIGTERM", "CANCELLED")
    assert job.latest()["global_step"] < 169 * SHORT_EPOCHS
    assert "rank 1: stopping on SIGTERM" in job.output, job.describe()
    assert "TERM received: SLURM is ending the job (" in job.output, job.describe()


def test_multinode_script_on_one_node_requeues_on_the_warning(jobs):
    cases, references = jobs
    # torchrun with one process trains as plain python does, bit for bit.
    assert_requeued_once_resumed_and_identical(cases["multinode_usr1"], "SIGUSR1",
                                               references["short"])


def test_sigterm_to_the_multinode_batch_shell_saves_without_a_kill(jobs):
    # Before: the script passed SIGTERM on to srun, which SIGKILLs its tasks on SIGTERM.
    cases, _ = jobs
    job = cases["multinode_term"]
    assert_saved_and_not_requeued(job, "SIGTERM", "FAILED")   # torchrun's 1 after a stop
    assert script_lines(job)[-1].endswith("training exited with status 1"), job.describe()


def test_multinode_script_saves_on_scancel(jobs):
    cases, _ = jobs
    assert_saved_and_not_requeued(cases["multinode_cancel"], "SIGTERM", "CANCELLED")
