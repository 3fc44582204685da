"""What the tool tells the user, and how it ends: one-line messages, the errors that become an
exit code, and the exit codes themselves (README, "Exit codes").

Only rank 0 of a torchrun job talks to the user: the other ranks would repeat every line.
"""

import os
import sys

from tqdm import tqdm

EXIT_OK, EXIT_SAVE_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PEER_LOST = 0, 1, 2, 3, 4


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


def check(condition, message):
    """Refuse bad input: UsageError(message) unless `condition`."""
    if not condition:
        raise UsageError(message)


def rank_zero():
    """True unless this is a rank other than 0 of a torchrun job."""
    return os.environ.get("RANK", "0") == "0"


def say(message):
    if rank_zero():
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def warn(message):
    if rank_zero():
        tqdm.write(f"warning: {message}", file=sys.stderr)
        sys.stderr.flush()
