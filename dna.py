"""DNA duplexes: the built-in set, the DNA CSV reader, and the duplex graphs with their
batching. Shared by the DNA transport model families; the physics that gives the built-in set
its spectra is in tight_binding.py.
"""

import csv

import numpy as np
import torch

from data import STREAM_DNA, DataError, read_lines
from tight_binding import MISSING, duplex_sites, full_complement

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


def load_duplexes(path, n_energies):
    """Duplexes from a CSV with a `sequence` column (primary strand, 5'->3') and optionally a
    `complement` column (5'->3', '-' for a missing base; default: the full complement).

    Precomputed spectra are used when the file has all of `log10_T_0..log10_T_{n-1}` and
    `log10_DOS_0..` for the energy grid; otherwise the caller computes them.

    Returns:
        (duplexes, targets or None) with targets a float64 array (N, 2, n_energies).
    """
    rows = list(csv.reader(read_lines(path)))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "sequence" not in header:
        raise DataError(f"{path} line 1: the header needs a 'sequence' column (got {header})")
    seq_col = header.index("sequence")
    comp_col = header.index("complement") if "complement" in header else None
    spectra_names = [f"log10_{kind}_{k}" for kind in ("t", "dos") for k in range(n_energies)]
    has_spectra = all(name in header for name in spectra_names)
    if not has_spectra and any(h.startswith(("log10_t_", "log10_dos_")) for h in header):
        raise DataError(f"{path} line 1: spectrum columns must be log10_T_0..log10_T_"
                        f"{n_energies - 1} and log10_DOS_0..log10_DOS_{n_energies - 1}")
    spectra_cols = [header.index(name) for name in spectra_names] if has_spectra else []
    duplexes, targets = [], []
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise DataError(f"{path} line {number}: {len(row)} columns, the header has "
                            f"{len(header)}")
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
        if has_spectra:
            try:
                values = [float(row[c]) for c in spectra_cols]
            except ValueError as e:
                raise DataError(f"{path} line {number}: {e}") from None
            targets.append(np.array(values).reshape(2, n_energies))
    if not duplexes:
        raise DataError(f"{path}: no sequences")
    return duplexes, (np.stack(targets) if has_spectra else None)


# --------------------------------------------------------------------------------------------
# DNA graphs: two electrodes + one node per base, typed edges, batched as one disjoint graph
# --------------------------------------------------------------------------------------------

NODE_FEATURES = 7   # one-hot A, T, G, C, left electrode, right electrode; primary-strand flag
EDGE_BACKBONE_5TO3, EDGE_BACKBONE_3TO5, EDGE_HBOND, EDGE_CONTACT = range(4)
NUM_EDGE_TYPES = 4
_BASE_FEATURE = {"A": 0, "T": 1, "G": 2, "C": 3}


def duplex_graph(primary, complement):
    """(node features (n, 7), edges (2, e) as (source, target), edge types (e,)) for a duplex.

    Node 0 is the left electrode, node 1 the right one, then the duplex's sites in the order of
    `duplex_sites`. Every edge appears in both directions.
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
    right = len(primary) + 1
    edges += [(0, 2, EDGE_CONTACT), (2, 0, EDGE_CONTACT),
              (1, right, EDGE_CONTACT), (right, 1, EDGE_CONTACT)]
    e = np.array(edges, dtype=np.int64)
    return x, e[:, :2].T.copy(), e[:, 2].copy()


class GraphData:
    """All duplex graphs packed into flat tensors; a batch gathers graphs into one disjoint
    graph with vectorised index arithmetic (no Python loop over the graphs of a batch)."""

    def __init__(self, duplexes, targets):
        graphs = [duplex_graph(p, c) for p, c in duplexes]
        self.duplexes = list(duplexes)
        self.node_count = torch.tensor([g[0].shape[0] for g in graphs])
        self.edge_count = torch.tensor([g[1].shape[1] for g in graphs])
        self.node_start = torch.cumsum(self.node_count, 0) - self.node_count
        self.edge_start = torch.cumsum(self.edge_count, 0) - self.edge_count
        self.x = torch.from_numpy(np.concatenate([g[0] for g in graphs]))
        self.edges = torch.from_numpy(np.concatenate([g[1] for g in graphs], axis=1))  # local ids
        self.edge_type = torch.from_numpy(np.concatenate([g[2] for g in graphs]))
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
            "inv_degree": (1.0 / in_degree.float()).unsqueeze(1),
            "graph": graph,
            "inv_nodes": (1.0 / self.node_count[indices].float()).unsqueeze(1),
            "left": new_start,
            "right": new_start + 1,
            "target": self.targets[indices],
        }
