"""DNA duplexes: the built-in set, the DNA CSV reader, and the duplex graphs with their
batching. Shared by the DNA transport model families; the physics that gives the built-in set
its spectra is in tight_binding.py.
"""

import csv
from typing import NamedTuple

import numpy as np
import torch

import dft_data
from data import STREAM_DNA, DataError, read_lines
from tight_binding import (MISSING, contact_sites, default_contacts,
                           default_energy_grid, duplex_sites, full_complement)

def synthetic_duplexes(n, seed, min_length=4, max_length=10, missing_rate=0.1):
    """`n` random duplexes; each complementary base is absent with probability `missing_rate`."""
    rng = np.random.default_rng([seed, STREAM_DNA])
    duplexes = []
    for _ in range(n):
        primary = "".join("ATGC"[i] for i in rng.integers(4, size=rng.integers(min_length,
                                                                              max_length + 1)))
        complement = "".join(MISSING if drop else b for b, drop in
                             zip(full_complement(primary), rng.random(len(primary)) < missing_rate))
        duplexes.append((primary, complement))
    return duplexes


ENERGY_ROW = "energy_eV"   # the `sequence` cell of the optional row that holds the energy grid


class TransportData(NamedTuple):
    """What a DNA data file holds. `contacts` has one entry per duplex: a tuple of
    tight_binding.Contact, or None for the default placement (primary strand's 5' and 3'
    bases, 0.1 eV). `targets` (N, 2, K) log10 T and log10 DOS and `energies` (K,) are None
    for a file without spectra."""
    duplexes: list
    targets: object
    energies: object
    contacts: list


def normalised_contacts(primary, contacts):
    """None for the default placement, else the contacts: one spelling for each case, so that
    a file stating the default contacts is the same data as one leaving them out."""
    return None if contacts is None or tuple(contacts) == default_contacts(primary) else (
        tuple(contacts))


def load_transport_data(path):
    """TransportData for `--data PATH`: DFT records (dft_data.py: G3NAT pickles, a folder of
    them, or a manifest CSV with a `spectrum` column), else a DNA CSV (`load_duplexes`)."""
    if dft_data.is_dft_source(path):
        return _from_dft_records(dft_data.read_dft(path))
    return load_duplexes(path)


def _from_dft_records(records):
    """One grid for all records (never resampled); each record's own contacts."""
    first = records[0]
    for record in records:
        if len(record.energies) != len(first.energies):
            raise DataError(f"{record.source}: {len(record.energies)} energies, but "
                            f"{first.source} has {len(first.energies)}: the records of a data "
                            f"set need one energy grid")
        if not np.array_equal(record.energies, first.energies):
            raise DataError(f"{record.source}: its energies differ from those of "
                            f"{first.source}: the records of a data set need one energy grid")
    duplexes = [(r.primary, r.complement) for r in records]
    targets = np.stack([np.stack([np.log10(r.transmission), np.log10(r.dos)])
                        for r in records])
    contacts = [normalised_contacts(r.primary, r.contacts) for r in records]
    return TransportData(duplexes, targets, first.energies.copy(), contacts)


