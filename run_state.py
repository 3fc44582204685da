"""Where a run stands beyond module and optimizer state (`Progress`), and the stop signals it
acts on (`StopRequest`). Both are plain state the training loop updates; the checkpoint holds
Progress's fields, so a resumed run continues at the exact sample where the saved one stopped.
"""

import signal
from dataclasses import dataclass, field

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# The history's columns that every family has; a family adds its measures after them.
BASE_HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "lr")


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
    history: dict = field(default_factory=dict)   # per-epoch lists, one per column
    # --early-stopping: the epoch at which the run stopped early (None: it did not)
    stopped_early: int | None = None
    test: dict | None = None       # --test-data: the test set's score with the best model

    FIELDS = ("epoch", "global_step", "step_in_epoch", "samples_in_epoch", "epoch_loss_sum",
              "train_loss", "val_loss", "best_val_loss", "best_epoch", "history",
              "stopped_early", "test")

    @property
    def epochs_without_improvement(self):
        """The early-stopping counter: epochs since the best validation loss."""
        return 0 if self.best_epoch is None else self.epoch - self.best_epoch

    @classmethod
    def start(cls, measures):
        """A new run's progress, with a history column for each of the family's `measures`."""
        return cls(history={k: [] for k in BASE_HISTORY_KEYS + tuple(measures)})

    @classmethod
    def from_checkpoint(cls, state, measures):
        progress = cls(**{k: state[k] for k in cls.FIELDS if k in state})
        # A checkpoint from before a measure existed: that measure was not taken then. Columns
        # the family does not have (older checkpoints kept every family's) are dropped.
        saved, epochs = progress.history, len(progress.history["epoch"])
        progress.history = {key: saved.get(key, [None] * epochs)
                            for key in BASE_HISTORY_KEYS + tuple(measures)}
        return progress

    def to_checkpoint(self):
        return {**{k: getattr(self, k) for k in self.FIELDS},
                "epochs_without_improvement": self.epochs_without_improvement}

    def record_step(self, samples, loss):
        self.global_step += 1
        self.step_in_epoch += 1
        self.samples_in_epoch += samples
        self.epoch_loss_sum += loss

    def end_epoch(self, val_loss, lr, measures):
        """Close the epoch (`measures`: some of the family's); returns True when validation
        loss improved on the best."""
        self.epoch += 1
        self.train_loss = self.epoch_loss_sum / max(1, self.step_in_epoch)
        self.val_loss = val_loss
        values = {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": val_loss,
                  "lr": lr, **measures}
        for key, column in self.history.items():
            column.append(values.get(key))
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
