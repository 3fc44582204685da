"""Start-up: which run this is, which checkpoint it resumes from and with which settings, the
run's folder (its lock, what a killed writer left, the disk check), and the training objects,
fresh or restored from the checkpoint. Reads before it writes: a refused start changes nothing.

Under torchrun rank 0 alone decides which run and which checkpoint; the other ranks receive
the decision and load the same file.
"""

import functools
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

import background_save
import checkpoint as ckpt
import data
import models
import retention
from messages import EXIT_BAD_INPUT, Quiet, UsageError, check, say, warn
from run_state import Progress
from run_status import read_progress_file
from settings import (COMMON_DEFAULTS, OVERRIDABLE, check_writable_folder, identity_conflicts,
                      merge_settings)


# --------------------------------------------------------------------------------------------
# Which run, and which checkpoint it resumes from
# --------------------------------------------------------------------------------------------

def prepare(explicit):
    """Resolve which run this is and what it resumes from, reading but writing nothing.

    Returns:
        (settings, run, state, source, skipped): `state` is the checkpoint dict to resume
        from (None for a new run), `source` its path, `skipped` the candidates passed over.
    """
    skipped = []
    if explicit.get("resume_from"):
        source = Path(explicit["resume_from"])
        try:
            state = ckpt.load_checkpoint(source)
        except ckpt.CheckpointError as e:
            raise UsageError(f"cannot resume from {source}: {e}") from None
        directory = Path(explicit.get("checkpoint_dir") or source.parent)
        name = explicit.get("name") or state["args"].get("name")
    else:
        model = explicit.get("model", COMMON_DEFAULTS["model"])
        directory = Path(explicit.get("checkpoint_dir") or COMMON_DEFAULTS["checkpoint_dir"])
        name = explicit.get("name") or f"{model}_{explicit.get('config', 'tiny')}"
        state = source = None
        run = ckpt.RunFiles(directory, name)
        if not explicit.get("fresh") and run.resume_candidates():
            state, source, skipped = ckpt.find_resume_checkpoint(run)
            if state is None:
                reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
                raise UsageError(f"run {name} in {directory} has no usable checkpoint ({reasons});"
                                 f" use --fresh to start over (its files are kept)")
    run = ckpt.RunFiles(directory, name)
    if state is not None:
        saved_args = state["args"]
        if saved_args.get("model") != state["config"].get("model"):
            raise UsageError(f"{source}: its args and config disagree on the model family")
        conflicts = identity_conflicts(explicit, saved_args, state["config"])
        if conflicts:
            raise UsageError(f"{source} does not match the requested run: {'; '.join(conflicts)}."
                             f" Drop those flags, use --fresh, or choose another --name")
    settings = merge_settings(explicit, state["args"] if state else None)
    settings["name"], settings["checkpoint_dir"] = name, str(directory)
    return settings, run, state, source, skipped


def ended_without_final_files(run, state, settings, procs):
    """True when `state` ends the run (all epochs trained, or stopped early) but the run's
    progress file does not say so: the process was killed (or the power cut) between its
    final checkpoint and its final status write, which would otherwise say "running" forever.
    Decided by rank 0, which alone reads the run's files."""
    ended = state["epoch"] >= settings["epochs"] or state.get("stopped_early") is not None
    stale = False
    if ended and procs.main:
        record = read_progress_file(run)
        if not isinstance(record, dict):
            stale = True   # missing or unreadable: write it
        else:
            final = str(record.get("status"))
            stale = (not (final == "finished" or final.startswith("stopped early"))
                     or record.get("global_step") != state["global_step"])
    return bool(procs.broadcast(stale))


def agree_on_start(explicit, procs):
    """`prepare` on rank 0, which alone decides which run this is and what it resumes from;
    the other ranks receive the decision and load the same checkpoint file (read only)."""
    if not procs.active:
        return prepare(explicit)
    error = None
    if procs.main:
        try:
            settings, run, state, source, skipped = prepare(explicit)
        except UsageError as e:
            procs.broadcast({"error": str(e)})
            raise
        procs.broadcast({"settings": settings, "source": source and str(source)})
    else:
        decision = procs.broadcast(None)
        if "error" in decision:
            raise Quiet(EXIT_BAD_INPUT)
        settings, source, state, skipped = decision["settings"], decision["source"], None, []
        run = ckpt.RunFiles(Path(settings["checkpoint_dir"]), settings["name"])
        if source:
            try:
                state = ckpt.load_checkpoint(source)
            except ckpt.CheckpointError as e:
                error = UsageError(f"cannot read {source}, which rank 0 resumes from: {e}",
                                   this_rank=True)
    if not procs.all_ok(error is None):
        if error is not None:
            raise error
        if procs.main:
            raise UsageError(f"another process could not read {source}: every node must see "
                             f"--checkpoint-dir on a shared file system")
        raise Quiet(EXIT_BAD_INPUT)
    return settings, run, state, source, skipped


