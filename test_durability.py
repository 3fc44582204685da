"""Power-loss details: a new run's folders are fsynced into their parents; a run killed
between its final checkpoint and its final status write gets its status files on the rerun;
a crash between publishing the epoch/best names and renaming latest resumes from the newest
file, whatever its name, and moves nothing valid aside."""

import json
from pathlib import Path

from conftest import GNN_ARGS, assert_same_run, load, run_train


def test_every_created_folder_is_fsynced_into_its_parent_before_the_first_checkpoint(tmp_path):
    # A rename is durable once its folder is fsynced, and a new folder once its parent is: a
    # power cut must not take a new run's folder, and the checkpoints in it, away.
    log = tmp_path / "calls.log"
    folder = tmp_path / "a" / "b" / "c"
    result = run_train([*GNN_ARGS, "--epochs", 1, "--checkpoint-dir", folder,
                        "--output-dir", tmp_path / "out" / "figures"], tmp_path,
                       fault=f"trace:{log}")
    assert result.returncode == 0, result.stderr
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    first_checkpoint = next(i for i, (call, args) in enumerate(calls)
                            if call == "rename" and args.endswith("gnn_tiny_latest.pt"))
    created = [(i, Path(args)) for i, (call, args) in enumerate(calls) if call == "mkdir"]
    assert {path for _, path in created} >= {tmp_path / "a", tmp_path / "a" / "b", folder,
                                             tmp_path / "out", tmp_path / "out" / "figures"}
    for i, path in created:
        synced = [j for j, (call, args) in enumerate(calls)
                  if call == "fsync" and Path(args) == path.parent and j > i]
        assert synced and synced[0] < first_checkpoint, \
            f"{path} was never fsynced into {path.parent} before the first checkpoint"


def test_a_run_killed_before_its_final_status_write_gets_it_on_the_rerun(tmp_path):
    args = [*GNN_ARGS, "--epochs", 2]
    killed = run_train(args, tmp_path, fault="finish:1")
    assert killed.returncode == -9, killed.stderr
    folder = tmp_path / "checkpoints"
    assert json.loads((folder / "gnn_tiny_progress.json").read_text())["status"] == "running"

    rerun = run_train(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "status files were not brought up to date: writing them now" in rerun.stdout
    progress = json.loads((folder / "gnn_tiny_progress.json").read_text())
    assert progress["status"] == "finished"
    assert progress["global_step"] == load(folder / "gnn_tiny_latest.pt")["global_step"]
    assert "State: finished" in (folder / "gnn_tiny_status.txt").read_text()
    # Nothing was trained again: the files are those of the killed run's last save.
    assert "Checkpoint saved" not in rerun.stdout

    again = run_train(args, tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout


def test_a_crash_before_latest_is_renamed_resumes_from_the_newer_epoch_file(tmp_path,
                                                                             references):
    args = [*GNN_ARGS, "--epochs", 3]
    # The 2nd save (end of epoch 2) publishes epoch2 (and best) and dies before latest.
    killed = run_train(args, tmp_path, fault="publish:2")
    assert killed.returncode == -9, killed.stderr
    folder = tmp_path / "checkpoints"
    assert load(folder / "gnn_tiny_latest.pt")["epoch"] == 1
    assert load(folder / "gnn_tiny_epoch2.pt")["epoch"] == 2

    rerun = run_train(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "Resuming from" in rerun.stdout and "gnn_tiny_epoch2.pt: epoch 2" in rerun.stdout, \
        rerun.stdout
    assert "Moved" not in rerun.stdout
    assert not list(folder.glob("gnn_tiny_old_*")), "a valid, newer file was moved aside"
    assert_same_run(load(folder / "gnn_tiny_latest.pt"), references.get("gnn", 3))
