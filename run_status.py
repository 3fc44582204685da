"""`train.py --status`: what is in a checkpoint folder, read without changing anything.

For every run in the folder: its state (running with its PID, finished, interrupted, failed,
diverged), position, losses and disk use; for one run (`--name`), each checkpoint file with
its epoch, step, losses, role (latest, best), size, age and whether it verifies. Reading is
safe while a run trains: files are only ever replaced by rename, so each one read is whole.
"""

import json
import re
import time
from pathlib import Path

import checkpoint as ckpt
import retention
import tensorboard_log
from messages import EXIT_OK, check
from settings import COMMON_DEFAULTS

_RUN_FILE = re.compile(rf"(.+?)_({ckpt.RunFiles.SUFFIXES})")
_TEMP_FILE = re.compile(rf"\.(.+?)_({ckpt.RunFiles.SUFFIXES})\.tmp-(\d+)")


def run_names(folder):
    """Names of the runs with files in `folder`."""
    names = set()
    for path in Path(folder).iterdir():
        match = _RUN_FILE.fullmatch(path.name) or _TEMP_FILE.fullmatch(path.name)
        if match:
            names.add(match.group(1))
    return sorted(names)


def _age(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _loss(value):
    return "-" if value is None else f"{value:.4f}"


def _table(header, rows):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def read_progress_file(run):
    try:
        return json.loads(run.progress.read_text())
    except (OSError, ValueError):
        return None


def run_state(run, progress):
    """The run's state in words. A run whose progress file says "running" but whose lock
    nobody holds was killed without a chance to say so."""
    holder = ckpt.lock_holder(run.lock)
    if holder:
        return f"running ({holder})"
    if progress is None:
        return "unknown (no progress file)"
    state = progress.get("status", "unknown")
    if state == "running":
        return f"killed (process {progress.get('pid')} on {progress.get('host')} is gone)"
    return state


def disk_bytes(paths):
    """Bytes the files use, counting hard links to the same data once; a folder (the
    TensorBoard one) counts by the files in it."""
    seen, total = set(), 0
    for path in paths:
        if path.is_dir():
            total += disk_bytes(p for p in path.rglob("*") if p.is_file())
            continue
        st = _stat(path)
        if st is None:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def tensorboard_folder(run, progress):
    """The run's TensorBoard folder (--tensorboard-dir, else NAME_tensorboard), or None when
    there is none on disk."""
    folder = Path(tensorboard_log.folder_of(run, (progress or {}).get("args") or {}))
    return folder if folder.is_dir() else None


def describe_checkpoint(path):
    """(epoch, global step, train loss, val loss, verification) of one checkpoint file."""
    try:
        state = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as e:
        return None, None, None, None, f"NO: {e}"
    return (state["epoch"], state["global_step"], state["train_loss"], state["val_loss"],
            "yes")


def folder_report(folder):
    """One line per run in `folder`."""
    folder = Path(folder)
    rows, total_files, boards = [], [], []
    for name in run_names(folder):
        run = ckpt.RunFiles(folder, name)
        files = run.existing() + run.stale_temp_files()
        total_files += files
        progress = read_progress_file(run) or {}
        board = tensorboard_folder(run, progress)
        if board is not None:
            boards.append(str(board))
        position = (f"{progress.get('epoch', '?')}/{progress.get('epochs', '?')}"
                    if progress else "?")
        updated = max((st.st_mtime for st in map(_stat, files) if st), default=None)
        rows.append([name, run_state(run, progress or None), position,
                     progress.get("global_step", "?"), _loss(progress.get("val_loss")),
                     _loss(progress.get("best_val_loss")),
                     sum(1 for p in files if p.suffix == ".pt"),
                     retention.human(disk_bytes(files)),
                     "-" if updated is None else _age(time.time() - updated)])
    if not rows:
        return f"No runs in {folder}."
    header = ["run", "state", "epoch", "step", "val loss", "best val", "checkpoints", "disk",
              "updated"]
    text = (f"Runs in {folder}:\n{_table(header, rows)}\n"
            f"Total disk used: {retention.human(disk_bytes(total_files))}")
    if boards:
        text += f"\nTensorBoard event files in: {', '.join(boards)}"
    return text


def run_report(folder, name, keep_last=None, keep_every=None):
    """Every checkpoint of run `name`, newest first, with the run's state and disk use."""
    run = ckpt.RunFiles(Path(folder), name)
    files = run.existing()
    temps = run.stale_temp_files()
    if not files and not temps:
        return None
    progress = read_progress_file(run)
    best_inode = _inode(run.best)
    latest_inode = _inode(run.latest)
    rows = []
    now = time.time()
    candidates = run.resume_candidates()
    for path in candidates:
        epoch, step, train_loss, val_loss, verified = describe_checkpoint(path)
        st = _stat(path)
        if st is None:
            continue   # pruned by the live run after the folder was listed
        roles = [role for role, named in (("latest", run.latest), ("best", run.best))
                 if path == named]
        # A save publishes its names as hard links to one file: say which are the same data.
        roles += [f"= {role}" for role, named, inode in (("latest", run.latest, latest_inode),
                                                         ("best", run.best, best_inode))
                  if path != named and inode is not None and _inode(path) == inode]
        rows.append([path.name, "-" if epoch is None else epoch, "-" if step is None else step,
                     _loss(train_loss), _loss(val_loss), ", ".join(roles) or "-",
                     retention.human(st.st_size), _age(now - st.st_mtime), verified])
    for path in temps:
        st = _stat(path)
        if st is None:
            continue   # the live run's write finished (renamed into place) meanwhile
        rows.append([path.name, "-", "-", "-", "-", "temporary", retention.human(st.st_size),
                     _age(now - st.st_mtime), "a write in progress, or left by a killed "
                                              "writer (removed at the next start)"])
    lines = [f"Run {name} in {folder}: {run_state(run, progress)}"]
    if progress:
        best = ("" if progress.get("best_epoch") is None else
                f", best val loss {_loss(progress['best_val_loss'])} (epoch "
                f"{progress['best_epoch']})")
        lines.append(f"Epoch {progress['epoch']}/{progress['epochs']}, global step "
                     f"{progress['global_step']}{best}"
                     + (f", ETA {progress['eta']}" if progress.get("eta") else ""))
    board = tensorboard_folder(run, progress)
    if board is not None:
        lines.append(f"TensorBoard event files in {board} (view: tensorboard --logdir {board})")
    header = ["file", "epoch", "step", "train loss", "val loss", "role", "size", "modified",
              "verifies"]
    lines.append(_table(header, rows))
    lines.append(f"Disk used: {retention.human(disk_bytes(files + temps))} (hard links to the "
                 f"same data counted once)")
    if keep_last is None and keep_every is None and progress:
        keep_last = progress.get("args", {}).get("keep_last")
        keep_every = progress.get("args", {}).get("keep_every")
    doomed = retention.prunable(run, keep_last, keep_every)
    settings = ", ".join(f"--{flag} {value}" for flag, value in
                         (("keep-last", keep_last), ("keep-every", keep_every)) if value)
    if doomed:
        others = [p for p in files + temps if p not in doomed]
        freed = disk_bytes(files + temps) - disk_bytes(others)
        lines.append(f"Retention ({settings}) would delete "
                     f"{', '.join(p.name for p in doomed)}, freeing {retention.human(freed)}")
    elif keep_last or keep_every:
        lines.append(f"Retention ({settings}) would delete nothing")
    else:
        lines.append("Retention: every numbered epoch file is kept (set --keep-last N or "
                     "--keep-every K to prune them)")
    return "\n".join(lines)


def _stat(path):
    """The file's stat, or None when it is gone: while --status reads, a live run renames
    its temporary files into place and prunes old epoch files."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _inode(path):
    st = _stat(path)
    return None if st is None else (st.st_dev, st.st_ino)


def show(explicit):
    """--status: print the folder's runs, or with --name that run's report; change nothing."""
    folder = Path(explicit.get("checkpoint_dir") or COMMON_DEFAULTS["checkpoint_dir"])
    check(folder.is_dir(), f"--checkpoint-dir {folder}: no such folder")
    if explicit.get("name"):
        text = run_report(folder, explicit["name"], explicit.get("keep_last"),
                          explicit.get("keep_every"))
        check(text is not None, f"no run {explicit['name']} in {folder} (runs there: "
                                f"{', '.join(run_names(folder)) or 'none'})")
    else:
        text = folder_report(folder)
    print(text)
    return EXIT_OK
