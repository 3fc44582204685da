"""GPU check: do the checkpoint promises hold on this GPU? One line per check, then
`gpu_checks=N passed=M`; exit 0 when every check passed. What each promise is and how far it
is verified without a GPU: docs/gpu.md.

    python bench/gpu_check.py              # NVIDIA GPUs: part 1 on one, part 2 on two
    python bench/gpu_check.py --dry-run    # the same logic on the CPU with tiny runs (the
                                           # test suite runs this, so the script cannot rot;
                                           # part 2 over gloo; it leaves out what needs CUDA
                                           # or minutes, and bf16, whose check is fp16's code)

Part 1, each on real `train.py` processes (SIGKILL through fault_injection.py):
    identical      two identical fresh runs end bit-identical (gnn, transformer)
    resume         a run killed inside epoch 2 and rerun equals the uninterrupted run (both)
    precision      the same with --precision bf16 and fp16 (fp16 resumes its gradient scaler)
    compile        a compiled run killed and resumed against a compiled uninterrupted one
    to-cpu         a checkpoint written on the GPU resumes on the CPU with the same command
                   (CUDA_VISIBLE_DEVICES= hides the GPU)
    determinism    what deterministic kernels cost: median epoch seconds with and without
                   --nondeterministic (reported, passes if both runs finish)
    pinned         the medium transformer trained in this process: host bytes pinned for its
                   snapshots against the snapshot's bytes (and what torch's allocator holds)
    cost           bench/bench_checkpoint.py --device cuda: stall per save, overhead,
                   throughput against a bare loop, peak GPU memory (medium transformer)
Part 2, two processes under torchrun (NCCL; skipped with the reason on fewer than 2 GPUs):
    two-process    both ranks killed inside epoch 2 and rerun: equal to the uninterrupted run
    killed rank    rank 1 SIGKILLed mid-run: rank 0's exit code (4 promised), its one line,
                   the seconds it took, and the latest checkpoint verifying
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import checkpoint as ckpt  # noqa: E402
import process_tree  # noqa: E402

# Small runs: two epochs, mid-epoch saves every 4 steps, the kill inside epoch 2 (300
# samples: 270 train, 17 steps an epoch; a dry run has 100: 90, 6 steps).
RUNS = {
    "gnn": ["--model", "gnn", "--batch-size", "16"],
    "transformer": ["--batch-size", "16", "--eval-samples", "8"],
}
COMMON = ["--epochs", "2", "--checkpoint-every-steps", "4", "--checkpoint-every-minutes", "0"]
SIZE = {"gpu": ("300", "step:24", "3000"), "dry": ("100", "step:9", "100")}
COMPARED = ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch",
            "global_step", "step_in_epoch", "train_loss", "val_loss")


def train(args, folder, fault=None, env=None, nproc=1):
    """Run train.py (or fault_injection.py with a kill point) in `folder`, under torchrun
    when `nproc` > 1 (every rank then dies at the kill point); CompletedProcess."""
    folder.mkdir(parents=True, exist_ok=True)
    script = [str(REPO / "fault_injection.py"), fault] if fault else [str(REPO / "train.py")]
    return subprocess.run([*process_tree.launcher(nproc), *script, *map(str, args)],
                          cwd=folder, capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def latest(folder, name):
    return ckpt.load_checkpoint(folder / "checkpoints" / f"{name}_latest.pt")


def differences(a, b):
    """Names of the compared entries that differ between two checkpoints (bit for bit)."""
    def same(x, y):
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(
                x.cpu(), y.cpu())
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(
                same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y
    return [key for key in COMPARED if not same(a.get(key), b.get(key))]


class Check:
    def __init__(self, work, device, size):
        self.work, self.device, self.results = work, device, []
        self.samples, self.kill_at, self.cost_samples = size

    def report(self, name, passed, detail):
        self.results.append(passed)
        print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)

    def args(self, model, *extra):
        return [*RUNS[model], "--num-samples", self.samples, *COMMON, "--device", self.device,
                *extra]

    def uninterrupted(self, model, tag, *extra, nproc=1):
        folder = self.work / f"{model}-{tag}"
        result = train(self.args(model, *extra), folder, nproc=nproc)
        if result.returncode != 0:
            raise RuntimeError(f"{model} {tag} run exited {result.returncode}: "
                               f"{result.stderr.strip().splitlines()[-1:]}")
        return folder, result

    def killed_and_resumed(self, model, tag, *extra, nproc=1):
        folder = self.work / f"{model}-{tag}-killed"
        killed = train(self.args(model, *extra), folder, fault=self.kill_at, nproc=nproc)
        # torchrun exits 1 and names each rank's exit code (-9: SIGKILL) in its report.
        was_killed = (killed.returncode == -9 if nproc == 1
                      else re.search(r"exitcode\s+:\s*-9 ", killed.stderr) is not None)
        if not was_killed:
            raise RuntimeError(f"the kill at {self.kill_at} did not happen "
                               f"(exit {killed.returncode})")
        resumed = train(self.args(model, *extra), folder, nproc=nproc)
        if resumed.returncode != 0:
            raise RuntimeError(f"the rerun exited {resumed.returncode}: "
                               f"{resumed.stderr.strip().splitlines()[-1:]}")
        return folder, resumed

    def run(self, name, function):
        try:
            function()
        except Exception as e:   # one failed check must not hide the others
            self.report(name, False, f"{type(e).__name__}: {e}")


def pinned_bytes(check):
    """The medium transformer trained on the GPU by train.py in this process: the host
    memory pinned for its snapshots against the snapshot's own bytes."""
    import background_save
    import train
    staging = []
    original = background_save.StagingBuffers.prepare

    def prepare(self, state):
        original(self, state)
        staging.append((self, background_save.staged_nbytes(state)))

    background_save.StagingBuffers.prepare = prepare
    folder = check.work / "pinned"
    folder.mkdir()
    try:
        code = train.main(["--config", "medium", "--num-samples", "24", "--batch-size", "4",
                           "--eval-samples", "1", "--epochs", "1", "--device", "cuda",
                           "--checkpoint-dir", str(folder)])
    finally:
        background_save.StagingBuffers.prepare = original
    if code != 0 or not staging:
        raise RuntimeError(f"the medium transformer's run exited {code}")
    buffers, needed = staging[0]
    pinned = buffers.pinned_nbytes
    by_torch = torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)
    check.report("pinned transformer", pinned <= needed * 1.05 and by_torch < needed / 100,
                 f"{pinned / 1e6:.1f} MB pinned for a {needed / 1e6:.1f} MB snapshot; torch's "
                 f"pinned allocator holds {by_torch / 1e6:.1f} MB")


