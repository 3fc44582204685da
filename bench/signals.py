"""Lost work per stop signal: send SIGINT, SIGTERM and SIGUSR1 to a training run in the middle
of an epoch, rerun the same command, and compare with an uninterrupted run.

    python bench/signals.py --model gnn
    python bench/signals.py --model transformer

For each signal it prints the steps the process had finished when it stopped (from its own
"Stopping on ..." line), the step saved in latest, the difference (lost steps), the exit code,
and whether the resumed run ended bit-identical to the uninterrupted one.
"""

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from chaos import RUNS, STATE_KEYS, command, same  # noqa: E402


def stop_with(signum, args, folder, delay):
    """Start the run, send `signum` `delay` seconds after its first checkpoint save (so it
    lands between saves), return (exit code, steps done when it stopped)."""
    proc = subprocess.Popen(command(args, folder), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Checkpoint saved") and len(
                [l for l in lines if l.startswith("Checkpoint saved")]) == 1:
            threading.Timer(delay, proc.send_signal, (signum,)).start()
    code = proc.wait()
    stopping = next((l for l in lines if l.startswith("Stopping on")), "")
    done = re.search(r"\((\d+) steps in all\)", stopping)
    return code, int(done.group(1)) if done else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(RUNS), default="gnn")
    parser.add_argument("--epochs", default="3", help="total epochs of the test run")
    options = parser.parse_args()
    # The chaos run's settings with a shorter --epochs (the last flag given wins).
    args = [*RUNS[options.model], "--epochs", options.epochs, "--checkpoint-every-steps", "20"]
    name = f"{options.model}_tiny"
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        subprocess.run(command(args, work / "reference"), check=True, capture_output=True)
        reference = torch.load(work / "reference" / f"{name}_latest.pt", weights_only=True)
        print(f"{'signal':8} {'exit':>4} {'steps done':>10} {'saved step':>10} {'lost':>4} "
              f"identical after resume")
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            folder = work / signal.Signals(signum).name
            code, done = stop_with(signum, args, folder, rng.uniform(0.1, 0.6))
            saved = torch.load(folder / f"{name}_latest.pt", weights_only=True)["global_step"]
            resumed = subprocess.run(command(args, folder), capture_output=True)
            final = torch.load(folder / f"{name}_latest.pt", weights_only=True)
            identical = resumed.returncode == 0 and all(same(reference[k], final[k])
                                                        for k in STATE_KEYS)
            lost = "?" if done is None else done - saved
            print(f"{signal.Signals(signum).name:8} {code:>4} {done!s:>10} {saved:>10} "
                  f"{lost!s:>4} {'yes' if identical else 'no'}")


if __name__ == "__main__":
    main()
