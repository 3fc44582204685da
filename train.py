"""Train the antibody transformer or the DNA transport GNN, with checkpoints that lose nothing.

    python train.py                  # tiny transformer on the built-in antibody set
    python train.py --model gnn      # DNA transport GNN on built-in tight-binding data

Rerunning the same command resumes the run where it stopped. README.md has every flag.
"""

import argparse
import functools
import gc
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import background_save
import checkpoint as ckpt
import data
import distributed
import metrics
import models
import plots
import report
import retention
import run_status
import use_model

EXIT_OK, EXIT_SAVE_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PEER_LOST = 0, 1, 2, 3, 4
DIST_TIMEOUT_MINUTES = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

FAMILY_DEFAULTS = {
    "transformer": {"num_samples": 2000, "epochs": 5, "batch_size": 32, "lr": 1e-3,
                    "warmup_steps": 50},
    "gnn": {"num_samples": 2000, "epochs": 20, "batch_size": 64, "lr": 1e-3,
            "warmup_steps": 50},
}
COMMON_DEFAULTS = {
    "model": "transformer", "config": "tiny", "data": None, "val_fraction": 0.1, "seed": 0,
    "weight_decay": 0.01, "grad_clip": 1.0, "lr_schedule": "constant", "device": "auto",
    "eval_interval": 1, "eval_samples": 100, "name": None, "checkpoint_dir": "checkpoints",
    "checkpoint_frequency": 1, "checkpoint_every_steps": 0, "checkpoint_every_minutes": 10.0,
    "output_dir": None, "precision": "fp32", "keep_last": None, "keep_every": None,
}
SETTINGS = tuple(COMMON_DEFAULTS) + ("num_samples", "epochs", "batch_size", "lr", "warmup_steps")
# What makes a run this run: a resume that asks for different values is refused.
RUN_IDENTITY = ("model", "config", "data", "num_samples", "val_fraction", "seed",
                "lr_schedule", "warmup_steps")
# What an explicit flag may change on resume, with a notice.
OVERRIDABLE = ("lr", "weight_decay", "grad_clip", "precision")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Per-epoch measures beyond the losses: the transformer's perplexity and sampled-sequence
# quality, the GNN's fit of log10 T(E) and log10 DOS(E) (None where not measured).
MEASURES = ("perplexity", "validity", "diversity", "novelty", "r2_log10_T", "r2_log10_DOS",
            "mae_log10_T", "mae_log10_DOS")
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "lr") + MEASURES


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit code 2, nothing written. Under
    torchrun rank 0 says it, unless the problem is `this_rank`'s own."""

    def __init__(self, message, this_rank=False):
        super().__init__(message)
        self.this_rank = this_rank


