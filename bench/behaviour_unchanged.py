"""Proof that a refactor left train.py's behaviour unchanged: the same commands run on the code
before and after it must leave the same files, bit for bit, and print the same lines.

    python bench/behaviour_unchanged.py [--before REF] [--after REF|worktree] [--keep DIR]

--before defaults to 066db47, the last commit before the refactor that moves code between
modules; --after defaults to this checkout's working tree (the folder above bench/, uncommitted
changes included). A REF is checked out with `git worktree add --detach` into a temporary
folder, removed at the end; the checkout itself is never touched.

On each side these scenarios run, each in a fresh output folder (the commands' cwd), with
PYTHONHASHSEED=0 and OMP_NUM_THREADS=1 so that two runs of the same code give the same bits,
Python's and NumPy's global generators seeded at start-up (sitecustomize: train.py leaves them
unseeded, and checkpoints hold their states), and CI unset:

    transformer                 train 2 epochs, then --sample 20 from the best checkpoint
    gnn                         train 3 epochs, then --predict two sequences
    transformer-killed-resumed  SIGKILL in epoch 2 (fault_injection.py), rerun to the end
    gnn-killed-resumed          the same for the GNN

Compared, before against after: the set of files; every tensor of every checkpoint, bit for bit,
and every other value in it (its timestamp apart); the progress.json figures and history; the
status.txt lines (times and process ids apart); sampled FASTA and predicted CSV text; each
command's exit code and printed lines (timings, dates, free space and temporary paths apart).
PNG plots are compared only by existence: drawing them need not be byte-stable.

Prints one line per scenario, `note:` lines (history columns present on one side only and empty
throughout), and last `identical`, or `DIFFERENT: N differences`; exits 0 or 1 accordingly.
"""

import argparse
import concurrent.futures
import difflib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BEFORE = "066db47"
WORKING_TREE = "worktree"
COMMAND_TIMEOUT_S = 600
ATTEMPTS = 3                 # a kill that lands too early is retried (see Command.must_print)
SHOWN_PER_SCENARIO = 25      # differences listed per scenario; the total counts them all

# Small runs: the four scenarios take about a minute per side on 2 cores. Every step (and the
# epoch order) is a function of the flags alone, so the outputs are reproducible bit for bit.
TRANSFORMER = ("--num-samples", "160", "--batch-size", "16", "--eval-samples", "8",
               "--checkpoint-every-minutes", "0", "--epochs", "2", "--checkpoint-dir", "ckpt")
GNN = ("--model", "gnn", "--num-samples", "300", "--batch-size", "16",
       "--checkpoint-every-minutes", "0", "--epochs", "3", "--checkpoint-dir", "ckpt")
EVERY_5_STEPS = ("--checkpoint-every-steps", "5")


@dataclass(frozen=True)
class Command:
    """One process of a scenario.

    `must_print`: a regex the stdout must match for the scenario to count as having run as
    planned. A kill is reproducible only if the mid-epoch checkpoint before it was written and
    reported; the write runs in a background thread, so on a loaded machine the kill can come
    first. Then the scenario is rerun from scratch rather than compared."""
    label: str
    script: str
    args: tuple
    expected_rc: int = 0
    must_print: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    commands: tuple


SCENARIOS = (
    Scenario("transformer", (
        Command("train", "train.py", TRANSFORMER),
        Command("sample", "train.py", ("--sample", "20", "--seed", "3", "--checkpoint-dir", "ckpt")),
    )),
    Scenario("gnn", (
        Command("train", "train.py", GNN),
        Command("predict", "train.py", ("--predict", "ACGTAC,GGCATT", "--checkpoint-dir", "ckpt",
                                        "--model", "gnn")),
    )),
    # 9 steps an epoch; checkpoints at global steps 5, 9, 14; killed in step 17 (epoch 2), three
    # steps after the last save, whose background write has then ended and been reported.
    Scenario("transformer-killed-resumed", (
        Command("killed", "fault_injection.py", ("step:17",) + TRANSFORMER + EVERY_5_STEPS,
                expected_rc=-9, must_print=r"global step 14\)"),
        Command("resumed", "train.py", TRANSFORMER + EVERY_5_STEPS),
    )),
    # 17 steps an epoch; checkpoints at 5, 10, 15, 17, 22, 27, 32; killed in step 31 (epoch 2),
    # four steps after the last save (steps take milliseconds here: see Command.must_print).
    Scenario("gnn-killed-resumed", (
        Command("killed", "fault_injection.py", ("step:31",) + GNN + EVERY_5_STEPS,
                expected_rc=-9, must_print=r"global step 27\)"),
        Command("resumed", "train.py", GNN + EVERY_5_STEPS),
    )),
)


