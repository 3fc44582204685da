"""The checkpoint benchmark still runs end to end (its --smoke mode: every measurement on the
tiny model). It drives train.py's internals, so a change there can break it silently; the
figures themselves come from the full run, `python bench/bench_checkpoint.py`."""

import re
import subprocess
import sys

from conftest import REPO


def test_checkpoint_benchmark_smoke_run_prints_its_table_and_last_line():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_checkpoint.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"stall_vs_copy=[\d.]+ stall_vs_sync=[\d.]+ overhead=-?[\d.]+% "
                        r"resume_vs_fresh=[\d.]+ throughput_vs_bare=[\d.]+", lines[-1]), lines[-1]
    table = "\n".join(lines)
    for row in ("train.py stall per save (2 saves", "process start to first step",
                "gnn tiny: train.py / bare graphs/s", "Lightning ModelCheckpoint"):
        assert row in table, row


def test_gpu_check_runs_every_check_in_a_dry_run_on_the_cpu():
    """bench/gpu_check.py's logic (real runs, kills, comparisons) on the CPU, so that the GPU
    check cannot rot between the sessions that have a GPU."""
    import torch
    script = str(REPO / "bench" / "gpu_check.py")
    proc = subprocess.run([sys.executable, script, "--dry-run"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "gpu_checks=9 passed=9", proc.stdout
    for name in ("identical gnn", "identical transformer", "resume gnn", "resume transformer",
                 "precision-fp16 gnn", "to-cpu gnn", "determinism gnn", "two-process gnn",
                 "killed rank gnn"):
        assert any(line.startswith(f"PASS {name}:") for line in lines), name
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, script], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("gpu_check: no CUDA device")
