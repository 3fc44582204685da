"""The Hamiltonian GNN (--model hgnn): NEGF over padded graphs of mixed sizes, a Hermitian
predicted H, training, --predict's Hamiltonian file, and exact resume after SIGKILL."""

import contextlib
import csv
import io
import json
import re

import numpy as np
import pytest
import torch

import dna
import models
import tight_binding
from conftest import HGNN_ARGS, assert_same_run, load, run_main, run_train

SIZES = (1, 3, 7, 5, 12, 7)


def random_padded_batch(sizes, seed=0, dtype=torch.float64):
    """(H, site_mask, gamma_left, gamma_right, singles): random Hermitian H padded to the
    largest size with garbage outside each real block (padded_negf must ignore it), random
    contacts, and each graph's own unpadded (H, gamma_left, gamma_right)."""
    generator = torch.Generator().manual_seed(seed)
    B, N = len(sizes), max(sizes)
    H = torch.randn(B, N, N, generator=generator, dtype=dtype) * 5.0   # the garbage
    mask = torch.zeros(B, N, dtype=torch.bool)
    gamma_left = torch.rand(B, N, generator=generator, dtype=torch.float64)
    gamma_right = torch.rand(B, N, generator=generator, dtype=torch.float64)
    singles = []
    for b, n in enumerate(sizes):
        A = torch.randn(n, n, generator=generator, dtype=dtype) * 0.3
        A = (A + A.mH) / 2
        H[b, :n, :n] = A
        mask[b, :n] = True
        gl, gr = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        gl[0] = gr[n - 1] = tight_binding.GAMMA
        if n > 3:
            gl[1] = 0.05   # a second contact site, as a per-edge gamma could give
        gamma_left[b, :n], gamma_right[b, :n] = gl, gr
        singles.append((A, gl, gr))
    return H, mask, gamma_left, gamma_right, singles


def relative_error(a, b):
    return ((a - b).abs() / b.abs()).max().item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_padded_negf_equals_each_graph_alone_for_mixed_sizes(dtype):
    H, mask, gamma_left, gamma_right, singles = random_padded_batch(SIZES, dtype=dtype)
    energies = torch.linspace(-3, 3, 61, dtype=torch.float64)
    T, DOS, LDOS = tight_binding.padded_negf(H, mask, gamma_left, gamma_right, energies)
    assert T.shape == DOS.shape == (len(SIZES), 61) and LDOS.shape == (len(SIZES), 61, 12)
    for b, (A, gl, gr) in enumerate(singles):
        n = len(gl)
        t, dos, ldos = tight_binding.wide_band_negf(A[None], gl[None], gr[None], energies)
        assert relative_error(T[b], t[0]) < 1e-12
        assert relative_error(DOS[b], dos[0]) < 1e-12
        assert relative_error(LDOS[b, :, :n], ldos[0]) < 1e-12
        assert torch.all(LDOS[b, :, n:] == 0)   # padded sites count nowhere


