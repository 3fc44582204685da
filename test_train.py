"""The command line as a user meets it: defaults, flags, resume semantics, bad input."""

import dataclasses
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint as ckpt
import run_state
import train
from conftest import GNN_ARGS, REPO, assert_same_run, load, run_main, run_train
from test_checkpoint import snapshot


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ------------------------------------------------------------------------------------------

def _not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("these are my notes\n")
    return ["--resume-from", "notes.pt"]


def _file_as_parent(tmp_path):
    (tmp_path / "afile").write_text("x")
    return ["--checkpoint-dir", "afile/sub"]


def _binary_data(tmp_path):
    (tmp_path / "seqs.fasta").write_bytes(b"\xff\xfe\x00\x01garbage")
    return ["--data", "seqs.fasta"]


def _bad_fasta(tmp_path):
    (tmp_path / "vh.fasta").write_text(">a\nEVQLVESGG\n>b\nEVQL1234\n")
    return ["--data", "vh.fasta"]


def _bad_dna(tmp_path):
    (tmp_path / "dna.csv").write_text("sequence\nATGC\nATXG\n")
    return ["--model", "gnn", "--data", "dna.csv"]


BAD_INPUTS = {
    "unknown config": (["--config", "huge"], r"--config: invalid choice: 'huge'"),
    "unknown model": (["--model", "cnn"], r"--model: invalid choice"),
    "zero epochs": (["--epochs", "0"], r"--epochs must be a positive integer \(got 0\)"),
    "negative epochs": (["--epochs", "-3"], r"--epochs must be a positive integer \(got -3\)"),
    "zero batch size": (["--batch-size", "0"], r"--batch-size must be a positive integer"),
    "negative batch size": (["--batch_size", "-1"], r"--batch-size must be a positive integer"),
    "not a number": (["--lr", "fast"], r"--lr: invalid float value: 'fast'"),
    "unknown flag": (["--epoch", "3"], r"unrecognized arguments: --epoch 3"),
    "missing resume file": (["--resume-from", "nope.pt"], r"cannot resume from nope\.pt: no such file"),
    "not a checkpoint": (_not_a_checkpoint, r"notes\.pt: not a checkpoint"),
    "missing data file": (["--data", "missing.fasta"], r"missing\.fasta.*(no such file|not found)"),
    "data file is a folder": (["--data", "."], r"is a (folder|directory)"),
    "binary data file": (_binary_data, r"seqs\.fasta"),
    "bad residue": (_bad_fasta, r"vh\.fasta line 4"),
    "bad DNA row": (_bad_dna, r"dna\.csv line 3"),
    "unwritable checkpoint dir": (_file_as_parent, r"--checkpoint-dir afile/sub: afile is not a folder"),
    "fresh and resume-from": (["--fresh", "--resume-from", "x.pt"], r"contradict"),
    "val fraction": (["--val-fraction", "1.5"], r"--val-fraction must be between 0 and 1"),
    "cuda absent": (["--device", "cuda"], r"CUDA is not available"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case, capsys):
    args, expected = BAD_INPUTS[case]
    if callable(args):
        args = args(tmp_path)
    if case == "cuda absent" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = listing(tmp_path)
    code = run_main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("train.py: error: ") and err.count("\n") == 1, err
    assert re.search(expected, err, re.I), err
    assert listing(tmp_path) == before


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = run_train(["--epochs", "0"], tmp_path)
    assert result.returncode == 2
    assert result.stderr == "train.py: error: --epochs must be a positive integer (got 0)\n"
    assert result.stdout == "" and listing(tmp_path) == []


def test_help_lists_both_spellings_and_exit_codes():
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True,
                         text=True).stdout
    for flag in ("--resume-from", "--resume_from", "--checkpoint-dir", "--checkpoint_dir",
                 "--checkpoint-frequency", "--checkpoint_frequency", "--num_epochs",
                 "--num-epochs", "--batch_size", "--output_dir", "--checkpoint-every-steps",
                 "--checkpoint-every-minutes", "--fresh"):
        assert flag in out, flag
    assert "Exit codes" in out


