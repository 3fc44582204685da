"""The run's TensorBoard event files: step scalars, epoch scalars and the settings as hparams.

tensorboard is optional, like matplotlib for plots.py: training never needs it, so it is
imported only when a run opens its log. Callers check `available()` first and otherwise tell
the user `ENABLE_HINT`. Only rank 0 writes (`open_log` returns `Off` elsewhere).

A resumed run must show the same curves as an uninterrupted one. The writer is opened with
`purge_step`: TensorBoard then hides every point at that step or later written by an earlier
writer to the folder. From a checkpoint at global step G that is G + 1 (what the killed
process wrote after its checkpoint is redone by this one); from scratch it is 0 (a process
killed before its first checkpoint left nothing to keep). Points up to G are kept, so they
must be in the file before the checkpoint at G can exist: `flush()` is called at every save
point. (A flush reaches the OS, which a SIGKILL cannot undo; event files are not fsynced.)

Writing the log never makes training fail: the first OSError warns and turns the log off
for the rest of the run. Nothing here touches a random number generator.
"""

import importlib
import numbers

from checkpoint import make_folders
from messages import warn

ENABLE_HINT = ("TensorBoard logging is off: tensorboard is not installed "
               "(pip install tensorboard to get event files in NAME_tensorboard/)")

_AVAILABLE = None  # cached answer of available(); None until first asked


def available():
    """Whether torch's SummaryWriter can be imported (it needs tensorboard); the answer is
    cached."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            importlib.import_module("torch.utils.tensorboard")
            _AVAILABLE = True
        except ImportError:
            _AVAILABLE = False
    return _AVAILABLE


def folder_of(run, settings):
    """Where the run's event files go: --tensorboard-dir, else NAME_tensorboard beside its
    checkpoints."""
    return settings.get("tensorboard_dir") or run.tensorboard


class Off:
    """The log of a run without TensorBoard (not installed, not rank 0, or turned off after
    an error): every call does nothing."""

    def step(self, global_step, loss, lr, steps_per_s):
        pass

    def epoch(self, global_step, values):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class Log(Off):
    """An open SummaryWriter on the run's folder."""

    def __init__(self, folder, purge_step):
        from torch.utils.tensorboard import SummaryWriter
        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def _guarded(self, write):
        """Run `write()`; an OSError warns once and closes the log for the rest of the run."""
        if self.writer is None:
            return
        try:
            write()
        except OSError as e:
            warn(f"TensorBoard logging stopped: could not write to {self.folder}: "
                 f"{e.strerror or e}")
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError:
                pass

    def hparams(self, settings):
        """The run's settings, once, at step 0 (a resume keeps them: it purges later steps
        only). Values TensorBoard cannot show (None, lists) become text."""
        from torch.utils.tensorboard.summary import hparams
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                  for k, v in settings.items()}
        # The metrics the hparams table shows for this run: scalars logged below.
        summaries = hparams(values, {"val/loss": None, "train/epoch_loss": None})
        self._guarded(lambda: [self.writer.file_writer.add_summary(s, 0) for s in summaries])

    def step(self, global_step, loss, lr, steps_per_s):
        def write():
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)
            if steps_per_s is not None:
                self.writer.add_scalar("train/steps_per_s", steps_per_s, global_step)
        self._guarded(write)

    def epoch(self, global_step, values):
        """Scalars of an epoch's end, {tag: value}; values that are not numbers (a measure
        not taken: None) are left out."""
        def write():
            for tag, value in values.items():
                if isinstance(value, numbers.Real) and not isinstance(value, bool):
                    self.writer.add_scalar(tag, value, global_step)
            self.writer.flush()
        self._guarded(write)

    def flush(self):
        self._guarded(lambda: self.writer.flush())

    def close(self):
        self._guarded(lambda: self.writer.close())
        self.writer = None


def open_log(run, settings, global_step, resumed, main):
    """The run's log from `global_step` on: a Log on rank 0 when tensorboard is installed,
    else Off. `resumed`: the run continues from a checkpoint at `global_step` (else it starts
    from scratch and its settings are written as hparams)."""
    if not (main and available()):
        return Off()
    folder = folder_of(run, settings)
    try:
        make_folders(folder)
        log = Log(folder, purge_step=global_step + 1 if resumed else 0)
    except OSError as e:
        warn(f"TensorBoard logging is off: could not create {folder}: {e.strerror or e}")
        return Off()
    if not resumed:
        log.hparams(settings)
    return log
