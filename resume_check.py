"""The promise checked the way a user would check it by hand, in one command with one verdict:
train, Ctrl+C once a checkpoint exists, rerun the same command, and every file of the run is
there and whole. Real processes and a real signal.

    python test_checkpoint.py [--model gnn|transformer] [--keep DIR] [--timeout S]

(the command the DNA-transport seed's guide gives for this check; `python resume_check.py`
does the same). The last line is `PASS: ...` or `FAIL: ...`, the exit code 0 or 1. Test
support, like fault_injection.py: it reuses the suite's helpers in conftest.py.
"""

import argparse
import contextlib
import json
import queue
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import checkpoint as ckpt
from conftest import MODEL_ARGS, RUN_NAME, TrainProcess, run_train

STANDALONE_EPOCHS = 3
STANDALONE_TIMEOUT_S = 600
# docs/checkpoints.md, "Checkpoint contents". Written out rather than taken from
# ckpt.REQUIRED_KEYS, so a key dropped from the code and from that tuple together is still caught.
DOCUMENTED_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict",
                   "best_val_loss", "val_loss", "config", "train_loss", "history", "args",
                   "timestamp", "global_step", "step_in_epoch", "rng_state", "format_version")
FAMILY_KEYS = {"gnn": ("energy_grid",), "transformer": ()}
STATUS_LABELS = ("State:", "Epoch:", "Train Loss:", "Val Loss:", "Last Update:")
# The background writer reports a save at the next step, once the file is whole and renamed.
EPOCH1_SAVED = r"^Checkpoint saved: .*\(epoch 1, "


class ScenarioFailed(Exception):
    """What went wrong, in one line: the text of the FAIL verdict."""


class Deadline:
    """One time limit for the whole scenario, however its waits are split."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def failure(self, what):
        return ScenarioFailed(f"timed out after {self.seconds:g} s waiting for {what}")


def say(message):
    """A progress line; flushed so that it shows before a long wait, not after."""
    print(message, flush=True)


def last_line(lines):
    """The last non-blank line: a crash's traceback ends with the exception."""
    text = [line.strip() for line in lines if line.strip()]
    return text[-1] if text else "(nothing on stderr)"


def expect_exit(code, expected, what, stderr_lines):
    if code != expected:
        raise ScenarioFailed(f"{what} exited {code}, expected {expected}: "
                             f"{last_line(stderr_lines)}")


def wait_for_line(run, pattern, what, deadline):
    """The first line of a TrainProcess's output that matches `pattern`; ScenarioFailed if the
    process exits or time runs out first."""
    closed = 0
    while closed < 2:   # stdout and stderr each end with None
        try:
            line = run.lines.get(timeout=deadline.left())
        except queue.Empty:
            raise deadline.failure(what) from None
        if line is None:
            closed += 1
        elif re.search(pattern, line):
            return line
    code = wait_for_exit(run, deadline, "train.py to exit")
    raise ScenarioFailed(f"train.py exited {code} before {what}: {last_line(run.stderr)}")


def wait_for_exit(run, deadline, what):
    try:
        return run.finish(timeout=deadline.left())
    except subprocess.TimeoutExpired:
        raise deadline.failure(what) from None


def standalone_args(model, folder):
    """The suite's small run of `model` (conftest's GNN_ARGS or TRANSFORMER_ARGS), 3 epochs,
    its files in FOLDER/checkpoints."""
    return [*MODEL_ARGS[model], "--epochs", STANDALONE_EPOCHS,
            "--checkpoint-dir", folder / "checkpoints"]


