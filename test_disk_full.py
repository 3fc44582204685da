"""Failed saves (full disk, I/O error, permission): the previous files stay whole, no temporary
file is left, the user is told once per failure, training goes on and retries."""

import errno
import os
import re
import shutil
import subprocess

import pytest

import checkpoint as ckpt
from conftest import GNN_ARGS, assert_same_run, load, run_main, run_train
from test_checkpoint import sha256, trained_state

ERRORS = [errno.ENOSPC, errno.EIO, errno.EACCES]


def failure(code):
    return OSError(code, os.strerror(code))


def fail_writes_after(monkeypatch, limit, code):
    """Make a checkpoint's writes fail once `limit` bytes are in the file, as a filling disk
    does: the bytes that fit are written, then the error."""
    real_write_all = ckpt._write_all

    def write_all(writer, data):
        room = max(0, limit - writer.written)
        real_write_all(writer, data[:room])
        if len(data) > room:
            raise failure(code)

    monkeypatch.setattr(ckpt, "_write_all", write_all)


def inject(monkeypatch, stage, code):
    """Make one stage of save_checkpoint fail with `code`."""
    if stage == "write":
        fail_writes_after(monkeypatch, 100_000, code)
    elif stage == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(failure(code)))
    elif stage == "link":
        monkeypatch.setattr(os, "link", lambda a, b: (_ for _ in ()).throw(failure(code)))
    elif stage == "rename":
        monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(failure(code)))
    elif stage == "fsync folder":
        monkeypatch.setattr(ckpt, "fsync_directory",
                            lambda d: (_ for _ in ()).throw(failure(code)))


@pytest.mark.parametrize("code", ERRORS, ids=errno.errorcode.get)
@pytest.mark.parametrize("stage", ["write", "fsync", "link", "rename", "fsync folder"])
def test_a_failed_save_keeps_every_previous_file_whole(tmp_path, monkeypatch, stage, code):
    old = trained_state()
    names = [tmp_path / "r_latest.pt", tmp_path / "r_epoch1.pt", tmp_path / "r_best.pt"]
    ckpt.save_checkpoint(old, names[0], also=names[1:])
    before = {p: sha256(p) for p in names}
    new = dict(old, epoch=2, global_step=2)

    inject(monkeypatch, stage, code)
    with pytest.raises(OSError) as raised:
        ckpt.save_checkpoint(new, names[0], also=[names[1], names[2]])
    monkeypatch.undo()

    assert raised.value.errno == code
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in names)
    for path in names:
        state = ckpt.load_checkpoint(path)
        if stage == "fsync folder":
            # The renames happened before the folder sync failed: each name holds the old
            # complete file or the new complete one, never a mix.
            assert state["epoch"] in (1, 2)
        else:
            assert sha256(path) == before[path], f"{path.name} changed"


def failing_saves(monkeypatch, which):
    """Make the checkpoint saves numbered in `which` (1-based) fail with ENOSPC."""
    real = ckpt.save_checkpoint
    calls = [0]

    def save(state, path, also=()):
        calls[0] += 1
        if calls[0] in which:
            raise failure(errno.ENOSPC)
        return real(state, path, also)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)


def test_training_warns_goes_on_and_the_next_save_succeeds(tmp_path, monkeypatch, capsys,
                                                           references):
    failing_saves(monkeypatch, {2})
    assert run_main([*GNN_ARGS, "--epochs", 4]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: could not save checkpoint (No space left on device); "
                        "gnn_tiny_latest.pt still holds epoch 1, step 17; will retry at the "
                        "next save point"]
    folder = tmp_path / "checkpoints"
    assert not (folder / "gnn_tiny_epoch2.pt").exists()
    assert not list(folder.glob(".*.tmp-*"))
    # A failed save changes nothing about training: the run is the uninterrupted one.
    assert_same_run(load(folder / "gnn_tiny_latest.pt"), references.get("gnn", 4))
    assert "Last Save Error: none" in (folder / "gnn_tiny_status.txt").read_text()


def test_when_the_final_save_fails_the_exit_is_1_and_the_status_says_why(tmp_path, monkeypatch,
                                                                           capsys):
    failing_saves(monkeypatch, {2, 3})
    assert run_main([*GNN_ARGS, "--epochs", 3]) == 1
    err = capsys.readouterr().err
    assert err.count("warning: could not save checkpoint (No space left on device)") == 2
    folder = tmp_path / "checkpoints"
    assert ckpt.load_checkpoint(folder / "gnn_tiny_latest.pt")["epoch"] == 1
    assert load(folder / "gnn_tiny_best.pt")["epoch"] == 1
    status = (folder / "gnn_tiny_status.txt").read_text()
    assert "State: failed: the final checkpoint could not be saved" in status
    assert re.search(r"^Last Save Error: No space left on device at \S+", status, re.M)
    assert re.search(r"^Last Checkpoint: \S+gnn_tiny_latest.pt \(epoch 1, step 17\)", status, re.M)


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MiB tmpfs: writes fail with ENOSPC when it is full."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected-error tests cover the logic")
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_real_full_disk(tmp_path, small_disk, references):
    """Train one epoch, fill the disk: a start with less room than one checkpoint is refused.
    With room for one more checkpoint only: the next save succeeds, the one after fails with one
    warning, latest stays whole, exit 1. Free the space, rerun: the run completes as if
    nothing happened."""
    args = [*GNN_ARGS, "--checkpoint-dir", small_disk]
    first = run_train([*args, "--epochs", 1], tmp_path)
    assert first.returncode == 0, first.stderr
    latest = small_disk / "gnn_tiny_latest.pt"
    kept = sha256(latest)
    filler = small_disk / "filler"

    def leave_free(n):
        if filler.exists():
            filler.unlink()
        free = os.statvfs(small_disk)
        filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - n))

    leave_free(512 * 1024)
    refused = run_train([*args, "--epochs", 3], tmp_path)
    assert refused.returncode == 2
    assert "less than one checkpoint" in refused.stderr and refused.stderr.count("\n") == 1
    assert sha256(latest) == kept

    leave_free(2_900_000)   # one 2.66 MB checkpoint fits, two do not
    full = run_train([*args, "--epochs", 3], tmp_path)
    assert full.returncode == 1, full.stderr
    assert "warning: the run may need" in full.stderr
    failed = [line for line in full.stderr.splitlines() if "could not save" in line]
    assert len(failed) == 1 and "No space left on device" in failed[0], full.stderr
    assert ckpt.load_checkpoint(latest)["epoch"] == 2
    assert not list(small_disk.glob(".*.tmp-*"))
    status = (small_disk / "gnn_tiny_status.txt").read_text()
    assert "Last Save Error: No space left on device" in status

    filler.unlink()
    again = run_train([*args, "--epochs", 4], tmp_path)
    assert again.returncode == 0, again.stderr
    assert_same_run(load(latest), references.get("gnn", 4))
