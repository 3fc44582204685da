"""Data: the built-in sets, the readers, graph batching, and the validity rule against real
antibodies. The tight-binding physics is tested in test_tight_binding.py."""

import random

import numpy as np
import pytest
import torch

import antibody
import data
import dna
import metrics
import tight_binding
from conftest import SHARED_DATA


def test_built_in_duplexes_are_deterministic_and_varied():
    a, b = dna.synthetic_duplexes(200, seed=5), dna.synthetic_duplexes(200, seed=5)
    assert a == b and a != dna.synthetic_duplexes(200, seed=6)
    lengths = {len(p) for p, _ in a}
    assert lengths == set(range(4, 11))
    assert any(tight_binding.MISSING in c for _, c in a)
    targets = tight_binding.log_spectra(a[:50], tight_binding.default_energy_grid())
    assert targets.shape == (50, 2, 100) and np.isfinite(targets).all()


# ------------------------------------------------------------------------------------------
# Graphs
# ------------------------------------------------------------------------------------------

def test_graph_of_a_duplex_has_the_spec_edges():
    x, edges, types, _ = dna.duplex_graph("GA", "T-")   # complement of A present, of G missing
    assert x.shape == (2 + 3, dna.NODE_FEATURES)
    pairs = {(int(s), int(t), int(k)) for s, t, k in zip(edges[0], edges[1], types)}
    assert (2, 3, dna.EDGE_BACKBONE_5TO3) in pairs and (3, 2, dna.EDGE_BACKBONE_3TO5) in pairs
    assert (3, 4, dna.EDGE_HBOND) in pairs and (4, 3, dna.EDGE_HBOND) in pairs
    assert (0, 2, dna.EDGE_CONTACT) in pairs and (1, 3, dna.EDGE_CONTACT) in pairs
    assert len(pairs) == 2 + 2 + 4


def test_a_batch_is_the_disjoint_union_of_its_graphs():
    duplexes = dna.synthetic_duplexes(30, seed=1)
    graphs = dna.GraphData(duplexes, np.zeros((30, 2, 4)))
    indices = torch.tensor([7, 3, 21])
    batch = graphs.batch(indices)
    offset = 0
    for position, k in enumerate(indices.tolist()):
        x, edges, types, _ = dna.duplex_graph(*duplexes[k])
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
    vh = antibody.synthetic_antibodies(3, seed=0)
    (tmp_path / "a.fasta").write_text(f">one\n{vh[0][:50]}\n{vh[0][50:]}\n>two\n{vh[1]}\n")
    (tmp_path / "a.csv").write_text(f"name,sequence\nx,{vh[0]}\ny,{vh[2]}\n")
    (tmp_path / "a.txt").write_text(f"{vh[1]}\n\n{vh[2]}\n")
    assert antibody.load_antibody_sequences(tmp_path / "a.fasta", 158)[0] == vh[:2]
    assert antibody.load_antibody_sequences(tmp_path / "a.csv", 158)[0] == [vh[0], vh[2]]
    assert antibody.load_antibody_sequences(tmp_path / "a.txt", 158)[0] == [vh[1], vh[2]]


def test_reader_names_file_and_line_of_a_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sequence\nEVQLVESGG\nEVQL VES!\n")
    with pytest.raises(data.DataError, match=r"bad\.csv line 3"):
        antibody.load_antibody_sequences(path, 158)


def test_dna_csv_with_and_without_spectra(tmp_path):
    path = tmp_path / "dna.csv"
    path.write_text("sequence,complement\nATGC,GCAT\nGGA,T-C\n")
    duplexes, targets, energies, _ = dna.load_duplexes(path)
    assert duplexes == [("ATGC", "GCAT"), ("GGA", "T-C")] and targets is None and energies is None
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,complement\nATGC,GCAA\n")
    with pytest.raises(data.DataError, match=r"bad\.csv line 2: complement 'GCAA'"):
        dna.load_duplexes(bad)


def test_dna_csv_contacts_column_and_contact_edges_carry_gamma(tmp_path):
    Contact = tight_binding.Contact
    path = tmp_path / "dna.csv"
    path.write_text("sequence,complement,contacts\nATGC,GCAT,\nATGC,GCAT,L:p0;R:p-1@0.1\n"
                    "GGA,T-C,\"L:p0,c0@0.2;R:c-1@0.05\"\n")   # a cell with a comma is quoted
    loaded = dna.load_duplexes(path)
    # Empty and the default spelled out are the same data: None.
    assert loaded.contacts[:2] == [None, None]
    assert loaded.contacts[2] == (Contact("left", "primary", 0, 0.2),
                                  Contact("left", "complement", 0, 0.2),
                                  Contact("right", "complement", 2, 0.05))
    x, edges, types, gammas = dna.duplex_graph(*loaded.duplexes[2], loaded.contacts[2])
    # Sites: primary 0-2 (nodes 2-4), complement bases 0 and 2 (nodes 5, 6).
    contact = {(int(s), int(t)): g for s, t, k, g in zip(edges[0], edges[1], types, gammas)
               if k == dna.EDGE_CONTACT}
    assert contact == {(0, 2): 0.2, (2, 0): 0.2, (0, 5): 0.2, (5, 0): 0.2,
                       (1, 6): 0.05, (6, 1): 0.05}
    assert all(g == 0 for k, g in zip(types, gammas) if k != dna.EDGE_CONTACT)
    batch = dna.GraphData(loaded.duplexes, np.zeros((3, 2, 4)), loaded.contacts).batch(
        torch.tensor([2, 0]))
    assert sorted(batch["contact_gamma"][batch["edge_type"] == dna.EDGE_CONTACT].tolist()) == [
        0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2]
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,complement,contacts\nGGA,T-C,L:p0;R:c1\n")
    with pytest.raises(data.DataError, match=r"bad\.csv line 2: contacts: site c1 is on a "
                                             r"missing base"):
        dna.load_duplexes(bad)