def interrupt_after_first_checkpoint(args, folder, model, deadline):
    """Start train.py, press Ctrl+C (SIGINT) once epoch 1's checkpoint is reported, require
    exit 130 and the stop message; returns the state the stop saved in latest."""
    run = TrainProcess(args, folder)
    try:
        wait_for_line(run, EPOCH1_SAVED, "a checkpoint saved after epoch 1", deadline)
        run.send(signal.SIGINT)
        code = wait_for_exit(run, deadline, "train.py to stop on SIGINT")
    finally:
        if run.proc.poll() is None:   # a timeout or a failure above: leave no trainer behind
            run.kill_all()
            run.proc.wait()
    expect_exit(code, 130, "the interrupted run", run.stderr)
    if "Stopping on SIGINT" not in run.output:
        raise ScenarioFailed("the interrupted run exited 130 without saying 'Stopping on SIGINT'")
    latest = ckpt.RunFiles(folder / "checkpoints", RUN_NAME[model]).latest
    try:
        return ckpt.load_checkpoint(latest)
    except ckpt.CheckpointError as e:
        raise ScenarioFailed(f"{latest.name} after SIGINT: {e}") from None


def resume(args, folder, stopped, deadline):
    """Rerun the same command: it must resume from where the stop saved, and finish (exit 0)."""
    try:
        result = run_train(args, folder, timeout=deadline.left())
    except subprocess.TimeoutExpired:   # subprocess.run has killed it
        raise deadline.failure("the resumed run to finish") from None
    expect_exit(result.returncode, 0, "the resumed run", result.stderr.splitlines())
    found = re.search(r"^Resuming from .*$", result.stdout, re.M)
    if not found:
        raise ScenarioFailed("the rerun never said 'Resuming from ...': it started over")
    if f"(global step {stopped['global_step']})" not in found.group(0):
        raise ScenarioFailed(f"resumed elsewhere than the stop saved (global step "
                             f"{stopped['global_step']}): {found.group(0)}")


def expected_files(run, model, epochs):
    """Every file a finished run of `epochs` epochs must have (README, "Files of a run");
    the figures are left out: they need matplotlib, which is optional."""
    files = [run.latest, run.best, *(run.epoch(n) for n in range(1, epochs + 1)),
             run.progress, run.status]
    return files + ([run.samples] if model == "transformer" else [])


def checkpoint_problems(path, model, epoch=None):
    """The project's own integrity check (checksum, then a weights-only load), every key the
    docs list, and the epoch the file must hold."""
    try:
        state = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as e:
        return [f"{path.name}: {e}"]
    problems = []
    missing = [k for k in DOCUMENTED_KEYS + FAMILY_KEYS[model] if k not in state]
    if missing:
        problems.append(f"{path.name}: no {', '.join(missing)}")
    if epoch is not None and state["epoch"] != epoch:
        problems.append(f"{path.name}: epoch {state['epoch']}, expected {epoch}")
    return problems


def progress_problems(path, epochs):
    try:
        progress = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return [f"{path.name}: not readable JSON ({e})"]
    if not isinstance(progress, dict):
        return [f"{path.name}: a {type(progress).__name__}, not an object"]
    found = (progress.get("status"), progress.get("epoch"))
    if found != ("finished", epochs):
        return [f"{path.name}: status {found[0]!r} at epoch {found[1]!r}, expected 'finished' "
                f"at epoch {epochs}"]
    return []


def text_problems(path, labels=(), first=""):
    """A text file that reads, starts with `first` and has a `LABEL value` line per label."""
    try:
        text = path.read_text()
    except (OSError, ValueError) as e:
        return [f"{path.name}: unreadable ({e})"]
    if not text.startswith(first) or not text.strip():
        return [f"{path.name}: empty or not what it should be"]
    missing = [label for label in labels if not re.search(rf"^{re.escape(label)} \S", text, re.M)]
    return [f"{path.name}: no {', '.join(missing)} line"] if missing else []


