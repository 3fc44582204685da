"""Data: the tight-binding physics against closed forms, the readers, graph batching, and the
validity rule against real antibodies."""

import random

import numpy as np
import pytest
import torch

import data
import metrics
from conftest import SHARED_DATA

GAMMA = data.GAMMA
E = np.linspace(-3, 3, 61)


# ------------------------------------------------------------------------------------------
# Tight-binding transport: closed forms and an independent calculation
# ------------------------------------------------------------------------------------------

def test_hamiltonian_follows_the_spec_tables():
    # Primary G-A (5'->3'), complement T-C: T pairs with A, C pairs with G.
    H = data.hamiltonian("GA", "TC")
    # Sites: G, A (primary), T, C (complement).
    assert np.allclose(np.diag(H), [0.00, -0.49, -1.39, -1.12])
    assert H[0, 1] == H[1, 0] == 0.089        # GA, primary 5'->3'
    assert H[2, 3] == H[3, 2] == 0.076        # TC, complement 5'->3'
    assert H[1, 2] == 0.034                    # A-T hydrogen bond (primary 1, complement 0)
    assert H[0, 3] == 0.050                    # G-C hydrogen bond (primary 0, complement 1)
    assert H[0, 2] == H[1, 3] == 0.0


def test_one_site_is_a_lorentzian():
    """A single G base touching both electrodes: G = 1/(E - e + i Gamma)."""
    T, DOS = data.transport_spectra([("G", "-")], E)
    expected_T = GAMMA ** 2 / (E ** 2 + GAMMA ** 2)
    expected_DOS = GAMMA / np.pi / (E ** 2 + GAMMA ** 2)
    assert np.allclose(T[0], expected_T, rtol=1e-9)
    assert np.allclose(DOS[0], expected_DOS, rtol=1e-9)


@pytest.mark.parametrize("primary", ["GA", "CT", "TG"])
def test_two_site_chain_closed_form(primary):
    """Two bases, no complement: G = [[a, -t], [-t, b]]^-1 with a = E - e1 + i Gamma/2."""
    e1, e2 = data.ONSITE[primary[0]], data.ONSITE[primary[1]]
    t = data.INTRA_STRAND[primary]
    a, b = E - e1 + 0.5j * GAMMA, E - e2 + 0.5j * GAMMA
    det = a * b - t ** 2
    expected_T = GAMMA ** 2 * t ** 2 / np.abs(det) ** 2
    expected_DOS = -((a + b) / det).imag / np.pi
    T, DOS = data.transport_spectra([(primary, "--")], E)
    assert np.allclose(T[0], expected_T, rtol=1e-9)
    assert np.allclose(DOS[0], expected_DOS, rtol=1e-9)


def test_three_site_chain_closed_form():
    """G_{13} of a 3-site chain: t12 t23 / det, det by cofactor expansion."""
    primary = "GAC"
    e = [data.ONSITE[b] for b in primary]
    t12, t23 = data.INTRA_STRAND["GA"], data.INTRA_STRAND["AC"]
    a = E - e[0] + 0.5j * GAMMA
    b = E - e[1]
    c = E - e[2] + 0.5j * GAMMA
    det = a * b * c - a * t23 ** 2 - c * t12 ** 2
    expected_T = GAMMA ** 2 * (t12 * t23) ** 2 / np.abs(det) ** 2
    trace = (b * c - t23 ** 2 + a * c + a * b - t12 ** 2) / det
    T, DOS = data.transport_spectra([(primary, "---")], E)
    assert np.allclose(T[0], expected_T, rtol=1e-9)
    assert np.allclose(DOS[0], -trace.imag / np.pi, rtol=1e-9)


def test_full_duplexes_match_a_50_digit_calculation():
    """An independent route for whole duplexes (hydrogen bonds, missing bases): invert
    E - H - Sigma with 50-digit arithmetic (mpmath, installed with torch) and compare in
    decades, the unit the model learns, down to the deepest valleys (T ~ 1e-30)."""
    mpmath = pytest.importorskip("mpmath", reason="mpmath comes with torch's sympy dependency")
    mpmath.mp.dps = 50
    duplexes = data.synthetic_duplexes(6, seed=3)
    energies = E[::4]
    T, DOS = data.transport_spectra(duplexes, energies)
    for k, (primary, complement) in enumerate(duplexes):
        H = data.hamiltonian(primary, complement)
        n, right = len(H), len(primary) - 1
        for m, energy in enumerate(energies):
            A = mpmath.matrix(n, n)
            for i in range(n):
                for j in range(n):
                    A[i, j] = -H[i, j] + (mpmath.mpc(energy, data.ETA) if i == j else 0)
            A[0, 0] += mpmath.mpc(0, GAMMA / 2)
            A[right, right] += mpmath.mpc(0, GAMMA / 2)
            G = A ** -1
            exact_T = GAMMA ** 2 * abs(G[0, right]) ** 2
            exact_DOS = -sum(G[i, i] for i in range(n)).imag / mpmath.pi
            assert abs(np.log10(T[k, m]) - float(mpmath.log10(exact_T))) < 1e-6
            assert abs(np.log10(DOS[k, m]) - float(mpmath.log10(exact_DOS))) < 1e-6