def describe_resume(path, state):
    position = f"epoch {state['epoch']}"
    if state["step_in_epoch"]:
        position += f" + {state['step_in_epoch']} steps of epoch {state['epoch'] + 1}"
    val = "n/a" if state["val_loss"] is None else f"{state['val_loss']:.4f}"
    return (f"Resuming from {path}: {position} (global step {state['global_step']}), "
            f"val loss {val}")


def files_newer_than(run, state, source):
    """Files of `run` that record more progress than the checkpoint `state` (read from
    `source`): resuming from it would overwrite them, so they are moved aside instead."""
    newer = [path for n, path in run.epoch_files() if n > state["epoch"]]
    for path in (run.latest, run.best):
        if path.exists() and not _same_file(path, source):
            position = ckpt.read_progress(path)
            if position is None or position[1] > state["global_step"]:
                newer.append(path)
    return newer


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The run's folder (rank 0)
# --------------------------------------------------------------------------------------------

def claim_run_folder_once(explicit, run, state, source, skipped, settings, config, procs):
    """Rank 0 claims the run's folder (claim_run_folder); every rank learns whether it could,
    and all refuse together. Returns the lock (None on the other ranks)."""
    lock = error = None
    if procs.main:
        try:
            lock = claim_run_folder(explicit, run, state, source, skipped, settings, config)
        except UsageError as e:
            error = e
    if not procs.all_ok(error is None):
        raise error or Quiet(EXIT_BAD_INPUT)
    return lock


def claim_run_folder(explicit, run, state, source, skipped, settings, config):
    """Rank 0's part of start-up: check the folders, take the run lock, clear what a killed
    writer left, and move aside files that resuming from `state` would overwrite. Returns
    the lock."""
    check_writable_folder(run.directory, "--checkpoint-dir")
    if settings["output_dir"]:
        check_writable_folder(settings["output_dir"], "--output-dir")
    try:
        ckpt.make_folders(run.directory)
        if settings["output_dir"]:
            ckpt.make_folders(settings["output_dir"])
        lock = ckpt.RunLock(run.lock).acquire()
    except ckpt.RunLockedError as e:
        raise UsageError(f"run {run.name} in {run.directory} is being trained by {e}; "
                         f"wait for it or stop it first") from None
    except OSError as e:
        raise UsageError(f"--checkpoint-dir {run.directory}: {e.strerror}") from None
    try:
        tidy_run_folder(explicit, run, state, source, skipped)
        check_disk_space(run, settings, config)
    except BaseException:
        lock.release()
        raise
    return lock


def tidy_run_folder(explicit, run, state, source, skipped):
    for path in run.stale_temp_files():
        os.unlink(path)   # left by a writer that was killed mid-save; the lock says it is gone
    if explicit.get("fresh") and run.existing():
        folder = ckpt.move_aside(run, run.existing())
        say(f"--fresh: moved the previous files of run {run.name} to {folder}")
    if state is None and run.resume_candidates() and not explicit.get("fresh"):
        # Checkpoints appeared between the read-only look and taking the lock.
        raise UsageError(f"run {run.name} changed while starting; run the command again")
    if state is not None:
        for path, why in skipped:
            say(f"Skipped {path.name}: {why}")
        aside = [p for p, _ in skipped if p.exists()] + [
            p for p in files_newer_than(run, state, source)
            if not any(_same_file(p, q) for q, _ in skipped)]
        if aside:
            folder = ckpt.move_aside(run, aside)
            say(f"Moved {', '.join(p.name for p in aside)} to {folder} (they were damaged or "
                f"newer than the checkpoint resumed from)")


