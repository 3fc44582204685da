"""Checkpoint files: round trips, integrity checks, fallback past damaged files, interrupt and
resume with real signals, and what a user sees when a checkpoint is bad."""

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import antibody
import checkpoint as ckpt
import models
import resume_check
import startup
import train
from conftest import (GNN_ARGS, MODEL_ARGS, REPO, TrainProcess, assert_same_run,
                      assert_tensors_equal, load, run_main, run_train)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def trained_state():
    """A model, optimizer and scheduler after one real step, as a checkpoint dict."""
    torch.manual_seed(0)
    config = models.get_config("transformer", "tiny")
    model = models.build_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, startup.LRSchedule(10, 100, "cosine"))
    batch = antibody.SequenceData(antibody.synthetic_antibodies(4, 0), config.max_len).batch(
        torch.arange(4))
    model.loss(batch)[0].backward()
    optimizer.step()
    scheduler.step()
    return {
        "epoch": 1, "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler_state_dict": scheduler.state_dict(), "best_val_loss": 1.5, "val_loss": 1.5,
        "config": asdict(config), "train_loss": 2.0, "history": {"epoch": [1]},
        "args": {"model": "transformer"}, "timestamp": "now", "global_step": 1,
        "step_in_epoch": 0, "rng_state": ckpt.capture_rng_state(),
        "format_version": ckpt.FORMAT_VERSION,
    }


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------

def test_save_load_round_trip_keeps_every_tensor(tmp_path):
    state = trained_state()
    latest, best = tmp_path / "r_latest.pt", tmp_path / "r_best.pt"
    ckpt.save_checkpoint(state, latest, also=[best])
    for path in (latest, best):
        assert_tensors_equal(state, ckpt.load_checkpoint(path))
        assert_tensors_equal(state, load(path))   # plain torch.load, weights_only=True
    assert latest.read_bytes() == best.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r_best.pt", "r_latest.pt"]


def expected_sealed_bytes(state, seal="crc32"):
    """The documented format, built independently: torch.save's archive (without the zip
    CRC-32 records save_checkpoint skips), the end record's comment length set, and
    `crc32:<8 hex digits>` of every byte before the comment appended (or, as earlier versions
    of this tool wrote, `sha256:<64 hex digits>`)."""
    import io
    import zlib
    buffer = io.BytesIO()
    with ckpt._without_zip_crc32():
        torch.save(state, buffer)
    body = bytearray(buffer.getvalue())
    body[-2:] = {"crc32": 6 + 8, "sha256": 7 + 64}[seal].to_bytes(2, "little")
    if seal == "crc32":
        return bytes(body) + b"crc32:" + f"{zlib.crc32(body):08x}".encode()
    return bytes(body) + b"sha256:" + hashlib.sha256(body).hexdigest().encode()


