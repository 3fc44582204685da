"""Train a model of one of the families in families/, with checkpoints that lose nothing.

    python train.py                  # tiny antibody transformer on the built-in set
    python train.py --model gnn      # DNA transport GNN on built-in tight-binding data

Rerunning the same command resumes the run where it stopped. This file holds the command line,
main() and the training loop; start-up (which run, which checkpoint, which settings) is in
startup.py, and everything specific to a model family in its module in families/. README.md
has every flag.
"""

import argparse
import dataclasses
import gc
import math
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

import background_save
import checkpoint as ckpt
import data
import determinism
import distributed
import families
import models
import plots
import report
import run_status
import startup
import tensorboard_log
import use_model
from messages import (EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_OK, EXIT_PEER_LOST, EXIT_SAVE_FAILED,
                      Diverged, Quiet, UsageError, check, rank_zero, say, warn)
from run_state import StopRequest
from saving import SavePoints
from settings import (AUTOCAST_DTYPES, DIST_TIMEOUT_MINUTES, explicit_flags, resolve_device,
                      validate)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def build_parser():
    p = _Parser(
        prog="train.py", allow_abbrev=False,
        description="Train a model of antibody sequences or of DNA transport (--model). "
                    "Rerunning the same command resumes the run where it stopped; Ctrl+C, "
                    "SIGTERM and SIGUSR1 save before exiting.",
        epilog="Several processes: torchrun --nproc_per_node=N train.py ... (DDP; --batch-size "
               "is the batch of each step, split between the processes). Exit codes: 0 done or "
               "nothing to do, 1 a checkpoint that had to be written at exit could not be, 2 "
               "bad input, 3 diverged, 4 a torchrun job lost one of its processes, 128+N "
               "stopped by signal N after saving.")
    _add_model_and_data_flags(p)
    _add_training_flags(p)
    _add_checkpoint_flags(p)
    _add_use_and_process_flags(p)
    return p


def _per_family(setting):
    """A default that each family sets, for --help: "5 transformer, 20 gnn" (the families
    that have the setting)."""
    return ", ".join(f"{family.defaults[setting]} {family.name}"
                     for family in families.FAMILIES.values() if setting in family.defaults)


def _add_model_and_data_flags(p):
    """Which model, on which data."""
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=families.NAMES,
                   help=f"model family (default {families.NAMES[0]})")
    g.add_argument("--config", choices=models.CONFIG_NAMES,
                   help="size from the table in models.py (default tiny)")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH",
                   help="antibody FASTA/CSV/TXT of chains, or CSV/JSON/JSONL of heavy|light "
                        "pairs with optional antigen_sequence and pKd; DNA CSV with a "
                        "'sequence' column, G3NAT pickle(s) or a DFT manifest CSV (default: "
                        "built-in data generated from --seed), split by --val-fraction")
    g.add_argument("--train-data", "--train_data", metavar="PATH",
                   help="fixed splits: the training data (instead of --data), validated on "
                        "--val-data (else --val-fraction of it is held out)")
    g.add_argument("--val-data", "--val_data", metavar="PATH",
                   help="fixed splits: the validation data (with --train-data)")
    g.add_argument("--test-data", "--test_data", metavar="PATH",
                   help="a test set, scored once at the end with the best checkpoint (status "
                        "file and progress.json)")
    g.add_argument("--max-samples", "--max_samples", type=int, metavar="N",
                   help="train on the first N records of the training data only")
    g.add_argument("--max-antigen-length", "--max_antigen_length", type=int, metavar="N",
                   help="antigen-conditioned models: antigens longer than N residues are "
                        "cropped to their first N, with a warning that counts them "
                        "(default 640)")
    g.add_argument("--num-samples", "--num_samples", type=int, metavar="N",
                   help="size of the built-in data set (default 2000)")
    g.add_argument("--val-fraction", "--val_fraction", type=float, metavar="F",
                   help="share of the data held out for validation (default 0.1)")
    g.add_argument("--seed", type=int, help="seed for data, split, order and init (default 0)")