def check_disk_space(run, settings, config):
    """Say what the run will need on disk; warn when the free space will not hold it, and
    refuse (before training) only when even one more checkpoint will not fit."""
    one = estimated_checkpoint_bytes(config)
    kept = retention.epoch_files_kept(settings["epochs"], settings["checkpoint_frequency"],
                                      settings["keep_last"], settings["keep_every"])
    need = retention.estimate(one, kept)
    free = retention.free_bytes(run.directory)
    already = sum(p.stat().st_size for p in run.existing() if p.suffix == ".pt")
    h = retention.human
    say(f"Disk: a checkpoint is about {h(one)}; the run keeps at most {kept + 2} checkpoint "
        f"files (latest, best, {kept} epoch files) plus one being written: {h(need)} at most; "
        f"{h(free)} free in {run.directory}")
    if free < one:
        raise UsageError(f"--checkpoint-dir {run.directory}: {h(free)} free, less than one "
                         f"checkpoint ({h(one)}); free space or choose another folder")
    if need - already > free:
        warn(f"the run may need {h(need)} in {run.directory} but only {h(free)} are free "
             f"(with {h(already)} already used): it will warn at each save that fails; "
             f"--keep-last N keeps fewer epoch files")


# --------------------------------------------------------------------------------------------
# Data and memory
# --------------------------------------------------------------------------------------------

def load_dataset(family, settings, config, state, source):
    """(the run's data, from its family; the config that fits it). Refused when the data is
    not what `state` trained on."""
    # A flag the family does not take is refused before its data are read.
    check(settings["loss"] is None or settings["loss"] in family.losses,
          f"--loss does not apply to a {family.name} model" if not family.losses else
          f"--loss {settings['loss']}: a {family.name} model takes {', '.join(family.losses)}")
    check(settings["label_smoothing"] is None or "label_smoothing" in family.defaults,
          f"--label-smoothing does not apply to a {family.name} model (it is not trained on "
          f"tokens)")
    check(settings["max_antigen_length"] is None or hasattr(config, "max_antigen_len"),
          f"--max-antigen-length does not apply to a {family.name} model (it reads no antigen)")
    try:
        dataset = family.load_dataset(settings, config)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    if state is not None and state.get("data_fingerprint") != dataset.fingerprint:
        raise UsageError(f"the data differs from what {source} was trained on "
                         f"({settings['data'] or 'built-in data'}); use --fresh or another --name")
    fitted = family.fit_config(config, dataset, settings)
    if settings["dropout"] is not None:   # --dropout replaces the size table's
        fitted = replace(fitted, dropout=settings["dropout"])
    if state is not None and fitted != config:
        differing = [f"{k} {v} vs {getattr(fitted, k)}" for k, v in asdict(config).items()
                     if getattr(fitted, k) != v]
        raise UsageError(f"{source} does not fit its data: {', '.join(differing)}")
    return dataset, fitted


def reserve_staging_memory(state, config, device, procs):
    """Start paging in the memory of the background writer's snapshot buffers, beside the
    rest of start-up (background_save.PagedInMemory): the state's own size on a resume, else
    a checkpoint's estimated size; on a GPU, pinned for its copies. None on the ranks that do
    not save, which need no such buffers."""
    if not procs.main:
        return None
    if state is not None:
        nbytes = background_save.staged_nbytes(state)
    else:
        nbytes = estimated_checkpoint_bytes(config)
    return background_save.PagedInMemory(nbytes, device if device.type == "cuda" else None)


@functools.cache
def estimated_checkpoint_bytes(config):
    """One checkpoint's estimated size, from the model built on the meta device (no memory, no
    initialisation); the disk check and the staging memory both ask, it is built once."""
    with torch.device("meta"):
        return retention.checkpoint_bytes(models.build_model(config))


# --------------------------------------------------------------------------------------------
# The training objects, new or restored
# --------------------------------------------------------------------------------------------

def build_training_objects(explicit, settings, family, config, dataset, device, state, source,
                           procs):
    """(model, optimizer, scheduler, scaler, progress): new ones seeded by --seed, or the
    checkpoint `state`'s, with the explicit overrides applied."""
    if state is not None:
        say(describe_resume(source, state))
        change = describe_world_change(state, procs)
        if change:
            warn(change)
        # Every weight comes from the checkpoint: skip the random initialisation (seconds for
        # the large configs) by building on the meta device and allocating empty tensors.
        with torch.device("meta"):
            model = models.build_model(config)
        model = model.to_empty(device=device)
    else:
        torch.manual_seed(settings["seed"])
        model = models.build_model(config).to(device)
        family.prepare_fresh_model(model, dataset)
        if procs.rank > 0:
            torch.manual_seed(rank_seed(settings["seed"], procs.rank))
    steps_per_epoch = math.ceil(len(dataset.train) / settings["batch_size"])
    optimizer, scheduler = build_optimizer(model, settings, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=settings["precision"] == "fp16")
    if state is None:
        return model, optimizer, scheduler, scaler, Progress.start(family.measures)
    restore(state, model, optimizer, scheduler, settings, explicit, steps_per_epoch)
    restore_rank_rng(state, settings, procs, device)
    if scaler.is_enabled() and "scaler_state_dict" in state:
        scaler.load_state_dict(state["scaler_state_dict"])
    return model, optimizer, scheduler, scaler, Progress.from_checkpoint(state, family.measures)