def test_files_sealed_with_sha256_by_earlier_versions_still_verify(tmp_path):
    state = trained_state()
    old = tmp_path / "old.pt"
    old.write_bytes(expected_sealed_bytes(state, seal="sha256"))
    assert_tensors_equal(state, ckpt.load_checkpoint(old))
    damage(old, "flipped bit", tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.load_checkpoint(old)


def direct_io_works(folder):
    fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        return ckpt._set_direct_io(fd, True)
    finally:
        os.close(fd)
        os.unlink(folder / "probe")


@pytest.mark.parametrize("direct, align, block", [(True, 4096, 8192), (False, 4096, 8192),
                                                  (False, 24, 72)],
                         ids=["O_DIRECT", "page cache", "page cache, 72-byte blocks"])
def test_written_bytes_are_the_format_at_every_block_boundary(tmp_path, monkeypatch, direct,
                                                              align, block):
    # Small blocks, and payloads of many sizes, so the end record falls before, on, across
    # and after block boundaries (72-byte blocks, kept-back 24 bytes, which is not a divisor
    # of torch's 64-byte record alignment, reach every offset); the file must be the same.
    if direct and not direct_io_works(tmp_path):
        pytest.skip(f"the file system of {tmp_path} has no O_DIRECT")
    if not direct:
        monkeypatch.setattr(ckpt, "_set_direct_io", lambda fd, on: False)
    monkeypatch.setattr(ckpt._SealedWriter, "_ALIGN", align)
    monkeypatch.setattr(ckpt._SealedWriter, "_BLOCK", block)
    used = []
    real_init = ckpt._SealedWriter.__init__
    monkeypatch.setattr(ckpt._SealedWriter, "__init__",
                        lambda self, fd: (real_init(self, fd), used.append(self.direct))[0])
    sizes = [0, 1, 8000, 8192, 8200, 12288, 40_000, 100_003] + list(range(100, 172, 3))
    for n in sizes:
        state = {"w": torch.arange(n, dtype=torch.uint8), "epoch": n}
        path = tmp_path / f"n{n}.pt"
        ckpt.save_checkpoint(state, path)
        assert path.read_bytes() == expected_sealed_bytes(state), n
        assert torch.equal(load(path)["w"], state["w"])
    assert used == [direct] * len(sizes)


def test_rng_state_round_trip_replays_every_generator():
    import random
    import numpy as np
    saved = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng_state(saved)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


class FakeCuda:
    """Enough of torch.cuda to run the CUDA branches of the RNG code on a CPU: `visible`
    GPUs, each generator a recorded value."""

    def __init__(self, monkeypatch, visible):
        self.calls = []
        self.current = 0
        monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state",
                            lambda device=None: torch.tensor([100 + torch.device(device).index]))
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda value, device=None: self.calls.append(
                                ("set", int(value), str(device))))
        monkeypatch.setattr(torch.cuda, "manual_seed",
                            lambda seed: self.calls.append(("seed", seed, self.current)))
        fake = self

        class Device:
            def __init__(self, device):
                self.index = torch.device(device).index

            def __enter__(self):
                self.before, fake.current = fake.current, self.index

            def __exit__(self, *exc):
                fake.current = self.before
        monkeypatch.setattr(torch.cuda, "device", Device)


def test_cuda_rng_is_the_training_devices_and_never_silently_reset(monkeypatch):
    cpu_state = ckpt.capture_rng_state()
    fake = FakeCuda(monkeypatch, visible=2)
    saved = ckpt.capture_rng_state("cuda:1")
    assert [int(x) for x in saved["cuda"]] == [101]   # the training device's alone
    # Its own state comes back, whichever GPU trains now.
    assert ckpt.restore_rng_state(saved, torch.device("cuda:0"), reseed=7) is None
    assert fake.calls == [("set", 101, "cuda:0")]
    # Saved on the CPU: nothing to restore, so the device is reseeded, and it is said.
    fake.calls.clear()
    note = ckpt.restore_rng_state(cpu_state, torch.device("cuda:1"), reseed=7)
    assert fake.calls == [("seed", 7, 1)]
    assert note.startswith("Note: the checkpoint has no CUDA random state for this device (it "
                           "was saved on the CPU)")
    # The older layout (every visible GPU's state): used when the count matches ...
    older = {**cpu_state, "cuda": [torch.tensor([5]), torch.tensor([6])]}
    fake.calls.clear()
    assert ckpt.restore_rng_state(older, torch.device("cuda:1"), reseed=7) is None
    assert fake.calls == [("set", 6, "cuda:1")]
    # ... and reseeded, with the reason, when it does not.
    older["cuda"].append(torch.tensor([7]))
    fake.calls.clear()
    note = ckpt.restore_rng_state(older, torch.device("cuda:0"), reseed=9)
    assert fake.calls == [("seed", 9, 0)] and "holds 3 GPU states and 2 GPUs are visible" in note


def test_a_reseeded_cuda_generator_depends_on_seed_rank_and_step():
    import startup
    seeds = {startup.rank_seed(seed, rank) + step
             for seed in (0, 1) for rank in (0, 1) for step in (0, 100)}
    assert len(seeds) == 8