# ------------------------------------------------------------------------------------------
# Running the scenarios on one side
# ------------------------------------------------------------------------------------------

@dataclass
class CommandResult:
    label: str
    rc: int | None          # None: timed out
    expected_rc: int
    stdout: str
    stderr: str
    planned: bool = True    # False: must_print did not match on the last attempt
    wall_s: float = 0.0


@dataclass
class ScenarioRun:
    folder: Path
    results: list
    attempts: int


@dataclass
class Side:
    """One code version and where its scenarios wrote."""
    name: str               # "before" or "after"
    code: Path
    env: dict
    runs: dict = field(default_factory=dict)    # scenario name -> ScenarioRun


# Checkpoints hold the states of Python's and NumPy's global generators, which train.py never
# seeds (nor draws from): each process starts them from OS entropy, so they would differ between
# any two runs. Seeded at interpreter start-up, they are compared bit for bit like the rest.
RNG_SEEDER = """import random
import numpy
random.seed(0)
numpy.random.seed(0)
"""


def command_environment(scratch):
    """The same environment for both sides: deterministic hashing, single-threaded kernels
    (thread counts change float summation order), the global RNGs seeded (RNG_SEEDER, as
    sitecustomize), no CI switch, no .pyc files written into the code folders (one of them is
    the checkout being edited)."""
    seeder = scratch / "rng_seeder"
    seeder.mkdir(exist_ok=True)
    (seeder / "sitecustomize.py").write_text(RNG_SEEDER)
    env = dict(os.environ)
    env.pop("CI", None)
    env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(seeder),
                                                        env.get("PYTHONPATH")])))
    return env


def run_command(code, command, cwd, env):
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(code / command.script), *command.args],
                              cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = None, _text(e.stdout), _text(e.stderr)
    planned = not command.must_print or bool(re.search(command.must_print, stdout))
    return CommandResult(command.label, rc, command.expected_rc, stdout, stderr, planned,
                         time.monotonic() - started)


def _text(output):
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_scenario(side, scenario, folder):
    """All of the scenario's commands in a fresh folder, again from scratch (up to ATTEMPTS
    times) when a kill landed before the checkpoint it was meant to follow was reported."""
    for attempt in range(1, ATTEMPTS + 1):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        results = []
        for command in scenario.commands:
            results.append(run_command(side.code, command, folder, side.env))
            log(f"[{side.name}] {scenario.name}, {command.label}"
                + (f" (attempt {attempt})" if attempt > 1 else "")
                + f": exit {results[-1].rc}, {results[-1].wall_s:.1f} s")
        if all(r.planned for r in results if r.rc == r.expected_rc):
            break
    return ScenarioRun(folder, results, attempt)


def run_side(side, out_root):
    for scenario in SCENARIOS:
        side.runs[scenario.name] = run_scenario(side, scenario, out_root / side.name / scenario.name)
    return side


def log(message):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Code folders
# ------------------------------------------------------------------------------------------

def git(*args):
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def code_folder(ref, where, worktrees):
    """The working tree itself for 'worktree', else a detached worktree of `ref` in `where`
    (recorded in `worktrees` for removal)."""
    if ref == WORKING_TREE:
        return REPO
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    git("worktree", "add", "--detach", str(where), commit)
    worktrees.append(where)
    return where


def remove_worktrees(worktrees):
    for path in worktrees:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                       capture_output=True)