def _add_training_flags(p):
    """How it trains."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", "--num-epochs", "--num_epochs", type=int, metavar="N",
                   dest="epochs", help="TOTAL epochs of the run, counting those already done "
                                       f"(default {_per_family('epochs')})")
    g.add_argument("--batch-size", "--batch_size", type=int, metavar="N",
                   help="samples per optimizer step, under torchrun split between the "
                        f"processes (default {_per_family('batch_size')}); may change on resume")
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
    g.add_argument("--loss", choices=("mse", "huber"),
                   help="DNA transport models: mse, mean squared error of the log10 spectra "
                        "(standardised per energy by the direct model, in decades by the "
                        "Hamiltonian one), or huber, Huber loss of the log10 spectra in "
                        "decades (default mse)")
    g.add_argument("--huber-delta", "--huber_delta", type=float, metavar="DECADES",
                   help="where --loss huber turns from quadratic to linear (default 1.0)")
    g.add_argument("--label-smoothing", "--label_smoothing", type=float, metavar="X",
                   help="antibody models: label smoothing of the training loss (validation "
                        "loss is the plain likelihood; default "
                        f"{_per_family('label_smoothing')})")
    g.add_argument("--dropout", type=float, metavar="P",
                   help="dropout probability of the model's layers (default: the size "
                        "table's, 0.1 for the antibody models, 0 for the DNA models); part of "
                        "the run, like the config")
    g.add_argument("--early-stopping", "--early_stopping", type=int, metavar="N",
                   help="stop when validation loss has not improved for N epochs (the "
                        "counter is checkpointed; default: off)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto: cuda if there is "
                                    "one); given per command, not stored")
    g.add_argument("--precision", choices=tuple(AUTOCAST_DTYPES),
                   help="fp32, or autocast to bf16 or fp16 (fp16 with a gradient scaler whose "
                        "state is checkpointed); default fp32")
    g.add_argument("--nondeterministic", action="store_true",
                   help="allow kernels that add in any order (cuDNN autotuning, atomics): "
                        "faster on a GPU, but a resumed run is then not bit-identical to an "
                        "uninterrupted one; given per run command, not stored")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training step's model call (the checkpoint holds "
                        "the plain module's state); given per run, not stored")
    g.add_argument("--eval-interval", "--eval_interval", type=int, metavar="N",
                   help="sampled-sequence metrics every N epochs and at the last "
                        "(default 1); validation loss is computed every epoch")
    g.add_argument("--eval-samples", "--eval_samples", type=int, metavar="N",
                   help="sequences sampled for validity and diversity (default 100)")


def _add_checkpoint_flags(p):
    """Where the run's files go, what is kept, what it resumes from."""
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
    g.add_argument("--tensorboard-dir", "--tensorboard_dir", metavar="DIR",
                   help="folder of the TensorBoard event files, written when tensorboard is "
                        "installed (default: NAME_tensorboard in the checkpoint folder)")


def _add_use_and_process_flags(p):
    """Using a trained model; several processes."""
    g = p.add_argument_group("using a trained model (reads a checkpoint, then exits)")
    g.add_argument("--sample", type=int, metavar="N",
                   help="sample N antibody sequences (per --antigen) to FASTA and report "
                        "validity per chain and pair, uniqueness and novelty against the "
                        "training set; --seed seeds the sampling")
    g.add_argument("--antigen", metavar="SEQ|FASTA",
                   help="--sample of an antigen-conditioned model: the antigen, a sequence "
                        "or a FASTA file of one or more (default: none)")
    g.add_argument("--pkd", type=float, metavar="X",
                   help="--sample of an antigen-conditioned model: the target affinity, "
                        "-log10 Kd (default: none)")
    g.add_argument("--decode", choices=("sample", "greedy", "beam"),
                   help="--sample's decoding: sample (temperature, --top-k, --top-p), greedy "
                        "(one sequence per condition) or beam (the --sample N most likely, "
                        "N <= --beam-size); default sample")
    g.add_argument("--top-k", "--top_k", type=int, metavar="K",
                   help="sample from the K most likely tokens only (default 0: all)")
    g.add_argument("--beam-size", "--beam_size", type=int, metavar="B",
                   help="beams of --decode beam (default 5)")
    g.add_argument("--predict", metavar="SEQUENCES|FILE",
                   help="predict log10 T(E) and log10 DOS(E) for DNA sequences (comma-separated, "
                        "or a file: CSV with a 'sequence' column, or one per line) to CSV")
    g.add_argument("--contacts", metavar="SPEC",
                   help="with --predict SEQUENCES: the electrodes' contacts for every "
                        "sequence, e.g. 'L:p0;R:p-1@0.1' (the default), 'cross@0.2' or "
                        "'L:p0,c-1;R:c0' (sites p<i>/c<i> on the primary/complementary strand, "
                        "from the 3' end as p-<i>; coupling @eV). A CSV gives a 'contacts' "
                        "column instead")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="the checkpoint to use (default: the run's NAME_best.pt; its model "
                        "family is the one used)")
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
                        f"code 4 (default {DIST_TIMEOUT_MINUTES:g}; over gloo. Under NCCL "
                        "PyTorch's watchdog is expected to end it instead: docs/gpu.md); given "
                        "per run, not stored")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