class LRSchedule:
    """Learning-rate multiplier per optimizer step: linear warmup, then constant or cosine
    decay to `floor`. A plain object, so LambdaLR checkpoints its fields with the scheduler."""

    def __init__(self, warmup_steps, total_steps, kind, floor=0.1):
        self.warmup_steps, self.total_steps, self.kind, self.floor = (
            warmup_steps, total_steps, kind, floor)

    def __call__(self, step):
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant" or self.total_steps <= self.warmup_steps:
            return 1.0
        done = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * done))


def build_optimizer(model, settings, steps_per_epoch):
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"],
                                  weight_decay=settings["weight_decay"])
    # Only cosine has a length; a constant schedule leaves it None, so that training 2 epochs
    # and then resuming to 4 holds exactly the state of training 4 at once.
    total = settings["epochs"] * steps_per_epoch if settings["lr_schedule"] == "cosine" else None
    schedule = LRSchedule(settings["warmup_steps"], total, settings["lr_schedule"])
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def restore(state, model, optimizer, scheduler, settings, explicit, steps_per_epoch):
    """Load a checkpoint's state into freshly built objects, applying explicit overrides."""
    try:
        model.load_state_dict(state["model_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        scheduler.load_state_dict(state["scheduler_state_dict"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise UsageError(f"checkpoint state does not fit its model: {first}") from None
    # The checkpoint is memory-mapped, and optimizer.load_state_dict keeps a CPU tensor of the
    # right dtype as it is: the moments would stay in the file's private mapping, and the first
    # optimizer step would copy them page by page as it writes them (measured on the medium
    # transformer: its first step took 1.35-1.54 s against 0.57-0.60 s). One copy here costs
    # 0.1 s, and leaves nothing of the optimizer in the mapping.
    for moments in optimizer.state.values():
        for key, value in moments.items():
            if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                moments[key] = value.clone()
    saved = state["args"]
    for key in OVERRIDABLE:
        if key in explicit and explicit[key] != saved.get(key):
            say(f"--{key.replace('_', '-')} {explicit[key]} overrides the checkpoint's "
                f"{saved.get(key)}")
    if "lr" in explicit:
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
        scheduler.base_lrs = [explicit["lr"]] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["initial_lr"] = explicit["lr"]
            group["lr"] = explicit["lr"] * factor
    if "weight_decay" in explicit:
        for group in optimizer.param_groups:
            group["weight_decay"] = explicit["weight_decay"]
    schedule = scheduler.lr_lambdas[0]
    planned = settings["epochs"] * steps_per_epoch
    if settings["lr_schedule"] == "cosine" and planned != schedule.total_steps:
        say(f"Note: the cosine schedule keeps its original length ({schedule.total_steps} steps);"
            f" --epochs {settings['epochs']} now plans {planned}")


def rank_seed(seed, rank):
    """The torch seed of rank `rank` > 0 in a fresh torchrun run: each rank draws its own
    dropout masks."""
    return int(np.random.SeedSequence([seed, 7, rank]).generate_state(1)[0])


def restore_rank_rng(state, settings, procs, device):
    """Each rank continues its own saved random stream. Ranks that did not exist when the
    checkpoint was saved (an elastic resume to more processes) start a seeded one, as does a
    CUDA generator the checkpoint has no state for (said once, by rank 0)."""
    saved = state.get("rng_state_per_rank") or [state["rng_state"]]
    reseed = rank_seed(settings["seed"], procs.rank) + state["global_step"]
    if procs.rank < len(saved):
        note = ckpt.restore_rng_state(saved[procs.rank], device, reseed)
        if note and procs.main:
            say(note)
    else:
        torch.manual_seed(reseed)   # every device's generator, CUDA included


def describe_world_change(state, procs):
    saved = state.get("world_size", 1)
    if saved == procs.world_size:
        return None
    def processes(n):
        return f"{n} process" + ("es" if n > 1 else "")
    return (f"this run was saved by {processes(saved)} and resumes with "
            f"{processes(procs.world_size)}: it continues from the same sample (epoch "
            f"{state['epoch'] + 1}, {state['samples_in_epoch']} samples done) with the same "
            f"batches, but it is not bit-identical to a run that kept {processes(saved)} "
            f"(sums over the ranks round differently, and each process has its own dropout "
            f"stream)")