# ------------------------------------------------------------------------------------------
# Comparing: findings of one scenario
# ------------------------------------------------------------------------------------------

class Findings:
    """Differences (each a failure) and notes (each worth knowing, not a failure) found in one
    scenario, with what was compared."""

    def __init__(self):
        self.differences = []
        self.notes = []
        self.checkpoints = 0
        self.tensors = 0

    def differ(self, where, what):
        self.differences.append(f"{where}: {what}")

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)


class Normaliser:
    """Rewrites one side's text so that what legitimately differs between two runs (its
    folders, times, process ids, timings, free disk space) reads the same on both sides."""

    PATTERNS = (
        (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?"), "<time>"),
        (re.compile(r"\bETA\b:?\s*[^|\n]*"), "ETA <eta>"),
        (re.compile(r"\b\d+(\.\d+)?\s?(steps|samples|it)/s\b"), "<rate>"),
        (re.compile(r"\b\d+(\.\d+)?\s?(ms|s|min|h)\b"), "<duration>"),
        (re.compile(r"\b\d+(\.\d+)?\s?[KMGT]i?B free\b"), "<space> free"),
        (re.compile(r"\b(pid|PID|process)(\s*:?\s*)\d+"), r"\1\2<pid>"),
    )

    def __init__(self, folder, code):
        # Longest first: the output folder may lie inside the code folder's parent.
        self.paths = sorted({(str(folder), "<OUT>"), (str(folder.resolve()), "<OUT>"),
                             (str(code), "<CODE>"), (str(code.resolve()), "<CODE>")},
                            key=lambda pair: -len(pair[0]))

    def path(self, text):
        for path, placeholder in self.paths:
            text = text.replace(path, placeholder)
        return text

    def text(self, text):
        text = self.path(text)
        for pattern, replacement in self.PATTERNS:
            text = pattern.sub(replacement, text)
        return text


# ------------------------------------------------------------------------------------------
# Comparing values: tensors, nested containers, plain values
# ------------------------------------------------------------------------------------------

def short(value, width=60):
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def same_plain(a, b):
    """Equal values of the same type, NaN equal to NaN (a NaN loss must stay a NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def as_bytes(tensor):
    """The tensor's bits as a flat uint8 tensor: equal bytes means equal bit for bit (NaN
    payloads and the sign of zero included), which torch.equal alone does not say."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def same_tensor_bits(a, b):
    try:
        return torch.equal(as_bytes(a), as_bytes(b))
    except (RuntimeError, TypeError):    # a layout that has no flat byte view (sparse)
        return torch.equal(a, b)


def describe_tensor_difference(a, b):
    """How many elements differ and, for floating tensors, by how much at most."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if not (a.is_floating_point() or a.is_complex()):
        return f"{int((a != b).sum())} of {a.numel()} elements differ"
    wide = torch.complex128 if a.is_complex() else torch.float64
    a, b = a.to(wide), b.to(wide)
    nan_a, nan_b = a.isnan(), b.isnan()
    differ = ~((a == b) | (nan_a & nan_b))
    count = int(differ.sum())
    if count == 0:
        return "same values, different bits (sign of zero or NaN payload)"
    gaps = (a - b).abs()[differ & ~nan_a & ~nan_b]
    biggest = f", max abs diff {gaps.max().item():.3g}" if gaps.numel() else ", NaN on one side"
    return f"{count} of {a.numel()} elements differ{biggest}"


def compare_tensors(a, b, where, path, findings):
    findings.tensors += 1
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        findings.differ(where, f"{path}: a tensor on one side only ({short(a)} vs {short(b)})")
    elif a.dtype != b.dtype:
        findings.differ(where, f"{path}: dtype {a.dtype} vs {b.dtype}")
    elif a.shape != b.shape:
        findings.differ(where, f"{path}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
    elif not same_tensor_bits(a, b):
        findings.differ(where, f"{path}: {describe_tensor_difference(a, b)}")


def is_container(value):
    return isinstance(value, (dict, list, tuple, torch.Tensor))


def compare_values(a, b, where, path, findings):
    """Recursively through dicts, lists and tuples; tensors bit for bit, the rest by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        compare_tensors(a, b, where, path, findings)
    elif isinstance(a, dict) and isinstance(b, dict):
        compare_dicts(a, b, where, path, findings)
    elif isinstance(a, (list, tuple)) and type(a) is type(b):
        compare_sequences(a, b, where, path, findings)
    elif not same_plain(a, b):
        findings.differ(where, f"{path or 'value'}: {short(a)} vs {short(b)}")