def test_every_checkpoint_loads_with_the_documented_snippet(finished_run):
    snippet = ("import sys, torch, models\n"
               "for p in sys.argv[1:]:\n"
               "    c = torch.load(p); print(c['epoch'], c['val_loss'], c['best_val_loss'], "
               "c['config'])\n"
               "    model = models.build_model(models.config_from_dict(c['config']))\n"
               "    model.load_state_dict(c['model_state_dict'])\n"
               "    print('loaded', p)\n")
    paths = sorted(str(p) for p in finished_run.glob("*.pt"))
    assert len(paths) == 5   # latest, best, epoch1-3
    result = subprocess.run([sys.executable, "-c", snippet, *paths], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("loaded") == 5


def test_checkpoint_keys_follow_the_spec(finished_run):
    state = load(finished_run / "gnn_tiny_latest.pt")
    for key in ckpt.REQUIRED_KEYS + ("energy_grid",):
        assert key in state, key
    assert state["epoch"] == 3 and state["step_in_epoch"] == 0
    assert state["energy_grid"].shape == (100,)
    assert set(state["rng_state"]) == {"python", "numpy", "torch", "cuda"}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model_state_dict"])
    assert len(state["history"]["val_loss"]) == 3


# ------------------------------------------------------------------------------------------
# Interrupt and resume with real signals
# ------------------------------------------------------------------------------------------

def assert_run_files_complete(folder, name, epochs):
    for n in range(1, epochs + 1):
        ckpt.load_checkpoint(folder / f"{name}_epoch{n}.pt")
    for suffix in ("latest.pt", "best.pt"):
        ckpt.load_checkpoint(folder / f"{name}_{suffix}")
    progress = json.loads((folder / f"{name}_progress.json").read_text())
    for key in ("epoch", "train_loss", "val_loss", "best_val_loss", "timestamp", "args",
                "status", "history"):
        assert key in progress, key
    status = (folder / f"{name}_status.txt").read_text()
    for label in ("Epoch:", "Train Loss:", "Val Loss:", "Last Update:", "State:"):
        assert re.search(rf"^{label} \S", status, re.M), label
    assert not list(folder.glob(".*.tmp-*"))
    return progress, status


def test_ctrl_c_saves_and_rerun_continues_to_the_same_result(tmp_path, references):
    """The original design's promise: interrupt after a checkpoint exists, resume, and every
    file is there and whole; and the resumed run is the uninterrupted one."""
    args = [*MODEL_ARGS["transformer"], "--epochs", 4, "--checkpoint-every-steps", 4]
    run = TrainProcess(args, tmp_path)
    run.wait_for("transformer_tiny_epoch1.pt")
    run.wait_for("Checkpoint saved")          # a mid-epoch save inside epoch 2
    run.send(signal.SIGINT)
    assert run.finish() == 130, run.output
    assert "Stopping on SIGINT" in run.output
    folder = tmp_path / "checkpoints"
    progress, status = assert_run_files_complete(folder, "transformer_tiny", 1)
    assert progress["status"] == "interrupted by SIGINT"
    assert "State: interrupted by SIGINT" in status

    resumed = run_train(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from \S+transformer_tiny_latest\.pt: epoch 1 \+ \d+ steps",
                     resumed.stdout)
    assert_run_files_complete(folder, "transformer_tiny", 4)
    assert (folder / "transformer_tiny_samples.fasta").exists()
    assert_same_run(load(folder / "transformer_tiny_latest.pt"),
                    references.get("transformer", 4))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_each_stop_signal_loses_no_step(tmp_path, references, signum):
    args = [*GNN_ARGS, "--epochs", 4, "--checkpoint-every-steps", 5]
    run = TrainProcess(args, tmp_path)
    saved_line = run.wait_for("Checkpoint saved")
    run.send(signum)
    assert run.finish() == 128 + signum, run.output
    stopped_at = load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")
    seen_step = int(re.search(r"global step (\d+)", saved_line).group(1))
    assert stopped_at["global_step"] >= seen_step
    resumed = run_train(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"global step {stopped_at['global_step']})" in resumed.stdout
    # Zero lost steps: the stopped-and-resumed run is the uninterrupted one, bit for bit.
    assert_same_run(load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt"),
                    references.get("gnn", 4))


def test_repeated_ctrl_c_while_saving_leaves_a_whole_checkpoint(tmp_path):
    """Hammer the process with SIGINT from the first one until it exits: every save it made
    must still be whole."""
    run = TrainProcess([*GNN_ARGS, "--epochs", 50, "--checkpoint-every-steps", 1], tmp_path)
    run.wait_for("Checkpoint saved")
    sent = 0
    while run.proc.poll() is None:
        try:
            run.send(signal.SIGINT)
        except ProcessLookupError:
            break
        sent += 1
    assert run.finish() == 130, run.output
    assert sent >= 1
    assert run.output.count("Stopping on SIGINT") == 1
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")
    assert state["global_step"] >= 1
    assert not list((tmp_path / "checkpoints").glob(".*.tmp-*"))


# ------------------------------------------------------------------------------------------
# Integrity: every kind of damage is detected before anything is unpickled
# ------------------------------------------------------------------------------------------

class CreatesAFile:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def damage(path, kind, tmp_path):
    """Replace the file at `path` with one kind of bad file; returns the payload's target
    for the malicious kinds."""
    data = path.read_bytes()
    target = tmp_path / "PWNED"
    if kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "flipped bit":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:])
    elif kind == "zero length":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(os.urandom(len(data)))
    elif kind == "sealed non-checkpoint":
        ckpt.save_checkpoint([torch.zeros(3), "not a checkpoint"], path)
    elif kind == "sealed dict without the keys":
        ckpt.save_checkpoint({"model": torch.zeros(3)}, path)
    elif kind == "raw pickle":
        path.write_bytes(pickle.dumps({"epoch": 1}))
    elif kind == "malicious sealed pickle":
        ckpt.save_checkpoint({"epoch": 1, "payload": CreatesAFile(target)}, path)
    elif kind == "malicious raw pickle":
        path.write_bytes(pickle.dumps(CreatesAFile(target)))
    else:
        raise ValueError(kind)
    return target


