"""The run's settings: defaults, checks of the flags given, and how the flags, a checkpoint's
settings and the defaults merge (defaults, then the checkpoint's, then the flags given).

A run's settings are stored in every checkpoint as `args`; rerunning a command continues the
run with them, so a flag need not be repeated. What makes the run this run may not change on
resume; some values may, with a notice.
"""

import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

import families
import models
from messages import UsageError, check

DIST_TIMEOUT_MINUTES = 30.0
COMMON_DEFAULTS = {
    "model": families.NAMES[0], "config": "tiny", "data": None, "val_fraction": 0.1, "seed": 0,
    "weight_decay": 0.01, "grad_clip": 1.0, "lr_schedule": "constant",
    "eval_interval": 1, "eval_samples": 100, "name": None, "checkpoint_dir": "checkpoints",
    "checkpoint_frequency": 1, "checkpoint_every_steps": 0, "checkpoint_every_minutes": 10.0,
    "output_dir": None, "precision": "fp32", "keep_last": None, "keep_every": None,
    # None: NAME_tensorboard in the checkpoint folder (tensorboard_log.py).
    "tensorboard_dir": None,
    # A family with a choice of loss (Family.losses) sets these two in its defaults.
    "loss": None, "huber_delta": None,
    # Fixed splits instead of --data and --val-fraction; a test set scored at the end.
    "train_data": None, "val_data": None, "test_data": None, "max_samples": None,
    "early_stopping": None,
    # The antibody families set these in their defaults (others refuse the flags).
    "label_smoothing": None, "max_antigen_length": None,
    # None: the size table's dropout for the model (0.1 for the antibody models, 0 for the
    # DNA models).
    "dropout": None,
}
DATA_PATHS = ("data", "train_data", "val_data", "test_data")
# Every family sets these in its `defaults`.
FAMILY_SETTINGS = ("num_samples", "epochs", "batch_size", "lr", "warmup_steps")
SETTINGS = tuple(COMMON_DEFAULTS) + FAMILY_SETTINGS
# What makes a run this run: a resume that asks for different values is refused.
RUN_IDENTITY = ("model", "config", *DATA_PATHS, "num_samples", "max_samples", "val_fraction",
                "seed", "lr_schedule", "warmup_steps", "loss", "huber_delta",
                "label_smoothing", "max_antigen_length", "dropout")
# What an explicit flag may change on resume, with a notice.
OVERRIDABLE = ("lr", "weight_decay", "grad_clip", "precision", "early_stopping")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def explicit_flags(namespace):
    """The flags given on the command line, as a dict (argparse leaves the others None)."""
    return {k: v for k, v in vars(namespace).items() if v is not None and v is not False}


def validate(explicit):
    """Range checks on the flags given; errors name the flag."""
    positive = ("num_samples", "epochs", "batch_size", "checkpoint_frequency",
                "eval_interval", "eval_samples", "keep_last", "keep_every", "max_samples",
                "early_stopping", "max_antigen_length", "beam_size")
    for key in positive:
        if key in explicit:
            check(explicit[key] > 0, f"--{key.replace('_', '-')} must be a positive integer "
                                     f"(got {explicit[key]})")
    for key in ("checkpoint_every_steps", "warmup_steps"):
        if key in explicit:
            check(explicit[key] >= 0, f"--{key.replace('_', '-')} must be 0 or more "
                                      f"(got {explicit[key]})")
    if "dist_timeout" in explicit:
        check(math.isfinite(explicit["dist_timeout"]) and explicit["dist_timeout"] > 0,
              f"--dist-timeout must be a positive number of minutes "
              f"(got {explicit['dist_timeout']})")
    for key in ("weight_decay", "grad_clip", "checkpoint_every_minutes"):
        if key in explicit:
            check(math.isfinite(explicit[key]) and explicit[key] >= 0,
                  f"--{key.replace('_', '-')} must be 0 or more (got {explicit[key]})")
    if "huber_delta" in explicit:
        check(math.isfinite(explicit["huber_delta"]) and explicit["huber_delta"] > 0,
              f"--huber-delta must be a positive number of decades "
              f"(got {explicit['huber_delta']})")
    if "label_smoothing" in explicit:
        check(0 <= explicit["label_smoothing"] < 1,
              f"--label-smoothing must be at least 0 and below 1 "
              f"(got {explicit['label_smoothing']})")
    if "dropout" in explicit:
        check(0 <= explicit["dropout"] < 1,
              f"--dropout must be at least 0 and below 1 (got {explicit['dropout']})")
    if "data" in explicit and "train_data" in explicit:
        raise UsageError("--data and --train-data both name the training data: give one")
    if "val_data" in explicit and "train_data" not in explicit:
        raise UsageError("--val-data goes with --train-data (with --data, --val-fraction "
                         "holds out the validation set)")
    if "lr" in explicit:
        check(math.isfinite(explicit["lr"]) and explicit["lr"] > 0,
              f"--lr must be a positive number (got {explicit['lr']})")
    if "val_fraction" in explicit:
        check(0 < explicit["val_fraction"] < 1,
              f"--val-fraction must be between 0 and 1 (got {explicit['val_fraction']})")
    if "name" in explicit:
        name = explicit["name"]
        check(name and all(c.isalnum() or c in "._-" for c in name) and not name.startswith("."),
              f"--name must be letters, digits, '.', '_' or '-' (got {name!r})")
    if "contacts" in explicit and "predict" not in explicit:
        raise UsageError("--contacts goes with --predict (training data give their contacts "
                         "in a 'contacts' column)")
    if explicit.get("fresh") and explicit.get("resume_from"):
        raise UsageError("--fresh and --resume-from contradict each other: choose one")