def checkpoint_cost(check):
    """bench/bench_checkpoint.py on the GPU: stall per save, end-to-end overhead, start-up
    and throughput against a bare loop, medium transformer; its table goes to the output."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_checkpoint.py"),
                             "--device", "cuda"], capture_output=True, text=True, timeout=900)
    print(result.stdout, end="", flush=True)
    lines = result.stdout.strip().splitlines()
    check.report("cost transformer", result.returncode == 0,
                 lines[-1] if result.returncode == 0 and lines else
                 f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}")


def killed_rank(check):
    """Rank 1 SIGKILLed mid-run: rank 0 must end with exit 4 and its one line, the last
    checkpoint intact."""
    folder = check.work / "killed-rank"
    folder.mkdir()
    args = [*RUNS["gnn"], "--num-samples", check.cost_samples, "--epochs", "5",
            "--checkpoint-every-steps", "4", "--checkpoint-every-minutes", "0",
            "--device", check.device, "--dist-timeout", "1"]
    proc = subprocess.Popen([*process_tree.launcher(2), str(REPO / "train.py"), *args],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if "(epoch 2 step " in line:
            break
    else:
        proc.wait()
        raise RuntimeError(f"the run ended before epoch 2 (exit {proc.returncode})")
    os.kill(process_tree.rank_pids(proc.pid)[1], signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        # --dist-timeout is 1 minute: a rank 0 still there after 2 has hung.
        output.append(proc.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
        process_tree.kill_tree(proc.pid)
        proc.communicate()
        raise RuntimeError("rank 0 was still running 120 s after rank 1 was killed "
                           "(--dist-timeout 1 minute)") from None
    seconds = time.monotonic() - killed_at
    text = "".join(output)
    codes = re.findall(r"exitcode\s+:\s*(-?\d+) \(pid", text)
    said = re.search(r"train\.py: error: rank 0 lost the other processes[^\n]*?\)(?=;|$)",
                     text, re.M)
    ckpt.verify_checksum(folder / "checkpoints" / "gnn_tiny_latest.pt")
    check.report("killed rank gnn", sorted(codes) == ["-9", "4"] and said is not None,
                 f"ranks exited {', '.join(codes) or '?'} {seconds:.1f} s after the kill; "
                 f"rank 0 said: {said.group(0) if said else 'nothing'}; the latest "
                 f"checkpoint verifies")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run every check on the CPU with tiny runs")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    options = parser.parse_args()
    if not options.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible here (use --dry-run to exercise the checks "
              "on the CPU)", file=sys.stderr)
        return 2
    device = "cpu" if options.dry_run else "cuda"
    where = "CPU (dry run)" if options.dry_run else torch.cuda.get_device_name(0)
    print(f"gpu_check on {where}, torch {torch.__version__}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        check = Check(Path(options.workdir or scratch), device,
                      SIZE["dry" if options.dry_run else "gpu"])
        references = {}

        def identical(model):
            def run():
                a, _ = check.uninterrupted(model, "a")
                b, _ = check.uninterrupted(model, "b")
                references[model] = latest(a, f"{model}_tiny")
                differ = differences(references[model], latest(b, f"{model}_tiny"))
                check.report(f"identical {model}", not differ,
                             "two fresh runs bit-identical" if not differ
                             else f"differ in {', '.join(differ)}")
            return run

        def resume(model, tag="resume", *extra, nproc=1):
            def run():
                reference = references.get(model) if not extra and nproc == 1 else None
                if reference is None:
                    folder, _ = check.uninterrupted(model, f"{tag}-ref", *extra, nproc=nproc)
                    reference = latest(folder, f"{model}_tiny")
                folder, rerun = check.killed_and_resumed(model, tag, *extra, nproc=nproc)
                differ = differences(latest(folder, f"{model}_tiny"), reference)
                exact = re.search(r"^Exact Resume: (.*)$", (
                    folder / "checkpoints" / f"{model}_tiny_status.txt").read_text(), re.M)
                detail = (f"killed at {check.kill_at}, resumed: "
                          + ("bit-identical" if not differ else f"differs in {', '.join(differ)}")
                          + f"; status says Exact Resume: {exact.group(1) if exact else '?'}")
                # A run that says it is not exact may differ; one that says it is may not.
                promised = exact is not None and exact.group(1).startswith("yes")
                check.report(f"{tag} {model}", not differ or not promised, detail)
            return run

        def to_cpu():
            folder = check.work / "to-cpu"
            args = [*RUNS["gnn"], "--num-samples", check.samples, "--checkpoint-every-minutes",
                    "0"]
            first = train([*args, "--epochs", "1", "--device", device], folder)
            # The same command, without --device as a user would rerun it, on a machine
            # whose GPU is hidden.
            again = train([*args, "--epochs", "2"], folder, env={"CUDA_VISIBLE_DEVICES": ""})
            ok = first.returncode == 0 and again.returncode == 0 and "on cpu" in again.stdout
            check.report("to-cpu gnn", ok, "a checkpoint from " + device + " resumed on the CPU "
                         "with the same command" if ok else
                         f"exits {first.returncode}, {again.returncode}: "
                         f"{again.stderr.strip().splitlines()[-1:]}")

        def determinism_cost():
            seconds = {}
            for tag, extra in (("deterministic", ()), ("nondeterministic",
                                                       ("--nondeterministic",))):
                _, result = check.uninterrupted("gnn", f"cost-{tag}", "--num-samples",
                                                check.cost_samples, *extra)
                times = [float(t) for t in re.findall(r"^Epoch \d+/\d+ \|.* \| ([\d.]+)s$",
                                                      result.stdout, re.M)]
                seconds[tag] = statistics.median(times)
            check.report("determinism gnn", True,
                         f"median epoch {seconds['deterministic']:.2f} s deterministic, "
                         f"{seconds['nondeterministic']:.2f} s with --nondeterministic "
                         f"({seconds['deterministic'] / seconds['nondeterministic']:.2f}x)")

        for model in RUNS:
            check.run(f"identical {model}", identical(model))
            check.run(f"resume {model}", resume(model))
        for precision in ("bf16", "fp16"):
            if options.dry_run and precision == "bf16":   # the fp16 check runs the same code
                print("SKIPPED precision bf16: not in a dry run (fp16 runs the same check)",
                      flush=True)
                continue
            check.run(f"precision {precision}", resume("gnn", f"precision-{precision}",
                                                       "--precision", precision))
        if options.dry_run:   # minutes of compiling; test_background_save covers the CPU
            print("SKIPPED compile gnn: not in a dry run", flush=True)
        else:
            check.run("compile gnn", resume("gnn", "compile", "--compile"))
        check.run("to-cpu gnn", to_cpu)
        check.run("determinism gnn", determinism_cost)
        if options.dry_run:
            print("SKIPPED pinned transformer: pinning needs CUDA (the suite tests the logic "
                  "with a stand-in)", flush=True)
            print("SKIPPED cost transformer: the suite runs bench/bench_checkpoint.py --smoke "
                  "itself", flush=True)
        else:
            check.run("pinned transformer", lambda: pinned_bytes(check))
            check.run("cost transformer", lambda: checkpoint_cost(check))

        # Part 2: two processes. On GPUs they talk over NCCL; a dry run checks the same logic
        # over gloo on the CPU.
        if not options.dry_run and torch.cuda.device_count() < 2:
            print(f"SKIPPED two-process checks: they need two GPUs, and "
                  f"{torch.cuda.device_count()} is visible", flush=True)
        else:
            check.run("two-process resume gnn", resume("gnn", "two-process", nproc=2))
            check.run("killed rank gnn", lambda: killed_rank(check))
    passed = sum(check.results)
    print(f"took {time.monotonic() - started:.0f} s")
    print(f"gpu_checks={len(check.results)} passed={passed}")
    return 0 if passed == len(check.results) else 1


if __name__ == "__main__":
    sys.exit(main())
