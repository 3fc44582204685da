"""Shared test helpers: run train.py as users do (a real process), watch its output, compare
checkpoints tensor by tensor."""

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import process_tree

REPO = Path(__file__).resolve().parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Small runs that still cover every code path; a test adds --epochs and its own flags.
TRANSFORMER_ARGS = ("--num-samples", "160", "--batch-size", "16", "--eval-samples", "8",
                    "--checkpoint-every-minutes", "0")
SEQ2SEQ_ARGS = ("--model", "seq2seq", "--num-samples", "64", "--batch-size", "8",
                "--eval-samples", "4", "--checkpoint-every-minutes", "0")
GNN_ARGS = ("--model", "gnn", "--num-samples", "300", "--batch-size", "16",
            "--checkpoint-every-minutes", "0")
HGNN_ARGS = ("--model", "hgnn", "--num-samples", "300", "--batch-size", "16",
             "--checkpoint-every-minutes", "0")
MODEL_ARGS = {"transformer": TRANSFORMER_ARGS, "seq2seq": SEQ2SEQ_ARGS, "gnn": GNN_ARGS,
              "hgnn": HGNN_ARGS}
RUN_NAME = {name: f"{name}_tiny" for name in MODEL_ARGS}


def train_command(args, fault=None, nproc=1):
    """argv for train.py, or for fault_injection.py when a SIGKILL point is given; with
    `nproc` > 1, train.py under torchrun on this machine (gloo on CPU)."""
    if fault:
        return [sys.executable, str(REPO / "fault_injection.py"), fault, *map(str, args)]
    return [*process_tree.launcher(nproc), str(REPO / "train.py"), *map(str, args)]


def run_train(args, cwd, fault=None, timeout=300, nproc=1, env=None):
    """Run train.py to its end; returns the CompletedProcess (text stdout and stderr).
    `env`: variables to set on top of this process's environment."""
    return subprocess.run(train_command(args, fault, nproc), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


class TrainProcess:
    """train.py running in the background, its output read line by line as it comes."""

    def __init__(self, args, cwd, fault=None, nproc=1, command=None, env=None):
        """`command`, when given, is run instead of train.py, with `args` after it."""
        argv = [*command, *map(str, args)] if command else train_command(args, fault, nproc)
        self.proc = subprocess.Popen(argv, cwd=cwd, text=True, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = queue.Queue()
        self.stdout, self.stderr = [], []
        self._readers = [threading.Thread(target=self._read, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stdout, self.stdout),
                                              (self.proc.stderr, self.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, sink):
        for line in stream:
            sink.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text, timeout=120):
        """Block until a line containing `text` is printed; returns that line."""
        ended = 0
        while ended < 2:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                break
            if line is None:
                ended += 1
            elif text in line:
                return line
        self.proc.kill()
        raise AssertionError(f"train.py never printed {text!r}; output:\n{self.output}")

    def send(self, signum):
        self.proc.send_signal(signum)

    def kill_all(self):
        """SIGKILL to the process and all its descendants at once (torchrun starts each rank
        in a session of its own), as a scheduler that kills the job's cgroup does."""
        process_tree.kill_tree(self.proc.pid)

    def finish(self, timeout=300):
        """Wait for the exit; returns the exit code."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code

    @property
    def output(self):
        return "".join(self.stdout) + "".join(self.stderr)


def load(path):
    """A checkpoint as any user would read it."""
    return torch.load(path, weights_only=True)


def assert_tensors_equal(a, b, where="state"):
    """Every tensor bit for bit, every other value equal, through nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} " \
                                                         f"vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_tensors_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(a, b):
    """Two final checkpoints hold the same training: model, optimizer, scheduler, position
    and loss history, bit for bit."""
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch",
                "global_step", "step_in_epoch", "history", "best_val_loss", "val_loss",
                "train_loss"):
        assert_tensors_equal(a[key], b[key], key)


class References:
    """Uninterrupted runs, computed once per session and shared by every test that compares
    against them."""

    def __init__(self, root):
        self.root = root
        self.cache = {}

    def get(self, model, epochs, *extra):
        key = (model, epochs, extra)
        if key not in self.cache:
            folder = self.root / f"ref{len(self.cache)}"
            folder.mkdir()
            result = run_train([*MODEL_ARGS[model], "--epochs", epochs, *extra], folder)
            assert result.returncode == 0, result.stderr
            self.cache[key] = load(folder / "checkpoints" / f"{RUN_NAME[model]}_latest.pt")
        return self.cache[key]


@pytest.fixture(scope="session")
def references(tmp_path_factory):
    return References(tmp_path_factory.mktemp("references"))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A 3-epoch GNN run (latest, best, epoch1-3, progress, status) to copy and damage."""
    folder = tmp_path_factory.mktemp("finished")
    result = run_train([*GNN_ARGS, "--epochs", 3], folder)
    assert result.returncode == 0, result.stderr
    return folder / "checkpoints"


@pytest.fixture(autouse=True)
def _fresh_working_folder(tmp_path):
    """Every test runs in its own empty folder, so ./checkpoints never leaks between tests.
    (Its own MonkeyPatch: a test's monkeypatch.undo() must not take the test back to the
    repository.)"""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        yield


def run_main(args):
    """train.py's main() in this process (faster than a subprocess where no signal or kill is
    involved); returns the exit code."""
    import train
    return train.main([str(a) for a in args])
