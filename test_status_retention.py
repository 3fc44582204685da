"""Living with runs: --status, retention (--keep-last, --keep-every), the disk estimate, plots
and the progress lines written to logs."""

import errno
import os
import re
import shutil

import pytest

import checkpoint as ckpt
import plots
import retention
import train
from conftest import GNN_ARGS, TrainProcess, load, run_main, run_train
from test_checkpoint import snapshot


@pytest.fixture
def damaged_run(finished_run, tmp_path):
    """The 3-epoch GNN run with epoch2 damaged and a half-written temporary file."""
    folder = tmp_path / "runs"
    shutil.copytree(finished_run, folder)
    epoch2 = folder / "gnn_tiny_epoch2.pt"
    data = bytearray(epoch2.read_bytes())   # a copy: epoch2 may share its inode with others
    data[len(data) // 2] ^= 0xFF
    epoch2.unlink()
    epoch2.write_bytes(bytes(data))
    half = (folder / "gnn_tiny_latest.pt").read_bytes()[:5000]
    (folder / ".gnn_tiny_latest.pt.tmp-424242").write_bytes(half)
    return folder


def test_status_of_one_run_shows_each_file_and_changes_nothing(damaged_run, capsys):
    before = snapshot(damaged_run)
    assert run_main(["--status", "--checkpoint-dir", damaged_run, "--name", "gnn_tiny",
                     "--keep-last", 1]) == 0
    out = capsys.readouterr().out
    assert snapshot(damaged_run) == before
    assert f"Run gnn_tiny in {damaged_run}: finished" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("gnn", "."))}
    assert re.search(r"gnn_tiny_latest\.pt\s+3\s+51\s+[\d.]+\s+[\d.]+\s+latest", rows[
        "gnn_tiny_latest.pt"]) and rows["gnn_tiny_latest.pt"].endswith("yes")
    assert "NO: checksum mismatch" in rows["gnn_tiny_epoch2.pt"]
    assert rows["gnn_tiny_epoch1.pt"].endswith("yes")
    assert rows["gnn_tiny_best.pt"].endswith("yes") and " best" in rows["gnn_tiny_best.pt"]
    assert "temporary" in rows[".gnn_tiny_latest.pt.tmp-424242"]
    assert "Disk used: " in out
    assert ("Retention (--keep-last 1) would delete gnn_tiny_epoch1.pt, gnn_tiny_epoch2.pt, "
            "freeing") in out


def test_status_of_a_folder_lists_runs_and_their_state(damaged_run, capsys):
    before = snapshot(damaged_run)
    assert run_main(["--status", "--checkpoint-dir", damaged_run]) == 0
    out = capsys.readouterr().out
    assert snapshot(damaged_run) == before
    assert re.search(r"gnn_tiny\s+finished\s+3/3\s+51", out), out
    assert "Total disk used:" in out

    # A run whose lock is held is running; one that says "running" without a lock was killed.
    lock = ckpt.RunLock(damaged_run / ".gnn_tiny.lock").acquire()
    try:
        assert run_main(["--status", "--checkpoint-dir", damaged_run]) == 0
        assert f"running (process {os.getpid()} on" in capsys.readouterr().out
    finally:
        lock.release()
    progress = damaged_run / "gnn_tiny_progress.json"
    progress.write_text(progress.read_text().replace('"status": "finished"',
                                                     '"status": "running"'))
    assert run_main(["--status", "--checkpoint-dir", damaged_run]) == 0
    assert "killed (process" in capsys.readouterr().out


