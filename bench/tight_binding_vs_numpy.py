"""The built-in DNA spectra from tight_binding.py (torch) against the numpy code they replaced.

    python bench/tight_binding_vs_numpy.py [--before 066db47] [--seeds 0 1 2] [--n 2000]

Loads `data.py` as it was at `--before` (the commit before the physics moved to torch, which
computed the spectra with numpy) from git, builds the built-in duplex set of each seed with
both, and prints per seed: the largest difference in log10 T and log10 DOS, how many values are
bit-identical, how many differ by more than 1e-12 decades, whether the float32 targets the
model trains on are identical, and each implementation's time. Needs the git history.
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import tight_binding  # noqa: E402


def numpy_module(revision):
    """data.py at `revision`, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:data.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "numpy_data.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("numpy_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="066db47")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    old = numpy_module(args.before)
    grid = tight_binding.default_energy_grid(100)
    assert np.array_equal(grid, old.default_energy_grid(100))
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy "
          f"{np.__version__}; {args.n} duplexes a seed, {len(grid)} energies")
    for seed in args.seeds:
        duplexes = old.synthetic_duplexes(args.n, seed)
        started = time.perf_counter()
        before = old.log_spectra(duplexes, grid)
        middle = time.perf_counter()
        after = tight_binding.log_spectra(duplexes, grid)
        ended = time.perf_counter()
        diff = np.abs(before - after)
        over = diff > 1e-12
        worst_t = 10 ** before[:, 0][over[:, 0]].max() if over[:, 0].any() else float("nan")
        same32 = torch.equal(torch.as_tensor(before, dtype=torch.float32),
                             torch.as_tensor(after, dtype=torch.float32))
        print(f"seed {seed}: max |d log10 T| {diff[:, 0].max():.2g}, max |d log10 DOS| "
              f"{diff[:, 1].max():.2g}; bit-identical {int((before == after).sum())} of "
              f"{before.size}; over 1e-12: {int(over.sum())} (T {int(over[:, 0].sum())}, "
              f"all at T <= {worst_t:.1g}); float32 targets identical: {same32}; numpy "
              f"{middle - started:.2f} s, torch {ended - middle:.2f} s")

if __name__ == "__main__":
    main()