def check_writable_folder(folder, flag):
    """Refuse a folder that cannot be created or written, before anything is written."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    check(probe.is_dir(), f"{flag} {folder}: {probe} is not a folder")
    check(os.access(probe, os.W_OK | os.X_OK), f"{flag} {folder}: {probe} is not writable")
    check(not os.statvfs(probe).f_flag & os.ST_RDONLY,
          f"{flag} {folder}: {probe} is on a read-only file system")


def resolve_device(name, procs):
    """The torch device for --device. Under torchrun, `cuda` (or `auto` with CUDA) means the
    GPU of this process's LOCAL_RANK. A device this process cannot have is its own error
    (UsageError.this_rank): under torchrun, a rank whose GPU is missing says so itself, since
    rank 0 may have its GPU and not know."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N (got {name!r})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here",
                             this_rank=procs.active)
        if device.index is None and procs.active:
            device = torch.device("cuda", procs.local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this process needs cuda:{device.index}, but "
                             f"only {torch.cuda.device_count()} CUDA device(s) are visible"
                             + (" (fewer GPUs than --nproc_per_node?)" if procs.active else ""),
                             this_rank=procs.active)
        if device.index is not None:
            torch.cuda.set_device(device)
    else:
        check(device.type == "cpu", f"--device must be auto, cpu, cuda or cuda:N (got {name!r})")
    return device


def merge_settings(explicit, saved):
    """Defaults (the family's, then the common ones), then the checkpoint's `saved` settings,
    then the flags given."""
    model = explicit.get("model") or (saved or {}).get("model") or COMMON_DEFAULTS["model"]
    settings = {**COMMON_DEFAULTS, **families.get(model).defaults}
    settings.update({k: v for k, v in (saved or {}).items() if k in SETTINGS})
    settings.update({k: v for k, v in explicit.items() if k in SETTINGS})
    for key in DATA_PATHS:
        if explicit.get(key):
            settings[key] = os.path.abspath(explicit[key])
    return settings


def identity_conflicts(explicit, saved, saved_config):
    """Human-readable differences between the flags given and the checkpoint's run."""
    conflicts = []
    for key in RUN_IDENTITY:
        if key not in explicit:
            continue
        wanted = os.path.abspath(explicit[key]) if key in DATA_PATHS else explicit[key]
        if saved.get(key) != wanted:
            detail = ""
            if key == "config" and saved_config.get("model") in models.CONFIGS:
                asked = asdict(models.get_config(saved_config["model"], wanted))
                differing = [f"{f} {saved_config.get(f)} vs {asked[f]}" for f in asked
                             if f != "name" and saved_config.get(f) != asked[f]]
                detail = f": {', '.join(differing)}" if differing else ""
            conflicts.append(f"{key} (checkpoint {saved.get(key)!r}, requested {wanted!r}{detail})")
    return conflicts
