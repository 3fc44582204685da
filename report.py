"""What a run tells people: the progress.json and status.txt files and the console summary."""

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


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


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
                    save_stalls=()):
    """The dict written to NAME_progress.json. `save_stalls`: seconds the training loop was
    blocked by each save of this process (the snapshot; the write runs in the background)."""
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
        "timestamp": now_iso(),
        "last_checkpoint": last_checkpoint,
        "last_save_error": save_error,
        "checkpoint_stall": stalls,
        "args": settings,
        "history": progress.history,
    })


def status_text(record):
    """NAME_status.txt: one `Key: value` line each, for a person or `grep`."""
    history = record["history"]
    validity = next((v for v in reversed(history.get("validity", [])) if v is not None), None)
    diversity = next((v for v in reversed(history.get("diversity", [])) if v is not None), None)
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
    ]
    if history.get("validity"):
        lines += [f"Validity: {_percent(validity)}", f"Diversity: {_percent(diversity)}"]
    lines += [
        f"Last Checkpoint: {last_text}",
        f"Last Save Error: {error['error'] + ' at ' + error['time'] if error else 'none'}",
        f"Last Update: {record['timestamp']}",
    ]
    return "\n".join(lines) + "\n"


def write_run_files(run, record):
    """Atomically replace the run's progress.json and status.txt.

    Raises:
        OSError: when either cannot be written (the previous file stays whole).
    """
    write_text(run.progress, json.dumps(record, indent=2) + "\n")
    write_text(run.status, status_text(record))


def epoch_summary(epoch, epochs, train_loss, val_loss, validity, diversity, seconds):
    parts = [f"Epoch {epoch}/{epochs}", f"train loss {train_loss:.4f}", f"val loss {val_loss:.4f}"]
    if validity is not None:
        parts += [f"validity {_percent(validity)}", f"diversity {_percent(diversity)}"]
    parts.append(f"{seconds:.1f}s")
    return " | ".join(parts)
