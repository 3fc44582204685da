"""Throughput of train.py with 1 process and with N processes under torchrun (DDP, gloo on CPU).

    python bench/bench_ddp.py            # about 3 minutes on 2 CPU cores
    python bench/bench_ddp.py --nproc 4

For each model it runs the same training three ways: one process with torch's default thread
count, one process with one thread (what torchrun gives each rank: OMP_NUM_THREADS=1), and N
processes under torchrun. The batch size is the same in all three (--batch-size is the batch
of each step, split between the processes), so they train the same batches. Throughput is
training samples per second over an epoch (the epoch time train.py prints, validation
included), the best of the first two epochs; the third epoch samples sequences and is not
timed.

The last line printed is
    transformer_speedup=X gnn_speedup=Y      (N processes / 1 process with default threads)
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUNS = {
    "transformer": ["--num-samples", "1200", "--batch-size", "32", "--epochs", "3",
                    "--eval-interval", "100", "--eval-samples", "8",
                    "--checkpoint-every-minutes", "0"],
    "gnn": ["--model", "gnn", "--num-samples", "12000", "--batch-size", "64", "--epochs", "3",
            "--checkpoint-every-minutes", "0"],
}
EPOCH_LINE = re.compile(r"^Epoch (\d+)/\d+ \|.* \| ([\d.]+)s$", re.M)
DATA_LINE = re.compile(r"^Data: .*\((\d+) train,", re.M)


def samples_per_second(args, folder, nproc, threads=None):
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}"]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run([*launcher, str(REPO / "train.py"), *args, "--checkpoint-dir",
                             str(folder)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    train = int(DATA_LINE.search(result.stdout).group(1))
    seconds = {int(e): float(s) for e, s in EPOCH_LINE.findall(result.stdout)}
    return train / min(seconds[1], seconds[2])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    options = parser.parse_args()
    speedups = {}
    print(f"{'model':12} {'setup':40} {'samples/s':>10}")
    with tempfile.TemporaryDirectory() as scratch:
        for model, args in RUNS.items():
            setups = [("1 process, default threads", 1, None),
                      ("1 process, 1 thread", 1, 1),
                      (f"{options.nproc} processes (torchrun), 1 thread each", options.nproc,
                       None)]
            rates = []
            for i, (label, nproc, threads) in enumerate(setups):
                rate = samples_per_second(args, Path(scratch) / f"{model}{i}", nproc, threads)
                rates.append(rate)
                print(f"{model:12} {label:40} {rate:10.1f}", flush=True)
            speedups[model] = rates[2] / rates[0]
    print(" ".join(f"{model}_speedup={value:.2f}" for model, value in speedups.items()))


if __name__ == "__main__":
    main()