DAMAGE = {
    "truncated": "truncated",
    "flipped bit": "checksum mismatch",
    "zero length": "empty file",
    "random bytes": "not a checkpoint",
    "sealed non-checkpoint": "not a training checkpoint",
    "sealed dict without the keys": "missing epoch",
    "raw pickle": "raw pickle",
    "malicious sealed pickle": "objects other than tensors",
    "malicious raw pickle": "raw pickle",
}


@pytest.fixture
def run_copy(tmp_path, finished_run):
    folder = tmp_path / "checkpoints"
    shutil.copytree(finished_run, folder)
    return folder


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_is_named_skipped_and_the_newest_good_file_used(run_copy, tmp_path,
                                                                       kind, capsys):
    latest = run_copy / "gnn_tiny_latest.pt"
    target = damage(latest, kind, tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=DAMAGE[kind]):
        ckpt.load_checkpoint(latest)

    code = run_main([*GNN_ARGS, "--epochs", 4])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(rf"Skipped gnn_tiny_latest\.pt: .*{DAMAGE[kind]}", out), out
    assert "Resuming from checkpoints/gnn_tiny_epoch3.pt: epoch 3" in out
    assert "Moved gnn_tiny_latest.pt to" in out           # kept for inspection, not deleted
    assert load(latest)["epoch"] == 4
    assert not target.exists(), "the payload ran"


@pytest.mark.parametrize("kind", DAMAGE)
def test_explicit_resume_from_a_damaged_file_is_refused(run_copy, tmp_path, kind, capsys):
    bad = run_copy / "gnn_tiny_epoch2.pt"
    target = damage(bad, kind, tmp_path)
    before = snapshot(tmp_path)
    code = run_main(["--resume-from", str(bad), "--epochs", 4])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and DAMAGE[kind] in captured.err
    assert str(bad) in captured.err
    assert "Resuming" not in captured.out
    assert snapshot(tmp_path) == before
    assert not target.exists(), "the payload ran"


