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