def load_duplexes(path):
    """Duplexes from a CSV with a `sequence` column (primary strand, 5'->3') and optionally a
    `complement` column (5'->3', '-' for a missing base; default: the full complement) and a
    `contacts` column (dft_data.parse_contacts' syntax, e.g. `L:p0;R:c0@0.2`; empty: the
    primary strand's 5' and 3' bases at 0.1 eV).

    Precomputed spectra are the columns `log10_T_0..log10_T_{K-1}` and `log10_DOS_0..` (the
    same K); the file then defines the energy grid: K points, at the energies of an optional
    row whose `sequence` is `energy_eV` (in the log10_T_k columns), else evenly from -3 to 3 eV.
    Without spectra the caller computes them on its own grid.

    Returns:
        TransportData: targets a float64 array (N, 2, K) and energies (K,), or both None for a
        file without spectra.
    """
    rows = list(csv.reader(read_lines(path)))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "sequence" not in header:
        raise DataError(f"{path} line 1: the header needs a 'sequence' column (got {header})")
    seq_col = header.index("sequence")
    comp_col = header.index("complement") if "complement" in header else None
    contacts_col = header.index("contacts") if "contacts" in header else None
    spectrum_cols = _spectrum_columns(path, header)
    duplexes, targets, energies, contacts = [], [], None, []
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise DataError(f"{path} line {number}: {len(row)} columns, the header has "
                            f"{len(header)}")
        if row[seq_col].strip() == ENERGY_ROW and spectrum_cols:
            grid = _numbers(path, number, [row[c] for c in spectrum_cols[0]])
            if energies is not None or np.any(np.diff(grid) <= 0):
                raise DataError(f"{path} line {number}: one {ENERGY_ROW} row is allowed, with "
                                f"energies in increasing order")
            energies = grid
            continue
        primary = row[seq_col].strip().upper()
        if not primary or set(primary) - set("ATGC"):
            raise DataError(f"{path} line {number}: sequence {primary!r} must be A, T, G, C only")
        complement = row[comp_col].strip().upper() if comp_col is not None else ""
        complement = complement or full_complement(primary)
        expected = full_complement(primary)
        if len(complement) != len(primary) or any(
                c not in (MISSING, e) for c, e in zip(complement, expected)):
            raise DataError(f"{path} line {number}: complement {complement!r} must pair with the "
                            f"sequence base by base ('{expected}', with '-' for a missing base)")
        duplexes.append((primary, complement))
        contacts.append(None if contacts_col is None else normalised_contacts(
            primary, dft_data.parse_contacts(row[contacts_col], primary, complement,
                                             f"{path} line {number}")))
        if spectrum_cols:
            targets.append(np.stack([_numbers(path, number, [row[c] for c in columns])
                                     for columns in spectrum_cols]))
    if not duplexes:
        raise DataError(f"{path}: no sequences")
    if not spectrum_cols:
        return TransportData(duplexes, None, None, contacts)
    if energies is None:
        energies = default_energy_grid(len(spectrum_cols[0]))
    return TransportData(duplexes, np.stack(targets), energies, contacts)


def _spectrum_columns(path, header):
    """([log10_T_0.. column indices], [log10_DOS_0.. indices]), or () without spectra; the
    two must be 0..K-1 with the same K."""
    found = {}
    for index, name in enumerate(header):
        for kind in ("t", "dos"):
            prefix = f"log10_{kind}_"
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                found.setdefault(kind, {})[int(name[len(prefix):])] = index
    if not found:
        return ()
    counts = {kind: len(found.get(kind, {})) for kind in ("t", "dos")}
    for kind, columns in found.items():
        if sorted(columns) != list(range(len(columns))):
            raise DataError(f"{path} line 1: the log10_{kind.upper()}_k columns must be numbered "
                            f"0..{len(columns) - 1} without gaps")
    if counts["t"] != counts["dos"]:
        raise DataError(f"{path} line 1: {counts['t']} log10_T columns but {counts['dos']} "
                        f"log10_DOS columns: both spectra need one value per energy")
    return tuple([found[kind][k] for k in range(counts[kind])] for kind in ("t", "dos"))


def _numbers(path, number, cells):
    try:
        return np.array([float(cell) for cell in cells])
    except ValueError as e:
        raise DataError(f"{path} line {number}: {e}") from None


# --------------------------------------------------------------------------------------------
# DNA graphs: two electrodes + one node per base, typed edges, batched as one disjoint graph
# --------------------------------------------------------------------------------------------

NODE_FEATURES = 7   # one-hot A, T, G, C, left electrode, right electrode; primary-strand flag
EDGE_BACKBONE_5TO3, EDGE_BACKBONE_3TO5, EDGE_HBOND, EDGE_CONTACT = range(4)
NUM_EDGE_TYPES = 4
_BASE_FEATURE = {"A": 0, "T": 1, "G": 2, "C": 3}