def test_fallback_goes_newest_step_first_then_latest_epochs_high_to_low_best(run_copy,
                                                                             tmp_path, capsys):
    assert load(run_copy / "gnn_tiny_best.pt")["epoch"] == 3   # the fixture's best epoch
    for name in ("latest", "epoch3"):
        damage(run_copy / f"gnn_tiny_{name}.pt", "flipped bit", tmp_path)
    state, path, skipped = ckpt.find_resume_checkpoint(ckpt.RunFiles(run_copy, "gnn_tiny"))
    # best holds epoch 3 too: newer than epoch2, whatever its name.
    assert path.name == "gnn_tiny_best.pt" and state["epoch"] == 3
    assert [p.name for p, _ in skipped] == ["gnn_tiny_latest.pt", "gnn_tiny_epoch3.pt"]

    damage(run_copy / "gnn_tiny_best.pt", "flipped bit", tmp_path)
    state, path, skipped = ckpt.find_resume_checkpoint(ckpt.RunFiles(run_copy, "gnn_tiny"))
    assert path.name == "gnn_tiny_epoch2.pt" and state["epoch"] == 2
    assert [p.name for p, _ in skipped] == ["gnn_tiny_latest.pt", "gnn_tiny_epoch3.pt",
                                            "gnn_tiny_best.pt"]

    # Files whose step cannot even be read are tried (and named) first.
    damage(run_copy / "gnn_tiny_epoch2.pt", "truncated", tmp_path)
    state, path, skipped = ckpt.find_resume_checkpoint(ckpt.RunFiles(run_copy, "gnn_tiny"))
    assert path.name == "gnn_tiny_epoch1.pt"
    assert [p.name for p, _ in skipped][0] == "gnn_tiny_epoch2.pt" and len(skipped) == 4
    damage(run_copy / "gnn_tiny_epoch1.pt", "truncated", tmp_path)

    damage(run_copy / "gnn_tiny_best.pt", "zero length", tmp_path)
    before = snapshot(tmp_path)
    code = run_main([*GNN_ARGS, "--epochs", 4])
    err = capsys.readouterr().err
    assert code == 2
    assert "no usable checkpoint" in err and "--fresh" in err and err.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_newer_format_version_is_refused_by_name(tmp_path):
    state = trained_state()
    state["format_version"] = ckpt.FORMAT_VERSION + 1
    ckpt.save_checkpoint(state, tmp_path / "x.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"format_version 2 is newer"):
        ckpt.load_checkpoint(tmp_path / "x.pt")


def test_unsealed_torch_save_is_refused_not_trusted(tmp_path):
    """A plain torch.save (no checksum record) cannot be told apart from a truncated file."""
    torch.save(trained_state(), tmp_path / "plain.pt")
    with pytest.raises(ckpt.CheckpointError, match="no checksum record"):
        ckpt.load_checkpoint(tmp_path / "plain.pt")


# ------------------------------------------------------------------------------------------
# One writer per run
# ------------------------------------------------------------------------------------------

def test_second_process_on_the_same_run_is_refused_and_a_killed_lock_never_blocks(tmp_path):
    args = [*GNN_ARGS, "--epochs", 200]
    first = TrainProcess(args, tmp_path)
    first.wait_for("Model:")     # printed after the lock is taken
    second = run_train(args, tmp_path)
    assert second.returncode == 2
    assert f"being trained by process {first.proc.pid} on" in second.stderr
    assert second.stderr.count("\n") == 1
    first.proc.kill()            # SIGKILL: no cleanup, the lock file stays behind
    assert first.finish() == -signal.SIGKILL
    assert (tmp_path / "checkpoints" / ".gnn_tiny.lock").exists()
    third = run_train([*GNN_ARGS, "--epochs", 1], tmp_path)
    assert third.returncode == 0, third.stderr
    assert ckpt.lock_holder(tmp_path / "checkpoints" / ".gnn_tiny.lock") is None


# ------------------------------------------------------------------------------------------
# Best model and divergence
# ------------------------------------------------------------------------------------------

def scripted_validation(monkeypatch, losses):
    losses = iter(losses)
    monkeypatch.setattr(train.Trainer, "validation_loss", lambda self: next(losses))


def test_best_is_written_only_when_validation_loss_improves(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "checkpoints"
    scripted_validation(monkeypatch, [3.0, 2.0, 2.5])
    assert run_main([*GNN_ARGS, "--epochs", 3]) == 0
    out = capsys.readouterr().out
    assert out.count("New best validation loss") == 2
    best = load(folder / "gnn_tiny_best.pt")
    assert (best["epoch"], best["val_loss"], best["best_val_loss"]) == (2, 2.0, 2.0)
    assert load(folder / "gnn_tiny_latest.pt")["best_val_loss"] == 2.0

    scripted_validation(monkeypatch, [1.0])
    assert run_main([*GNN_ARGS, "--epochs", 4]) == 0
    assert "New best validation loss: 1.0000 (was 2.0000)" in capsys.readouterr().out
    assert load(folder / "gnn_tiny_best.pt")["epoch"] == 4


def test_nan_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 0
    good = snapshot(folder)
    capsys.readouterr()
    # A learning rate of 1e8 without clipping turns the loss into NaN within a few steps.
    code = run_main([*GNN_ARGS, "--epochs", 3, "--lr", "1e8", "--grad-clip", "0"])
    err = capsys.readouterr().err
    assert code == 3
    assert re.search(r"error: training diverged: loss is (nan|inf)", err)
    after = snapshot(folder)
    for name, digest in good.items():
        if name.endswith(".pt"):
            assert after[name] == digest, f"{name} changed"
    assert sorted(n for n in after if n.endswith(".pt")) == sorted(
        n for n in good if n.endswith(".pt"))
    assert "State: diverged" in (folder / "gnn_tiny_status.txt").read_text()


@pytest.mark.parametrize("family", models.MODEL_FAMILIES)
def test_a_checkpoint_restores_every_tensor_of_the_model(family):
    """A resumed model is built on the meta device and filled only from the checkpoint: a
    buffer that is not in state_dict (persistent=False) would be left uninitialised."""
    model = models.build_model(models.get_config(family, "tiny"))
    in_state = set(model.state_dict())
    every = {name for name, _ in model.named_parameters()} | {
        name for name, _ in model.named_buffers()}
    assert every <= in_state, f"not checkpointed: {sorted(every - in_state)}"


def test_standalone_mode_interrupts_resumes_and_passes(tmp_path):
    """`python test_checkpoint.py`, as a user runs it: exit 0 and a PASS verdict last."""
    result = subprocess.run([sys.executable, str(REPO / "test_checkpoint.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=resume_check.STANDALONE_TIMEOUT_S + 60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"PASS: interrupted at epoch 1 step \d+ by SIGINT, resumed, 7 files "
                        r"complete and verified \(\d+ s\)", lines[-1]), result.stdout


def test_standalone_verdict_fails_naming_a_truncated_checkpoint(run_copy, tmp_path):
    """The verdict can fail: a finished run passes, and the same run with one checkpoint cut in
    half fails, naming that file and what is wrong with it, and nothing else."""
    def check():
        return resume_check.verify_run_files(run_copy, "gnn", 3)

    assert resume_check.verdict(check) == (0, "PASS: 7 files complete and verified")
    damage(run_copy / "gnn_tiny_epoch2.pt", "truncated", tmp_path)
    code, line = resume_check.verdict(check)
    assert code == 1
    assert line.startswith("FAIL: gnn_tiny_epoch2.pt: truncated or not written"), line
    problems = resume_check.run_file_problems(run_copy, "gnn", 3)
    assert len(problems) == 1, problems   # the other six files are whole


if __name__ == "__main__":
    # `python test_checkpoint.py`: the interrupt-resume-verify check, with its one-line verdict.
    sys.exit(resume_check.main())