def test_padded_negf_of_the_built_in_duplexes_gives_their_spectra():
    duplexes = [("GATTACA", "TGTAATC"), ("GC", "G-"), ("ACGTACGTAC", "GT-CGTACGT"), ("T", "-")]
    Hs = [tight_binding.hamiltonian(*d) for d in duplexes]
    N = max(len(H) for H in Hs)
    H = torch.zeros(len(Hs), N, N, dtype=torch.float64)
    mask = torch.zeros(len(Hs), N, dtype=torch.bool)
    gamma_left = torch.zeros(len(Hs), N, dtype=torch.float64)
    gamma_right = torch.zeros(len(Hs), N, dtype=torch.float64)
    for b, (h, (primary, _)) in enumerate(zip(Hs, duplexes)):
        H[b, :len(h), :len(h)] = h
        mask[b, :len(h)] = True
        gamma_left[b, 0] = gamma_right[b, len(primary) - 1] = tight_binding.GAMMA
    grid = tight_binding.default_energy_grid(100)
    T, DOS, _ = tight_binding.padded_negf(H, mask, gamma_left, gamma_right,
                                          torch.from_numpy(grid))
    expected_T, expected_DOS = tight_binding.transport_spectra(duplexes, grid)
    np.testing.assert_allclose(T.numpy(), expected_T, rtol=1e-12)
    np.testing.assert_allclose(DOS.numpy(), expected_DOS, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_padded_negf_gradients_pass_gradcheck(dtype):
    H, mask, gamma_left, gamma_right, _ = random_padded_batch((3, 2), seed=1, dtype=dtype)
    H = H.requires_grad_()
    gamma_left, gamma_right = gamma_left.requires_grad_(), gamma_right.requires_grad_()
    energies = torch.linspace(-1, 1, 5, dtype=torch.float64)

    def spectra(H, gamma_left, gamma_right):
        # A broadening that keeps finite differences accurate near the resonances.
        return tight_binding.padded_negf(H, mask, gamma_left, gamma_right, energies, eta=0.05)

    assert torch.autograd.gradcheck(spectra, (H, gamma_left, gamma_right))


def built_in_batch(n=12, seed=3):
    duplexes = dna.synthetic_duplexes(n, seed) + [("T", "-"), ("GC", "GC")]
    targets = np.zeros((len(duplexes), 2, 100))
    return duplexes, dna.GraphData(duplexes, targets).batch(torch.arange(len(duplexes)))


def perturbed_model(seed=0):
    """A tiny HGNN whose heads are far from their near-constant start, so that symmetry and
    sparsity are not an accident of small weights."""
    torch.manual_seed(seed)
    model = models.build_model(models.get_config("hgnn", "tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def test_predicted_hamiltonian_is_real_symmetric_with_zeros_where_no_edge_is():
    duplexes, batch = built_in_batch()
    model = perturbed_model()
    H = model._assemble(batch)["H"]
    assert H.dtype == torch.float64                  # real: Hermitian means symmetric
    assert torch.equal(H, H.mT)                      # exactly, not to rounding
    predicted = model.hamiltonian(batch)
    for g, (duplex, h) in enumerate(zip(duplexes, predicted)):
        true = tight_binding.hamiltonian(*duplex)
        n = len(true)
        assert torch.all(H[g, n:] == 0) and torch.all(H[g, :, n:] == 0)   # the padding
        # Off-diagonal entries are nonzero exactly where the duplex has a coupling.
        off = ~torch.eye(n, dtype=torch.bool)
        assert torch.equal((H[g, :n, :n] != 0) & off, (true != 0) & off), duplex
        # `hamiltonian` reports that same matrix: one coupling per pair, with its kind.
        dense = torch.diag(h["onsite"])
        for (i, j), value in zip(h["pairs"].tolist(), h["coupling"].tolist()):
            dense[i, j] = dense[j, i] = value
        assert torch.equal(dense, H[g, :n, :n])
        kinds = {(i, j): kind for i, j, _, kind in tight_binding.duplex_sites(*duplex)[1]}
        assert {tuple(p): models.COUPLING_KINDS[k] for p, k in
                zip(h["pairs"].tolist(), h["kind"].tolist())} == kinds
        # The contacts of the built-in data: primary 5' site left, 3' site right.
        assert h["gamma_left"].nonzero().flatten().tolist() == [0]
        assert h["gamma_right"].nonzero().flatten().tolist() == [len(duplex[0]) - 1]


@torch.no_grad()
def test_predicted_spectra_are_the_negf_of_the_predicted_hamiltonian():
    duplexes, batch = built_in_batch()
    model = perturbed_model(1)
    spectra = model.predict(batch)
    energies = model.energy_grid
    # Trained with a broadened NEGF, evaluated with the physics' own eta.
    assert not model.training and model.eta == model.config.predict_eta == 1e-12
    assert model.train().eta == model.config.eta == 1e-3
    model.eval()
    for g, h in enumerate(model.hamiltonian(batch)):
        dense = torch.diag(h["onsite"])
        for (i, j), value in zip(h["pairs"].tolist(), h["coupling"].tolist()):
            dense[i, j] = dense[j, i] = value
        T, DOS, LDOS = tight_binding.wide_band_negf(
            dense[None], h["gamma_left"][None], h["gamma_right"][None], energies, model.eta)
        np.testing.assert_allclose(spectra[g, 0], torch.log10(T[0]), rtol=1e-10)
        np.testing.assert_allclose(spectra[g, 1], torch.log10(DOS[0]), rtol=1e-10)
        np.testing.assert_allclose(h["ldos"], LDOS[0], rtol=1e-10, atol=1e-300)


@pytest.fixture(scope="module")
def hgnn_run(tmp_path_factory):
    """A 2-epoch hgnn run, trained in this process; its checkpoint folder and output."""
    folder = tmp_path_factory.mktemp("hgnn_run") / "checkpoints"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_main([*HGNN_ARGS, "--epochs", 2, "--checkpoint-dir", folder])
    assert code == 0, out.getvalue()
    return folder, out.getvalue()


def test_two_epochs_of_training_lower_the_loss(hgnn_run):
    folder, output = hgnn_run
    history = load(folder / "hgnn_tiny_latest.pt")["history"]
    assert history["epoch"] == [1, 2]
    assert history["train_loss"][1] < history["train_loss"][0]
    assert history["val_loss"][1] < history["val_loss"][0]
    # The gnn family's measures, on the Hamiltonian model's spectra.
    assert re.search(r"Epoch 2/2 \| .* \| log10 T R² -?[\d.]+ MAE [\d.]+ \| log10 DOS R² "
                     r"-?[\d.]+ MAE [\d.]+", output), output
    assert all(np.isfinite(history["r2_log10_T"]))


def test_predict_with_an_hgnn_checkpoint_writes_the_csv_and_the_hamiltonians(hgnn_run,
                                                                            tmp_path, capsys):
    folder, _ = hgnn_run
    out = tmp_path / "p.csv"
    # No --model: the checkpoint says it holds an hgnn.
    assert run_main(["--predict", "ACGTAC,GGCC", "--checkpoint", folder / "hgnn_tiny_best.pt",
                     "--output", out]) == 0
    said = capsys.readouterr().out
    companion = tmp_path / "p_hamiltonians.json"
    assert said.startswith(f"Predicted log10 T(E) and log10 DOS(E) for 2 duplexes with "
                           f"{folder}/hgnn_tiny_best.pt (epoch ")
    assert said.endswith(f", with each duplex's Hamiltonian and local DOS; written to {out} "
                         f"and {companion}\n"), said
    rows = list(csv.reader(out.open()))
    assert rows[0][:4] == ["sequence", "complement", "contacts", "log10_T_0"]
    assert len(rows[0]) == 203
    assert [r[:3] for r in rows[1:] if r[0] != dna.ENERGY_ROW] == [["ACGTAC", "GTACGT", ""],
                                                                   ["GGCC", "GGCC", ""]]

    written = json.loads(companion.read_text())
    assert len(written["energies_eV"]) == 100
    # Predictions use the physics' broadening, not the training one.
    assert written["eta_eV"] == models.get_config("hgnn", "tiny").predict_eta == 1e-12
    first = written["duplexes"][0]
    assert (first["sequence"], first["complement"]) == ("ACGTAC", "GTACGT")
    assert [(s["base"], s["strand"], s["position"]) for s in first["sites"]] == [
        *[(b, "primary", k) for k, b in enumerate("ACGTAC")],
        *[(b, "complement", k) for k, b in enumerate("GTACGT")]]
    assert all(len(s["ldos_per_eV"]) == 100 and min(s["ldos_per_eV"]) > 0
               for s in first["sites"])
    # 5 + 5 backbone pairs and 6 hydrogen bonds; the electrodes on the primary strand's ends.
    kinds = [c["kind"] for c in first["couplings"]]
    assert kinds.count("backbone") == 10 and kinds.count("hbond") == 6
    assert first["contacts"] == {"left": [{"site": 0, "gamma_eV": 0.1}],
                                 "right": [{"site": 5, "gamma_eV": 0.1}]}

    # Contacts from the flag: the left electrode on two sites, the right one on the
    # complementary strand's 5' base (site 6: after the 6 primary sites) with 0.25 eV.
    crossed = tmp_path / "crossed.csv"
    assert run_main(["--predict", "ACGTAC", "--contacts", "L:p0,p1@0.05;R:c0@0.25",
                     "--checkpoint", folder / "hgnn_tiny_best.pt", "--output", crossed]) == 0
    written = json.loads((tmp_path / "crossed_hamiltonians.json").read_text())
    assert written["duplexes"][0]["contacts"] == {
        "left": [{"site": 0, "gamma_eV": 0.05}, {"site": 1, "gamma_eV": 0.05}],
        "right": [{"site": 6, "gamma_eV": 0.25}]}
    rows = list(csv.reader(crossed.open()))
    assert rows[2][:3] == ["ACGTAC", "GTACGT", "L:p0@0.05;L:p1@0.05;R:c0@0.25"]
    # Other contacts, other spectra; and the CSV's contacts column gives the same as the flag.
    assert rows[2][3:] != next(r for r in csv.reader(out.open()) if r[0] == "ACGTAC")[3:]
    again = tmp_path / "again.csv"
    assert run_main(["--predict", crossed, "--checkpoint", folder / "hgnn_tiny_best.pt",
                     "--output", again]) == 0
    assert list(csv.reader(again.open()))[2] == rows[2]


def test_hgnn_killed_inside_epoch_2_resumes_bit_identical(tmp_path, references):
    # 270 training duplexes in batches of 16: 17 steps an epoch, so step 24 is in epoch 2,
    # after its first mid-epoch save.
    args = [*HGNN_ARGS, "--epochs", 4, "--checkpoint-every-steps", 4]
    killed = run_train(args, tmp_path, fault="step:24")
    assert killed.returncode == -9, killed.stderr
    resumed = run_train(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"Resuming from \S+hgnn_tiny_latest\.pt: epoch 1 \+ \d+ steps",
                     resumed.stdout), resumed.stdout
    assert_same_run(load(tmp_path / "checkpoints" / "hgnn_tiny_latest.pt"),
                    references.get("hgnn", 4))
