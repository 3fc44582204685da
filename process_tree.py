"""Test and bench support, not part of the tool: how train.py is started under torchrun, and
the processes a command started, found through /proc (Linux).

Used by the tests (conftest.py), bench/chaos.py and bench/gpu_check.py, which kill single
ranks or whole torchrun jobs the way a scheduler does.
"""

import os
import signal
import sys
from pathlib import Path


def launcher(nproc):
    """The start of the command that runs a script: python, or torchrun with `nproc`
    processes on this machine."""
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}"]


def children(pid):
    """Process ids of the children of `pid`, by each process's parent in /proc/*/stat. Not
    /proc/PID/task/*/children, which proc(5) calls reliable only while the children are
    stopped or frozen: CI once saw it leave out a running torchrun worker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "PID (COMMAND) STATE PPID ...": the command may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:   # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def descendants(pid):
    found = children(pid)
    return found + [d for child in found for d in descendants(child)]


def rank_pids(torchrun_pid):
    """{rank: pid} of the workers torchrun started, by the RANK each was started with."""
    ranks = {}
    for pid in children(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:   # the process ended meanwhile
            continue
        rank = next((v for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[int(rank[5:])] = pid
    return ranks


def kill_tree(pid):
    """SIGKILL to `pid` and all its descendants at once, as a scheduler that kills the job's
    cgroup does (torchrun starts each rank in a session of its own, so a process group kill
    would miss them)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
