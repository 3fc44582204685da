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


def main():
    kind, *numbers = sys.argv[1].split(":")
    numbers = [int(x) for x in numbers]
    {"step": _kill_in_step, "validation": _kill_in_validation, "save": _kill_in_save,
     "publish": _kill_before_latest}[kind](*numbers)
    sys.exit(train.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
