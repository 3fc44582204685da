"""TensorBoard event files (tensorboard_log.py): what a run writes, that a run killed and
resumed shows the same curves as an uninterrupted one, --status, and the hint without
tensorboard."""

import collections
import os
import shutil

import pytest

import tensorboard_log
from conftest import GNN_ARGS, RUN_NAME, assert_same_run, load, run_train

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install tensorboard)")

RUN = RUN_NAME["gnn"]
# 17 steps an epoch; latest is also saved every 5 steps, so a kill can resume mid-epoch.
ARGS = [*GNN_ARGS, "--epochs", 2, "--checkpoint-every-steps", 5]
STEP_TAGS = ("train/loss", "train/lr", "train/steps_per_s")
EPOCH_TAGS = ("val/loss", "train/epoch_loss", "measures/r2_log10_T", "measures/r2_log10_DOS",
              "measures/mae_log10_T", "measures/mae_log10_DOS")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Finished runs that several tests start from, each trained once: "two epochs" (ARGS)
    and "one epoch" (GNN_ARGS, 1 epoch): {label: (working folder, stdout)}. A test that
    changes a run works on a copy (`copy_run`)."""
    runs = {}
    for label, args in (("two epochs", ARGS), ("one epoch", [*GNN_ARGS, "--epochs", 1])):
        folder = tmp_path_factory.mktemp("trained")
        result = run_train(args, folder)
        assert result.returncode == 0, result.stderr
        runs[label] = (folder, result.stdout)
    return runs


def copy_run(run, folder):
    """A copy of a finished run's working folder (a `trained` entry), in `folder`."""
    shutil.copytree(run[0], folder, dirs_exist_ok=True)


def read_events(folder, purge=True):
    """The folder's events as TensorBoard's Python loader reads them. `purge=False` shows
    every point written, including those a later writer's purge_step hides."""
    accumulator = event_accumulator.EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "tensors": 0},
        purge_orphaned_data=purge)
    accumulator.Reload()
    return accumulator