def test_built_in_duplexes_are_deterministic_and_varied():
    a, b = data.synthetic_duplexes(200, seed=5), data.synthetic_duplexes(200, seed=5)
    assert a == b and a != data.synthetic_duplexes(200, seed=6)
    lengths = {len(p) for p, _ in a}
    assert lengths == set(range(4, 11))
    assert any(data.MISSING in c for _, c in a)
    targets = data.log_spectra(a[:50], data.default_energy_grid())
    assert targets.shape == (50, 2, 100) and np.isfinite(targets).all()


# ------------------------------------------------------------------------------------------
# Graphs
# ------------------------------------------------------------------------------------------

def test_graph_of_a_duplex_has_the_spec_edges():
    x, edges, types = data.duplex_graph("GA", "T-")   # complement of A present, of G missing
    assert x.shape == (2 + 3, data.NODE_FEATURES)
    pairs = {(int(s), int(t), int(k)) for s, t, k in zip(edges[0], edges[1], types)}
    assert (2, 3, data.EDGE_BACKBONE_5TO3) in pairs and (3, 2, data.EDGE_BACKBONE_3TO5) in pairs
    assert (3, 4, data.EDGE_HBOND) in pairs and (4, 3, data.EDGE_HBOND) in pairs
    assert (0, 2, data.EDGE_CONTACT) in pairs and (1, 3, data.EDGE_CONTACT) in pairs
    assert len(pairs) == 2 + 2 + 4


def test_a_batch_is_the_disjoint_union_of_its_graphs():
    duplexes = data.synthetic_duplexes(30, seed=1)
    graphs = data.GraphData(duplexes, np.zeros((30, 2, 4)))
    indices = torch.tensor([7, 3, 21])
    batch = graphs.batch(indices)
    offset = 0
    for position, k in enumerate(indices.tolist()):
        x, edges, types = data.duplex_graph(*duplexes[k])
        nodes = batch["graph"] == position
        assert torch.equal(batch["x"][nodes], torch.from_numpy(x))
        mine = (batch["edge_index"][0] >= offset) & (batch["edge_index"][0] < offset + len(x))
        assert torch.equal(batch["edge_index"][:, mine] - offset, torch.from_numpy(edges))
        assert torch.equal(batch["edge_type"][mine], torch.from_numpy(types))
        assert batch["left"][position] == offset and batch["right"][position] == offset + 1
        offset += len(x)
    assert offset == len(batch["x"])


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    assert torch.equal(data.epoch_order(100, 0, 3), data.epoch_order(100, 0, 3))
    assert not torch.equal(data.epoch_order(100, 0, 3), data.epoch_order(100, 0, 4))
    assert sorted(data.epoch_order(100, 0, 3).tolist()) == list(range(100))


# ------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------

def test_fasta_csv_and_txt_readers(tmp_path):
    vh = data.synthetic_antibodies(3, seed=0)
    (tmp_path / "a.fasta").write_text(f">one\n{vh[0][:50]}\n{vh[0][50:]}\n>two\n{vh[1]}\n")
    (tmp_path / "a.csv").write_text(f"name,sequence\nx,{vh[0]}\ny,{vh[2]}\n")
    (tmp_path / "a.txt").write_text(f"{vh[1]}\n\n{vh[2]}\n")
    assert data.load_antibody_sequences(tmp_path / "a.fasta", 158)[0] == vh[:2]
    assert data.load_antibody_sequences(tmp_path / "a.csv", 158)[0] == [vh[0], vh[2]]
    assert data.load_antibody_sequences(tmp_path / "a.txt", 158)[0] == [vh[1], vh[2]]


def test_reader_names_file_and_line_of_a_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sequence\nEVQLVESGG\nEVQL VES!\n")
    with pytest.raises(data.DataError, match=r"bad\.csv line 3"):
        data.load_antibody_sequences(path, 158)


def test_dna_csv_with_and_without_spectra(tmp_path):
    path = tmp_path / "dna.csv"
    path.write_text("sequence,complement\nATGC,GCAT\nGGA,T-C\n")
    duplexes, targets = data.load_duplexes(path, 100)
    assert duplexes == [("ATGC", "GCAT"), ("GGA", "T-C")] and targets is None
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,complement\nATGC,GCAA\n")
    with pytest.raises(data.DataError, match=r"bad\.csv line 2: complement 'GCAA'"):
        data.load_duplexes(bad, 100)


# ------------------------------------------------------------------------------------------
# Validity and diversity
# ------------------------------------------------------------------------------------------

def test_built_in_antibodies_are_valid_and_diverse():
    sequences = data.synthetic_antibodies(500, seed=0)
    assert metrics.validity(sequences) == 1.0
    assert metrics.diversity(sequences) > 0.99
    assert all(100 <= len(s) <= 150 for s in sequences)


def test_validity_and_diversity_by_hand():
    good = data.synthetic_antibodies(1, seed=0)[0]
    assert metrics.validity([good, good[:60], good.replace("W", "F")]) == pytest.approx(1 / 3)
    assert metrics.diversity(["AAA", "AAA", "CCC", "DDD"]) == 0.75
    assert metrics.validity([]) == 0.0


@pytest.mark.parametrize("name", ["oas_jaffe2022_donor3_vh.fasta",
                                  "therasabdab_vh_182_approved_phase3_human_humanised.csv"])
def test_real_vh_are_valid_and_shuffled_ones_are_not(name):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the real data lives beside the project, not in it)")
    sequences, _ = data.load_antibody_sequences(path, 158)
    assert len(sequences) > 150
    assert metrics.validity(sequences) > 0.97
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in sequences]
    assert metrics.validity(shuffled) < 0.01
