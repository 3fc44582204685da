"""Data: the amino-acid tokenizer, antibody and DNA inputs (built-in generators and file
readers), the tight-binding transport calculation, and batching.

Everything here is deterministic: built-in data is a function of the seed alone (numpy's PCG64
streams are the same on every machine) and an epoch's order is a function of (seed, epoch), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

import csv
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch


class DataError(Exception):
    """Input data that cannot be used; the message names the file and line."""


# --------------------------------------------------------------------------------------------
# Tokenizer: 20 amino acids and 5 special tokens
# --------------------------------------------------------------------------------------------

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(AMINO_ACIDS)
_TOKEN_OF = {aa: len(SPECIAL_TOKENS) + i for i, aa in enumerate(AMINO_ACIDS)}


def encode(sequence):
    """Token ids for `<bos> sequence <eos>`."""
    return [BOS_ID] + [_TOKEN_OF.get(aa, UNK_ID) for aa in sequence] + [EOS_ID]


def decode(token_ids):
    """The residues of a sampled token sequence, up to its first <eos>; other special tokens
    become 'X' so that they count against validity."""
    residues = []
    for t in token_ids:
        t = int(t)
        if t == EOS_ID or t == PAD_ID:
            break
        residues.append(AMINO_ACIDS[t - len(SPECIAL_TOKENS)] if t >= len(SPECIAL_TOKENS) else "X")
    return "".join(residues)


# --------------------------------------------------------------------------------------------
# Built-in antibody set: VH-like sequences from human germline frameworks with variable CDRs
# --------------------------------------------------------------------------------------------

# (FR1, CDR-H1, FR2, CDR-H2, FR3) of five common human IGHV germlines. FR1 carries Cys22 and FR2
# starts with Trp36 (Kabat); FR3 ends "...YYC" + "AR"/"AK", the Cys being Kabat 92.
_V_GENES = (
    ("EVQLLESGGGLVQPGGSLRLSCAASGFTFS", "SYAMS", "WVRQAPGKGLEWVS", "AISGSGGSTYYADSVKG",
     "RFTISRDNSKNTLYLQMNSLRAEDTAVYYCAK"),  # IGHV3-23
    ("QVQLVQSGAEVKKPGSSVKVSCKASGGTFS", "SYAIS", "WVRQAPGQGLEWMG", "GIIPIFGTANYAQKFQG",
     "RVTITADESTSTAYMELSSLRSEDTAVYYCAR"),  # IGHV1-69
    ("QVQLQQWGAGLLKPSETLSLTCAVYGGSFS", "GYYWS", "WIRQPPGKGLEWIG", "EINHSGSTNYNPSLKS",
     "RVTISVDTSKNQFSLKLSSVTAADTAVYYCAR"),  # IGHV4-34
    ("QVQLVESGGGVVQPGRSLRLSCAASGFTFS", "SYGMH", "WVRQAPGKGLEWVA", "VISYDGSNKYYADSVKG",
     "RFTISRDNSKNTLYLQMNSLRAEDTAVYYCAK"),  # IGHV3-30
    ("QVQLVQSGAEVKKPGASVKVSCKASGYTFT", "GYYMH", "WVRQAPGQGLEWMG", "WINPNSGGTNYAQKFQG",
     "RVTMTRDTSISTAYMELSRLRSDDTAVYYCAR"),  # IGHV1-2
)
# FR4 from the human IGHJ genes; each starts with the W-G-x-G motif (Kabat W103).
_J_GENES = ("WGQGTLVTVSS", "WGQGTTVTVSS", "WGQGTMVTVSS", "WGRGTLVTVSS")
_CDR3_ENDS = ("FDY", "MDV", "FDP", "AFDI", "DY", "FDV")
# Residue frequencies for random CDR positions (no Cys or Trp, so the anchors stay unique).
_CDR_RESIDUES = "ADEFGHIKLMNPQRSTVY"
_CDR_WEIGHTS = np.array([8, 9, 4, 3, 14, 2, 2, 3, 4, 2, 5, 4, 2, 4, 13, 8, 6, 16], dtype=float)
_CDR_WEIGHTS /= _CDR_WEIGHTS.sum()
_STREAM_ANTIBODY, _STREAM_DNA, _STREAM_SPLIT, _STREAM_EPOCH = 1, 2, 3, 4


def _mutate(segment, rate, rng, protected=()):
    chars = list(segment)
    for i in np.flatnonzero(rng.random(len(chars)) < rate):
        if i not in protected:
            chars[i] = _CDR_RESIDUES[rng.choice(len(_CDR_RESIDUES), p=_CDR_WEIGHTS)]
    return "".join(chars)


def synthetic_antibodies(n, seed):
    """`n` VH-like sequences (about 110-130 residues) with the conserved anchors in place."""
    rng = np.random.default_rng([seed, _STREAM_ANTIBODY])
    sequences = []
    for _ in range(n):
        fr1, cdr1, fr2, cdr2, fr3 = _V_GENES[rng.integers(len(_V_GENES))]
        fr1 = _mutate(fr1, 0.03, rng, protected={21})
        fr2 = _mutate(fr2, 0.03, rng, protected={0})
        fr3 = _mutate(fr3, 0.03, rng, protected={len(fr3) - 3})
        cdr1 = _mutate(cdr1, 0.15, rng)
        cdr2 = _mutate(cdr2, 0.15, rng)
        core = rng.choice(len(_CDR_RESIDUES), size=rng.integers(2, 18), p=_CDR_WEIGHTS)
        cdr3 = "".join(_CDR_RESIDUES[i] for i in core) + _CDR3_ENDS[rng.integers(len(_CDR3_ENDS))]
        fr4 = _mutate(_J_GENES[rng.integers(len(_J_GENES))], 0.02, rng, protected={0, 1, 3})
        sequences.append(fr1 + cdr1 + fr2 + cdr2 + fr3 + cdr3 + fr4)
    return sequences


# --------------------------------------------------------------------------------------------
# Antibody files: FASTA, CSV (a column named like "sequence"), TXT (one sequence per line)
# --------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What reading a file kept and skipped, for one summary line to the user."""
    kept: int = 0
    skipped_residues: int = 0   # sequences with residues outside the 20 amino acids
    skipped_length: int = 0     # sequences longer than the model's context
    first_skipped_line: int = 0

    def summary(self, path):
        parts = []
        if self.skipped_residues:
            parts.append(f"{self.skipped_residues} with residues other than the 20 amino acids")
        if self.skipped_length:
            parts.append(f"{self.skipped_length} too long for the model")
        if not parts:
            return None
        return (f"{path}: skipped {' and '.join(parts)} (first at line {self.first_skipped_line});"
                f" kept {self.kept}")