class Quiet(Exception):
    """Exit with `code` and no message: rank 0 has already said why."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


class Diverged(Exception):
    """A non-finite loss or parameter: exit code 3, nothing saved."""


def rank_zero():
    """True unless this is a rank other than 0 of a torchrun job. Only rank 0 talks to the
    user: the others would repeat every line."""
    return os.environ.get("RANK", "0") == "0"


def say(message):
    if rank_zero():
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def warn(message):
    if rank_zero():
        tqdm.write(f"warning: {message}", file=sys.stderr)
        sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def build_parser():
    p = _Parser(
        prog="train.py", allow_abbrev=False,
        description="Train the antibody transformer or the DNA transport GNN. Rerunning the "
                    "same command resumes the run where it stopped; Ctrl+C, SIGTERM and SIGUSR1 "
                    "save before exiting.",
        epilog="Several processes: torchrun --nproc_per_node=N train.py ... (DDP; --batch-size "
               "is the batch of each step, split between the processes). Exit codes: 0 done or "
               "nothing to do, 1 a checkpoint that had to be written at exit could not be, 2 "
               "bad input, 3 diverged, 4 a torchrun job lost one of its processes, 128+N "
               "stopped by signal N after saving.")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=models.MODEL_FAMILIES,
                   help="model family (default transformer)")
    g.add_argument("--config", choices=models.CONFIG_NAMES,
                   help="size from the table in models.py (default tiny)")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH",
                   help="antibody FASTA/CSV/TXT, or DNA CSV with a 'sequence' column "
                        "(default: built-in data generated from --seed)")
    g.add_argument("--num-samples", "--num_samples", type=int, metavar="N",
                   help="size of the built-in data set (default 2000)")
    g.add_argument("--val-fraction", "--val_fraction", type=float, metavar="F",
                   help="share of the data held out for validation (default 0.1)")
    g.add_argument("--seed", type=int, help="seed for data, split, order and init (default 0)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--num-epochs", "--num_epochs", type=int, metavar="N",
                   dest="epochs", help="TOTAL epochs of the run, counting those already done "
                                       "(default 5 transformer, 20 gnn)")
    g.add_argument("--batch-size", "--batch_size", type=int, metavar="N",
                   help="samples per optimizer step, under torchrun split between the "
                        "processes (default 32 transformer, 64 gnn); may change on resume")
    g.add_argument("--lr", type=float, help="peak learning rate (default 1e-3); on resume it "
                                            "overrides the checkpoint's")
    g.add_argument("--weight-decay", "--weight_decay", type=float, metavar="W",
                   help="AdamW weight decay (default 0.01)")
    g.add_argument("--grad-clip", "--grad_clip", type=float, metavar="G",
                   help="clip the gradient norm to G, 0 for no clipping (default 1.0)")
    g.add_argument("--warmup-steps", "--warmup_steps", type=int, metavar="N",
                   help="linear learning-rate warmup (default 50)")
    g.add_argument("--lr-schedule", "--lr_schedule", choices=("constant", "cosine"),
                   help="after warmup: constant, or cosine decay to 10%% over the --epochs set "
                        "when the run started (default constant)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto); may change on "
                                    "resume")
    g.add_argument("--precision", choices=tuple(AUTOCAST_DTYPES),
                   help="fp32, or autocast to bf16 or fp16 (fp16 with a gradient scaler whose "
                        "state is checkpointed); default fp32")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step's model call (the checkpoint holds "
                        "the plain module's state); given per run, not stored")
    g.add_argument("--eval-interval", "--eval_interval", type=int, metavar="N",
                   help="sampled-sequence metrics every N epochs and at the last "
                        "(default 1); validation loss is computed every epoch")
    g.add_argument("--eval-samples", "--eval_samples", type=int, metavar="N",
                   help="sequences sampled for validity and diversity (default 100)")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--name", help="run name (default <model>_<config>)")
    g.add_argument("--checkpoint-dir", "--checkpoint_dir", metavar="DIR",
                   help="folder of the run's files (default ./checkpoints)")
    g.add_argument("--checkpoint-frequency", "--checkpoint_frequency", type=int, metavar="N",
                   help="keep a numbered NAME_epochN.pt every N epochs (default 1); latest is "
                        "written every epoch")
    g.add_argument("--checkpoint-every-steps", "--checkpoint_every_steps", type=int,
                   metavar="N", help="also refresh latest every N steps inside an epoch "
                                     "(default 0: off)")
    g.add_argument("--checkpoint-every-minutes", "--checkpoint_every_minutes", type=float,
                   metavar="M", help="also refresh latest every M minutes inside an epoch "
                                     "(default 10; 0: off)")
    g.add_argument("--keep-last", "--keep_last", type=int, metavar="N",
                   help="retention: keep only the N newest numbered epoch files (latest and "
                        "best are always kept; default: keep all)")
    g.add_argument("--keep-every", "--keep_every", type=int, metavar="K",
                   help="retention: also keep every epoch file whose number is a multiple of K")
    g.add_argument("--resume-from", "--resume_from", metavar="PATH",
                   help="resume from this checkpoint (refused if it is bad; no fallback)")
    g.add_argument("--status", action="store_true",
                   help="print the runs in --checkpoint-dir (with --name: that run's "
                        "checkpoints, whether each verifies, and what retention would free) "
                        "and exit; changes nothing, safe while a run trains")
    g.add_argument("--fresh", action="store_true",
                   help="start over: move the run's files into a dated folder first")
    g.add_argument("--output-dir", "--output_dir", metavar="DIR",
                   help="folder for sampled sequences (default: the checkpoint folder)")
    g = p.add_argument_group("using a trained model (reads a checkpoint, then exits)")
    g.add_argument("--sample", type=int, metavar="N",
                   help="sample N antibody sequences to FASTA and report validity, diversity "
                        "and novelty against the training set; --seed seeds the sampling")
    g.add_argument("--predict", metavar="SEQUENCES|FILE",
                   help="predict log10 T(E) and log10 DOS(E) for DNA sequences (comma-separated, "
                        "or a file: CSV with a 'sequence' column, or one per line) to CSV")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="the checkpoint to use (default: the run's NAME_best.pt)")
    g.add_argument("--temperature", type=float, metavar="T",
                   help="sampling temperature (default 1.0)")
    g.add_argument("--top-p", "--top_p", type=float, metavar="P",
                   help="nucleus sampling: draw from the most likely tokens whose "
                        "probabilities add up to P (default 1.0: all tokens)")
    g.add_argument("--output", metavar="FILE",
                   help="where to write (default NAME_generated.fasta or NAME_predictions.csv "
                        "in the checkpoint folder)")
    g = p.add_argument_group("several processes (under torchrun)")
    g.add_argument("--dist-timeout", "--dist_timeout", type=float, metavar="MINUTES",
                   help="a process that waits this long for the others gives up with exit "
                        f"code 4 (default {DIST_TIMEOUT_MINUTES:g}); given per run, not stored")
    return p


def _check(condition, message):
    if not condition:
        raise UsageError(message)


def validate(explicit):
    """Range checks on the flags given; errors name the flag."""
    positive = ("num_samples", "epochs", "batch_size", "checkpoint_frequency",
                "eval_interval", "eval_samples", "keep_last", "keep_every")
    for key in positive:
        if key in explicit:
            _check(explicit[key] > 0, f"--{key.replace('_', '-')} must be a positive integer "
                                      f"(got {explicit[key]})")
    for key in ("checkpoint_every_steps", "warmup_steps"):
        if key in explicit:
            _check(explicit[key] >= 0, f"--{key.replace('_', '-')} must be 0 or more "
                                       f"(got {explicit[key]})")
    if "dist_timeout" in explicit:
        _check(math.isfinite(explicit["dist_timeout"]) and explicit["dist_timeout"] > 0,
               f"--dist-timeout must be a positive number of minutes "
               f"(got {explicit['dist_timeout']})")
    for key in ("weight_decay", "grad_clip", "checkpoint_every_minutes"):
        if key in explicit:
            _check(math.isfinite(explicit[key]) and explicit[key] >= 0,
                   f"--{key.replace('_', '-')} must be 0 or more (got {explicit[key]})")
    if "lr" in explicit:
        _check(math.isfinite(explicit["lr"]) and explicit["lr"] > 0,
               f"--lr must be a positive number (got {explicit['lr']})")
    if "val_fraction" in explicit:
        _check(0 < explicit["val_fraction"] < 1,
               f"--val-fraction must be between 0 and 1 (got {explicit['val_fraction']})")
    if "name" in explicit:
        name = explicit["name"]
        _check(name and all(c.isalnum() or c in "._-" for c in name) and not name.startswith("."),
               f"--name must be letters, digits, '.', '_' or '-' (got {name!r})")
    if explicit.get("fresh") and explicit.get("resume_from"):
        raise UsageError("--fresh and --resume-from contradict each other: choose one")


def resolve_device(name, procs):
    """The torch device for --device. Under torchrun, `cuda` (or `auto` with CUDA) means the
    GPU of this process's LOCAL_RANK."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N (got {name!r})") from None
    if device.type == "cuda":
        _check(torch.cuda.is_available(), f"--device {name}: CUDA is not available here")
        if device.index is None and procs.active:
            device = torch.device("cuda", procs.local_rank)
        _check(device.index is None or device.index < torch.cuda.device_count(),
               f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        if device.index is not None:
            torch.cuda.set_device(device)
    else:
        _check(device.type == "cpu", f"--device must be auto, cpu, cuda or cuda:N (got {name!r})")
    return device


def check_writable_folder(folder, flag):
    """Refuse a folder that cannot be created or written, before anything is written."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    _check(probe.is_dir(), f"{flag} {folder}: {probe} is not a folder")
    _check(os.access(probe, os.W_OK | os.X_OK), f"{flag} {folder}: {probe} is not writable")
    _check(not os.statvfs(probe).f_flag & os.ST_RDONLY,
           f"{flag} {folder}: {probe} is on a read-only file system")


# --------------------------------------------------------------------------------------------
# Settings: defaults, then the checkpoint's, then the flags given
# --------------------------------------------------------------------------------------------

def explicit_flags(namespace):
    return {k: v for k, v in vars(namespace).items() if v is not None and v is not False}


def merge_settings(explicit, saved):
    model = explicit.get("model") or (saved or {}).get("model") or COMMON_DEFAULTS["model"]
    settings = {**COMMON_DEFAULTS, **FAMILY_DEFAULTS[model]}
    settings.update({k: v for k, v in (saved or {}).items() if k in SETTINGS})
    settings.update({k: v for k, v in explicit.items() if k in SETTINGS})
    if explicit.get("data"):
        settings["data"] = os.path.abspath(explicit["data"])
    return settings


def identity_conflicts(explicit, saved, saved_config):
    """Human-readable differences between the flags given and the checkpoint's run."""
    conflicts = []
    for key in RUN_IDENTITY:
        if key not in explicit:
            continue
        wanted = os.path.abspath(explicit[key]) if key == "data" else explicit[key]
        if saved.get(key) != wanted:
            detail = ""
            if key == "config" and saved_config.get("model") in models.CONFIGS:
                asked = asdict(models.get_config(saved_config["model"], wanted))
                differing = [f"{f} {saved_config.get(f)} vs {asked[f]}" for f in asked
                             if f != "name" and saved_config.get(f) != asked[f]]
                detail = f": {', '.join(differing)}" if differing else ""
            conflicts.append(f"{key} (checkpoint {saved.get(key)!r}, requested {wanted!r}{detail})")
    return conflicts


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    data: object            # data.SequenceData or data.GraphData
    train: torch.Tensor     # indices
    val: torch.Tensor
    fingerprint: str
    energy_grid: np.ndarray | None = None


def load_dataset(settings, config):
    path = settings["data"]
    if config.model == "transformer":
        if path:
            sequences, load_report = data.load_antibody_sequences(path, config.max_len - 2)
            if load_report.summary(path):
                warn(load_report.summary(path))
        else:
            sequences = data.synthetic_antibodies(settings["num_samples"], settings["seed"])
        dataset, fingerprint, grid = (data.SequenceData(sequences, config.max_len),
                                      data.fingerprint("antibody", sequences), None)
    else:
        grid = data.default_energy_grid(config.n_energies)
        targets = None
        if path:
            duplexes, targets = data.load_duplexes(path, config.n_energies)
        else:
            duplexes = data.synthetic_duplexes(settings["num_samples"], settings["seed"])
        # Spectra computed here are not part of the fingerprint: they depend on the machine's
        # floating point library at the last bit, and a run may move between machines.
        fingerprint = data.fingerprint("dna", duplexes,
                                       None if targets is None else targets.tobytes())
        if targets is None:
            targets = data.log_spectra(duplexes, grid)
        dataset = data.GraphData(duplexes, targets)
    if len(dataset) < 2:
        raise data.DataError(f"{path or 'built-in data'}: at least 2 samples are needed "
                             f"(one to train, one to validate), got {len(dataset)}")
    train_idx, val_idx = data.split_indices(len(dataset), settings["val_fraction"],
                                            settings["seed"])
    return Dataset(dataset, train_idx, val_idx, fingerprint, grid)


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


# --------------------------------------------------------------------------------------------
# Position and history
# --------------------------------------------------------------------------------------------

@dataclass
class Progress:
    """Where the run stands, beyond module and optimizer state: with it, a resumed run
    continues at the exact sample where the saved one stopped."""
    epoch: int = 0                 # last completed epoch
    global_step: int = 0
    step_in_epoch: int = 0         # batches already done in epoch + 1
    samples_in_epoch: int = 0      # training samples already done in epoch + 1
    epoch_loss_sum: float = 0.0    # sum of this epoch's batch losses so far
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    best_epoch: int | None = None
    history: dict = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})

    FIELDS = ("epoch", "global_step", "step_in_epoch", "samples_in_epoch", "epoch_loss_sum",
              "train_loss", "val_loss", "best_val_loss", "best_epoch", "history")

    @classmethod
    def from_checkpoint(cls, state):
        progress = cls(**{k: state[k] for k in cls.FIELDS if k in state})
        # A checkpoint from before a measure existed: that measure was not taken then.
        history = dict(progress.history)
        for key in HISTORY_KEYS:
            history.setdefault(key, [None] * len(history["epoch"]))
        progress.history = history
        return progress

    def to_checkpoint(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    def record_step(self, samples, loss):
        self.global_step += 1
        self.step_in_epoch += 1
        self.samples_in_epoch += samples
        self.epoch_loss_sum += loss

    def end_epoch(self, val_loss, lr, measures):
        """Close the epoch (`measures`: some of MEASURES); returns True when validation loss
        improved on the best."""
        self.epoch += 1
        self.train_loss = self.epoch_loss_sum / max(1, self.step_in_epoch)
        self.val_loss = val_loss
        values = {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": val_loss,
                  "lr": lr, **measures}
        for key in HISTORY_KEYS:
            self.history[key].append(values.get(key))
        self.step_in_epoch = self.samples_in_epoch = 0
        self.epoch_loss_sum = 0.0
        improved = self.best_val_loss is None or val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
        return improved


class StopRequest:
    """Remembers the first SIGINT, SIGTERM or SIGUSR1. The handler only sets a flag; the loop
    saves at the next step boundary. Saving inside the handler could interrupt a save in
    progress, and a second Ctrl+C while saving only sets the flag again.

    Under torchrun (`shared`), a signal may reach one rank only, or the ranks at different
    moments. The loop then acts only on the stop all ranks agreed on: each step sums every
    rank's `local_flags()` and hands the result to `agree`, so all ranks see the same stop
    after the same step."""

    def __init__(self):
        self.received = None   # the first stop signal this process received
        self.agreed = None     # under torchrun: the stop every rank acts on
        self.shared = False
        self.leaving = False   # ignore stop signals after __exit__ even without a stop
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum

    def __enter__(self):
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            # Once a stop was acted on, the process is on its way out with 128+signal: a
            # further Ctrl+C must not turn that exit into a KeyboardInterrupt traceback.
            on_the_way_out = self.requested or self.leaving
            signal.signal(s, signal.SIG_IGN if on_the_way_out else handler)

    def local_flags(self):
        return [float(self.received == s) for s in STOP_SIGNALS]

    def agree(self, summed_flags):
        """Adopt the stop that some rank received (the first of STOP_SIGNALS, if several)."""
        if self.agreed is None:
            self.agreed = next((s for s, n in zip(STOP_SIGNALS, summed_flags) if n), None)

    @property
    def signum(self):
        """The stop the loop acts on, or None."""
        return self.agreed if self.shared else self.received

    @property
    def requested(self):
        return self.signum is not None

    @property
    def name(self):
        return signal.Signals(self.signum).name


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

class Trainer:
    """One run: the loop over epochs and steps, and every save it makes."""

    def __init__(self, settings, run, config, model, optimizer, scheduler, scaler, dataset,
                 device, progress, stop, procs, compile_model=False, staging_memory=None):
        self.settings, self.run, self.config = settings, run, config
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler = scaler
        self.autocast_dtype = AUTOCAST_DTYPES[settings["precision"]]
        self.procs = procs
        # Under torchrun the loss goes through DistributedDataParallel, which averages the
        # gradients over the ranks during backward. Either way `self.model` stays the plain
        # module, whose state_dict has no `module.` or `_orig_mod.` prefixes.
        if procs.active:
            with distributed.peers_watched():   # DDP starts by broadcasting rank 0's weights
                step_loss = distributed.data_parallel(model, device)
        else:
            step_loss = model.loss
        self.training_loss = torch.compile(step_loss) if compile_model else step_loss
        self.time_save_due = False   # under torchrun: rank 0's clock, agreed at each step
        self.training_sequences = None   # for novelty; built at the first sampling
        self.dataset, self.device, self.progress, self.stop = dataset, device, progress, stop
        self.last_checkpoint = None
        self.save_error = None
        self.saver = background_save.BackgroundSaver(staging_memory)
        self.save_stalls = []   # seconds the loop was blocked by each save
        self.clock = report.RunClock(progress.global_step)
        # A bar for a terminal; plain lines (no carriage returns) for a log file.
        self.plain_progress = procs.main and not sys.stderr.isatty()
        self.batch_size = settings["batch_size"]
        self.n_train = len(dataset.train)
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)

    # -- the loop -----------------------------------------------------------------------------

    def train(self):
        """Train to --epochs; returns the exit code."""
        p, s = self.progress, self.settings
        self.write_run_files("running")
        last_save_time, last_save_step = time.monotonic(), p.global_step
        for epoch in range(p.epoch + 1, s["epochs"] + 1):
            started = time.monotonic()
            order = self.dataset.train[data.epoch_order(self.n_train, s["seed"], epoch)]
            self.model.train()
            # The bar closes however the epoch ends (a stop, a divergence), so the messages
            # that follow start on a clean line.
            with tqdm(total=p.step_in_epoch + math.ceil(
                    (self.n_train - p.samples_in_epoch) / self.batch_size),
                    initial=p.step_in_epoch, desc=f"Epoch {epoch}/{s['epochs']}", unit="step",
                    file=sys.stderr, dynamic_ncols=True,
                    disable=self.plain_progress or not self.procs.main) as bar:
                while p.samples_in_epoch < self.n_train and not self.stop.requested:
                    # The step's batch is the next slice of the epoch's order, whatever the
                    # number of processes; each rank trains on its share of it.
                    indices = order[p.samples_in_epoch:p.samples_in_epoch + self.batch_size]
                    # Under torchrun, rank 0's checkpoint clock travels in the step's all-reduce.
                    clock_due = (self.procs.active and self.procs.main
                                 and self.save_interval_passed(last_save_time))
                    loss = self.train_step(indices, clock_due)
                    p.record_step(len(indices), loss)
                    if self.procs.main and not self.saver.staging.prepared:
                        # After the first step the optimizer state exists: the whole layout,
                        # carved from the memory paged in during start-up.
                        self.saver.staging.prepare(self.checkpoint_state())
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    if self.plain_progress:
                        self.print_progress_line(epoch, bar.total, loss)
                    if self.mid_epoch_save_due(p.global_step - last_save_step, last_save_time):
                        self.start_save()
                        last_save_time, last_save_step = time.monotonic(), p.global_step
                    else:
                        self.collect_save(block=False)
            if self.stop.requested:
                return self.stop_and_save()
            val_loss = self.validation_loss()
            if val_loss is None:
                return self.stop_and_save()
            measures = self.epoch_measures(epoch, val_loss)
            # A previous save that failed may still revert the best (see collect_save).
            self.collect_save(block=True)
            previous_best = (p.best_val_loss, p.best_epoch)
            improved = p.end_epoch(val_loss, self.scheduler.get_last_lr()[0], measures)
            say(report.epoch_summary(epoch, s["epochs"], p.train_loss, val_loss, measures,
                                     time.monotonic() - started))
            self.write_plots()   # after the summary: its epoch time leaves out the drawing
            if improved:
                was = "" if previous_best[0] is None else f" (was {previous_best[0]:.4f})"
                say(f"New best validation loss: {val_loss:.4f}{was}")
            extra = [self.run.epoch(epoch)] if epoch % s["checkpoint_frequency"] == 0 else []
            if improved:
                extra.append(self.run.best)
            last = epoch == s["epochs"]
            self.start_save(extra, previous_best if improved else None, final=last)
            last_save_time, last_save_step = time.monotonic(), p.global_step
            if not (last or self.stop.requested):
                continue   # the write goes on in the background during the next epoch
            saved = self.final_save_outcome()
            if last and not saved:
                self.write_run_files("failed: the final checkpoint could not be saved")
                return EXIT_SAVE_FAILED
            if self.stop.requested and not last:
                # The signal came during validation's last batch or sampling: the epoch's
                # own save above already holds every step.
                say(f"Stopping on {self.stop.name} after epoch {epoch} ({p.global_step} "
                    f"steps in all)")
                self.note_stop_on_other_rank()
                if not saved:
                    self.write_run_files(f"failed: could not save on {self.stop.name}")
                    return EXIT_SAVE_FAILED
                self.write_run_files(f"interrupted by {self.stop.name}")
                return 128 + self.stop.signum
        self.write_run_files("finished")
        say(f"Training finished: {p.epoch} epochs, best validation loss "
            f"{p.best_val_loss:.4f} (epoch {p.best_epoch}), files in {self.run.directory}")
        return EXIT_OK

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def train_step(self, indices, save_interval_passed=False):
        """One optimizer step on the batch `indices`; returns its mean loss over all ranks."""
        if not self.procs.active:
            batch = self.dataset.data.batch(indices)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.autocast():
                loss, _ = self.training_loss(batch)
            value = loss.item()
        else:
            with distributed.peers_watched():
                loss, value = self.distributed_loss(indices, save_interval_passed)
        if not math.isfinite(value):
            raise Diverged(f"training diverged: loss is {value} at step {self.progress.global_step + 1} "
                           f"(epoch {self.progress.epoch + 1})")
        self.optimizer.zero_grad(set_to_none=True)
        # The scaler is a no-op unless --precision fp16. Under torchrun, DDP averages the
        # gradients over the ranks during backward.
        with distributed.peers_watched():
            self.scaler.scale(loss).backward()
        if self.settings["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings["grad_clip"])
        # The first write to weights and optimizer state since the last save point: a snapshot
        # being copied in the background must be complete (its wait counts as save stall).
        waited = self.saver.wait_until_copied()
        if waited:
            self.save_stalls[-1] += waited
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value

    def own_share(self, indices):
        """(this rank's share of a batch, its weight: 1, or 0 for a stand-in sample). At the end
        of an epoch a batch may have fewer samples than ranks; a rank left without one runs the
        batch's first sample with weight 0, because every rank must take part in each step."""
        own = distributed.shard(indices, self.procs.rank, self.procs.world_size)
        return (own, 1.0) if len(own) else (indices[:1], 0.0)

    def distributed_loss(self, indices, save_interval_passed):
        """This rank's loss, scaled so that DDP's average of the ranks' gradients is the
        gradient of the whole batch's mean loss (the shares may differ in size), and that mean
        as a number. The same small all-reduce carries every rank's stop signals and rank 0's
        checkpoint clock, so all ranks stop and save after the same step."""
        own, weight = self.own_share(indices)
        batch = {k: v.to(self.device, non_blocking=True)
                 for k, v in self.dataset.data.batch(own).items()}
        with self.autocast():
            loss, count = self.training_loss(batch)
        count = weight * float(count)
        total_loss, total_count, time_due, *stops = self.procs.sum(
            [loss.item() * count, count, float(save_interval_passed), *self.stop.local_flags()])
        self.stop.agree(stops)
        self.time_save_due = time_due > 0
        return loss * (count * self.procs.world_size / total_count), total_loss / total_count

    @torch.no_grad()
    def validation_loss(self):
        """Mean validation loss per token (transformer) or per graph (gnn), or None when a
        stop signal arrived before it finished."""
        self.model.eval()
        total, count = 0.0, 0
        val = self.dataset.val
        for start in range(0, len(val), self.batch_size):
            if self.stop.requested:
                return None
            indices = val[start:start + self.batch_size]
            own, weight = self.own_share(indices) if self.procs.active else (indices, 1)
            batch = self.dataset.data.batch(own)
            with self.autocast():
                loss, n = self.model.loss({k: v.to(self.device) for k, v in batch.items()})
            if self.procs.active:
                batch_total, n, *stops = self.procs.sum(
                    [loss.item() * int(n) * weight, int(n) * weight, *self.stop.local_flags()])
                self.stop.agree(stops)
                total += batch_total
                count += n
            else:
                total += loss.item() * int(n)
                count += int(n)
        self.model.train()
        value = total / count
        if not math.isfinite(value):
            raise Diverged(f"training diverged: validation loss is {value} after epoch "
                           f"{self.progress.epoch + 1}")
        return value

    def sampling_due(self, epoch):
        return (self.procs.main and self.config.model == "transformer"
                and (epoch % self.settings["eval_interval"] == 0
                     or epoch == self.settings["epochs"]))

    def epoch_measures(self, epoch, val_loss):
        """The epoch's measures for the summary and the history (rank 0 takes the ones that
        need a pass of their own; the others record None, and never save)."""
        if self.config.model == "transformer":
            measures = {"perplexity": metrics.perplexity(val_loss)}
            if self.sampling_due(epoch):
                measures.update(self.sample_metrics(epoch))
            return measures
        return self.spectrum_metrics() if self.procs.main else {}

    @torch.no_grad()
    def spectrum_metrics(self):
        """R² and mean absolute error (decades) of log10 T(E) and log10 DOS(E) over the
        validation set, from the model's predictions in physical units."""
        self.model.eval()
        predicted, true = [], []
        val = self.dataset.val
        for start in range(0, len(val), self.batch_size):
            batch = self.dataset.data.batch(val[start:start + self.batch_size])
            with self.autocast():
                predicted.append(self.model.predict(
                    {k: v.to(self.device) for k, v in batch.items()}).float().cpu())
            true.append(batch["target"])
        self.model.train()
        predicted, true = torch.cat(predicted).numpy(), torch.cat(true).numpy()
        measures = {}
        for index, name in ((0, "T"), (1, "DOS")):
            measures[f"r2_log10_{name}"] = metrics.r2(predicted[:, index], true[:, index])
            measures[f"mae_log10_{name}"] = metrics.mae(predicted[:, index], true[:, index])
        return measures

    def sample_metrics(self, epoch):
        """Validity, diversity and novelty of sampled sequences, also written as FASTA.
        Sampling has its own generator, seeded by (seed, epoch): it never moves the training
        RNG, so runs with and without sampling train identically."""
        seed = int(np.random.SeedSequence([self.settings["seed"], 5, epoch]).generate_state(1)[0])
        tokens = self.model.generate(self.settings["eval_samples"],
                                     torch.Generator().manual_seed(seed))
        sequences = [data.decode(t) for t in tokens]
        out_dir = Path(self.settings["output_dir"] or self.run.directory)
        fasta = "".join(f">epoch{epoch}_sample{i}\n{s}\n" for i, s in enumerate(sequences))
        try:
            ckpt.write_text(out_dir / self.run.samples.name, fasta)
        except OSError as e:
            warn(f"could not write sampled sequences to {out_dir}: {e.strerror or e}")
        if self.training_sequences is None:
            self.training_sequences = {self.dataset.data.sequences[int(i)]
                                       for i in self.dataset.train}
        return {"validity": metrics.validity(sequences),
                "diversity": metrics.diversity(sequences),
                "novelty": metrics.novelty(sequences, self.training_sequences)}

    def steps_left(self, steps_in_epoch):
        """(steps left in this epoch, steps left in the run)."""
        p = self.progress
        in_epoch = steps_in_epoch - p.step_in_epoch
        return in_epoch, in_epoch + (self.settings["epochs"] - p.epoch - 1) * self.steps_per_epoch

    def print_progress_line(self, epoch, steps_in_epoch, loss):
        """A line each time another tenth of the epoch is done."""
        p = self.progress
        if p.step_in_epoch * 10 // steps_in_epoch == (p.step_in_epoch - 1) * 10 // steps_in_epoch:
            return
        epoch_left, run_left = self.steps_left(steps_in_epoch)
        line = report.progress_line(epoch, self.settings["epochs"], p.step_in_epoch,
                                    steps_in_epoch, loss, self.clock.rate(p.global_step),
                                    self.clock.eta_seconds(p.global_step, epoch_left),
                                    self.clock.eta_seconds(p.global_step, run_left))
        print(line, file=sys.stderr, flush=True)

    def write_plots(self):
        """NAME_curves.png (losses; validity and diversity for the transformer) and, for the
        GNN, NAME_transport.png: predicted against true log10 T(E) for four validation
        duplexes. Written by rank 0 when matplotlib is installed; a failure only warns."""
        if not (self.procs.main and plots.available()):
            return
        out_dir = Path(self.settings["output_dir"] or self.run.directory)
        try:
            plots.write_curves(out_dir / self.run.curves.name, self.progress.history)
            if self.config.model == "gnn":
                shown = self.dataset.val[:4]
                batch = {k: v.to(self.device) for k, v in self.dataset.data.batch(shown).items()}
                self.model.eval()
                with torch.no_grad():
                    predicted = self.model.predict(batch)[:, 0].float().cpu().numpy()
                self.model.train()
                plots.write_transport_figure(
                    out_dir / self.run.transport_figure.name, self.dataset.energy_grid,
                    batch["target"][:, 0].cpu().numpy(), predicted,
                    [self.dataset.data.duplexes[int(i)][0] for i in shown])
        except OSError as e:
            warn(f"could not write plots to {out_dir}: {e.strerror or e}")

    def mid_epoch_save_due(self, steps_since_save, last_save_time):
        s = self.settings
        if self.progress.samples_in_epoch >= self.n_train:
            return False   # the epoch's own save follows validation
        by_steps = s["checkpoint_every_steps"] and steps_since_save >= s["checkpoint_every_steps"]
        # Under torchrun every rank must reach the save point: rank 0's clock, agreed in the
        # step's all-reduce, decides for all.
        by_time = (self.time_save_due if self.procs.active
                   else self.save_interval_passed(last_save_time))
        return bool(by_steps or by_time)

    def save_interval_passed(self, last_save_time):
        minutes = self.settings["checkpoint_every_minutes"]
        return bool(minutes) and time.monotonic() - last_save_time >= 60 * minutes

    def stop_and_save(self):
        """Save latest at this step boundary and return 128 + signal (1 if the save failed)."""
        p = self.progress
        say(f"Stopping on {self.stop.name}: saving latest at epoch {p.epoch + 1}, "
            f"step {p.step_in_epoch} of the epoch ({p.global_step} steps in all)")
        self.note_stop_on_other_rank()
        self.start_save(final=True)
        if not self.final_save_outcome():
            self.write_run_files(f"failed: could not save on {self.stop.name}")
            return EXIT_SAVE_FAILED
        self.write_run_files(f"interrupted by {self.stop.name}")
        return 128 + self.stop.signum

    def note_stop_on_other_rank(self):
        """One line from each rank but 0, which speaks for the run: in a cluster log it shows
        that every rank stopped after the same step, whichever rank the signal reached."""
        if not self.procs.main:
            received = "" if self.stop.received is None else (
                f" (received {signal.Signals(self.stop.received).name} itself)")
            print(f"rank {self.procs.rank}: stopping on {self.stop.name} after global step "
                  f"{self.progress.global_step}{received}; rank 0 saves", file=sys.stderr,
                  flush=True)

    # -- saving -------------------------------------------------------------------------------

    def checkpoint_state(self):
        state = {
            "epoch": self.progress.epoch,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "best_val_loss": self.progress.best_val_loss,
            "val_loss": self.progress.val_loss,
            "config": asdict(self.config),
            "train_loss": self.progress.train_loss,
            "history": self.progress.history,
            "args": dict(self.settings),
            "timestamp": report.now_iso(),
            "global_step": self.progress.global_step,
            "step_in_epoch": self.progress.step_in_epoch,
            "rng_state": ckpt.capture_rng_state(),
            "format_version": ckpt.FORMAT_VERSION,
            "data_fingerprint": self.dataset.fingerprint,
            "world_size": self.procs.world_size,
        }
        state.update(self.progress.to_checkpoint())
        if self.dataset.energy_grid is not None:
            state["energy_grid"] = torch.from_numpy(self.dataset.energy_grid)
        if self.scaler.is_enabled():
            state["scaler_state_dict"] = self.scaler.state_dict()
        return state

    def start_save(self, extra=(), revert_best_to=None, final=False):
        """Hand the state to the background writer, which copies it (while the next step's
        forward and backward run) and publishes latest (and the `extra` names). Blocks only to
        record the state's structure, after waiting for the previous write. `revert_best_to`
        is the (best_val_loss, best_epoch) to restore if this save, which carries a new best,
        fails.

        Under torchrun every rank calls this at the same step: rank 0 gathers the others' RNG
        states (their dropout streams differ) and is the only one that writes."""
        rng_states = self.procs.gather(ckpt.capture_rng_state()) if self.procs.active else None
        if not self.procs.main:
            return
        self.collect_save(block=True)   # at most one write in flight
        started = time.perf_counter()
        state = self.checkpoint_state()
        if rng_states is not None:
            state["rng_state_per_rank"] = rng_states
        p = self.progress
        where = f"epoch {p.epoch}" if not p.step_in_epoch else (
            f"epoch {p.epoch + 1} step {p.step_in_epoch}/{self.steps_per_epoch}")
        ticket = {"names": [self.run.latest.name] + [path.name for path in extra],
                  "where": where, "epoch": p.epoch, "global_step": p.global_step,
                  "revert_best_to": revert_best_to, "final": final}
        self.saver.submit(state, self.run.latest, list(extra), ticket)
        self.save_stalls.append(time.perf_counter() - started)

    def collect_save(self, block):
        """Report the outcome of the background write, if it has ended (or, with `block`,
        once it ends). Returns True or False for a reported save, None if there was none.

        A failure warns, is recorded in the status file, and training goes on: the next save
        point retries. Non-finite weights found in the snapshot stop the run (Diverged)."""
        outcome = self.saver.wait() if block else self.saver.poll()
        if outcome is None:
            return None
        ticket, error = outcome
        if isinstance(error, background_save.NonFiniteWeights):
            raise Diverged(f"training diverged: non-finite weights at step "
                           f"{ticket['global_step']}")
        if error is not None and not isinstance(error, OSError):
            raise error
        if error is not None:
            reason = error.strerror or str(error)
            self.save_error = {"time": report.now_iso(), "error": reason}
            kept = (f"{self.run.latest.name} still holds epoch {self.last_checkpoint['epoch']}, "
                    f"step {self.last_checkpoint['global_step']}" if self.last_checkpoint
                    else "the previous checkpoint files are intact")
            retry = "" if ticket["final"] else "; will retry at the next save point"
            warn(f"could not save checkpoint ({reason}); {kept}{retry}")
            if ticket["revert_best_to"] is not None:
                # best_val_loss describes the best file on disk, which was not replaced.
                self.progress.best_val_loss, self.progress.best_epoch = ticket["revert_best_to"]
            self.write_run_files("running", quiet=True)
            return False
        self.save_error = None
        self.last_checkpoint = {"path": str(self.run.latest), "epoch": ticket["epoch"],
                                "global_step": ticket["global_step"], "time": report.now_iso()}
        say(f"Checkpoint saved: {', '.join(ticket['names'])} ({ticket['where']}, global step "
            f"{ticket['global_step']})")
        keep_last, keep_every = self.settings["keep_last"], self.settings["keep_every"]
        if keep_last or keep_every:
            # Only now, with a newer checkpoint committed; latest and best are never pruned.
            deleted = retention.prune(self.run, keep_last, keep_every)
            if deleted:
                say(f"Retention: deleted {', '.join(p.name for p in deleted)}")
        self.write_run_files("running")
        return True

    def final_save_outcome(self):
        """Wait for the write in flight; True if it was committed. Under torchrun the other
        ranks wait for rank 0's outcome: they exit with the same code, and not before the file
        is on disk (torchrun stops the remaining processes once one has exited)."""
        saved = self.collect_save(block=True) if self.procs.main else None
        return bool(self.procs.broadcast(saved))

    def finish_background_write(self):
        """On the way out after an error: let the write in flight (a snapshot taken before the
        error) complete and report it; the error being handled matters more than its outcome."""
        try:
            self.collect_save(block=True)
        except Exception:
            pass

    def write_run_files(self, state, quiet=False):
        if not self.procs.main:
            return   # only rank 0 touches the checkpoint folder
        eta = None
        if state == "running":
            steps_in_epoch = self.progress.step_in_epoch + math.ceil(
                (self.n_train - self.progress.samples_in_epoch) / self.batch_size)
            eta = self.clock.eta_text(self.progress.global_step,
                                      self.steps_left(steps_in_epoch)[1])
        record = report.progress_record(state, self.progress, self.settings,
                                        self.last_checkpoint, self.save_error,
                                        self.steps_per_epoch, self.save_stalls, eta)
        try:
            report.write_run_files(self.run, record)
        except OSError as e:
            if not quiet:
                warn(f"could not update {self.run.status.name}: {e.strerror or e}")


# --------------------------------------------------------------------------------------------
# Start-up: which run, which checkpoint, which settings
# --------------------------------------------------------------------------------------------

def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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


def describe_resume(path, state):
    position = f"epoch {state['epoch']}"
    if state["step_in_epoch"]:
        position += f" + {state['step_in_epoch']} steps of epoch {state['epoch'] + 1}"
    val = "n/a" if state["val_loss"] is None else f"{state['val_loss']:.4f}"
    return (f"Resuming from {path}: {position} (global step {state['global_step']}), "
            f"val loss {val}")


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
    ckpt.restore_rng_state(state["rng_state"])


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


def claim_run_folder(explicit, run, state, source, skipped, settings, config):
    """Rank 0's part of start-up: check the folders, take the run lock, clear what a killed
    writer left, and move aside files that resuming from `state` would overwrite. Returns
    the lock."""
    check_writable_folder(run.directory, "--checkpoint-dir")
    if settings["output_dir"]:
        check_writable_folder(settings["output_dir"], "--output-dir")
    try:
        run.directory.mkdir(parents=True, exist_ok=True)
        if settings["output_dir"]:
            Path(settings["output_dir"]).mkdir(parents=True, exist_ok=True)
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


def run_training(explicit, stop, procs):
    settings, run, state, source, skipped = agree_on_start(explicit, procs)
    if state is not None and state["epoch"] >= settings["epochs"]:
        say(f"Run {run.name} has already trained {state['epoch']} of {settings['epochs']} "
            f"epochs: nothing to do (raise --epochs to train further, or --fresh to start over)")
        return EXIT_OK
    device = resolve_device(settings["device"], procs)
    config = models.config_from_dict(state["config"]) if state else models.get_config(
        settings["model"], settings["config"])
    staging_memory = reserve_staging_memory(state, config, device, procs)
    try:
        dataset = load_dataset(settings, config)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    if state is not None and state.get("data_fingerprint") != dataset.fingerprint:
        raise UsageError(f"the data differs from what {source} was trained on "
                         f"({settings['data'] or 'built-in data'}); use --fresh or another --name")
    _check(settings["batch_size"] >= procs.world_size,
           f"--batch-size {settings['batch_size']} is smaller than the {procs.world_size} "
           f"processes that share each batch")
    lock = error = None
    if procs.main:
        try:
            lock = claim_run_folder(explicit, run, state, source, skipped, settings, config)
        except UsageError as e:
            error = e
    if not procs.all_ok(error is None):
        raise error or Quiet(EXIT_BAD_INPUT)
    try:
        return _train(explicit, settings, run, state, source, config, dataset, device, stop,
                      procs, staging_memory)
    finally:
        if lock is not None:
            lock.release()


def reserve_staging_memory(state, config, device, procs):
    """Start paging in the memory of the background writer's snapshot buffers, beside the
    rest of start-up (background_save.PagedInMemory): the state's own size on a resume, else
    a checkpoint's estimated size. None where no such buffers are needed: on the ranks that
    do not save, and for a GPU state, whose buffers are pinned memory from CUDA."""
    if not procs.main or device.type != "cpu":
        return None
    if state is not None:
        nbytes = background_save.staged_nbytes(state)
    else:
        nbytes = estimated_checkpoint_bytes(config)
    return background_save.PagedInMemory(nbytes)


@functools.cache
def estimated_checkpoint_bytes(config):
    """One checkpoint's estimated size, from the model built on the meta device (no memory, no
    initialisation); the disk check and the staging memory both ask, it is built once."""
    with torch.device("meta"):
        return retention.checkpoint_bytes(models.build_model(config))


def rank_seed(seed, rank):
    """The torch seed of rank `rank` > 0 in a fresh torchrun run: each rank draws its own
    dropout masks."""
    return int(np.random.SeedSequence([seed, 7, rank]).generate_state(1)[0])


def restore_rank_rng(state, settings, procs):
    """Each rank continues its own saved random stream. Ranks that did not exist when the
    checkpoint was saved (an elastic resume to more processes) start a seeded one."""
    saved = state.get("rng_state_per_rank") or [state["rng_state"]]
    if procs.rank < len(saved):
        ckpt.restore_rng_state(saved[procs.rank])
    else:
        torch.manual_seed(rank_seed(settings["seed"], procs.rank) + state["global_step"])


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


def _train(explicit, settings, run, state, source, config, dataset, device, stop, procs,
           staging_memory=None):
    if state is not None:
        say(describe_resume(source, state))
        change = describe_world_change(state, procs)
        if change:
            warn(change)

    if state is None:
        torch.manual_seed(settings["seed"])
        model = models.build_model(config).to(device)
        if config.model == "gnn":
            model.set_target_scale(dataset.data.targets[dataset.train].to(device))
        if procs.rank > 0:
            torch.manual_seed(rank_seed(settings["seed"], procs.rank))
    else:
        # Every weight comes from the checkpoint: skip the random initialisation (seconds for
        # the large configs) by building on the meta device and allocating empty tensors.
        with torch.device("meta"):
            model = models.build_model(config)
        model = model.to_empty(device=device)
    steps_per_epoch = math.ceil(len(dataset.train) / settings["batch_size"])
    optimizer, scheduler = build_optimizer(model, settings, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=settings["precision"] == "fp16")
    progress = Progress()
    if state is not None:
        restore(state, model, optimizer, scheduler, settings, explicit, steps_per_epoch)
        restore_rank_rng(state, settings, procs)
        if scaler.is_enabled() and "scaler_state_dict" in state:
            scaler.load_state_dict(state["scaler_state_dict"])
        progress = Progress.from_checkpoint(state)
    if not plots.available():
        say(plots.ENABLE_HINT.replace("NAME", run.name))
    where = f"on {device}"
    if procs.active:
        where += (f", {procs.world_size} processes under torchrun (each batch of "
                  f"{settings['batch_size']} split between them)")
    say(f"Model: {config.model} {config.name}, {models.count_parameters(model):,} parameters, "
        f"{where}")
    say(f"Data: {settings['data'] or 'built-in'} ({len(dataset.train)} train, "
        f"{len(dataset.val)} validation); run {run.name} in {run.directory}")
    if state is not None:
        # The checkpoint's tensors map its file, and the callers still hold this dict. Emptied,
        # it lets the mapping go, so that the file's blocks are freed once a save replaces it
        # (a deleted file stays on disk for as long as a process maps it).
        state.clear()
    # What exists now (imported modules, the model, the data: about 330,000 objects) lives as
    # long as the run. Frozen, it is left out of every later full garbage collection, which
    # would otherwise walk it all again: 0.1-0.2 s each, several a minute on the medium
    # transformer. (Startup leaves no cyclic garbage to collect first: gc.collect() finds 0.)
    # Before the Trainer: DistributedDataParallel must stay collectable (Processes.close).
    gc.freeze()
    trainer = Trainer(settings, run, config, model, optimizer, scheduler, scaler, dataset,
                      device, progress, stop, procs, compile_model=explicit.get("compile", False),
                      staging_memory=staging_memory)
    try:
        return trainer.train()
    except Diverged as e:
        trainer.finish_background_write()
        if procs.main:
            print(f"error: {e}; not saved, the last good checkpoint is kept", file=sys.stderr)
        trainer.write_run_files("diverged")
        return EXIT_DIVERGED
    except BaseException as e:
        trainer.finish_background_write()
        trainer.write_run_files(f"failed: {type(e).__name__}: {e}"[:300])
        raise


def show_status(explicit):
    """--status: print, change nothing."""
    folder = Path(explicit.get("checkpoint_dir") or COMMON_DEFAULTS["checkpoint_dir"])
    _check(folder.is_dir(), f"--checkpoint-dir {folder}: no such folder")
    if explicit.get("name"):
        text = run_status.run_report(folder, explicit["name"], explicit.get("keep_last"),
                                     explicit.get("keep_every"))
        _check(text is not None, f"no run {explicit['name']} in {folder} (runs there: "
                                 f"{', '.join(run_status.run_names(folder)) or 'none'})")
    else:
        text = run_status.folder_report(folder)
    print(text)
    return EXIT_OK


def use_trained_model(explicit):
    """--sample N or --predict ...: read a checkpoint, write FASTA or CSV, print what was done."""
    _check(not ("sample" in explicit and "predict" in explicit),
           "--sample and --predict are separate uses: give one")
    family = "transformer" if "sample" in explicit else "gnn"
    folder = Path(explicit.get("checkpoint_dir") or COMMON_DEFAULTS["checkpoint_dir"])
    name = explicit.get("name") or f"{explicit.get('model', family)}_" \
                                   f"{explicit.get('config', 'tiny')}"
    run = ckpt.RunFiles(folder, name)
    path = Path(explicit.get("checkpoint") or run.best)
    _check(path.exists(), f"no checkpoint {path}; train first, or give --checkpoint PATH")
    try:
        model, state = use_model.load_model(path, family)
    except ckpt.CheckpointError as e:
        raise UsageError(f"cannot use {path}: {e}") from None
    run_name = state["args"].get("name", name)
    val = "n/a" if state["val_loss"] is None else f"{state['val_loss']:.4f}"
    where = f"{path} (epoch {state['epoch']}, val loss {val})"
    if family == "transformer":
        return _sample(explicit, model, state, where, Path(explicit.get("output") or
                                                         folder / f"{run_name}_generated.fasta"))
    return _predict(explicit, model, state, where,
                    Path(explicit.get("output") or folder / f"{run_name}_predictions.csv"))


def _sample(explicit, model, state, where, output):
    n, seed = explicit["sample"], explicit.get("seed", 0)
    temperature, top_p = explicit.get("temperature", 1.0), explicit.get("top_p", 1.0)
    _check(n > 0, f"--sample must be a positive integer (got {n})")
    _check(0 < top_p <= 1, f"--top-p must be in (0, 1] (got {top_p})")
    _check(math.isfinite(temperature) and temperature > 0,
           f"--temperature must be a positive number (got {temperature})")
    sequences = use_model.sample_sequences(model, n, temperature, seed, top_p)
    check_writable_folder(output.parent, "--output")
    ckpt.write_text(output, use_model.fasta(sequences, f"sample_t{temperature:g}_seed{seed}"))
    settings = merge_settings({}, state["args"])
    try:
        dataset = load_dataset(settings, models.config_from_dict(state["config"]))
        training = [dataset.data.sequences[int(i)] for i in dataset.train]
        novelty = (f", novelty {100 * metrics.novelty(sequences, training):.1f}% (not among "
                   f"the {len(training)} training sequences)")
    except data.DataError as e:
        novelty = f", novelty not measured (the training data cannot be read: {e})"
    imgt = metrics.imgt_validity(sequences)
    validity = f"validity {100 * metrics.validity(sequences):.1f}% (built-in rule check)"
    validity += (" (IMGT check not run: pip install anarcism to add it)" if imgt is None else
                 f", {100 * imgt:.1f}% (IMGT: anarcism numbers one human VH domain with "
                 f"Cys23, Trp41, Cys104, Trp118)")
    nucleus = f", top-p {top_p:g}" if top_p < 1 else ""
    print(f"Sampled {n} sequences from {where}, temperature {temperature:g}{nucleus}, "
          f"seed {seed}: "
          f"{validity}, diversity {100 * metrics.diversity(sequences):.1f}%{novelty}; "
          f"written to {output}")
    return EXIT_OK


def _predict(explicit, model, state, where, output):
    try:
        duplexes = use_model.read_duplexes(explicit["predict"], model.config.n_energies)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    spectra = use_model.predict(model, duplexes)
    check_writable_folder(output.parent, "--output")
    ckpt.write_text(output, use_model.predictions_csv(duplexes, spectra))
    grid = state["energy_grid"].numpy()
    print(f"Predicted log10 T(E) and log10 DOS(E) for {len(duplexes)} duplexes with {where}, "
          f"{len(grid)} energies from {grid[0]:g} to {grid[-1]:g} eV; written to {output}")
    return EXIT_OK


def main(argv=None):
    """Run the command line; returns the exit code."""
    try:
        namespace = build_parser().parse_args(argv)
        explicit = explicit_flags(namespace)
        validate(explicit)   # before joining: every rank refuses the same flags alike
        if explicit.get("status"):
            return show_status(explicit)
        if "sample" in explicit or "predict" in explicit:
            return use_trained_model(explicit)
    except UsageError as e:
        if rank_zero():
            print(f"train.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as e:   # --help
        return e.code or 0
    with StopRequest() as stop:
        procs = distributed.Processes.single()
        try:
            procs = distributed.join(explicit.get("dist_timeout", DIST_TIMEOUT_MINUTES))
            stop.shared = procs.active
            # A torchrun worker on its way out ignores the SIGTERM torchrun sends the others
            # once one has exited, so that each rank ends with its own exit code.
            stop.leaving = procs.active
            return run_training(explicit, stop, procs)
        except UsageError as e:
            if e.this_rank:
                print(f"train.py: error: rank {procs.rank}: {e}", file=sys.stderr)
            elif procs.main:
                print(f"train.py: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Quiet as e:
            return e.code
        except distributed.PeerLost as e:
            print(f"train.py: error: rank {procs.rank} lost the other processes of this torchrun "
                  f"job ({e}); the checkpoints on disk are intact: rerun the same command to "
                  f"resume", file=sys.stderr)
            return EXIT_PEER_LOST
        finally:
            procs.close()


if __name__ == "__main__":
    sys.exit(main())