def compare_dicts(a, b, where, path, findings):
    only_a, only_b = sorted(map(str, a.keys() - b.keys())), sorted(map(str, b.keys() - a.keys()))
    if only_a or only_b:
        findings.differ(where, f"{path or 'keys'}: keys only before {only_a}, only after {only_b}")
    for key in a.keys() & b.keys():
        compare_values(a[key], b[key], where, join(path, key), findings)


def compare_sequences(a, b, where, path, findings):
    if len(a) != len(b):
        findings.differ(where, f"{path}: length {len(a)} vs {len(b)}")
        return
    if any(is_container(x) for x in (*a, *b)):
        for i, (x, y) in enumerate(zip(a, b)):
            compare_values(x, y, where, f"{path}[{i}]", findings)
        return
    # A long list of plain values (a Python RNG state) is one finding, not hundreds.
    differing = [i for i, (x, y) in enumerate(zip(a, b)) if not same_plain(x, y)]
    if differing:
        i = differing[0]
        findings.differ(where, f"{path}: {len(differing)} of {len(a)} items differ, first "
                               f"[{i}]: {short(a[i])} vs {short(b[i])}")


def join(path, key):
    return f"{path}/{key}" if path else str(key)


def compare_history(a, b, where, path, findings):
    """Column by column. A column only one side has is a difference, unless it holds nothing
    but None: a metric that does not apply to this model, worth a note only."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        compare_values(a, b, where, path, findings)
        return
    for column in sorted(a.keys() | b.keys(), key=str):
        if column in a and column in b:
            compare_values(a[column], b[column], where, join(path, column), findings)
            continue
        side, values = ("before", a[column]) if column in a else ("after", b[column])
        if isinstance(values, list) and all(v is None for v in values):
            findings.note(f"{path} column {column!r} only {side}, all None")
        else:
            findings.differ(where, f"{join(path, column)}: only {side}: {short(values)}")


# ------------------------------------------------------------------------------------------
# Comparing files by kind
# ------------------------------------------------------------------------------------------

ARGS_PATHS = ("checkpoint_dir", "output_dir", "data")
PROGRESS_FIELDS = ("status", "epoch", "global_step", "train_loss", "val_loss", "best_val_loss",
                   "best_epoch")
VOLATILE_STATUS_LINES = ("Last Update:", "ETA:")


def normalised_args(args, normaliser):
    """The run's arguments with the output folder in its paths replaced by a placeholder (the
    two sides ran in different folders)."""
    if not isinstance(args, dict):
        return args
    return {k: normaliser.path(v) if k in ARGS_PATHS and isinstance(v, str) else v
            for k, v in args.items()}


def load_checkpoint(path, where, findings):
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:   # noqa: BLE001 - any load failure is a finding, not a crash
        findings.differ(where, f"cannot load: {type(e).__name__}: {short(str(e), 120)}")
        return None


def compare_checkpoint(before, after, where, normalisers, findings):
    """Every key; tensors bit for bit. The timestamp is the save's wall time and may differ;
    args' paths are compared with the output folder normalised; history column by column."""
    findings.checkpoints += 1
    a, b = load_checkpoint(before, where + " (before)", findings), \
        load_checkpoint(after, where + " (after)", findings)
    if a is None or b is None:
        return
    if not (isinstance(a, dict) and isinstance(b, dict)):
        compare_values(a, b, where, "", findings)
        return
    a, b = dict(a), dict(b)
    for state in (a, b):
        state.pop("timestamp", None)
    if "args" in a and "args" in b:
        a["args"] = normalised_args(a["args"], normalisers[0])
        b["args"] = normalised_args(b["args"], normalisers[1])
    if "history" in a and "history" in b:
        compare_history(a.pop("history"), b.pop("history"), where, "history", findings)
    compare_dicts(a, b, where, "", findings)


