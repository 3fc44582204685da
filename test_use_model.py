"""Using a trained model: --sample N (FASTA, validity, diversity, novelty) and --predict
(T(E) and DOS(E) to CSV), from tiny checkpoints."""

import csv
import re
import shutil
import sys

import numpy as np
import pytest
import torch

import dna
import metrics
import use_model
from families import gnn
from conftest import TRANSFORMER_ARGS, run_main, run_train


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("transformer_run")
    result = run_train([*TRANSFORMER_ARGS, "--epochs", 1], folder)
    assert result.returncode == 0, result.stderr
    return folder / "checkpoints"


def test_sample_writes_fasta_and_reports_its_metrics(transformer_run, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, "anarcism", None)   # as where it is not installed
    out = tmp_path / "a.fasta"
    args = ["--sample", 12, "--temperature", 0.7, "--seed", 5, "--checkpoint-dir",
            transformer_run, "--output", out]
    assert run_main(args) == 0
    line = capsys.readouterr().out
    assert re.fullmatch(
        rf"Sampled 12 sequences from {transformer_run}/transformer_tiny_best\.pt \(epoch 1, val "
        rf"loss [\d.]+\), sampling, temperature 0\.7, seed 5: validity [\d.]+% \(built-in rule "
        rf"check\) \(IMGT check not run: pip install anarcism to add it\), uniqueness [\d.]+%, "
        rf"novelty [\d.]+% \(not among the 144 training sequences\); written to {out}\n", line), line
    records = out.read_text().split(">")[1:]
    assert len(records) == 12 and records[0].startswith("sample_t0.7_seed5_1\n")
    # The same checkpoint, count, temperature and seed give the same sequences.
    again = tmp_path / "b.fasta"
    assert run_main([*args[:-1], again]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_sample_with_anarcism_reports_the_imgt_check(transformer_run, tmp_path, capsys):
    pytest.importorskip("anarcism", reason="the IMGT check is optional; it needs anarcism")
    assert run_main(["--sample", 4, "--checkpoint-dir", transformer_run, "--output",
                     tmp_path / "s.fasta"]) == 0
    assert re.search(r"% \(IMGT: anarcism numbers one human VH domain with Cys23, Trp41, "
                     r"Cys104, Trp118\)", capsys.readouterr().out)


def test_imgt_validity_on_real_and_broken_sequences():
    pytest.importorskip("anarcism", reason="the IMGT check is optional; it needs anarcism")
    vh = ("EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQ"
          "MNSLRAEDTAVYYCAKDRGYSSGWYFDYWGQGTLVTVSS")
    assert metrics.imgt_validity([vh]) == 1.0
    # No Cys at IMGT 104, a reversed chain, and a non-antibody.
    broken = vh.replace("YYCAK", "YYAAK")
    assert metrics.imgt_validity([vh, broken, vh[::-1], "ACDEFGHIK" * 12]) == 0.25


def test_novelty():
    assert metrics.novelty(["A", "B", "C", "A"], ["A", "X"]) == 0.5
    assert metrics.novelty([], ["A"]) == 0.0


def test_predict_from_the_command_line_and_from_a_file(finished_run, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert run_main(["--predict", "ACGTAC, ggcc", "--checkpoint-dir", finished_run,
                     "--output", out]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"Predicted log10 T(E) and log10 DOS(E) for 2 duplexes with "
                           f"{finished_run}/gnn_tiny_best.pt (epoch ")
    assert "100 energies from -3 to 3 eV" in said
    rows = list(csv.reader(out.open()))
    assert rows[0][:4] == ["sequence", "complement", "contacts", "log10_T_0"]
    assert len(rows[0]) == 203
    assert rows[1][0] == "energy_eV"   # the grid, exactly: the file defines its own
    # Empty contacts: the default ones.
    assert [r[:3] for r in rows[2:]] == [["ACGTAC", "GTACGT", ""], ["GGCC", "GGCC", ""]]
    # The numbers are the model's: the file round-trips through --data's reader.
    model, state = use_model.load_model(finished_run / "gnn_tiny_best.pt", "gnn")
    expected = gnn.predict(model, [("ACGTAC", "GTACGT"), ("GGCC", "GGCC")])
    duplexes, spectra, energies, _ = dna.load_duplexes(out)
    np.testing.assert_allclose(spectra, expected, rtol=1e-5)
    assert np.array_equal(energies, state["energy_grid"].numpy())

    listing = tmp_path / "seqs.txt"
    listing.write_text("ACGTAC\n\nGGCC\n")
    assert run_main(["--predict", listing, "--checkpoint", finished_run / "gnn_tiny_best.pt",
                     "--output", tmp_path / "q.csv"]) == 0
    assert (tmp_path / "q.csv").read_text() == out.read_text()


def test_bad_uses_get_one_line_and_exit_2(finished_run, transformer_run, tmp_path, capsys):
    cases = [
        (["--predict", "ACGU", "--checkpoint-dir", finished_run],
         "sequence 'ACGU': must be A, T, G, C only (or a file that exists)"),
        (["--predict", "ACGT", "--checkpoint-dir", tmp_path],
         f"no checkpoint {tmp_path}/gnn_tiny_best.pt; train first, or give --checkpoint PATH"),
        (["--sample", 3, "--checkpoint", finished_run / "gnn_tiny_best.pt"],
         "--sample does not apply to a gnn model (it takes --predict)"),
        (["--sample", 3, "--model", "transformer", "--checkpoint",
          finished_run / "gnn_tiny_best.pt"],
         f"cannot use {finished_run}/gnn_tiny_best.pt: holds a gnn model, not a transformer"),
        (["--predict", "ACGT", "--contacts", "L:p0;R:p9", "--checkpoint-dir", finished_run],
         "--contacts for sequence 'ACGT': contacts: site p9 is out of range (the primary "
         "strand has 4 bases, p0..p3)"),
        (["--contacts", "cross", "--checkpoint-dir", tmp_path],
         "--contacts goes with --predict (training data give their contacts in a 'contacts' "
         "column)"),
        (["--loss", "huber", "--checkpoint-dir", tmp_path],
         "--loss does not apply to a transformer model"),
        (["--model", "gnn", "--huber-delta", "0", "--checkpoint-dir", tmp_path],
         "--huber-delta must be a positive number of decades (got 0.0)"),
        (["--sample", 3, "--temperature", 0, "--checkpoint-dir", transformer_run],
         "--temperature must be a positive number (got 0.0)"),
        (["--sample", 3, "--predict", "ACGT"], "--sample and --predict are separate uses: give one"),
    ]
    for args, message in cases:
        assert run_main(args) == 2, args
        assert capsys.readouterr().err == f"train.py: error: {message}\n"


def test_predict_uses_a_damaged_checkpoint_never(finished_run, tmp_path, capsys):
    folder = tmp_path / "runs"
    shutil.copytree(finished_run, folder)
    best = folder / "gnn_tiny_best.pt"
    data_bytes = bytearray(best.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 1
    best.unlink()
    best.write_bytes(bytes(data_bytes))
    assert run_main(["--predict", "ACGT", "--checkpoint-dir", folder]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (folder / "gnn_tiny_predictions.csv").exists()
    assert torch.load(folder / "gnn_tiny_latest.pt", weights_only=True)["epoch"] == 3
