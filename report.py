"""What a run tells people: the progress.json and status.txt files and the console summary."""

import datetime
import json
import math
import os
import socket
import time

from checkpoint import write_text


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _json_safe(value):
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def progress_record(run_state, progress, settings, last_checkpoint, save_error, steps_per_epoch,
                    save_stalls=(), eta=None, caveats=()):
    """The dict written to NAME_progress.json. `save_stalls`: seconds the training loop was
    blocked by each save of this process (the snapshot; the write runs in the background).
    `caveats`: why this run would not resume bit-identically (none: it would)."""
    stalls = {"saves": len(save_stalls),
              "mean_s": sum(save_stalls) / len(save_stalls) if save_stalls else None,
              "max_s": max(save_stalls, default=None)}
    return _json_safe({
        "name": settings["name"],
        "status": run_state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "epoch": progress.epoch,
        "epochs": settings["epochs"],
        "global_step": progress.global_step,
        "step_in_epoch": progress.step_in_epoch,
        "steps_per_epoch": steps_per_epoch,
        "train_loss": progress.train_loss,
        "val_loss": progress.val_loss,
        "best_val_loss": progress.best_val_loss,
        "best_epoch": progress.best_epoch,
        "epochs_without_improvement": progress.epochs_without_improvement,
        "stopped_early": progress.stopped_early,
        "test": progress.test,
        "timestamp": now_iso(),
        "last_checkpoint": last_checkpoint,
        "last_save_error": save_error,
        "checkpoint_stall": stalls,
        "eta": eta,
        "exact_resume": {"expected": not caveats, "caveats": list(caveats)},
        "args": settings,
        "history": progress.history,
    })


def _test_text(test):
    """The test set's score: "loss 1.2345, perplexity 3.437 (best model, epoch 7, 200
    samples)"."""
    parts = [f"loss {test['loss']:.4f}"] + [
        f"{k} {v:.4f}" for k, v in test["measures"].items() if isinstance(v, float)]
    return (f"{', '.join(parts)} (best model, epoch {test['epoch']}, {test['samples']} "
            f"samples)")


def _exactness(exact):
    if not exact or exact["expected"]:
        return "yes (a resumed run is bit-identical to an uninterrupted one)"
    return "no: " + "; ".join(exact["caveats"])


def status_text(record, measure_lines=()):
    """NAME_status.txt: one `Key: value` line each, for a person or `grep`;
    `measure_lines` (the family's, e.g. "Validity: 93.0%") follow the losses."""
    state = record["status"]
    if state == "running":
        state = f"running (process {record['pid']} on {record['host']})"
    position = f"{record['epoch']}/{record['epochs']}"
    if record["step_in_epoch"]:
        position += (f" (step {record['step_in_epoch']} of {record['steps_per_epoch']} in epoch "
                     f"{record['epoch'] + 1})")
    best = _fmt(record["best_val_loss"])
    if record["best_epoch"] is not None:
        best += f" (epoch {record['best_epoch']})"
    last = record["last_checkpoint"]
    last_text = (f"{last['path']} (epoch {last['epoch']}, step {last['global_step']}) at "
                 f"{last['time']}") if last else "none yet"
    error = record["last_save_error"]
    lines = [
        f"Run: {record['name']}",
        f"State: {state}",
        f"Epoch: {position}",
        f"Global Step: {record['global_step']}",
        f"Train Loss: {_fmt(record['train_loss'])}",
        f"Val Loss: {_fmt(record['val_loss'])}",
        f"Best Val Loss: {best}",
        *measure_lines,
        *([f"Test: {_test_text(record['test'])}"] if record.get("test") else []),
        f"Last Checkpoint: {last_text}",
        f"Last Save Error: {error['error'] + ' at ' + error['time'] if error else 'none'}",
        f"ETA: {record.get('eta') or 'n/a'}",
        f"Exact Resume: {_exactness(record.get('exact_resume'))}",
        f"Last Update: {record['timestamp']}",
    ]
    return "\n".join(lines) + "\n"


def write_run_files(run, record, measure_lines=()):
    """Atomically replace the run's progress.json and status.txt.

    Raises:
        OSError: when either cannot be written (the previous file stays whole).
    """
    write_text(run.progress, json.dumps(record, indent=2) + "\n")
    write_text(run.status, status_text(record, measure_lines))


def duration(seconds):
    """3 s, 4 min 05 s, 2 h 07 min: short enough for a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RunClock:
    """Steps per second of this process (validation, sampling and saves included, so the ETA
    covers them) and the time the run will end at that pace."""

    def __init__(self, global_step):
        self.started, self.first_step = time.monotonic(), global_step

    def rate(self, global_step):
        elapsed = time.monotonic() - self.started
        done = global_step - self.first_step
        return done / elapsed if done and elapsed > 0 else None

    def eta_seconds(self, global_step, steps_left):
        rate = self.rate(global_step)
        return None if rate is None else steps_left / rate

    def eta_text(self, global_step, steps_left):
        """"2026-11-23T22:40:05 (in 12 min 30 s)", or None before the first step."""
        seconds = self.eta_seconds(global_step, steps_left)
        if seconds is None:
            return None
        end = datetime.datetime.now() + datetime.timedelta(seconds=seconds)
        return f"{end.isoformat(timespec='seconds')} (in {duration(seconds)})"


def progress_line(epoch, epochs, step, steps, loss, rate, epoch_left_s, run_left_s):
    """The plain progress line written instead of a progress bar when stderr is not a
    terminal (cluster logs): no carriage returns, one line every tenth of an epoch."""
    parts = [f"Epoch {epoch}/{epochs} step {step}/{steps} ({100 * step // steps}%)",
             f"loss {loss:.4f}"]
    if rate is not None:
        parts += [f"{rate:.2f} steps/s", f"epoch ETA {duration(epoch_left_s)}",
                  f"run ETA {duration(run_left_s)}"]
    return " | ".join(parts)


def epoch_summary(epoch, epochs, train_loss, val_loss, measure_parts, seconds):
    """One line per epoch: losses, then the family's measures (`measure_parts`), then time."""
    parts = [f"Epoch {epoch}/{epochs}", f"train loss {train_loss:.4f}", f"val loss {val_loss:.4f}",
             *measure_parts, f"{seconds:.1f}s"]
    return " | ".join(parts)
