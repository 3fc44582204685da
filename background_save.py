"""Background checkpointing: snapshot the training state into kept host buffers at the save
point, write it from a thread while training goes on.

At the save point the loop only records the state's structure (dicts, lists, plain values:
cheap). The tensors are copied into buffers that are allocated once and kept between saves
(fresh allocations would pay page faults on every save) by the writer thread, while the next
step's forward and backward run: those read the weights and optimizer state but do not write
them. The loop waits for the copy to finish just before the next `optimizer.step()`, the first
write to any of them. Then the thread writes the file, with every guarantee of
`checkpoint.save_checkpoint` (atomic rename, checksum, epoch/best names published before
latest). At most one write is in flight: a new save point first waits for the previous write,
so memory never holds more than one snapshot.
"""

import threading
import time

import torch

import checkpoint as ckpt


class NonFiniteWeights(Exception):
    """The snapshot holds NaN or Inf weights: it was not written."""


def _unique_tensors(value, path=(), seen=None):
    """(path, tensor) for each tensor of a nested state, tensors sharing storage once."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        key = _storage_key(value)
        if not (value.numel() and key in seen):
            seen.add(key)
            yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _unique_tensors(v, path + (k,), seen)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _unique_tensors(v, path + (i,), seen)


def _storage_key(tensor):
    return (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride(), tensor.device)


def all_finite(tensors):
    """Whether every element of the floating-point `tensors` is finite. A tensor's sum is
    finite only if every element is (any NaN or Inf makes it NaN or Inf), and summing reads
    the data once, about 9x faster than building isfinite's mask. Only a sum that is not
    finite (an overflow of finite values, or a real NaN/Inf) pays for the exact check."""
    floats = [t for t in tensors if t.is_floating_point()]
    return all(bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all()) for t in floats)


class StagingBuffers:
    """Host copies of every tensor of a nested state, reused from one save to the next."""

    def __init__(self):
        self._buffers = {}     # path in the nested state -> kept host tensor
        self._streams = {}     # CUDA device -> side stream for device-to-host copies

    def prepare(self, state):
        """Allocate and page in the buffers for `state` now, so that even the first snapshot
        copies into memory that is already mapped.

        This blocks the loop once: 0.09-0.73 s for the medium transformer's 531 MB here (the
        same page faults cost this virtual machine's kernel more in some processes).
        Done in a thread beside training, as before, the same page faults slowed the next
        steps by 0.4-0.8 s (measured): they took cores from torch's threads, which wait for
        each other at every operation."""
        for path, tensor in _unique_tensors(state):
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu",
                                 pin_memory=tensor.is_cuda)
            buffer.zero_()   # take the page faults here, not while copying a snapshot
            self._buffers[path] = buffer

    @property
    def prepared(self):
        return bool(self._buffers)

    def snapshot(self, state):
        """A copy of `state` whose tensors live in the kept buffers; other values are copied
        structurally (lists and dicts) or shared (immutable scalars and strings)."""
        copy, fill = self.plan(state)
        fill()
        return copy

    def plan(self, state):
        """The snapshot's structure now, its tensor data later: returns (copy, fill), where
        `fill()` copies the data into the buffers. Until `fill` has returned, the tensors of
        `state` must not change."""
        seen = {}              # tensors that share storage (tied weights) share one buffer
        used = set()
        pending = []           # (buffer, source) of the host copies still to make
        copy = self._copy(state, (), seen, used, pending)
        for path in set(self._buffers) - used:
            del self._buffers[path]   # parts of the state that no longer exist
        streams = list(self._streams.values())

        def fill():
            for buffer, source in pending:
                buffer.copy_(source)
            for stream in streams:
                stream.synchronize()   # the device-to-host copies are complete
        return copy, fill

    def _copy(self, value, path, seen, used, pending):
        if isinstance(value, torch.Tensor):
            key = _storage_key(value)
            if value.numel() and key in seen:
                return seen[key]
            buffer = self._buffer(path, value)
            used.add(path)
            if value.is_cuda:
                # Queued now on a side stream (after the work already queued), so it needs no
                # host time; `fill` waits for it.
                stream = self._side_stream(value.device)
                with torch.cuda.stream(stream):
                    buffer.copy_(value, non_blocking=True)
            else:
                pending.append((buffer, value))
            seen[key] = buffer
            return buffer
        if isinstance(value, dict):
            return {k: self._copy(v, path + (k,), seen, used, pending) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [self._copy(v, path + (i,), seen, used, pending) for i, v in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        return value   # int, float, str, bool, None: immutable

    def _buffer(self, path, value):
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            # Pinned host memory lets the GPU copy run asynchronously on the side stream.
            buffer = torch.empty(value.shape, dtype=value.dtype, device="cpu",
                                 pin_memory=value.is_cuda)
            self._buffers[path] = buffer
        return buffer

    def _side_stream(self, device):
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        # The copies must see the optimizer step that the default stream just queued.
        stream.wait_stream(torch.cuda.current_stream(device))
        return stream

    @property
    def nbytes(self):
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


class BackgroundSaver:
    """Snapshots and writes from one thread, one at a time.

    `submit` takes the live state; `wait_until_copied` must be called before anything
    changes its tensors; `poll` returns the outcome of a finished write (or None); `wait`
    blocks until the write in flight ends and returns its outcome. An outcome is
    `(ticket, error)`: the caller's ticket and None, or the exception that stopped the write
    (an OSError such as ENOSPC, or NonFiniteWeights).
    """

    def __init__(self):
        self.staging = StagingBuffers()
        self._thread = None
        self._outcome = None
        self._copied = threading.Event()
        self._copied.set()

    def submit(self, state, path, also, ticket):
        if self._thread is not None:
            raise RuntimeError("a checkpoint write is still in flight: wait() for it first")
        snapshot, fill = self.staging.plan(state)
        self._copied.clear()
        self._thread = threading.Thread(target=self._write, name="checkpoint-writer",
                                        args=(snapshot, fill, path, also, ticket))
        self._thread.start()

    def wait_until_copied(self):
        """Block until the snapshot in flight holds its own copy of every tensor; returns the
        seconds waited."""
        if self._copied.is_set():
            return 0.0
        started = time.perf_counter()
        self._copied.wait()
        return time.perf_counter() - started

    def _write(self, snapshot, fill, path, also, ticket):
        try:
            try:
                fill()
            finally:
                self._copied.set()
            if not all_finite(snapshot["model_state_dict"].values()):
                raise NonFiniteWeights("non-finite weights")
            ckpt.save_checkpoint(snapshot, path, also)
            self._outcome = (ticket, None)
        except BaseException as e:   # handed to the training thread, which decides
            self._outcome = (ticket, e)

    @property
    def in_flight(self):
        return self._thread is not None

    def poll(self):
        """The outcome of a write that has finished, without blocking; else None."""
        if self._thread is not None and not self._thread.is_alive():
            return self.wait()
        return None

    def wait(self):
        """Block until the write in flight (if any) ends; returns its outcome or None."""
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        outcome, self._outcome = self._outcome, None
        return outcome