def spectra_csv(path, n_t, n_dos=None, energies=None, rows=(("ATGC", -1.0),)):
    """A DNA CSV with n_t log10_T and n_dos log10_DOS columns (constant values per row)."""
    n_dos = n_t if n_dos is None else n_dos
    header = ["sequence"] + [f"log10_T_{k}" for k in range(n_t)] + [
        f"log10_DOS_{k}" for k in range(n_dos)]
    lines = [",".join(header)]
    if energies is not None:
        lines.append(",".join(["energy_eV"] + [repr(e) for e in energies] * 2))
    lines += [",".join([seq] + [str(v)] * (n_t + n_dos)) for seq, v in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_dna_csv_defines_its_energy_grid_by_its_spectra(tmp_path):
    # 201 energies, like the DFT spectra: never cut to the 100 of the default grid.
    duplexes, targets, energies, _ = dna.load_duplexes(spectra_csv(tmp_path / "a.csv", 201))
    assert targets.shape == (1, 2, 201)
    assert np.array_equal(energies, tight_binding.default_energy_grid(201))
    dft_grid = np.linspace(-6.303145, -4.303145, 201).tolist()
    _, _, energies, _ = dna.load_duplexes(spectra_csv(tmp_path / "b.csv", 201, energies=dft_grid))
    assert energies.tolist() == dft_grid


def test_spectra_that_do_not_match_are_refused_naming_file_line_and_lengths(tmp_path):
    with pytest.raises(data.DataError, match=r"c\.csv line 1: 201 log10_T columns but 100 "
                                             r"log10_DOS columns"):
        dna.load_duplexes(spectra_csv(tmp_path / "c.csv", 201, 100))
    short = tmp_path / "d.csv"
    short.write_text(spectra_csv(tmp_path / "d.csv", 4).read_text() + "GGCC,1,2,3\n")
    with pytest.raises(data.DataError, match=r"d\.csv line 3: 4 columns, the header has 9"):
        dna.load_duplexes(short)
    with pytest.raises(data.DataError, match=r"e\.csv line 2: one energy_eV row is allowed, "
                                             r"with energies in increasing order"):
        dna.load_duplexes(spectra_csv(tmp_path / "e.csv", 3, energies=[1.0, 0.0, 2.0]))


# ------------------------------------------------------------------------------------------
# Validity and diversity
# ------------------------------------------------------------------------------------------

def test_built_in_antibodies_are_valid_and_diverse():
    sequences = antibody.synthetic_antibodies(500, seed=0)
    assert metrics.validity(sequences) == 1.0
    assert metrics.diversity(sequences) > 0.99
    assert all(100 <= len(s) <= 150 for s in sequences)


def test_validity_and_diversity_by_hand():
    good = antibody.synthetic_antibodies(1, seed=0)[0]
    assert metrics.validity([good, good[:60], good.replace("W", "F")]) == pytest.approx(1 / 3)
    assert metrics.diversity(["AAA", "AAA", "CCC", "DDD"]) == 0.75
    assert metrics.validity([]) == 0.0


@pytest.mark.parametrize("name", ["oas_jaffe2022_donor3_vh.fasta",
                                  "therasabdab_vh_182_approved_phase3_human_humanised.csv"])
def test_real_vh_are_valid_and_shuffled_ones_are_not(name):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the real data lives beside the project, not in it)")
    sequences, _ = antibody.load_antibody_sequences(path, 158)
    assert len(sequences) > 150
    assert metrics.validity(sequences) > 0.97
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in sequences]
    assert metrics.validity(shuffled) < 0.01


def test_records_of_one_duplex_never_straddle_the_split():
    # 12 duplexes, each three times (as with other contacts or runs).
    groups = [i // 3 for i in range(36)]
    for seed in range(5):
        train, val = data.split_indices(36, 0.25, seed, groups=groups)
        assert not {groups[i] for i in train} & {groups[i] for i in val}
        assert len(val) == 9 and len(train) + len(val) == 36
    # One sample per duplex: exactly the plain split, so runs of such data are unchanged.
    plain = data.split_indices(50, 0.1, 3)
    grouped = data.split_indices(50, 0.1, 3, groups=[f"d{i}" for i in range(50)])
    assert all(torch.equal(a, b) for a, b in zip(plain, grouped))


def test_the_built_in_duplexes_split_by_duplex():
    duplexes = dna.synthetic_duplexes(2000, 0)
    assert len(set(duplexes)) < 2000   # short duplexes repeat: 70 of 2000 for seed 0
    dataset = data.split_dataset(list(range(2000)), {"val_fraction": 0.1, "seed": 0}, "x", "t",
                                 groups=duplexes)
    assert not ({duplexes[i] for i in dataset.train} & {duplexes[i] for i in dataset.val})
    assert dataset.fingerprint != "x"   # it differs from the ungrouped split: a new fingerprint