def _read_lines(path):
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror}") from None


def _fasta_records(path, lines):
    """(line number of the sequence's first line, sequence) for each FASTA record."""
    records, current, start = [], None, 0
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if current is not None:
                records.append((start, "".join(current)))
            current, start = [], number + 1
        elif current is None:
            raise DataError(f"{path} line {number}: sequence before the first '>' header")
        else:
            current.append(line)
    if current is not None:
        records.append((start, "".join(current)))
    return records


def _csv_records(path, lines):
    rows = list(csv.reader(lines))
    header = [h.strip() for h in rows[0]] if rows else []
    lowered = [h.lower() for h in header]
    if "sequence" in lowered:
        column = lowered.index("sequence")
    else:
        column = next((i for i, h in enumerate(lowered) if "seq" in h), None)
    if column is None:
        if header and header[0].isalpha() and len(header[0]) >= 20:
            return [(n, row[0].strip()) for n, row in enumerate(rows, 1) if row]
        raise DataError(f"{path} line 1: no column named like 'sequence' in the header "
                        f"{header}")
    records = []
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= column:
            raise DataError(f"{path} line {number}: {len(row)} columns, the sequence column "
                            f"'{header[column]}' is column {column + 1}")
        records.append((number, row[column].strip()))
    return records


def load_antibody_sequences(path, max_residues):
    """Sequences from a FASTA, CSV or TXT file and a LoadReport.

    Sequences with residues outside the 20 amino acids (X, B, Z, stop codons) or longer than
    `max_residues` are skipped and counted; structural problems raise DataError naming the line.
    """
    lines = _read_lines(path)
    suffix = os.path.splitext(path)[1].lower()
    first = next((line.strip() for line in lines if line.strip()), "")
    if suffix in (".fasta", ".fa", ".faa", ".fas") or first.startswith(">"):
        records = _fasta_records(path, lines)
    elif suffix == ".csv":
        records = _csv_records(path, lines)
    else:
        records = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    report, sequences = LoadReport(), []
    allowed = set(AMINO_ACIDS)
    for number, sequence in records:
        # Alignment gaps are not residues; a stop codon '*' marks a sequence to skip.
        sequence = sequence.upper().replace("-", "").replace(".", "")
        bad = next((c for c in sequence if not (c.isalpha() or c == "*")), None)
        if bad is not None:
            raise DataError(f"{path} line {number}: unexpected character {bad!r} in a sequence")
        if not sequence:
            raise DataError(f"{path} line {number}: empty sequence")
        if set(sequence) - allowed or len(sequence) > max_residues:
            if set(sequence) - allowed:
                report.skipped_residues += 1
            else:
                report.skipped_length += 1
            report.first_skipped_line = report.first_skipped_line or number
            continue
        sequences.append(sequence)
    report.kept = len(sequences)
    if not sequences:
        raise DataError(f"{path}: no usable sequences"
                        + (f" ({report.summary(path)})" if report.summary(path) else ""))
    return sequences, report


