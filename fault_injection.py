"""Test support: run train.py with a SIGKILL at an exact point. Not part of the tool.

    python fault_injection.py KIND:N[:BYTES] [train.py flags...]

The process kills itself with a real SIGKILL (no cleanup, no handlers, exactly what the OOM
killer or a scheduler does) at one of these points, counted from process start:

    step:N             the N-th training step, after backward and before the optimizer step
    validation:N       the N-th validation pass, after its first batch
    save:N:BYTES       the N-th checkpoint save, once torch.save has produced BYTES bytes (the
                       temporary file then holds the 8 MiB blocks written so far)
    publish:N          the N-th checkpoint save, after the epoch/best names are published and
                       before latest is renamed into place
    finish:N           the N-th final status write of a run that ended well (finished, or
                       stopped early), before it is written: the last checkpoint is on disk,
                       the status files still say "running"

and one mode that kills nothing:

    trace:FILE         append "mkdir PATH", "fsync PATH" and "rename SRC DST" to FILE, in the
                       order the process makes those calls: what a power cut would keep
                       depends on that order (a folder is durable once its parent is fsynced)

Used by the tests and bench/chaos.py to reach points that a timer would hit only by luck.
"""

import os
import signal
import sys

import torch

import checkpoint
import models
import train


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_in_step(n):
    original = torch.nn.utils.clip_grad_norm_
    calls = [0]

    def clip(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            _die()
        return original(*args, **kwargs)

    # train.py clips every step unless --grad-clip 0, which these runs do not use.
    torch.nn.utils.clip_grad_norm_ = clip


def _kill_in_validation(n):
    passes = [0]
    armed = [False]
    original_validation = train.Trainer.validation_loss

    def validation_loss(self):
        passes[0] += 1
        armed[0] = passes[0] == n
        try:
            return original_validation(self)
        finally:
            armed[0] = False

    train.Trainer.validation_loss = validation_loss
    # Every family's module, so that a family added to models.py is covered too.
    for cls in {module for _, module in models._FAMILY_CLASSES.values()}:
        def loss(self, batch, _original=cls.loss):
            result = _original(self, batch)
            if armed[0]:
                _die()   # after the first validation batch of pass n
            return result

        cls.loss = loss


def _kill_in_save(n, size):
    saves = [0]
    original_init = checkpoint._SealedWriter.__init__
    original_write = checkpoint._SealedWriter.write

    def init(self, fd):
        saves[0] += 1
        original_init(self, fd)

    def write(self, data):
        result = original_write(self, data)
        if saves[0] == n and self.size >= size:
            _die()
        return result

    checkpoint._SealedWriter.__init__ = init
    checkpoint._SealedWriter.write = write


def _kill_before_latest(n):
    saves = [0]
    original = checkpoint.save_checkpoint

    def save(state, path, also=()):
        saves[0] += 1
        if saves[0] == n:
            real_replace = checkpoint.os.replace

            def replace(src, dst):
                if str(dst) == str(path):
                    _die()
                return real_replace(src, dst)

            checkpoint.os.replace = replace
        return original(state, path, also)

    checkpoint.save_checkpoint = save


def _kill_before_final_status(n):
    writes = [0]
    original = train.Trainer.write_run_files

    def write_run_files(self, state, quiet=False):
        if state == "finished" or state.startswith("stopped early"):
            writes[0] += 1
            if writes[0] == n:
                _die()
        return original(self, state, quiet)

    train.Trainer.write_run_files = write_run_files


def _trace_durability(log_path):
    log = open(log_path, "a", buffering=1)
    real_mkdir, real_fsync = os.mkdir, os.fsync
    real_rename, real_replace = os.rename, os.replace

    def mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        log.write(f"mkdir {os.path.abspath(path)}\n")

    def fsync(fd):
        real_fsync(fd)
        log.write(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}\n")

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            real(src, dst, *args, **kwargs)
            log.write(f"rename {os.path.abspath(src)} {os.path.abspath(dst)}\n")
        return rename

    os.mkdir, os.fsync = mkdir, fsync
    os.rename, os.replace = renamer(real_rename), renamer(real_replace)


def main():
    if sys.argv[1].startswith("trace:"):
        _trace_durability(sys.argv[1].split(":", 1)[1])
        sys.exit(train.main(sys.argv[2:]))
    kind, *numbers = sys.argv[1].split(":")
    numbers = [int(x) for x in numbers]
    {"step": _kill_in_step, "validation": _kill_in_validation, "save": _kill_in_save,
     "publish": _kill_before_latest, "finish": _kill_before_final_status}[kind](*numbers)
    sys.exit(train.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
