"""The training loop's saves (`SavePoints`, a part of train.Trainer): when a save is due, the
checkpoint's state, handing it to the background writer, reporting each write's outcome, and
the run's progress.json and status.txt.

The Trainer provides what these methods read: progress, settings, run, procs, family, config,
model, optimizer, scheduler, scaler, dataset, saver (background_save.BackgroundSaver), clock,
the save records (last_checkpoint, save_error, save_stalls), its epoch geometry (n_train,
batch_size, steps_per_epoch, steps_left) and board (tensorboard_log's Log or Off).
"""

import math
import time
from dataclasses import asdict

import background_save
import checkpoint as ckpt
import report
import retention
from messages import Diverged, say, warn


class SavePoints:
    def mark_saved(self):
        """Restart the mid-epoch save clocks (time and steps) at a save point."""
        self.last_save_time, self.last_save_step = time.monotonic(), self.progress.global_step

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
            "rng_state": ckpt.capture_rng_state(self.device),
            "format_version": ckpt.FORMAT_VERSION,
            "data_fingerprint": self.dataset.fingerprint,
            "world_size": self.procs.world_size,
        }
        state.update(self.progress.to_checkpoint())
        state.update(self.dataset.checkpoint_extras)   # what the family's data adds
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
        rng_states = (self.procs.gather(ckpt.capture_rng_state(self.device))
                      if self.procs.active else None)
        if not self.procs.main:
            return
        self.collect_save(block=True)   # at most one write in flight
        # TensorBoard's points up to this step reach the file before the checkpoint can: a
        # resume from it keeps them and redoes only later steps (tensorboard_log.py).
        self.board.flush()
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
                                        self.steps_per_epoch, self.save_stalls, eta,
                                        self.caveats)
        try:
            report.write_run_files(self.run, record,
                                   self.family.status_lines(self.progress.history))
        except OSError as e:
            if not quiet:
                warn(f"could not update {self.run.status.name}: {e.strerror or e}")