def compare_progress(before, after, where, findings):
    """The figures a person reads; pid, host, times and save stalls are this run's own."""
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    for key in PROGRESS_FIELDS:
        if (key in a) != (key in b):
            findings.differ(where, f"{key}: only {'before' if key in a else 'after'}")
        elif key in a:
            compare_values(a[key], b[key], where, key, findings)
    compare_history(a.get("history"), b.get("history"), where, "history", findings)


def status_lines(path, normaliser):
    return [normaliser.text(line) for line in path.read_text().splitlines()
            if not line.startswith(VOLATILE_STATUS_LINES)]


def compare_lines(a, b, where, findings):
    """Each changed line as a finding, shown from just before its first changed character;
    lines present on one side only as such."""
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            continue
        pairs = min(a1 - a0, b1 - b0)
        for i in range(pairs):
            findings.differ(where, f"line {a0 + i + 1}: {changed_part(a[a0 + i], b[b0 + i])}")
        for i in range(a0 + pairs, a1):
            findings.differ(where, f"line {i + 1} only before: {short(a[i], 100)}")
        for i in range(b0 + pairs, b1):
            findings.differ(where, f"line {i + 1} only after: {short(b[i], 100)}")


def changed_part(before, after, context=25, width=70):
    """'before ...X...; after ...Y...' starting a little before the first differing character,
    so that a change at the end of a long line is visible."""
    first = next((i for i, (x, y) in enumerate(zip(before, after)) if x != y),
                 min(len(before), len(after)))
    start = max(0, first - context)
    cut = "..." if start else ""
    return (f"before {short(cut + before[start:], width)}; "
            f"after {short(cut + after[start:], width)}")


def compare_exact(before, after, where, findings):
    """FASTA, CSV and any other file: the same bytes; for text, the first changed lines."""
    a, b = before.read_bytes(), after.read_bytes()
    if a == b:
        return
    try:
        compare_lines(a.decode().splitlines(), b.decode().splitlines(), where, findings)
    except UnicodeDecodeError:
        findings.differ(where, f"binary content differs ({len(a)} vs {len(b)} bytes)")
    else:
        if a.splitlines() == b.splitlines():
            findings.differ(where, "line endings differ")


def compare_file(name, before, after, normalisers, findings):
    where = name
    if name.endswith(".png"):
        return   # drawn with matplotlib: existence only (the file sets are compared)
    if name.endswith(".pt"):
        compare_checkpoint(before, after, where, normalisers, findings)
    elif name.endswith("_progress.json"):
        compare_progress(before, after, where, findings)
    elif name.endswith("_status.txt"):
        compare_lines(status_lines(before, normalisers[0]), status_lines(after, normalisers[1]),
                      where, findings)
    else:
        compare_exact(before, after, where, findings)


def ignored(name):
    """Lock files and temporary files of interrupted writes: their presence is timing."""
    return name.endswith(".lock") or ".tmp" in name


def output_files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not ignored(p.name)}


def compare_folders(before, after, normalisers, findings):
    a, b = output_files(before), output_files(after)
    for name in sorted(a - b):
        findings.differ(name, "only before")
    for name in sorted(b - a):
        findings.differ(name, "only after")
    for name in sorted(a & b):
        compare_file(name, before / name, after / name, normalisers, findings)