def duplex_graph(primary, complement, contacts=None):
    """(node features (n, 7), edges (2, e) as (source, target), edge types (e,), edge gammas
    (e,)) for a duplex.

    Node 0 is the left electrode, node 1 the right one, then the duplex's sites in the order of
    `duplex_sites`. Every edge appears in both directions. An electrode has one contact edge
    to each site it touches (`contacts`, default: the primary strand's 5' and 3' bases), which
    carries that contact's coupling gamma in eV; other edges carry 0.
    """
    bases, couplings = duplex_sites(primary, complement)
    x = np.zeros((len(bases) + 2, NODE_FEATURES), dtype=np.float32)
    x[0, 4] = x[1, 5] = 1.0
    for site, b in enumerate(bases):
        x[site + 2, _BASE_FEATURE[b]] = 1.0
        x[site + 2, 6] = float(site < len(primary))
    edges = []
    for i, j, _, kind in couplings:
        if kind == "backbone":
            edges += [(i + 2, j + 2, EDGE_BACKBONE_5TO3), (j + 2, i + 2, EDGE_BACKBONE_3TO5)]
        else:
            edges += [(i + 2, j + 2, EDGE_HBOND), (j + 2, i + 2, EDGE_HBOND)]
    gammas = [0.0] * len(edges)
    for electrode, site, gamma in contact_sites(primary, complement,
                                                contacts or default_contacts(primary)):
        node = 0 if electrode == "left" else 1
        edges += [(node, site + 2, EDGE_CONTACT), (site + 2, node, EDGE_CONTACT)]
        gammas += [gamma, gamma]
    e = np.array(edges, dtype=np.int64)
    return x, e[:, :2].T.copy(), e[:, 2].copy(), np.array(gammas)


class GraphData:
    """All duplex graphs packed into flat tensors; a batch gathers graphs into one disjoint
    graph with vectorised index arithmetic (no Python loop over the graphs of a batch)."""

    def __init__(self, duplexes, targets, contacts=None):
        contacts = contacts or [None] * len(duplexes)
        graphs = [duplex_graph(p, c, k) for (p, c), k in zip(duplexes, contacts)]
        self.duplexes = list(duplexes)
        self.node_count = torch.tensor([g[0].shape[0] for g in graphs])
        self.edge_count = torch.tensor([g[1].shape[1] for g in graphs])
        self.node_start = torch.cumsum(self.node_count, 0) - self.node_count
        self.edge_start = torch.cumsum(self.edge_count, 0) - self.edge_count
        self.x = torch.from_numpy(np.concatenate([g[0] for g in graphs]))
        self.edges = torch.from_numpy(np.concatenate([g[1] for g in graphs], axis=1))  # local ids
        self.edge_type = torch.from_numpy(np.concatenate([g[2] for g in graphs]))
        self.edge_gamma = torch.from_numpy(np.concatenate([g[3] for g in graphs]))  # float64
        self.targets = torch.as_tensor(targets, dtype=torch.float32)

    def __len__(self):
        return len(self.node_count)

    @staticmethod
    def _gather(starts, counts):
        """Flat ids of the ranges [start, start+count) and the batch position of each."""
        owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
        offsets = torch.cumsum(counts, 0) - counts
        return starts[owner] + torch.arange(int(counts.sum())) - offsets[owner], owner

    def batch(self, indices):
        nodes, graph = self._gather(self.node_start[indices], self.node_count[indices])
        edge_ids, edge_owner = self._gather(self.edge_start[indices], self.edge_count[indices])
        new_start = torch.cumsum(self.node_count[indices], 0) - self.node_count[indices]
        edge_index = self.edges[:, edge_ids] + new_start[edge_owner]
        in_degree = torch.bincount(edge_index[1], minlength=len(nodes)).clamp_min(1)
        return {
            "x": self.x[nodes],
            "edge_index": edge_index,
            "edge_type": self.edge_type[edge_ids],
            "contact_gamma": self.edge_gamma[edge_ids],
            "inv_degree": (1.0 / in_degree.float()).unsqueeze(1),
            "graph": graph,
            "inv_nodes": (1.0 / self.node_count[indices].float()).unsqueeze(1),
            "left": new_start,
            "right": new_start + 1,
            "target": self.targets[indices],
        }
