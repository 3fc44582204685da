"""Chaos test: SIGKILL one training run K times at random moments, restart it with the same
command after each kill, and compare the end with an uninterrupted run, bit for bit.

    python bench/chaos.py --model gnn --kills 50
    python bench/chaos.py --model transformer --kills 50
    python bench/chaos.py --model hgnn --kills 30
    python bench/chaos.py --model gnn --kills 10 --nproc 2     # under torchrun, gloo

With --nproc N the runs go through `torchrun --standalone --nproc_per_node=N`, and each kill
hits torchrun and every rank at once, as a scheduler that kills the job does.

Each kill lands at a random time after the process has started training (uniform in
[0, --max-delay] seconds), so over many kills they fall in steps, in validation, in the
sampling of sequences and in checkpoint writes (counted: a kill inside a write leaves a
temporary file that the next start removes). After every kill latest must verify; at the end
every file of the uninterrupted run must exist in the killed run's folder and verify.

The last line printed is
    kills=K resumed=R identical=yes|no lost_files=N corrupt_latest=N
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import checkpoint as ckpt  # noqa: E402
import process_tree  # noqa: E402

RUNS = {
    # Long enough that K kills land before the run ends; mid-epoch saves every few steps.
    "gnn": ["--model", "gnn", "--num-samples", "2000", "--batch-size", "32", "--epochs", "30",
            "--checkpoint-every-steps", "7"],
    "hgnn": ["--model", "hgnn", "--num-samples", "600", "--batch-size", "16", "--epochs", "20",
             "--checkpoint-every-steps", "5"],
    "transformer": ["--num-samples", "400", "--batch-size", "16", "--epochs", "20",
                    "--eval-samples", "16", "--checkpoint-every-steps", "5"],
    "seq2seq": ["--model", "seq2seq", "--num-samples", "400", "--batch-size", "16",
                "--epochs", "20", "--eval-samples", "8", "--checkpoint-every-steps", "5"],
}
STATE_KEYS = ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch",
              "global_step", "step_in_epoch", "history", "best_val_loss", "val_loss",
              "train_loss")


def same(a, b):
    """Bit-for-bit equality through nested dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            same(x, y) for x, y in zip(a, b))
    return a == b


def command(args, folder, nproc=1):
    return [*process_tree.launcher(nproc), str(REPO / "train.py"), *args, "--checkpoint-dir",
            str(folder)]


def run_once_and_kill(args, folder, delay, nproc):
    """Start the run; SIGKILL it `delay` seconds after training starts. Returns (killed,
    output): killed is False when the run ended on its own first."""
    proc = subprocess.Popen(command(args, folder, nproc), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    started = threading.Event()
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Model:"):
                started.set()
        started.set()   # the process ended without training (finished or failed)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started.wait()
    finished_early = proc.poll() is not None
    if not finished_early:
        try:
            proc.wait(timeout=delay)
            finished_early = True
        except subprocess.TimeoutExpired:
            process_tree.kill_tree(proc.pid)
            proc.wait()
    reader.join()
    output = "".join(lines)
    if finished_early and proc.returncode != 0:
        raise SystemExit(f"train.py failed with exit code {proc.returncode}:\n{output}")
    return not finished_early, output


def latest_is_corrupt(run):
    if not run.latest.exists():
        return False
    try:
        ckpt.load_checkpoint(run.latest)
        return False
    except ckpt.CheckpointError:
        return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RUNS), default="gnn")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--max-delay", type=float, default=None,
                        help="longest wait after training starts before a kill (seconds; "
                             "default 0.8 gnn, 1.5 hgnn, 2.0 transformer and seq2seq)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes under torchrun (default 1: plain python)")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    options = parser.parse_args()
    max_delay = options.max_delay or {"gnn": 0.8, "hgnn": 1.5, "transformer": 2.0,
                                        "seq2seq": 2.0}[options.model]
    rng = random.Random(options.seed)
    args = RUNS[options.model]
    name = f"{options.model}_tiny"

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(options.workdir or scratch)
        reference_dir, chaos_dir = work / "reference", work / "chaos"
        started = time.monotonic()
        reference_command = command(args, reference_dir, options.nproc)
        print(f"reference: {' '.join(reference_command[1:])}", flush=True)
        subprocess.run(reference_command, check=True, capture_output=True)
        reference_run = ckpt.RunFiles(reference_dir, name)
        reference = torch.load(reference_run.latest, weights_only=True)
        reference_seconds = time.monotonic() - started

        run = ckpt.RunFiles(chaos_dir, name)
        kills = resumed = corrupt_latest = mid_save = restarts = 0
        while kills < options.kills:
            stale = run.stale_temp_files() if chaos_dir.exists() else []
            mid_save += bool(stale)
            killed, output = run_once_and_kill(args, chaos_dir, rng.uniform(0, max_delay),
                                               options.nproc)
            restarts += 1
            resumed += "Resuming from" in output
            if "Skipped" in output:
                print(f"restart {restarts} skipped a file:\n{output}", flush=True)
            if not killed:
                print(f"the run finished after {kills} kills; raise --epochs in RUNS to reach "
                      f"{options.kills}", flush=True)
                break
            kills += 1
            corrupt_latest += latest_is_corrupt(run)
            if kills % 10 == 0:
                print(f"{kills} kills, {resumed} resumes", flush=True)
        final = subprocess.run(command(args, chaos_dir, options.nproc), capture_output=True,
                               text=True)
        resumed += "Resuming from" in final.stdout
        if final.returncode != 0:
            print(final.stdout + final.stderr)
        # Lost: a file the uninterrupted run has that the chaos run lacks, or one that does
        # not verify.
        lost = {p.name for p in reference_run.existing()} - {p.name for p in run.existing()}
        for path in run.existing():
            if path.suffix == ".pt":
                try:
                    ckpt.load_checkpoint(path)
                except ckpt.CheckpointError:
                    lost.add(path.name)
        result = torch.load(run.latest, weights_only=True)
        identical = final.returncode == 0 and all(same(reference[k], result[k])
                                                  for k in STATE_KEYS)
        differing = [k for k in STATE_KEYS if not same(reference[k], result[k])]
        print(f"model={options.model} nproc={options.nproc} reference={reference_seconds:.0f}s "
              f"chaos={time.monotonic() - started - reference_seconds:.0f}s "
              f"restarts={restarts + 1} kills_inside_a_save={mid_save} "
              f"final_step={result['global_step']} differing={differing or 'none'}")
        if lost:
            print(f"lost: {sorted(lost)}")
        print(f"kills={kills} resumed={resumed} identical={'yes' if identical else 'no'} "
              f"lost_files={len(lost)} corrupt_latest={corrupt_latest}")
        return 0 if identical and not lost and not corrupt_latest else 1


if __name__ == "__main__":
    sys.exit(main())