@pytest.mark.parametrize("spelling", [
    ["--num_epochs", "1", "--batch_size", "16", "--checkpoint_dir", "ck",
     "--checkpoint_frequency", "1", "--output_dir", "out"],
    ["--num-epochs", "1", "--batch-size", "16", "--checkpoint-dir", "ck",
     "--checkpoint-frequency", "1", "--output-dir", "out"],
])
def test_both_flag_spellings_train(tmp_path, spelling, capsys):
    assert run_main(["--model", "gnn", "--num-samples", "60", *spelling]) == 0
    assert load(tmp_path / "ck" / "gnn_tiny_epoch1.pt")["args"]["batch_size"] == 16
    assert run_main(["--model", "gnn", "--num-samples", "60", *spelling[:2],
                       "--resume_from", "ck/gnn_tiny_latest.pt"]) == 0
    assert "nothing to do" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# Resume semantics
# ------------------------------------------------------------------------------------------

def test_epochs_is_the_total_and_a_finished_run_has_nothing_to_do(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    assert run_main([*GNN_ARGS, "--epochs", 2]) == 0
    capsys.readouterr()
    assert run_main([*GNN_ARGS, "--epochs", 3]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Resuming from checkpoints/gnn_tiny_latest\.pt: epoch 2 \(global step 34\),"
                     r" val loss \d+\.\d{4}", out)
    assert "Epoch 3/3" in out and "Epoch 1/3" not in out
    assert load(folder / "gnn_tiny_latest.pt")["history"]["epoch"] == [1, 2, 3]
    before = snapshot(tmp_path)
    assert run_main([*GNN_ARGS, "--epochs", 3]) == 0
    assert "already trained 3 of 3 epochs: nothing to do" in capsys.readouterr().out
    assert run_main([*GNN_ARGS, "--epochs", 2]) == 0
    assert snapshot(tmp_path) == before


def test_resume_from_an_older_file_moves_newer_files_aside(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    assert run_main([*GNN_ARGS, "--epochs", 3]) == 0
    newer = {name: (folder / name).read_bytes() for name in
             ("gnn_tiny_epoch2.pt", "gnn_tiny_epoch3.pt", "gnn_tiny_latest.pt")}
    capsys.readouterr()
    assert run_main(["--resume-from", "checkpoints/gnn_tiny_epoch1.pt", "--epochs", 3]) == 0
    out = capsys.readouterr().out
    assert "Resuming from checkpoints/gnn_tiny_epoch1.pt: epoch 1" in out
    aside = list(folder.glob("gnn_tiny_old_*"))
    assert len(aside) == 1
    for name, data in newer.items():
        assert (aside[0] / name).read_bytes() == data   # moved, never deleted
    # Same seed, same data, same order: the replayed epochs are the same epochs.
    assert_same_run(load(folder / "gnn_tiny_latest.pt"), load(aside[0] / "gnn_tiny_latest.pt"))


def test_config_or_seed_mismatch_is_refused_naming_the_fields(tmp_path, capsys):
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert run_main([*GNN_ARGS, "--epochs", 2, "--config", "small", "--name", "gnn_tiny"]) == 2
    err = capsys.readouterr().err
    assert "config (checkpoint 'tiny', requested 'small'" in err
    assert "hidden 64 vs 128" in err and "layers 4 vs 6" in err
    assert run_main([*GNN_ARGS, "--epochs", 2, "--seed", "7"]) == 2
    assert "seed (checkpoint 0, requested 7)" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_explicit_lr_on_resume_overrides_and_says_so(tmp_path, capsys):
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 0
    capsys.readouterr()
    assert run_main([*GNN_ARGS, "--epochs", 2, "--lr", "0.0005"]) == 0
    assert "--lr 0.0005 overrides the checkpoint's 0.001" in capsys.readouterr().out
    state = load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")
    assert state["optimizer_state_dict"]["param_groups"][0]["initial_lr"] == 0.0005
    assert state["scheduler_state_dict"]["base_lrs"] == [0.0005]
    assert state["args"]["lr"] == 0.0005


def test_batch_size_may_change_in_the_middle_of_an_epoch(tmp_path, capsys):
    stopping = ["--checkpoint-every-steps", "5"]
    # Stop after the first mid-epoch save by raising a signal's flag from the save itself.
    original = train.Trainer.start_save

    def save_then_stop(self, *args, **kwargs):
        saved = original(self, *args, **kwargs)
        self.stop.received = 15
        return saved

    handlers = {s: signal.getsignal(s) for s in run_state.STOP_SIGNALS}
    train.Trainer.start_save = save_then_stop
    try:
        assert run_main([*GNN_ARGS, "--epochs", 2, *stopping]) == 143
    finally:
        train.Trainer.start_save = original
        for s, handler in handlers.items():   # a stopped run leaves stop signals ignored
            signal.signal(s, handler)
    state = load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")
    assert (state["epoch"], state["step_in_epoch"], state["samples_in_epoch"]) == (0, 5, 80)
    capsys.readouterr()
    assert run_main([*GNN_ARGS, "--epochs", 2, "--batch-size", "64"]) == 0
    assert "epoch 0 + 5 steps of epoch 1" in capsys.readouterr().out
    final = load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")
    # 80 samples at 16, the other 190 at 64 (3 steps), then epoch 2 at 64 (5 steps).
    assert final["global_step"] == 5 + 3 + 5
    assert final["history"]["epoch"] == [1, 2]


def test_fresh_moves_the_old_run_aside_and_starts_over(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    assert run_main([*GNN_ARGS, "--epochs", 2]) == 0
    old = snapshot(folder)
    capsys.readouterr()
    assert run_main([*GNN_ARGS, "--epochs", 1, "--fresh"]) == 0
    assert "--fresh: moved the previous files of run gnn_tiny to" in capsys.readouterr().out
    aside = list(folder.glob("gnn_tiny_old_*"))
    assert len(aside) == 1
    moved = snapshot(aside[0])
    assert moved == {n: h for n, h in old.items() if not n.startswith(".")}   # all but the lock
    assert load(folder / "gnn_tiny_latest.pt")["epoch"] == 1


@pytest.mark.parametrize("stored_device", ["cuda", "cuda:1"])
def test_a_cuda_checkpoint_resumes_on_cpu(tmp_path, monkeypatch, capsys, stored_device):
    """A checkpoint written on a GPU machine (its storages tagged 'cuda:0', and its args
    naming the device, as checkpoints did before --device stopped being stored) resumes here
    with the same command: --device belongs to the command, not to the run."""
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 0
    latest = tmp_path / "checkpoints" / "gnn_tiny_latest.pt"
    state = load(latest)
    assert "device" not in state["args"]
    state["args"]["device"] = stored_device
    registry = list(torch.serialization._package_registry)
    torch.serialization.register_package(0, lambda storage: "cuda:0", lambda obj, loc: None)
    try:
        ckpt.save_checkpoint(state, latest)
    finally:
        torch.serialization._package_registry[:] = registry
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(latest, weights_only=True)   # really tagged for a GPU
    capsys.readouterr()
    expected = "cpu" if not torch.cuda.is_available() else "cuda"
    assert run_main([*GNN_ARGS, "--epochs", 2]) == 0   # no --device: auto, here
    out = capsys.readouterr().out
    assert "Resuming from" in out and f"on {expected}" in out
    assert load(latest)["epoch"] == 2 and "device" not in load(latest)["args"]
    assert run_main([*GNN_ARGS, "--epochs", 3, "--device", "cpu"]) == 0
    assert "on cpu" in capsys.readouterr().out


def test_gnn_checkpoint_carries_the_energy_grid(tmp_path):
    assert run_main([*GNN_ARGS, "--epochs", 1]) == 0
    state = load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")
    assert torch.equal(state["energy_grid"], torch.from_numpy(np.linspace(-3, 3, 100)))
    assert state["config"]["model"] == "gnn"


def test_a_gnn_trains_predicts_and_resumes_on_the_energy_grid_of_its_data(tmp_path, capsys):
    """201 energies from a file (the DFT grids' size, in absolute eV) make a 201-energy model
    and checkpoint; --predict writes the same grid; the run resumes on it."""
    grid = np.linspace(-6.303145, -4.303145, 201)
    rng = np.random.default_rng(0)
    header = ["sequence"] + [f"log10_T_{k}" for k in range(201)] + [
        f"log10_DOS_{k}" for k in range(201)]
    lines = [",".join(header), ",".join(["energy_eV"] + [repr(float(e)) for e in grid] * 2)]
    for sequence in ("ACGT", "GGCA", "TTAG", "CATG", "AAAC", "GCGC"):
        lines.append(",".join([sequence] + [f"{v:.4f}" for v in rng.normal(-5, 1, 402)]))
    path = tmp_path / "dft.csv"
    path.write_text("\n".join(lines) + "\n")
    args = [*GNN_ARGS, "--data", path, "--checkpoint-dir", tmp_path / "runs"]
    assert run_main([*args, "--epochs", 1]) == 0
    state = load(tmp_path / "runs" / "gnn_tiny_latest.pt")
    assert state["config"]["n_energies"] == 201
    assert torch.equal(state["energy_grid"], torch.from_numpy(grid))
    assert run_main(["--predict", "ACGTAC", "--checkpoint-dir", tmp_path / "runs",
                     "--output", tmp_path / "p.csv"]) == 0
    assert "201 energies from -6.30314 to -4.30314 eV" in capsys.readouterr().out
    assert run_main([*args, "--epochs", 2]) == 0
    assert "Resuming from" in capsys.readouterr().out


def write_dft_folder(folder, spectra, contacts=None):
    """A manifest CSV (dft_data.py's folder format) of (sequence, energies, T, DOS) records."""
    folder.mkdir()
    lines = ["sequence,contacts,spectrum"]
    for n, (sequence, energies, transmission, dos) in enumerate(spectra):
        rows = ["energy_eV,transmission,dos"] + [
            f"{float(e)!r},{float(t)!r},{float(d)!r}" for e, t, d in
            zip(energies, transmission, dos)]
        (folder / f"s{n}.csv").write_text("\n".join(rows) + "\n")
        lines.append(f"{sequence},{(contacts or {}).get(n, '')},s{n}.csv")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def synthetic_spectra(sequences, energies, seed=0):
    rng = np.random.default_rng(seed)
    return [(s, energies, 10 ** rng.uniform(-8, -2, len(energies)),
             rng.uniform(0.5, 9, len(energies))) for s in sequences]


def test_a_gnn_trains_on_dft_records_of_a_manifest_at_their_energies(tmp_path):
    grid = np.linspace(-6.303145, -4.303145, 201)
    manifest = write_dft_folder(tmp_path / "dft", synthetic_spectra(
        ["AAAC", "GCGC", "ATTA", "CCGA", "TGCA", "GATC"], grid))
    args = [*GNN_ARGS, "--data", manifest, "--checkpoint-dir", tmp_path / "runs", "--epochs", 1]
    assert run_main(args) == 0
    state = load(tmp_path / "runs" / "gnn_tiny_latest.pt")
    assert torch.equal(state["energy_grid"], torch.from_numpy(grid))
    assert state["config"]["n_energies"] == 201


def test_dft_records_of_two_grids_are_refused(tmp_path, capsys):
    grid = np.linspace(-6.3, -4.3, 201)
    spectra = synthetic_spectra(["AAAC", "GCGC", "ATTA"], grid)
    spectra[2] = synthetic_spectra(["ATTA"], np.linspace(-6.3, -4.3, 100))[0]
    manifest = write_dft_folder(tmp_path / "two_grids", spectra)
    assert run_main([*GNN_ARGS, "--data", manifest, "--epochs", 1]) == 2
    assert capsys.readouterr().err == (
        f"train.py: error: {manifest} line 4: 100 energies, but {manifest} line 2 has 201: "
        f"the records of a data set need one energy grid\n")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("model", ["gnn", "hgnn"])
def test_records_with_their_own_contacts_train_and_the_contacts_are_the_datas(tmp_path, model,
                                                                           capsys):
    """DFT records with 'cross' and two-site contacts train, and the contacts are part of the
    data: the run's fingerprint differs from the same records with the default contacts."""
    grid = np.linspace(-6.3, -4.3, 21)
    sequences = ["AAAC", "GCGC", "ATTA", "CCGA", "TGCA", "GATC", "AAAC", "GCGC"]
    contacts = {1: "cross@0.2", 6: '"L:p0,c-1@0.05;R:p-1"', 7: "cross"}
    runs = {}
    for label, given in (("own", contacts), ("default", None)):
        manifest = write_dft_folder(tmp_path / label, synthetic_spectra(sequences, grid), given)
        folder = tmp_path / f"runs_{label}"
        args = ["--model", model, "--data", manifest, "--checkpoint-dir", folder,
                "--epochs", 1, "--batch-size", 4, "--val-fraction", 0.25]
        assert run_main(args) == 0, capsys.readouterr().err
        runs[label] = load(folder / f"{model}_tiny_latest.pt")
    assert runs["own"]["data_fingerprint"] != runs["default"]["data_fingerprint"]


def test_huber_loss_is_chosen_stored_and_part_of_the_run(tmp_path, capsys):
    args = [*GNN_ARGS, "--loss", "huber", "--huber-delta", 0.5]
    assert run_main([*args, "--epochs", 1]) == 0
    state = load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")
    assert (state["config"]["loss"], state["config"]["huber_delta"]) == ("huber", 0.5)
    assert (state["args"]["loss"], state["args"]["huber_delta"]) == ("huber", 0.5)
    # Rerunning without the flags continues with them; asking for another loss is refused.
    assert run_main([*GNN_ARGS, "--epochs", 2]) == 0
    assert load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")["config"]["loss"] == "huber"
    capsys.readouterr()
    assert run_main([*GNN_ARGS, "--epochs", 3, "--loss", "mse"]) == 2
    assert "loss (checkpoint 'huber', requested 'mse')" in capsys.readouterr().err


def test_huber_loss_is_in_decades_for_both_dna_models():
    import models
    batch_target = torch.tensor([[[0.0, 0.0]], [[0.0, 0.0]]])
    prediction = torch.tensor([[[0.5, 3.0]], [[0.0, 0.0]]])
    config = models.get_config("gnn", "tiny", loss="huber", huber_delta=1.0)
    # Quadratic within a decade, linear beyond: (0.125 + 2.5) / 4 elements.
    assert models.loss_in_decades(config, prediction, batch_target).item() == (0.125 + 2.5) / 4
    mse = models.get_config("gnn", "tiny")
    assert models.loss_in_decades(mse, prediction, batch_target).item() == (0.25 + 9) / 4


def test_configs_written_before_a_field_existed_load_with_its_default():
    import models
    old = dataclasses.asdict(models.get_config("hgnn", "tiny"))
    for field in ("loss", "huber_delta", "predict_eta"):
        del old[field]
    config = models.config_from_dict(old)
    assert (config.loss, config.huber_delta, config.predict_eta) == ("mse", 1.0, None)
    model = models.build_model(config).eval()
    assert model.eta == config.eta   # the broadening such a checkpoint validated with
    with pytest.raises(ValueError, match=r"missing \['hidden'\]"):
        models.config_from_dict({k: v for k, v in old.items() if k != "hidden"})


def test_a_missing_gpu_is_the_error_of_the_rank_that_lacks_it(monkeypatch):
    """Under torchrun a rank whose GPU is missing (fewer GPUs than --nproc_per_node) reports
    it itself (train.py prints `rank N: ...` for such errors): rank 0 may have its GPU."""
    import types
    import settings
    from messages import UsageError
    rank_1 = types.SimpleNamespace(active=True, local_rank=1, rank=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError) as e:
        settings.resolve_device("cuda", rank_1)
    assert e.value.this_rank
    assert str(e.value) == ("--device cuda: this process needs cuda:1, but only 1 CUDA device(s) "
                            "are visible (fewer GPUs than --nproc_per_node?)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError) as e:
        settings.resolve_device("cuda", rank_1)
    assert e.value.this_rank and str(e.value) == "--device cuda: CUDA is not available here"
    single = types.SimpleNamespace(active=False, local_rank=0, rank=0)
    with pytest.raises(UsageError) as e:
        settings.resolve_device("cuda", single)
    assert not e.value.this_rank