class SequenceData:
    """Token sequences padded into one tensor; a batch is a slice trimmed to its longest row."""

    def __init__(self, sequences, max_len):
        encoded = [encode(s) for s in sequences]
        self.tokens = torch.full((len(encoded), max_len), PAD_ID, dtype=torch.long)
        self.lengths = torch.tensor([len(e) for e in encoded])
        for i, e in enumerate(encoded):
            self.tokens[i, :len(e)] = torch.tensor(e)
        self.sequences = list(sequences)

    def __len__(self):
        return len(self.lengths)

    def batch(self, indices):
        width = int(self.lengths[indices].max())
        rows = self.tokens[indices, :width]
        return {"input": rows[:, :-1], "target": rows[:, 1:]}


# --------------------------------------------------------------------------------------------
# DNA transport: one-orbital-per-base tight binding with wide-band contacts
# --------------------------------------------------------------------------------------------

# On-site energies in eV (Roche, PRL 91, 108101, 2003).
ONSITE = {"G": 0.00, "A": -0.49, "C": -1.12, "T": -1.39}
# Intra-strand couplings in eV for a 5'->3' neighbour pair (Voityuk et al., JCP 114, 5614, 2001).
INTRA_STRAND = {
    "AA": .030, "AT": .105, "AG": .049, "AC": .061, "TA": .086, "TT": .158, "TG": .085,
    "TC": .076, "GA": .089, "GT": .137, "GG": .084, "GC": .110, "CA": .029, "CT": .100,
    "CG": .042, "CC": .041,
}
HYDROGEN_BOND = {"AT": .034, "TA": .034, "GC": .050, "CG": .050}
COMPLEMENT = {"A": "T", "T": "A", "G": "C", "C": "G"}
GAMMA = 0.1    # wide-band contact coupling, eV
ETA = 1e-12    # infinitesimal broadening, eV
MISSING = "-"  # a complementary base that is absent


def default_energy_grid(points=100):
    return np.linspace(-3.0, 3.0, points)


def full_complement(primary):
    """The complementary strand written 5'->3': base j pairs with primary base L-1-j."""
    return "".join(COMPLEMENT[b] for b in reversed(primary))


def duplex_sites(primary, complement):
    """Sites of a duplex: primary bases 0..L-1 then the complementary bases that are present.

    Returns:
        (bases, couplings) with `bases` the base letter of each site and `couplings` a list of
        (site_i, site_j, eV, kind) for kind in "backbone" (i is 5' of j) and "hbond".
    """
    L = len(primary)
    bases = list(primary)
    comp_site = {}
    for j, b in enumerate(complement):
        if b != MISSING:
            comp_site[j] = len(bases)
            bases.append(b)
    couplings = [(i, i + 1, INTRA_STRAND[primary[i] + primary[i + 1]], "backbone")
                 for i in range(L - 1)]
    for j in range(L - 1):
        if j in comp_site and j + 1 in comp_site:
            pair = complement[j] + complement[j + 1]
            couplings.append((comp_site[j], comp_site[j + 1], INTRA_STRAND[pair], "backbone"))
    for j, site in comp_site.items():
        i = L - 1 - j
        couplings.append((i, site, HYDROGEN_BOND[primary[i] + complement[j]], "hbond"))
    return bases, couplings