class Trainer(SavePoints):
    """One run: the loop over epochs and steps; its saves are SavePoints' (saving.py)."""

    def __init__(self, settings, run, family, config, model, optimizer, scheduler, scaler,
                 dataset, device, progress, stop, procs, compile_model=False,
                 staging_memory=None, caveats=None, board=None):
        self.settings, self.run, self.family, self.config = settings, run, family, config
        # TensorBoard's event files (tensorboard_log.py); Off writes nothing.
        self.board = board if board is not None else tensorboard_log.Off()
        # Why this run would not resume bit-identically (the status file says); the caller
        # may add to the list while training.
        self.caveats = caveats if caveats is not None else []
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
        # Dynamic shapes from the first call: batches differ in size (the last of an epoch,
        # graphs of other sizes), and a resumed process must compile the same graph for its
        # first batch as the uninterrupted one had compiled by then, not a static one.
        self.training_loss = (torch.compile(step_loss, dynamic=True) if compile_model
                              else step_loss)
        self.time_save_due = False   # under torchrun: rank 0's clock, agreed at each step
        self.dataset, self.device, self.progress, self.stop = dataset, device, progress, stop
        self.evaluation = families.Evaluation(model, dataset, device, self.autocast, settings,
                                              run, procs.main)
        self.last_checkpoint = None
        self.save_error = None
        self.saver = background_save.BackgroundSaver(staging_memory)
        self.save_stalls = []   # seconds the loop was blocked by each save
        self.clock = report.RunClock(progress.global_step)
        self.plots_drawn_at = time.monotonic()   # as if drawn at start (see write_plots)
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
        self.mark_saved()
        # (A run that stopped early and is only finishing its files trains nothing.)
        last_epoch = s["epochs"] if p.stopped_early is None else p.epoch
        for epoch in range(p.epoch + 1, last_epoch + 1):
            started = time.monotonic()
            self.train_epoch(epoch)
            if self.stop.requested:
                return self.stop_and_save()
            val_loss = self.validation_loss()
            if val_loss is None:
                return self.stop_and_save()
            code = self.close_epoch(epoch, val_loss, started)
            if code is not None:
                return code
            if p.stopped_early is not None:
                break
        if p.stopped_early is not None:
            say(f"Stopped early at epoch {p.epoch}: no improvement for "
                f"{p.epochs_without_improvement} epochs (--early-stopping {s['early_stopping']})"
                f"; best validation loss {p.best_val_loss:.4f} (epoch {p.best_epoch})")
        else:
            say(f"Training finished: {p.epoch} epochs, best validation loss "
                f"{p.best_val_loss:.4f} (epoch {p.best_epoch}), files in {self.run.directory}")
        self.score_test_set()
        self.write_run_files(finished_state(p, s))
        return EXIT_OK

    @torch.no_grad()
    def score_test_set(self):
        """--test-data: the test set's loss and the family's measures with the best
        checkpoint's weights, once, at the end (rank 0; the others have nothing to do)."""
        test = self.dataset.test
        if test is None or not self.procs.main:
            return
        try:
            state = ckpt.load_checkpoint(self.run.best)
        except ckpt.CheckpointError as e:
            warn(f"the test set is not scored: {self.run.best.name} cannot be read ({e})")
            return
        model = models.build_model(self.config).to(self.device)
        model.load_state_dict(state["model_state_dict"])
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(test), self.batch_size):
            batch = self.dataset.data.batch(test[start:start + self.batch_size])
            with self.autocast():
                loss, n = model.loss({k: v.to(self.device) for k, v in batch.items()})
            total += loss.item() * int(n)
            count += int(n)
        evaluation = families.Evaluation(model, dataclasses.replace(self.dataset, val=test),
                                         self.device, self.autocast, self.settings, self.run,
                                         True)
        measures = self.family.test_measures(evaluation, total / count)
        self.progress.test = {"loss": total / count, "measures": measures,
                              "epoch": state["epoch"], "samples": len(test)}
        parts = [f"loss {total / count:.4f}"] + [f"{k} {v:.4f}" for k, v in measures.items()
                                                  if isinstance(v, float)]
        say(f"Test set ({len(test)} samples, best model of epoch {state['epoch']}): "
            f"{', '.join(parts)}")

    def train_epoch(self, epoch):
        """The epoch's remaining steps, until its end or a stop; saves on the mid-epoch
        interval."""
        p, s = self.progress, self.settings
        order = self.dataset.train[data.epoch_order(self.n_train, s["seed"], epoch)]
        self.model.train()
        # The bar closes however the epoch ends (a stop, a divergence), so the messages that
        # follow start on a clean line.
        with tqdm(total=p.step_in_epoch + math.ceil(
                (self.n_train - p.samples_in_epoch) / self.batch_size),
                initial=p.step_in_epoch, desc=f"Epoch {epoch}/{s['epochs']}", unit="step",
                file=sys.stderr, dynamic_ncols=True,
                disable=self.plain_progress or not self.procs.main) as bar:
            while p.samples_in_epoch < self.n_train and not self.stop.requested:
                # The step's batch is the next slice of the epoch's order, whatever the number
                # of processes; each rank trains on its share of it.
                indices = order[p.samples_in_epoch:p.samples_in_epoch + self.batch_size]
                # Under torchrun, rank 0's checkpoint clock travels in the step's all-reduce.
                clock_due = (self.procs.active and self.procs.main
                             and self.save_interval_passed(self.last_save_time))
                # The rate this step uses: train_step's scheduler.step() sets the next one.
                lr = self.optimizer.param_groups[0]["lr"]
                loss = self.train_step(indices, clock_due)
                p.record_step(len(indices), loss)
                if self.procs.main and not self.saver.staging.prepared:
                    # After the first step the optimizer state exists: the whole layout,
                    # carved from the memory paged in during start-up.
                    self.saver.staging.prepare(self.checkpoint_state())
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if self.procs.main:
                    self.report_progress(epoch, bar.total, loss, lr)
                if self.mid_epoch_save_due(p.global_step - self.last_save_step,
                                           self.last_save_time):
                    self.start_save()
                    self.mark_saved()
                else:
                    self.collect_save(block=False)

    def close_epoch(self, epoch, val_loss, started):
        """Measure, report and save the epoch just trained. Returns the exit code when the run
        ends here (its last epoch, or a stop that came during validation), else None."""
        p, s = self.progress, self.settings
        measures = self.family.epoch_measures(self.evaluation, epoch, val_loss)
        # A previous save that failed may still revert the best (see collect_save).
        self.collect_save(block=True)
        previous_best = (p.best_val_loss, p.best_epoch)
        improved = p.end_epoch(val_loss, self.scheduler.get_last_lr()[0], measures)
        self.board.epoch(p.global_step, {
            "val/loss": val_loss, "train/epoch_loss": p.train_loss,
            **{f"measures/{name}": p.history[name][-1] for name in self.family.measures}})
        say(report.epoch_summary(epoch, s["epochs"], p.train_loss, val_loss,
                                 self.family.summary_parts(measures), time.monotonic() - started))
        patience = s["early_stopping"]
        if patience and p.epochs_without_improvement >= patience and epoch < s["epochs"]:
            p.stopped_early = epoch
        last = epoch == s["epochs"] or p.stopped_early is not None
        # After the summary: its epoch time leaves out the drawing.
        self.write_plots(always=last or self.stop.requested)
        if improved:
            was = "" if previous_best[0] is None else f" (was {previous_best[0]:.4f})"
            say(f"New best validation loss: {val_loss:.4f}{was}")
        extra = [self.run.epoch(epoch)] if epoch % s["checkpoint_frequency"] == 0 else []
        if improved:
            extra.append(self.run.best)
        self.start_save(extra, previous_best if improved else None, final=last)
        self.mark_saved()
        if not (last or self.stop.requested):
            return None   # the write goes on in the background during the next epoch
        saved = self.final_save_outcome()
        if last and not saved:
            self.write_run_files("failed: the final checkpoint could not be saved")
            return EXIT_SAVE_FAILED
        if self.stop.requested and not last:
            # The signal came during validation's last batch or sampling: the epoch's own save
            # above already holds every step.
            say(f"Stopping on {self.stop.name} after epoch {epoch} ({p.global_step} steps in "
                f"all)")
            self.note_stop_on_other_rank()
            if not saved:
                self.write_run_files(f"failed: could not save on {self.stop.name}")
                return EXIT_SAVE_FAILED
            self.write_run_files(f"interrupted by {self.stop.name}")
            return 128 + self.stop.signum
        return None

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
            raise Diverged(f"training diverged: loss is {value} at step "
                           f"{self.progress.global_step + 1} (epoch {self.progress.epoch + 1})")
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
        """Mean validation loss per counted unit of the family's loss (a token, a graph), or
        None when a stop signal arrived before it finished."""
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

    def steps_left(self, steps_in_epoch):
        """(steps left in this epoch, steps left in the run)."""
        p = self.progress
        in_epoch = steps_in_epoch - p.step_in_epoch
        return in_epoch, in_epoch + (self.settings["epochs"] - p.epoch - 1) * self.steps_per_epoch

    def report_progress(self, epoch, steps_in_epoch, loss, lr):
        """Each time another tenth of the epoch is done: the step's scalars to TensorBoard,
        and a plain progress line when stderr is not a terminal (the bar shows it there)."""
        p = self.progress
        if p.step_in_epoch * 10 // steps_in_epoch == (p.step_in_epoch - 1) * 10 // steps_in_epoch:
            return
        rate = self.clock.rate(p.global_step)
        self.board.step(p.global_step, loss, lr, rate)
        if not self.plain_progress:
            return
        epoch_left, run_left = self.steps_left(steps_in_epoch)
        line = report.progress_line(epoch, self.settings["epochs"], p.step_in_epoch,
                                    steps_in_epoch, loss, rate,
                                    self.clock.eta_seconds(p.global_step, epoch_left),
                                    self.clock.eta_seconds(p.global_step, run_left))
        print(line, file=sys.stderr, flush=True)

    def write_plots(self, always):
        """NAME_curves.png (the losses, and validity and diversity where sampled) and the
        family's own figures. Written by rank 0 when matplotlib is installed; a failure only
        warns. Redrawn at most every plots.REDRAW_INTERVAL_S seconds unless `always` (the run's
        last epoch, or a stop)."""
        due = time.monotonic() - self.plots_drawn_at >= plots.REDRAW_INTERVAL_S
        if not (self.procs.main and (always or due) and plots.available()):
            return
        self.plots_drawn_at = time.monotonic()
        out_dir = self.evaluation.out_dir
        try:
            plots.write_curves(out_dir / self.run.curves.name, self.progress.history)
            self.family.write_figures(self.evaluation)
        except OSError as e:
            warn(f"could not write plots to {out_dir}: {e.strerror or e}")

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