def test_status_refuses_a_missing_run_with_one_line(damaged_run, capsys):
    assert run_main(["--status", "--checkpoint-dir", damaged_run, "--name", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == f"train.py: error: no run nope in {damaged_run} (runs there: gnn_tiny)\n"


def test_status_while_a_run_trains(tmp_path):
    run = TrainProcess([*GNN_ARGS, "--num-samples", 3000, "--epochs", 2,
                        "--checkpoint-every-steps", 20], tmp_path)
    run.wait_for("(epoch 1 step 40/")   # the save at step 20 has updated the status file
    status = run_train(["--status", "--name", "gnn_tiny"], tmp_path)
    run.send(15)
    run.finish()
    assert status.returncode == 0, status.stderr
    assert re.search(r"gnn_tiny in checkpoints: running \(process \d+ on", status.stdout), \
        status.stdout
    assert ", ETA 20" in status.stdout   # the status file carries the run's expected end
    assert "latest" in status.stdout


def test_status_skips_files_that_a_live_run_removes_while_it_reads(damaged_run, monkeypatch,
                                                                  capsys):
    # The folder is listed first and each file read after: meanwhile a live run renames its
    # temporary file into place and retention prunes an epoch file. Both must simply drop out
    # of the report (CI once saw the temporary file's stat fail with a traceback).
    gone_temp = damaged_run / ".gnn_tiny_latest.pt.tmp-999999"
    gone_epoch = damaged_run / "gnn_tiny_epoch0.pt"
    listed_temps = ckpt.RunFiles.stale_temp_files
    listed_candidates = ckpt.RunFiles.resume_candidates
    monkeypatch.setattr(ckpt.RunFiles, "stale_temp_files",
                        lambda run: listed_temps(run) + [gone_temp])
    monkeypatch.setattr(ckpt.RunFiles, "resume_candidates",
                        lambda run: listed_candidates(run) + [gone_epoch])
    assert run_main(["--status", "--checkpoint-dir", damaged_run, "--name", "gnn_tiny"]) == 0
    out = capsys.readouterr().out
    assert "gnn_tiny_latest.pt" in out and ".gnn_tiny_latest.pt.tmp-424242" in out
    assert gone_temp.name not in out and gone_epoch.name not in out
    assert run_main(["--status", "--checkpoint-dir", damaged_run]) == 0
    assert re.search(r"gnn_tiny\s+finished\s+3/3\s+51", capsys.readouterr().out)


def test_kept_epochs():
    assert retention.kept_epochs([1, 2, 3, 4, 5], None, None) == {1, 2, 3, 4, 5}
    assert retention.kept_epochs([1, 2, 3, 4, 5], 2, None) == {4, 5}
    assert retention.kept_epochs([1, 2, 3, 4, 5], 1, 2) == {2, 4, 5}
    assert retention.kept_epochs([1, 2, 3, 4, 5], None, 3) == {3}
    assert retention.epoch_files_kept(5, 1, 2, None) == 2
    assert retention.epoch_files_kept(10, 2, None, None) == 5
    assert retention.epoch_files_kept(10, 1, 1, 5) == 3


def test_retention_prunes_old_epoch_files_never_latest_or_best(tmp_path, capsys):
    # A learning rate that makes later epochs worse, so best stays behind.
    assert run_main([*GNN_ARGS, "--epochs", 5, "--keep-last", 1, "--keep-every", 2]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "checkpoints"
    assert "Retention: deleted gnn_tiny_epoch1.pt" in out
    assert "Retention: deleted gnn_tiny_epoch3.pt" in out
    assert sorted(p.name for p in folder.glob("gnn_tiny_epoch*.pt")) == [
        "gnn_tiny_epoch2.pt", "gnn_tiny_epoch4.pt", "gnn_tiny_epoch5.pt"]
    for name in ("latest", "best"):
        ckpt.load_checkpoint(folder / f"gnn_tiny_{name}.pt")


def test_retention_does_nothing_after_a_failed_save(tmp_path, monkeypatch, capsys):
    assert run_main([*GNN_ARGS, "--epochs", 2, "--keep-last", 1]) == 0
    folder = tmp_path / "checkpoints"
    assert [p.name for p in folder.glob("gnn_tiny_epoch*.pt")] == ["gnn_tiny_epoch2.pt"]

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "save_checkpoint", full_disk)
    assert run_main([*GNN_ARGS, "--epochs", 3, "--keep-last", 1]) == 1
    # Epoch 3 was not committed: epoch 2 stays, with latest and best (the files that verify).
    assert sorted(p.name for p in folder.glob("gnn_tiny_*.pt")) == [
        "gnn_tiny_best.pt", "gnn_tiny_epoch2.pt", "gnn_tiny_latest.pt"]
    assert load(folder / "gnn_tiny_latest.pt")["epoch"] == 2


def test_disk_estimate_against_the_real_sizes(tmp_path, capsys):
    assert run_main([*GNN_ARGS, "--epochs", 5, "--keep-last", 2]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "checkpoints"
    line = next(l for l in out.splitlines() if l.startswith("Disk: "))
    assert "keeps at most 4 checkpoint files (latest, best, 2 epoch files)" in line
    state = load(folder / "gnn_tiny_latest.pt")
    import models
    model = models.build_model(models.config_from_dict(state["config"]))
    estimate = retention.checkpoint_bytes(model)
    actual = (folder / "gnn_tiny_latest.pt").stat().st_size
    assert 1.0 <= estimate / actual < 1.05, (estimate, actual)
    used = sum(p.stat().st_size for p in folder.glob("*.pt"))   # hard links counted each time
    assert used <= retention.estimate(estimate, 2)


def test_disk_too_small_for_one_checkpoint_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(retention, "free_bytes", lambda folder: 1000)
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"train\.py: error: --checkpoint-dir checkpoints: 1\.0 kB free, less "
                        r"than one checkpoint \([\d.]+ MB\); free space or choose another "
                        r"folder\n", err), err
    assert not list((tmp_path / "checkpoints").glob("*.pt"))


def test_disk_short_for_the_whole_run_warns_and_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(retention, "free_bytes", lambda folder: 4_000_000)
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 0
    err = capsys.readouterr().err
    assert "warning: the run may need" in err and "--keep-last N keeps fewer" in err


def test_plots_are_written_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is optional; the plots need it")
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 0
    for name in ("gnn_tiny_curves.png", "gnn_tiny_transport.png"):
        assert (tmp_path / "checkpoints" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_redrawn_at_most_every_interval_and_after_the_last_epoch(monkeypatch):
    drawn = []   # the epochs in each drawing of the curves
    monkeypatch.setattr(plots, "_AVAILABLE", True)
    monkeypatch.setattr(plots, "write_curves",
                        lambda path, history: drawn.append(history["epoch"][-1]))
    monkeypatch.setattr(plots, "write_transport_figure", lambda *args, **kwargs: None)
    assert run_main([*GNN_ARGS, "--epochs", 3]) == 0
    assert drawn == [3]   # epochs 1 and 2 ended well within 30 s of the start
    drawn.clear()
    monkeypatch.setattr(plots, "REDRAW_INTERVAL_S", 0.0)
    assert run_main([*GNN_ARGS, "--epochs", 5]) == 0   # resumes after epoch 3
    assert drawn == [4, 5]


def test_without_matplotlib_says_so_once_and_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plots, "_AVAILABLE", False)
    assert run_main([*GNN_ARGS, "--epochs", 2]) == 0
    out = capsys.readouterr().out
    assert out.count("plots are off: matplotlib is not installed (pip install matplotlib") == 1
    assert not list((tmp_path / "checkpoints").glob("*.png"))


def test_progress_lines_without_a_terminal(tmp_path):
    result = run_train([*GNN_ARGS, "--epochs", 2], tmp_path)
    assert result.returncode == 0
    assert "\r" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith("Epoch 2/2 step")]
    assert 5 <= len(lines) <= 10, result.stderr
    assert re.fullmatch(r"Epoch 2/2 step 17/17 \(100%\) \| loss [\d.]+ \| [\d.]+ steps/s \| "
                        r"epoch ETA 0 s \| run ETA 0 s", lines[-1]), lines[-1]


def test_retention_flags_are_checked():
    assert run_main(["--keep-last", 0]) == 2
    assert train.main(["--keep-every", "-1"]) == 2