def hamiltonian(primary, complement):
    bases, couplings = duplex_sites(primary, complement)
    H = np.diag([ONSITE[b] for b in bases])
    for i, j, t, _ in couplings:
        H[i, j] = H[j, i] = t
    return H


def transport_spectra(duplexes, energies, gamma=GAMMA, eta=ETA):
    """T(E) and DOS(E) of each (primary, complement) duplex on the energy grid.

    G(E) = [(E + i eta) I - H - Sigma_L - Sigma_R]^-1 with Sigma = -i gamma/2 on the primary
    strand's 5' site (left) and 3' site (right); T = Tr[Gamma_L G Gamma_R G^dagger] =
    gamma^2 |G_{0,L-1}|^2 and DOS = -Im Tr G / pi. Duplexes with the same number of sites are
    inverted together, vectorised over sequences and energies.

    Returns:
        (T, DOS), each a float64 array (len(duplexes), len(energies)).
    """
    energies = np.asarray(energies, dtype=np.float64)
    T = np.empty((len(duplexes), len(energies)))
    DOS = np.empty_like(T)
    by_size = {}
    for k, (primary, complement) in enumerate(duplexes):
        by_size.setdefault(len(primary) + sum(b != MISSING for b in complement), []).append(k)
    z = (energies + 1j * eta)[:, None, None]
    for n, members in by_size.items():
        # ~64 MB of complex work space per chunk keeps memory flat for any data set size.
        chunk = max(1, 4_000_000 // (len(energies) * n * n))
        for start in range(0, len(members), chunk):
            ks = members[start:start + chunk]
            H = np.stack([hamiltonian(*duplexes[k]) for k in ks]).astype(np.complex128)
            right = np.array([len(duplexes[k][0]) - 1 for k in ks])
            H[:, 0, 0] -= 0.5j * gamma
            H[np.arange(len(ks)), right, right] -= 0.5j * gamma
            G = np.linalg.inv(z[None] * np.eye(n) - H[:, None])   # (chunk, E, n, n)
            T[ks] = gamma ** 2 * np.abs(G[np.arange(len(ks)), :, 0, right]) ** 2
            DOS[ks] = -np.trace(G, axis1=2, axis2=3).imag / np.pi
    return T, DOS


def synthetic_duplexes(n, seed, min_length=4, max_length=10, missing_rate=0.1):
    """`n` random duplexes; each complementary base is absent with probability `missing_rate`."""
    rng = np.random.default_rng([seed, _STREAM_DNA])
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
    rows = list(csv.reader(_read_lines(path)))
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


def log_spectra(duplexes, energies):
    """Training targets: log10 T(E) and log10 DOS(E), float64 (N, 2, len(energies))."""
    T, DOS = transport_spectra(duplexes, energies)
    return np.stack([np.log10(T), np.log10(DOS)], axis=1)


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


# --------------------------------------------------------------------------------------------
# Split and epoch order
# --------------------------------------------------------------------------------------------

def split_indices(n, val_fraction, seed):
    """(train indices, validation indices): a seeded shuffle, at least one of each."""
    order = np.random.default_rng([seed, _STREAM_SPLIT]).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return torch.from_numpy(np.sort(order[n_val:])), torch.from_numpy(np.sort(order[:n_val]))


def epoch_order(n, seed, epoch):
    """The order of an epoch's samples: a pure function of (n, seed, epoch)."""
    return torch.from_numpy(np.random.default_rng([seed, _STREAM_EPOCH, epoch]).permutation(n))


def fingerprint(*parts):
    """A short digest of the data a run trains on, so a resume can tell if it changed.
    Parts are bytes (hashed as they are) or plain values (hashed by their repr)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    return h.hexdigest()[:16]