def compare_commands(before, after, normalisers, findings):
    """Exit codes (which must also be the planned ones) and printed lines."""
    for a, b in zip(before, after):
        where = f"{a.label}: stdout"
        if a.rc != b.rc:
            findings.differ(f"{a.label}", f"exit code {a.rc} vs {b.rc}"
                                          f"{failure_hint(a, normalisers[0])}"
                                          f"{failure_hint(b, normalisers[1])}")
        elif a.rc != a.expected_rc:
            findings.differ(f"{a.label}", f"exit code {a.rc} on both sides, expected "
                                          f"{a.expected_rc}{failure_hint(a, normalisers[0])}")
        elif not (a.planned and b.planned):
            findings.differ(f"{a.label}", f"the kill came before the expected checkpoint on "
                                          f"every attempt ({'before' if not a.planned else 'after'})")
        compare_lines(normalisers[0].text(a.stdout).splitlines(),
                      normalisers[1].text(b.stdout).splitlines(), where, findings)


def failure_hint(result, normaliser):
    """The last line of stderr of a command that did not end as planned: usually the error."""
    if result.rc == result.expected_rc:
        return ""
    lines = [line for line in normaliser.path(result.stderr).splitlines() if line.strip()]
    return f" [{short(lines[-1], 160)}]" if lines else ""


def compare_scenario(scenario, before, after):
    run_a, run_b = before.runs[scenario.name], after.runs[scenario.name]
    normalisers = (Normaliser(run_a.folder, before.code), Normaliser(run_b.folder, after.code))
    findings = Findings()
    compare_commands(run_a.results, run_b.results, normalisers, findings)
    compare_folders(run_a.folder, run_b.folder, normalisers, findings)
    for side, run in (("before", run_a), ("after", run_b)):
        if run.attempts > 1:
            findings.note(f"{side} needed {run.attempts} attempts (a kill came before the "
                          f"checkpoint it follows)")
    return findings


# ------------------------------------------------------------------------------------------
# Report and main
# ------------------------------------------------------------------------------------------

def scenario_lines(name, findings):
    if not findings.differences:
        return [f"{name}: identical ({findings.checkpoints} checkpoints, "
                f"{findings.tensors} tensors)"]
    lines = [f"{name}: {len(findings.differences)} differences"]
    lines += [f"  {d}" for d in findings.differences[:SHOWN_PER_SCENARIO]]
    if len(findings.differences) > SHOWN_PER_SCENARIO:
        lines.append(f"  ... and {len(findings.differences) - SHOWN_PER_SCENARIO} more")
    return lines


def report(all_findings):
    """Prints the result; returns the number of differences."""
    for name, findings in all_findings.items():
        print("\n".join(scenario_lines(name, findings)))
    for name, findings in all_findings.items():
        for text in findings.notes:
            print(f"note: {name}: {text}")
    total = sum(len(f.differences) for f in all_findings.values())
    print("identical" if total == 0 else f"DIFFERENT: {total} differences")
    return total


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE,
                        help=f"git ref of the old code (default {DEFAULT_BEFORE})")
    parser.add_argument("--after", default=WORKING_TREE,
                        help="git ref of the new code, or 'worktree' for this checkout's "
                             "working tree as it is (default)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="write the scenarios' folders under DIR/before and DIR/after and "
                             "keep them (DIR must be empty or new)")
    return parser.parse_args(argv)


def output_root(keep, scratch):
    if keep is None:
        return scratch / "out"
    if keep.exists() and any(keep.iterdir()):
        sys.exit(f"--keep {keep}: not empty")
    return keep.resolve()


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    worktrees = []
    with tempfile.TemporaryDirectory(prefix="behaviour_unchanged_") as scratch:
        scratch = Path(scratch).resolve()
        try:
            out_root = output_root(args.keep, scratch)
            env = command_environment(scratch)
            sides = [Side("before", code_folder(args.before, scratch / "before-code", worktrees),
                          env),
                     Side("after", code_folder(args.after, scratch / "after-code", worktrees),
                          env)]
            # One process per side at a time: two on 2 cores, each single-threaded.
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                for future in [pool.submit(run_side, side, out_root) for side in sides]:
                    future.result()
            all_findings = {s.name: compare_scenario(s, *sides) for s in SCENARIOS}
        finally:
            remove_worktrees(worktrees)
    log(f"took {time.monotonic() - started:.0f} s")
    return 1 if report(all_findings) else 0


if __name__ == "__main__":
    sys.exit(main())
