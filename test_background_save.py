"""Background saving: the snapshot is a consistent copy in kept buffers, one write at a time,
and the file it writes is the state at the save point."""

import errno
import io
import sys
import threading
import types

import pytest
import torch

import background_save
import checkpoint as ckpt
from conftest import GNN_ARGS, assert_same_run, assert_tensors_equal, load, run_main, run_train
from test_checkpoint import trained_state


def _saved(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _odd_state():
    """A trained state plus scalars, empty tensors and every kind of dtype."""
    return {**trained_state(), "odd": [torch.tensor(3.0), torch.zeros(0, 4),
                                       torch.zeros(0, dtype=torch.int64),
                                       torch.ones(3, dtype=torch.bool), torch.randn(5).half()]}


def test_snapshot_is_a_copy_that_training_cannot_change():
    state = trained_state()
    staging = background_save.StagingBuffers()
    snapshot = staging.snapshot(state)
    assert_tensors_equal(state, snapshot)
    weight = next(iter(state["model_state_dict"].values()))
    before = snapshot["model_state_dict"][next(iter(state["model_state_dict"]))].clone()
    with torch.no_grad():
        weight.add_(1.0)                         # the next optimizer step
    state["history"]["epoch"].append(2)          # the next epoch's bookkeeping
    assert torch.equal(snapshot["model_state_dict"][next(iter(state["model_state_dict"]))],
                       before)
    assert snapshot["history"]["epoch"] == [1]


def test_prepared_buffers_are_kept_and_save_exactly_as_buffers_made_on_demand():
    """prepare() makes the buffers the first snapshot uses (scalars, empty tensors, every
    dtype), and the file is the same as without it."""
    state = _odd_state()
    staging = background_save.StagingBuffers()
    staging.prepare(state)
    pointers = {path: b.data_ptr() for path, b in staging._buffers.items()}
    snapshot = staging.snapshot(state)
    assert {path: b.data_ptr() for path, b in staging._buffers.items()} == pointers
    assert _saved(snapshot) == _saved(background_save.StagingBuffers().snapshot(state))


def test_buffers_are_carved_from_reserved_memory_each_its_own_storage_same_file():
    """The buffers live in the memory paged in at start-up, without overlapping; each is a
    storage of its own size (torch.save writes whole storages), so the file is the same as
    with buffers allocated one by one. What does not fit is allocated as before."""
    state = _odd_state()
    on_demand = _saved(background_save.StagingBuffers().snapshot(state))
    needed = background_save.staged_nbytes(state)
    for size, all_inside in ((needed, True), (needed // 2, False)):
        memory = background_save.PagedInMemory(size).take()
        assert memory is not None and len(memory) == size
        staging = background_save.StagingBuffers(types.SimpleNamespace(take=lambda: memory))
        staging.prepare(state)
        start, end = background_save.memory_span(memory)
        buffers = sorted((b for b in staging._buffers.values() if b.numel()),
                         key=lambda b: b.data_ptr())
        inside = [start <= b.data_ptr() < end for b in buffers]
        assert all(inside) if all_inside else 0 < sum(inside) < len(buffers)
        for b, following in zip(buffers, buffers[1:]):
            assert b.data_ptr() + b.untyped_storage().nbytes() <= following.data_ptr()
        for b in buffers:
            assert b.untyped_storage().nbytes() == b.numel() * b.element_size()
        assert _saved(staging.snapshot(state)) == on_demand
    # Without the memory (it could not be mapped), every buffer is allocated as before.
    staging = background_save.StagingBuffers(types.SimpleNamespace(take=lambda: None))
    staging.prepare(state)
    assert _saved(staging.snapshot(state)) == on_demand


def test_memory_for_a_gpu_state_is_pinned_on_the_page_in_thread(monkeypatch):
    """For a GPU run the reserved memory is registered with CUDA (exactly the state's bytes,
    not torch's power-of-two pinned blocks) by the page-in thread, for the training device;
    where that fails the run goes on without it. (No GPU here: the registration is stood in
    for and the state is on the CPU, so that GPU buffers are carved only from pinned memory
    is checked by bench/gpu_check.py's `pinned transformer` on a GPU.)"""
    state = _odd_state()
    needed = background_save.staged_nbytes(state)
    calls = []

    def page_lock(memory, device):
        calls.append((threading.current_thread().name, len(memory), device))
        return device.index == 1

    monkeypatch.setattr(background_save, "page_lock", page_lock)
    for index, pinned in ((1, True), (0, False)):
        reserved = background_save.PagedInMemory(needed, torch.device("cuda", index))
        staging = background_save.StagingBuffers(reserved)
        staging.prepare(state)
        assert reserved.page_locked is pinned
        assert calls[-1] == ("staging-page-in", needed, torch.device("cuda", index))
        # Registered memory is counted whole; unregistered memory pins nothing.
        assert staging.pinned_nbytes == (needed if pinned else 0)
        if pinned:
            start, end = background_save.memory_span(staging._pinned_memory)
            assert all(start <= b.data_ptr() < end for b in staging._buffers.values()
                       if b.numel())
        else:
            assert staging._pinned_memory is None
    # A CPU run never asks CUDA.
    background_save.PagedInMemory(needed).take()
    assert len(calls) == 2


def test_pinning_without_cuda_fails_quietly():
    memory = background_save.PagedInMemory(1 << 20).take()
    assert background_save.page_lock(memory, torch.device("cuda")) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_reserved_memory_is_paged_in_by_the_time_it_is_taken():
    def resident_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    before = resident_bytes()
    memory = background_save.PagedInMemory(64 << 20).take()
    assert resident_bytes() - before >= 60 << 20
    del memory


def test_a_run_stages_its_snapshots_in_the_memory_reserved_at_start_up(tmp_path, monkeypatch):
    """Fresh (the size estimated from the model) and resumed (the size of the loaded state):
    every buffer of the snapshot lies in the memory paged in during start-up."""
    taken, prepared = [], []
    real_take, real_prepare = background_save.PagedInMemory.take, \
        background_save.StagingBuffers.prepare

    def take(self):
        taken.append(real_take(self))
        return taken[-1]

    def prepare(self, state):
        real_prepare(self, state)
        prepared.append([b for b in self._buffers.values() if b.numel()])

    monkeypatch.setattr(background_save.PagedInMemory, "take", take)
    monkeypatch.setattr(background_save.StagingBuffers, "prepare", prepare)
    args = [*GNN_ARGS, "--checkpoint-dir", tmp_path]
    assert run_main([*args, "--epochs", "1"]) == 0
    assert run_main([*args, "--epochs", "2"]) == 0
    assert len(taken) == len(prepared) == 2
    for memory, buffers in zip(taken, prepared):
        start, end = background_save.memory_span(memory)
        assert buffers and all(start <= b.data_ptr() < end for b in buffers)


def test_buffers_are_kept_between_saves_and_tied_tensors_share_one():
    state = trained_state()
    staging = background_save.StagingBuffers()
    first = staging.snapshot(state)
    pointers = {k: v.data_ptr() for k, v in first["model_state_dict"].items()}
    size = staging.nbytes
    second = staging.snapshot(state)
    assert {k: v.data_ptr() for k, v in second["model_state_dict"].items()} == pointers
    assert staging.nbytes == size
    # Two names for one tensor (tied weights) get one buffer, as torch.save stores one storage.
    shared = torch.arange(6.0)
    tied = staging.snapshot({"embedding": shared, "head": shared})
    assert tied["embedding"] is tied["head"] and torch.equal(tied["head"], shared)


def test_one_write_at_a_time_and_its_outcome(tmp_path, monkeypatch):
    saver = background_save.BackgroundSaver()
    release = threading.Event()
    real_save = ckpt.save_checkpoint

    def slow_save(state, path, also=()):
        release.wait()
        return real_save(state, path, also)

    monkeypatch.setattr(ckpt, "save_checkpoint", slow_save)
    state = trained_state()
    saver.submit(state, tmp_path / "a.pt", [], "first")
    assert saver.in_flight and saver.poll() is None
    with pytest.raises(RuntimeError, match="still in flight"):
        saver.submit(state, tmp_path / "b.pt", [], "second")
    release.set()
    assert saver.wait() == ("first", None)
    assert_tensors_equal(state, load(tmp_path / "a.pt"))

    monkeypatch.setattr(ckpt, "save_checkpoint", lambda *a: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    saver.submit(state, tmp_path / "c.pt", [], "third")
    ticket, error = saver.wait()
    assert ticket == "third" and error.errno == errno.ENOSPC


def test_the_file_holds_the_state_at_submit_even_if_it_changes_after_the_copy(tmp_path):
    state = trained_state()
    expected = {k: v.clone() for k, v in state["model_state_dict"].items()}
    saver = background_save.BackgroundSaver()
    saver.submit(state, tmp_path / "x.pt", [], None)
    saver.wait_until_copied()
    with torch.no_grad():
        for weight in state["model_state_dict"].values():
            weight.add_(1.0)      # what optimizer.step() does right after wait_until_copied
    assert saver.wait() == (None, None)
    assert_tensors_equal(expected, load(tmp_path / "x.pt")["model_state_dict"])


def test_non_finite_weights_are_never_written(tmp_path):
    state = trained_state()
    next(iter(state["model_state_dict"].values()))[0] = float("nan")
    saver = background_save.BackgroundSaver()
    saver.submit(state, tmp_path / "x.pt", [], None)
    _, error = saver.wait()
    assert isinstance(error, background_save.NonFiniteWeights)
    assert not (tmp_path / "x.pt").exists()


def test_all_finite_finds_nan_and_inf_and_is_not_fooled_by_an_overflowing_sum():
    big = torch.full((4,), 3e38)          # finite values whose sum overflows to inf
    ints = torch.tensor([2**62, 2**62])   # not floating point: never non-finite
    assert background_save.all_finite([big, ints, torch.ones(3, dtype=torch.float16) * 6e4])
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            t = torch.zeros(1000, dtype=dtype)
            t[777] = bad
            assert not background_save.all_finite([torch.ones(2), t]), (bad, dtype)
    both = torch.tensor([float("inf"), -float("inf")])   # sums to NaN
    assert not background_save.all_finite([both])


def test_progress_file_reports_how_long_saves_blocked_training(tmp_path):
    assert run_main([*GNN_ARGS, "--epochs", 2, "--checkpoint-every-steps", 5]) == 0
    import json
    stall = json.loads((tmp_path / "checkpoints" / "gnn_tiny_progress.json").read_text())[
        "checkpoint_stall"]
    assert stall["saves"] == 2 + 6   # two epoch ends, three mid-epoch saves per epoch
    assert 0 < stall["mean_s"] <= stall["max_s"] < 5


# ------------------------------------------------------------------------------------------
# Mixed precision and torch.compile (on the CPU here; the same code paths drive CUDA)
# ------------------------------------------------------------------------------------------

def test_fp16_checkpoints_its_gradient_scaler_and_resumes_exactly(tmp_path, capsys):
    args = [*GNN_ARGS, "--precision", "fp16"]
    assert run_main([*args, "--epochs", 2, "--name", "whole"]) == 0
    assert run_main([*args, "--epochs", 1, "--name", "split"]) == 0
    assert run_main([*args, "--epochs", 2, "--name", "split"]) == 0
    whole = load(tmp_path / "checkpoints" / "whole_latest.pt")
    split = load(tmp_path / "checkpoints" / "split_latest.pt")
    assert whole["scaler_state_dict"]["_growth_tracker"] == 34   # 2 epochs of 17 clean steps
    assert_tensors_equal(whole["scaler_state_dict"], split["scaler_state_dict"])
    assert_tensors_equal(whole["model_state_dict"], split["model_state_dict"])
    assert_tensors_equal(whole["optimizer_state_dict"], split["optimizer_state_dict"])


def test_bf16_autocast_changes_the_numbers_and_fp32_has_no_scaler(tmp_path, capsys):
    assert run_main([*GNN_ARGS, "--epochs", 1, "--name", "full"]) == 0
    assert run_main([*GNN_ARGS, "--epochs", 1, "--name", "half", "--precision", "bf16"]) == 0
    full = load(tmp_path / "checkpoints" / "full_latest.pt")
    half = load(tmp_path / "checkpoints" / "half_latest.pt")
    assert "scaler_state_dict" not in full and "scaler_state_dict" not in half
    assert not torch.equal(full["model_state_dict"]["embed.weight"],
                           half["model_state_dict"]["embed.weight"])
    capsys.readouterr()
    assert run_main([*GNN_ARGS, "--epochs", 2, "--name", "full", "--precision", "bf16"]) == 0
    assert "--precision bf16 overrides the checkpoint's fp32" in capsys.readouterr().out


def test_compiled_training_saves_the_plain_module_and_matches_eager(tmp_path):
    """torch.compile on the CPU (inductor needs a C++ compiler; it is slow to compile, so one
    small epoch)."""
    import shutil
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler; none here")
    small = ["--model", "gnn", "--num-samples", "60", "--batch-size", "16"]
    assert run_main([*small, "--epochs", 1, "--name", "eager"]) == 0
    assert run_main([*small, "--epochs", 1, "--name", "compiled", "--compile"]) == 0
    eager = load(tmp_path / "checkpoints" / "eager_latest.pt")
    compiled = load(tmp_path / "checkpoints" / "compiled_latest.pt")
    assert not any(k.startswith("_orig_mod.") for k in compiled["model_state_dict"])
    for key, value in eager["model_state_dict"].items():
        assert torch.allclose(value, compiled["model_state_dict"][key], atol=1e-5), key


def test_a_compiled_run_killed_mid_epoch_resumes_bit_identical_with_two_threads(tmp_path):
    """With two threads Inductor's generated code may add in parallel loops in any order
    (measured: two identical fresh compiled runs differed in 27 of 38 tensors with
    --nondeterministic); deterministic mode, the default, and dynamic shapes from the first
    call make a compiled run killed inside epoch 2 and resumed equal an uninterrupted one."""
    import shutil
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler; none here")
    args = [*GNN_ARGS, "--num-samples", "160", "--epochs", "2", "--compile",
            "--checkpoint-every-steps", "3"]
    two_threads = {"OMP_NUM_THREADS": "2"}
    for folder in ("whole", "killed"):
        (tmp_path / folder).mkdir()
    whole = run_train(args, tmp_path / "whole", env=two_threads, timeout=600)
    assert whole.returncode == 0, whole.stderr
    # 144 training samples in batches of 16: 9 steps an epoch; step 13 is inside epoch 2,
    # after its save at step 12.
    killed = run_train(args, tmp_path / "killed", fault="step:13", env=two_threads, timeout=600)
    assert killed.returncode == -9, killed.stderr
    resumed = run_train(args, tmp_path / "killed", env=two_threads, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    # From step 12's save, or from the end of epoch 1 when the kill beat step 12's background
    # write: either way a fresh process compiles again and continues.
    assert "Resuming from" in resumed.stdout, resumed.stdout
    assert_same_run(load(tmp_path / "killed" / "checkpoints" / "gnn_tiny_latest.pt"),
                    load(tmp_path / "whole" / "checkpoints" / "gnn_tiny_latest.pt"))
    status = (tmp_path / "whole" / "checkpoints" / "gnn_tiny_status.txt").read_text()
    assert "Exact Resume: yes" in status


def test_deterministic_mode_and_an_operation_without_one_named_once():
    import os
    import warnings
    import determinism
    try:
        assert determinism.configure(False) == determinism.NONDETERMINISTIC
        assert not torch.are_deterministic_algorithms_enabled()
        assert determinism.configure(True) is None
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        import torch._inductor.config as inductor
        assert inductor.deterministic   # what makes compiled CPU code add in a fixed order
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == determinism.CUBLAS_WORKSPACE
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        determinism.configure(True)
    said = []
    with determinism.Watch(said.append):
        for _ in range(3):   # as PyTorch words it, for an op with no deterministic kernel
            warnings.warn("index_add_cuda_ does not have a deterministic implementation, but "
                          "you set 'torch.use_deterministic_algorithms(True, warn_only=True)'")
        with pytest.warns(UserWarning, match="something else"):
            warnings.warn("something else")
    assert said == ["index_add_cuda_ has no deterministic implementation on this device: this "
                    "run will not resume bit-identically"]
