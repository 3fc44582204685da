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

The buffers' memory is paged in before training starts, by a thread that runs while start-up
leaves a core idle (see `PagedInMemory`).
"""

import ctypes
import mmap
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


BUFFER_ALIGNMENT = 64   # bytes; each buffer carved from paged-in memory starts on a multiple


def staged_nbytes(state):
    """Bytes of the buffers that hold a snapshot of `state`, alignment included."""
    return sum(_aligned(t.numel() * t.element_size()) for _, t in _unique_tensors(state))


def _aligned(nbytes):
    return -(-nbytes // BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT


class PagedInMemory:
    """`nbytes` of host memory, paged in by a thread started now.

    Touching the pages of a fresh allocation costs time for every 4 KiB page: 0.09-0.73 s
    for the medium transformer's 531 MB on this virtual machine, and the loop waited for it
    at the first step (done beside training steps instead, the same faults slowed them by as
    much: torch's threads wait for each other at every operation). Start-up before the first
    step (importing, building the model, initialising its weights) runs on one core, so a
    thread started there pages the memory in on the other, unseen: start-up took as long as
    without it (measured, medium transformer: 1.53 s against 1.55 s, 4 runs each).

    The pages are touched by memset, a C call made through ctypes, which releases the GIL
    while start-up's Python code goes on. Not madvise(MADV_POPULATE_WRITE): it is cheaper
    in CPU, but holds the lock of the process's memory map, which start-up's own
    allocations need, and delayed the first step by 0.13 s."""

    def __init__(self, nbytes, cuda_device=None):
        self.nbytes = nbytes
        self.cuda_device = cuda_device   # page-lock the memory for this GPU's copies, or None
        self.page_locked = False
        self._memory = None
        self._thread = threading.Thread(target=self._page_in, name="staging-page-in",
                                        daemon=True)
        self._thread.start()

    def _page_in(self):
        try:
            # Private: a process started by fork (a data loader worker) gets its own copy.
            memory = mmap.mmap(-1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            view = ctypes.c_char.from_buffer(memory)
            ctypes.memset(ctypes.addressof(view), 0, self.nbytes)
            del view   # the mapping may then be released once nothing else uses it
            self._memory = memory
        except (AttributeError, MemoryError, OSError, TypeError, ValueError):
            return   # no such mapping here: the buffers are allocated when needed instead
        if self.cuda_device is not None:
            self.page_locked = page_lock(memory, self.cuda_device)

    def take(self):
        """Wait for the page-in to finish; returns the memory (an mmap), or None where it
        could not be had. For a GPU (`cuda_device`), `page_locked` then says whether the
        memory is pinned for that GPU's copies."""
        self._thread.join()
        memory, self._memory = self._memory, None
        return memory


# cudaHostRegisterPortable: pinned for every CUDA context of the process, not just the
# registering thread's.
_CUDA_HOST_REGISTER_PORTABLE = 1


def page_lock(memory, device):
    """Pin `memory` (an mmap) for `device`'s copies by registering it with the CUDA runtime;
    returns whether that worked.

    Copies from the GPU into pinned host memory run asynchronously on the side stream. Pinned
    memory from torch (`pin_memory=True`) comes from its caching host allocator, which rounds
    every allocation up to a power of two and keeps it for the process's life: the large
    transformer's 1.36 GB state would pin about 2.2 GB. Registering the memory paged in at
    start-up pins exactly the state's bytes, and before the first step.

    This runs on the page-in thread, never the training thread: a CUDA call that fails leaves
    its error as its thread's "last error", which torch would report at the training thread's
    next kernel launch as an error of its own."""
    try:
        # This thread's device (`cuda` without an index is GPU 0, as on the training thread):
        # no CUDA context is made on a GPU that the run does not use.
        torch.cuda.set_device(device.index or 0)
        if hasattr(mmap, "MADV_DONTFORK"):
            # Left out of a forked child, which could not use it: the kernel would otherwise
            # copy the pinned pages at every fork.
            memory.madvise(mmap.MADV_DONTFORK)
        start, _ = memory_span(memory)
        error = torch.cuda.cudart().cudaHostRegister(start, len(memory),
                                                      _CUDA_HOST_REGISTER_PORTABLE)
        return int(error) == 0
    except (AssertionError, AttributeError, OSError, RuntimeError, TypeError, ValueError):
        return False   # not pinned: the buffers are pinned by torch when needed instead


def memory_span(memory):
    """(first address, address past the end) of an mmap."""
    view = ctypes.c_char.from_buffer(memory)
    start = ctypes.addressof(view)
    del view   # the mmap object keeps the mapping; the address stays valid with it
    return start, start + len(memory)


class StagingBuffers:
    """Host copies of every tensor of a nested state, reused from one save to the next."""

    def __init__(self, reserved=None):
        self._buffers = {}     # path in the nested state -> kept host tensor
        self._streams = {}     # CUDA device -> side stream for device-to-host copies
        self._reserved = reserved   # PagedInMemory for the first buffers, or None
        self._pinned_memory = None   # that memory, where it is registered with CUDA
        self._pinned_span = (0, 0)

    def prepare(self, state):
        """Make the buffers for `state` now, in memory that is already paged in, so that even
        the first snapshot copies into memory that is already mapped.

        The buffers are carved from the `reserved` memory, each its own storage (torch.save
        writes a tensor's whole storage). A GPU tensor's buffer needs pinned memory: it is
        carved only when the memory is pinned (`PagedInMemory.page_locked`). What is not
        carved (what does not fit, every buffer without the memory, GPU buffers where it
        could not be pinned) is allocated and paged in here, which blocks the loop."""
        reserved, self._reserved = self._reserved, None
        memory = reserved.take() if reserved is not None else None
        pinned = memory is not None and getattr(reserved, "page_locked", False)
        if pinned:
            # Registered memory must stay mapped for the process's life, even if every
            # buffer carved from it is later replaced.
            self._pinned_memory = memory
            self._pinned_span = memory_span(memory)
        offset = 0
        for path, tensor in _unique_tensors(state):
            nbytes = tensor.numel() * tensor.element_size()
            if (memory is not None and (pinned or not tensor.is_cuda) and tensor.numel()
                    and offset + nbytes <= len(memory)):
                buffer = torch.frombuffer(memory, dtype=tensor.dtype, count=tensor.numel(),
                                          offset=offset).view(tensor.shape)
                offset += _aligned(nbytes)
            else:
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

    @property
    def pinned_nbytes(self):
        """Host bytes pinned for GPU copies: the registered memory, plus the buffers that
        torch pinned (counted at their own size; torch's allocator may round them up)."""
        start, end = self._pinned_span
        return end - start + sum(b.numel() * b.element_size() for b in self._buffers.values()
                                 if not start <= b.data_ptr() < end and b.is_pinned())


class BackgroundSaver:
    """Snapshots and writes from one thread, one at a time.

    `submit` takes the live state; `wait_until_copied` must be called before anything
    changes its tensors; `poll` returns the outcome of a finished write (or None); `wait`
    blocks until the write in flight ends and returns its outcome. An outcome is
    `(ticket, error)`: the caller's ticket and None, or the exception that stopped the write
    (an OSError such as ENOSPC, or NonFiniteWeights).
    """

    def __init__(self, reserved=None):
        self.staging = StagingBuffers(reserved)
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