def scalars(accumulator):
    """{tag: [(step, value)]} in the order read."""
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_a_run_writes_step_and_epoch_scalars_and_hparams(trained):
    run, stdout = trained["two epochs"]
    assert "pip install tensorboard" not in stdout
    events = read_events(run / "checkpoints" / f"{RUN}_tensorboard")
    found = scalars(events)
    assert set(found) == set(STEP_TAGS + EPOCH_TAGS)
    # Every tenth of an epoch, as the progress lines: steps 2, 4, 6, 7, ... 17 of each epoch.
    assert [step for step, _ in found["train/loss"]] == [
        epoch * 17 + s for epoch in (0, 1) for s in (2, 4, 6, 7, 9, 11, 12, 14, 16, 17)]
    for tag in EPOCH_TAGS:
        assert [step for step, _ in found[tag]] == [17, 34], tag
    assert all(value > 0 for _, value in found["train/lr"])
    hparams = events.PluginTagToContent("hparams")
    from tensorboard.plugins.hparams import plugin_data_pb2
    start = plugin_data_pb2.HParamsPluginData.FromString(
        hparams["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model"].string_value == "gnn"
    assert start.hparams["epochs"].number_value == 2
    assert start.hparams["data"].string_value == "None"   # unset settings show as text


def test_killed_and_resumed_run_has_the_uninterrupted_runs_scalars(tmp_path, trained):
    reference, _ = trained["two epochs"]
    folder = tmp_path / "checkpoints" / f"{RUN}_tensorboard"
    # Killed while writing its third checkpoint (step 15): latest holds step 10, and the
    # points at steps 11-14, flushed before that save began, are orphans.
    killed = run_train(ARGS, tmp_path, fault="save:3:1024")
    assert killed.returncode == -9, killed.stderr
    written = [step for step, _ in scalars(read_events(folder, purge=False))["train/loss"]]
    assert [11, 12, 14] == [step for step in written if step > 10], "no orphans to purge"
    # The rerun resumes from step 10 and is killed inside its 12th step (global step 22):
    # latest then holds the end of epoch 1, step 17, whose own points must be kept.
    killed = run_train(ARGS, tmp_path, fault="step:12")
    assert killed.returncode == -9, killed.stderr
    last = run_train(ARGS, tmp_path)
    assert last.returncode == 0, last.stderr
    assert "Resuming from" in last.stdout and "global step 17" in last.stdout

    expected = scalars(read_events(reference / "checkpoints" / f"{RUN}_tensorboard"))
    resumed = scalars(read_events(folder))
    assert set(resumed) == set(expected)
    for tag, points in resumed.items():
        steps = [step for step, _ in points]
        duplicates = [s for s, n in collections.Counter(steps).items() if n > 1]
        assert not duplicates, f"{tag}: duplicate steps {duplicates}"
        if tag == "train/steps_per_s":   # timed: only its steps can match
            assert steps == [step for step, _ in expected[tag]]
        else:
            assert points == expected[tag], tag


def test_status_names_the_tensorboard_folder(tmp_path, trained):
    copy_run(trained["one epoch"], tmp_path)
    folder = f"checkpoints/{RUN}_tensorboard"
    listing = run_train(["--status"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert f"TensorBoard event files in: {folder}" in listing.stdout
    report = run_train(["--status", "--name", RUN], tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"TensorBoard event files in {folder} (view: tensorboard --logdir {folder})" \
        in report.stdout


def test_fresh_moves_the_tensorboard_folder_aside(tmp_path, trained):
    copy_run(trained["one epoch"], tmp_path)
    again = run_train([*GNN_ARGS, "--epochs", 1, "--fresh"], tmp_path)
    assert again.returncode == 0, again.stderr
    old, = (tmp_path / "checkpoints").glob(f"{RUN}_old_*")
    assert (old / f"{RUN}_tensorboard").is_dir()
    events = read_events(tmp_path / "checkpoints" / f"{RUN}_tensorboard")
    assert [e.step for e in events.Scalars("val/loss")] == [17]


def test_flag_names_another_folder_kept_on_resume(tmp_path):
    assert run_train([*GNN_ARGS, "--epochs", 1, "--tensorboard-dir", "tb"],
                     tmp_path).returncode == 0
    # The rerun does not repeat the flag: the run's settings keep the folder.
    assert run_train([*GNN_ARGS, "--epochs", 2], tmp_path).returncode == 0
    assert not (tmp_path / "checkpoints" / f"{RUN}_tensorboard").exists()
    events = read_events(tmp_path / "tb")
    assert [e.step for e in events.Scalars("val/loss")] == [17, 34]


def test_without_tensorboard_one_hint_and_the_same_training(tmp_path, trained):
    # A package named tensorboard that cannot be imported, ahead of the real one.
    shadow = tmp_path / "shadow" / "tensorboard"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('tensorboard hidden by the test')\n")
    without = tmp_path / "without"
    without.mkdir()
    result = run_train([*GNN_ARGS, "--epochs", 1], without,
                       env={"PYTHONPATH": os.pathsep.join(
                           filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))})
    assert result.returncode == 0, result.stderr
    hints = [line for line in result.stdout.splitlines() if "pip install tensorboard" in line]
    assert hints == [f"TensorBoard logging is off: tensorboard is not installed (pip install "
                     f"tensorboard to get event files in {RUN}_tensorboard/)"]
    assert not (without / "checkpoints" / f"{RUN}_tensorboard").exists()
    # Logging changes nothing that training computes (no RNG drawn, no state touched).
    assert_same_run(load(trained["one epoch"][0] / "checkpoints" / f"{RUN}_latest.pt"),
                    load(without / "checkpoints" / f"{RUN}_latest.pt"))


def test_a_folder_that_cannot_be_created_warns_and_training_goes_on(tmp_path):
    (tmp_path / "blocker").write_text("a file where the folder would go\n")
    result = run_train([*GNN_ARGS, "--epochs", 1, "--tensorboard-dir", "blocker/tb"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: TensorBoard logging is off: could not create blocker/tb" in result.stderr
    assert (tmp_path / "checkpoints" / f"{RUN}_latest.pt").exists()


def test_a_write_error_warns_once_and_turns_the_log_off(tmp_path, capsys):
    log = tensorboard_log.Log(tmp_path / "tb", purge_step=0)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    log.writer.add_scalar = disk_full
    log.step(1, 0.5, 1e-3, 2.0)
    log.step(2, 0.4, 1e-3, 2.0)
    log.epoch(2, {"val/loss": 0.3})
    log.flush()
    log.close()
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [f"warning: TensorBoard logging stopped: could not write to "
                        f"{tmp_path / 'tb'}: No space left on device"]
