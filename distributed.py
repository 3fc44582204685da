"""Which process of a `torchrun` job this is, and the few collectives training needs.

`torchrun --nproc_per_node=N train.py ...` starts N copies of train.py and tells each its
place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). With
no torchrun, or a world of one, `Processes.single()` stands in: every collective is the
identity, so the single-process path runs exactly the code it always ran.

Any failed collective (a peer that died, or one that did not answer within the timeout) is
raised as `PeerLost`, which train.py turns into one line and its own exit code.
"""

import contextlib
import datetime
import gc
import os
import re

import torch
import torch.distributed as dist


class PeerLost(Exception):
    """Another process of the run died or stopped answering."""


class Processes:
    """This process's rank among `world_size`, and collectives over all of them.

    Object collectives (`broadcast`, `gather`) pickle small Python values (decisions, RNG
    states) and go over gloo; tensors for DDP go over gloo on CPU, NCCL on CUDA."""

    def __init__(self, rank=0, world_size=1, local_rank=0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank

    @classmethod
    def single(cls):
        return cls()

    @property
    def active(self):
        return self.world_size > 1

    @property
    def main(self):
        return self.rank == 0

    def broadcast(self, value):
        """Rank 0's `value`, on every rank."""
        if not self.active:
            return value
        box = [value if self.main else None]
        self._call(dist.broadcast_object_list, box, src=0)
        return box[0]

    def gather(self, value):
        """On rank 0, the list of every rank's `value` (index = rank); None elsewhere."""
        if not self.active:
            return [value]
        out = [None] * self.world_size if self.main else None
        self._call(dist.gather_object, value, out, dst=0)
        return out

    def sum(self, values):
        """Element-wise sum over the ranks of a list of numbers, in float64."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64)
        self._call(dist.all_reduce, tensor)
        return tensor.tolist()

    def all_ok(self, ok):
        """True on every rank when `ok` is true on every rank."""
        return self.sum([0.0 if ok else 1.0])[0] == 0

    def close(self):
        """Destroy the process group. The DDP wrapper of the run that just ended sits in
        reference cycles; collecting it first frees its reducer while the group it uses still
        exists, not later during interpreter shutdown. (Once, at the end of a 2-process run
        on a loaded machine, a rank aborted with "terminate called without an active
        exception" in this teardown.)"""
        if self.active and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()

    def _call(self, collective, *args, **kwargs):
        with peers_watched():
            collective(*args, **kwargs)


def _is_communication_error(error):
    # gloo raises plain RuntimeErrors from its transport (pair.cc), NCCL and the c10d store
    # raise DistError subclasses; both name their source.
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        marker in text for marker in ("gloo", "NCCL", "ProcessGroup", "Connection closed",
                                      "Connection reset"))


@contextlib.contextmanager
def peers_watched():
    """Turn a failed collective (here, or inside DDP's forward and backward) into PeerLost;
    other errors pass through unchanged."""
    try:
        yield
    except RuntimeError as e:
        if not _is_communication_error(e):
            raise
        raise PeerLost(_short_reason(e)) from None


def _short_reason(error):
    """gloo's message without its source location and generic advice."""
    text = " ".join(str(error).split())
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\] ", "", text)
    return text.split(" This is typically caused")[0][:300]


def launched_by_torchrun():
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def join(timeout_minutes):
    """Join the process group torchrun set up in the environment; `Processes.single()` when
    there is none. CPU tensors go over gloo; where CUDA is present, CUDA tensors (DDP's, when
    training on the GPU) go over NCCL. The backend is chosen before the device is known: a
    resumed run's device comes from the checkpoint, which only rank 0 has read by then.

    Raises:
        PeerLost: the rendezvous failed or timed out.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Processes.single()
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    except (RuntimeError, ValueError) as e:
        raise PeerLost(f"could not join the other processes: {_short_reason(e)}") from None
    return Processes(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", 0)))


def shard(indices, rank, world_size):
    """This rank's share of one global batch: every world_size-th sample from `rank`.

    The shares are disjoint, their union is the batch, and they depend only on (batch, rank,
    world size); the batch itself is the next slice of the epoch's seeded order. So the
    samples a run has done are always a prefix of that order, whatever the world size."""
    return indices[rank::world_size]


class _Loss(torch.nn.Module):
    """A model's `loss(batch)` as a module's forward: DDP averages gradients only for the
    calls that go through its own forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def data_parallel(model, device):
    """`model.loss` wrapped in DistributedDataParallel (which also makes every rank start
    from rank 0's weights and buffers)."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(_Loss(model),
                                   device_ids=[device.index] if device.type == "cuda" else None)