def run_file_problems(folder, model, epochs):
    """Every problem with the files of a finished run in `folder`, each naming its file."""
    run = ckpt.RunFiles(folder, RUN_NAME[model])
    missing = [p.name for p in expected_files(run, model, epochs) if not p.is_file()]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    checkpoints = [(run.latest, epochs), (run.best, None),
                   *((run.epoch(n), n) for n in range(1, epochs + 1))]
    for path, epoch in checkpoints:
        if path.is_file():
            problems += checkpoint_problems(path, model, epoch)
    if run.progress.is_file():
        problems += progress_problems(run.progress, epochs)
    if run.status.is_file():
        problems += text_problems(run.status, STATUS_LABELS)
    if model == "transformer" and run.samples.is_file():
        problems += text_problems(run.samples, first=">")
    # A leftover `.NAME_....tmp-PID` means a write was never finished or never cleaned up.
    leftovers = sorted(p.name for p in folder.glob(".*.tmp-*"))
    if leftovers:
        problems.append(f"temporary files left: {', '.join(leftovers)}")
    return problems


def verify_run_files(folder, model, epochs):
    """'N files complete and verified', or ScenarioFailed listing every problem."""
    problems = run_file_problems(folder, model, epochs)
    if problems:
        raise ScenarioFailed("; ".join(problems))
    count = len(expected_files(ckpt.RunFiles(folder, RUN_NAME[model]), model, epochs))
    return f"{count} files complete and verified"


def interrupt_resume_verify(model, folder, deadline):
    """The scenario, in `folder`; returns the PASS summary."""
    started = time.monotonic()
    args = standalone_args(model, folder)
    say(f"train: python train.py {' '.join(map(str, args))}")
    stopped = interrupt_after_first_checkpoint(args, folder, model, deadline)
    where = f"epoch {stopped['epoch']} step {stopped['step_in_epoch']}"
    say(f"stopped by SIGINT at {where} (exit 130); rerunning the same command")
    resume(args, folder, stopped, deadline)
    say("resumed and finished (exit 0); verifying the run's files")
    verified = verify_run_files(folder / "checkpoints", model, STANDALONE_EPOCHS)
    return (f"interrupted at {where} by SIGINT, resumed, {verified} "
            f"({time.monotonic() - started:.0f} s)")


@contextlib.contextmanager
def scenario_folder(keep=None):
    """A fresh temporary folder removed afterwards, or `keep` (new or empty) left in place."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="checkpoint_check_") as folder:
            yield Path(folder)
        return
    keep = Path(keep).resolve()
    if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        # A run already there would be resumed, not started: that is not the scenario.
        raise ScenarioFailed(f"--keep {keep}: must be a new or empty folder")
    keep.mkdir(parents=True, exist_ok=True)
    try:
        yield keep
    finally:
        say(f"files kept in {keep}")


def standalone_check(model="gnn", keep=None, timeout=STANDALONE_TIMEOUT_S):
    deadline = Deadline(timeout)
    with scenario_folder(keep) as folder:
        return interrupt_resume_verify(model, folder, deadline)


def verdict(check):
    """(exit code, verdict line) of `check`, which returns what passed or raises
    ScenarioFailed. Any other exception fails too, traceback on stderr: whatever happens, the
    last line is a verdict."""
    try:
        return 0, f"PASS: {check()}"
    except ScenarioFailed as e:
        return 1, f"FAIL: {e}"
    except Exception as e:
        traceback.print_exc()
        sys.stderr.flush()
        return 1, f"FAIL: the check itself crashed: {type(e).__name__}: {e}"


def parse_standalone_args(argv):
    parser = argparse.ArgumentParser(
        description="Train briefly, stop with Ctrl+C (SIGINT) after the first checkpoint, "
                    "resume, and verify every file of the run; the last line is PASS or FAIL "
                    "(exit 0 or 1).")
    parser.add_argument("--model", choices=sorted(MODEL_ARGS), default="gnn",
                        help="model family to train (default: gnn)")
    parser.add_argument("--keep", metavar="DIR",
                        help="run in DIR (new or empty) and keep its files")
    parser.add_argument("--timeout", type=float, default=STANDALONE_TIMEOUT_S,
                        help=f"seconds for the whole check (default: {STANDALONE_TIMEOUT_S})")
    return parser.parse_args(argv)


def main(argv=None):
    options = parse_standalone_args(argv)
    code, line = verdict(lambda: standalone_check(options.model, options.keep, options.timeout))
    print(line, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