# --------------------------------------------------------------------------------------------
# A run: start-up, then the loop
# --------------------------------------------------------------------------------------------

def run_training(explicit, stop, procs):
    """Decide which run this is (startup.py), build it, train it; returns the exit code."""
    settings, run, state, source, skipped = startup.agree_on_start(explicit, procs)
    if state is not None and startup.ended_without_final_files(run, state, settings, procs):
        # The run ended (its last checkpoint is on disk) but the process died before it wrote
        # its final status (and scored --test-data): the loop below has no epoch left to
        # train, and finishes the run's files.
        say(f"Run {run.name} has ended (epoch {state['epoch']}, global step "
            f"{state['global_step']}), but its status files were not brought up to date: "
            f"writing them now")
    elif state is not None and state.get("stopped_early") is not None:
        say(f"Run {run.name} stopped early at epoch {state['stopped_early']} (no improvement "
            f"for {state['epochs_without_improvement']} epochs): nothing to do (--fresh to "
            f"start over)")
        return EXIT_OK
    elif state is not None and state["epoch"] >= settings["epochs"]:
        say(f"Run {run.name} has already trained {state['epoch']} of {settings['epochs']} "
            f"epochs: nothing to do (raise --epochs to train further, or --fresh to start over)")
        return EXIT_OK
    family = families.get(settings["model"])
    # The device is the command's, not the run's (like --compile): a run started on a GPU
    # resumes on a CPU-only machine with the same command, and a stored cuda:N never pins
    # every torchrun rank to GPU N.
    caveats = []   # what keeps this run from resuming bit-identically, for the status file

    def caveat(text):
        say(f"Note: {text}")
        caveats.append(text)
    if determinism.configure(not explicit.get("nondeterministic")):
        caveat(determinism.NONDETERMINISTIC)
    device = resolve_device(explicit.get("device", "auto"), procs)
    config = models.config_from_dict(state["config"]) if state else models.get_config(
        settings["model"], settings["config"])
    staging_memory = startup.reserve_staging_memory(state, config, device, procs)
    dataset, config = startup.load_dataset(family, settings, config, state, source)
    check(settings["batch_size"] >= procs.world_size,
          f"--batch-size {settings['batch_size']} is smaller than the {procs.world_size} "
          f"processes that share each batch")
    lock = startup.claim_run_folder_once(explicit, run, state, source, skipped, settings, config,
                                         procs)
    board = None
    try:
        model, optimizer, scheduler, scaler, progress = startup.build_training_objects(
            explicit, settings, family, config, dataset, device, state, source, procs)
        if not plots.available():
            say(plots.ENABLE_HINT.replace("NAME", run.name))
        if not tensorboard_log.available():
            say(tensorboard_log.ENABLE_HINT.replace("NAME", run.name))
        where = f"on {device}"
        if procs.active:
            where += (f", {procs.world_size} processes under torchrun (each batch of "
                      f"{settings['batch_size']} split between them)")
        say(f"Model: {config.model} {config.name}, {models.count_parameters(model):,} "
            f"parameters, {where}")
        say(f"Data: {settings['data'] or 'built-in'} ({len(dataset.train)} train, "
            f"{len(dataset.val)} validation); run {run.name} in {run.directory}")
        board = tensorboard_log.open_log(run, settings, progress.global_step,
                                         resumed=state is not None, main=procs.main)
        if state is not None:
            # The checkpoint's tensors map its file, and the callers still hold this dict.
            # Emptied, it lets the mapping go, so that the file's blocks are freed once a save
            # replaces it (a deleted file stays on disk for as long as a process maps it).
            state.clear()
        # What exists now (imported modules, the model, the data: about 330,000 objects) lives
        # as long as the run. Frozen, it is left out of every later full garbage collection,
        # which would otherwise walk it all again: 0.1-0.2 s each, several a minute on the
        # medium transformer. (Startup leaves no cyclic garbage to collect first: gc.collect()
        # finds 0.) Before the Trainer: DistributedDataParallel must stay collectable
        # (Processes.close).
        gc.freeze()
        trainer = Trainer(settings, run, family, config, model, optimizer, scheduler, scaler,
                          dataset, device, progress, stop, procs,
                          compile_model=explicit.get("compile", False),
                          staging_memory=staging_memory, caveats=caveats, board=board)
        with determinism.Watch(caveat):
            return train_to_the_end(trainer, procs)
    finally:
        if board is not None:
            board.close()   # flushes what is left, however the run ends
        if lock is not None:
            lock.release()


def finished_state(progress, settings):
    """The status of a run that ended well: finished, or stopped early."""
    if progress.stopped_early is None:
        return "finished"
    return (f"stopped early at epoch {progress.stopped_early} (no improvement for "
            f"{progress.epochs_without_improvement} epochs, --early-stopping "
            f"{settings['early_stopping']})")


def train_to_the_end(trainer, procs):
    """trainer.train(), with a divergence or an error recorded in the run's status file."""
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


def main(argv=None):
    """Run the command line; returns the exit code."""
    try:
        namespace = build_parser().parse_args(argv)
        explicit = explicit_flags(namespace)
        validate(explicit)   # before joining: every rank refuses the same flags alike
        if explicit.get("status"):
            return run_status.show(explicit)
        if "sample" in explicit or "predict" in explicit:
            return use_model.use_trained_model(explicit)
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
    code = main()
    if distributed.launched_by_torchrun():
        # A torchrun worker leaves without the interpreter's teardown. Everything is saved
        # and the process group is destroyed by now, yet in about 1 in 8 two-process hgnn
        # runs a rank still aborted in that teardown ("terminate called without an active
        # exception", exit -6), turning a finished run into a failed job.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
