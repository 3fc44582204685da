"""Exact resume: a run that is stopped and restarted, however it was stopped, ends bit for bit
where the uninterrupted run ends."""

import os
import random
from pathlib import Path

import pytest

import checkpoint as ckpt
from conftest import MODEL_ARGS, RUN_NAME, TrainProcess, assert_same_run, load, run_train


@pytest.mark.parametrize("model", list(MODEL_ARGS))
def test_four_epochs_equal_two_plus_two_resumed(tmp_path, references, model):
    args = MODEL_ARGS[model]
    first = run_train([*args, "--epochs", 2], tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_train([*args, "--epochs", 4], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Resuming from checkpoints/" in second.stdout and ": epoch 2 (" in second.stdout
    final = load(tmp_path / "checkpoints" / f"{RUN_NAME[model]}_latest.pt")
    assert final["history"]["epoch"] == [1, 2, 3, 4]
    assert_same_run(final, references.get(model, 4))


def kill_points(model):
    """SIGKILL points for fault_injection.py, one in every phase, drawn at random (seeded, so
    a failure can be replayed): a step, validation, the middle of a checkpoint's bytes, and
    between publishing the epoch/best names and renaming latest."""
    rng = random.Random(f"kill points {model}")
    return [f"step:{rng.randint(2, 14)}",
            f"save:{rng.randint(1, 3)}:{rng.randint(1, 400) * 1024}",
            "validation:1",
            f"publish:{rng.randint(1, 2)}"]


@pytest.mark.parametrize("model", list(MODEL_ARGS))
def test_sigkill_anywhere_then_rerun_ends_bit_identical(tmp_path, references, model):
    # Saves every 4 steps so that kills inside a save and resumes from mid-epoch are common.
    args = [*MODEL_ARGS[model], "--epochs", 4, "--checkpoint-every-steps", 4]
    folder = tmp_path / "checkpoints"
    for point in kill_points(model):
        killed = run_train(args, tmp_path, fault=point)
        assert killed.returncode == -9, f"{point}: {killed.stderr}"
        latest = folder / f"{RUN_NAME[model]}_latest.pt"
        if latest.exists():
            ckpt.load_checkpoint(latest)   # a kill never leaves a broken latest
    # One more kill from outside, at whatever moment follows a save.
    run = TrainProcess(args, tmp_path)
    run.wait_for("Checkpoint saved")
    run.proc.kill()
    assert run.finish() == -9
    last = run_train(args, tmp_path)
    assert last.returncode == 0, last.stderr
    assert_same_run(load(folder / f"{RUN_NAME[model]}_latest.pt"), references.get(model, 4))
    assert not list(folder.glob(".*.tmp-*"))


def test_restored_optimizer_moments_live_in_memory_of_their_own(finished_run):
    # The checkpoint is memory-mapped. Moments left in the file's private mapping would be
    # copied page by page by the first optimizer step (0.6-0.8 s on the medium transformer),
    # and would keep the mapping of a file that later saves replace alive.
    import torch
    import models
    import startup
    state = ckpt.load_checkpoint(finished_run / "gnn_tiny_latest.pt")
    loaded = state["optimizer_state_dict"]["state"]
    with torch.device("meta"):
        model = models.build_model(models.config_from_dict(state["config"]))
    model = model.to_empty(device="cpu")
    settings = state["args"]
    optimizer, scheduler = startup.build_optimizer(model, settings, 10)
    startup.restore(state, model, optimizer, scheduler, settings, {}, 10)
    restored = optimizer.state_dict()["state"]
    assert restored.keys() == loaded.keys() and loaded
    for index, moments in loaded.items():
        for key, tensor in moments.items():
            assert torch.equal(restored[index][key], tensor), (index, key)
            assert restored[index][key].data_ptr() != tensor.data_ptr(), (index, key)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_resumed_run_does_not_keep_its_checkpoint_file_mapped(tmp_path, monkeypatch):
    # The checkpoint is loaded memory-mapped. A mapping kept for the whole run would keep the
    # replaced latest's blocks allocated on disk (a deleted file lives while it is mapped).
    import train
    from conftest import run_main
    args = [*MODEL_ARGS["transformer"], "--checkpoint-dir", tmp_path]
    assert run_main([*args, "--epochs", 1]) == 0
    mapped = []
    original = train.Trainer.train_step

    def step(self, *step_args):
        if not mapped:
            maps = Path("/proc/self/maps").read_text().splitlines()
            # Only this run's files: other tests in this process may hold their own.
            mapped.append([line.split()[-1] for line in maps
                           if line.endswith(".pt") and str(tmp_path) in line])
        return original(self, *step_args)

    monkeypatch.setattr(train.Trainer, "train_step", step)
    assert run_main([*args, "--epochs", 2]) == 0
    assert mapped == [[]]
