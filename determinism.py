"""Deterministic kernels, so that a resumed run can be the same run bit for bit.

On the CPU, eager PyTorch is already deterministic for what this tool runs; what is not is
code that torch.compile (Inductor) generates with more than one thread, which may add in
parallel loops in any order. On a GPU, several kernels add with atomics (the GNNs'
`index_add_`, cuBLAS's split reductions, cuDNN's autotuned algorithms), so two identical runs
differ. `configure` asks PyTorch for deterministic algorithms everywhere (which also sets
Inductor's deterministic mode), cuBLAS for a fixed workspace, and cuDNN for no autotuning;
`--nondeterministic` trades that for speed, and the run then says that it is no longer
bit-exact.

An operation with no deterministic implementation on the device at hand does not stop the
run: PyTorch is asked to warn (warn_only) rather than raise, and `Watch` turns the first such
warning into one line that names the operation and what it costs.
"""

import os
import warnings

import torch

# cuBLAS reads it when its first handle is created: set before any CUDA work.
CUBLAS_WORKSPACE = ":4096:8"
NONDETERMINISTIC = ("--nondeterministic: kernels may add in any order, so a resumed run is "
                    "close to, not bit-identical with, an uninterrupted one")


def configure(deterministic):
    """Set the process's kernels before the model is built; returns the caveat this puts on
    exact resume (NONDETERMINISTIC), or None."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        return None
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    return NONDETERMINISTIC


class Watch:
    """A context in which PyTorch's "does not have a deterministic implementation" warnings
    become one caveat on exact resume, passed to `caveat(text)` once per operation, instead
    of a Python warning per call site. Other warnings pass through unchanged."""

    MARK = "does not have a deterministic implementation"

    def __init__(self, caveat):
        self.caveat = caveat
        self.seen = set()

    def __enter__(self):
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("always", message=f".*{self.MARK}")
        self._original = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def _show(self, message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if self.MARK not in text:
            return self._original(message, category, filename, lineno, file, line)
        operation = text.split(self.MARK)[0].strip()
        if operation not in self.seen:
            self.seen.add(operation)
            self.caveat(f"{operation} has no deterministic implementation on this device: "
                        f"this run will not resume bit-identically")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)
