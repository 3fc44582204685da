"""Antibody sequences: the amino-acid tokenizer, the built-in VH-like set, the FASTA/CSV/TXT
readers and batching. Shared by the antibody model families.

Built-in data is a function of the seed alone (numpy's PCG64 streams are the same on every
machine), so the same seed gives the same sequences everywhere.
"""

import csv
import os
from dataclasses import dataclass

import numpy as np
import torch

from data import STREAM_ANTIBODY, DataError, read_lines

# --------------------------------------------------------------------------------------------
# Tokenizer: 20 amino acids and 5 special tokens
# --------------------------------------------------------------------------------------------

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# <sep> joins a pair's heavy and light chains ("HEAVY|LIGHT" in text). It took the id of an
# unused <mask> token, so checkpoints of heavy-chain models keep their meaning.
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", "<sep>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, SEP_ID = range(len(SPECIAL_TOKENS))
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(AMINO_ACIDS)
CHAIN_SEPARATOR = "|"
_TOKEN_OF = {aa: len(SPECIAL_TOKENS) + i for i, aa in enumerate(AMINO_ACIDS)}
_TOKEN_OF[CHAIN_SEPARATOR] = SEP_ID


def encode(sequence):
    """Token ids for `<bos> sequence <eos>`; a '|' between two chains is <sep>."""
    return [BOS_ID] + [_TOKEN_OF.get(aa, UNK_ID) for aa in sequence] + [EOS_ID]


def encode_residues(sequence):
    """Token ids of the residues alone (an antigen: no <bos>, <eos> or <sep>)."""
    return [_TOKEN_OF.get(aa, UNK_ID) for aa in sequence]


def decode(token_ids):
    """The residues of a sampled token sequence, up to its first <eos>, with <sep> as '|';
    other special tokens become 'X' so that they count against validity."""
    residues = []
    for t in token_ids:
        t = int(t)
        if t == EOS_ID or t == PAD_ID:
            break
        if t == SEP_ID:
            residues.append(CHAIN_SEPARATOR)
        else:
            residues.append(AMINO_ACIDS[t - len(SPECIAL_TOKENS)] if t >= len(SPECIAL_TOKENS)
                            else "X")
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


def _mutate(segment, rate, rng, protected=()):
    chars = list(segment)
    for i in np.flatnonzero(rng.random(len(chars)) < rate):
        if i not in protected:
            chars[i] = _CDR_RESIDUES[rng.choice(len(_CDR_RESIDUES), p=_CDR_WEIGHTS)]
    return "".join(chars)


def synthetic_antibodies(n, seed):
    """`n` VH-like sequences (about 110-130 residues) with the conserved anchors in place."""
    rng = np.random.default_rng([seed, STREAM_ANTIBODY])
    return [synthetic_heavy_chain(rng) for _ in range(n)]


def synthetic_heavy_chain(rng, cdr3_start="", fr3_kept=(3,)):
    """One VH from a random germline of _V_GENES: frameworks mutated at 3% (Cys22, Trp36 and
    FR3's residues `fr3_kept`, counted from its end, are kept), CDR1/2 at 15%, a CDR3 of
    `cdr3_start`, a random core of 2-17 residues and a common end, and a mutated J region."""
    fr1, cdr1, fr2, cdr2, fr3 = _V_GENES[rng.integers(len(_V_GENES))]
    fr1 = _mutate(fr1, 0.03, rng, protected={21})
    fr2 = _mutate(fr2, 0.03, rng, protected={0})
    fr3 = _mutate(fr3, 0.03, rng, protected={len(fr3) - k for k in fr3_kept})
    cdr1 = _mutate(cdr1, 0.15, rng)
    cdr2 = _mutate(cdr2, 0.15, rng)
    core = rng.choice(len(_CDR_RESIDUES), size=rng.integers(2, 18), p=_CDR_WEIGHTS)
    cdr3 = (cdr3_start + "".join(_CDR_RESIDUES[i] for i in core)
            + _CDR3_ENDS[rng.integers(len(_CDR3_ENDS))])
    fr4 = _mutate(_J_GENES[rng.integers(len(_J_GENES))], 0.02, rng, protected={0, 1, 3})
    return fr1 + cdr1 + fr2 + cdr2 + fr3 + cdr3 + fr4


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


def fasta_records(path, lines):
    """(line number of the sequence's first line, sequence, header) for each FASTA record;
    the header is the text after '>' (stripped, possibly empty)."""
    records, current, start, header = [], None, 0, ""
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if current is not None:
                records.append((start, "".join(current), header))
            current, start, header = [], number + 1, line[1:].strip()
        elif current is None:
            raise DataError(f"{path} line {number}: sequence before the first '>' header")
        else:
            current.append(line)
    if current is not None:
        records.append((start, "".join(current), header))
    return records


def csv_records(path, lines):
    """(line number, sequence) for each row of a CSV with a column named like 'sequence'
    (or a header-less single column of sequences)."""
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
    lines = read_lines(path)
    suffix = os.path.splitext(path)[1].lower()
    first = next((line.strip() for line in lines if line.strip()), "")
    if suffix in (".fasta", ".fa", ".faa", ".fas") or first.startswith(">"):
        records = [(n, seq) for n, seq, _ in fasta_records(path, lines)]
    elif suffix == ".csv":
        records = csv_records(path, lines)
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


class ConditionedData:
    """Antibodies (as SequenceData) with each record's condition: its antigen's residue
    tokens (padded with <pad>, cropped to `max_antigen_len`) and its pKd, each of which may
    be absent. A batch adds `antigen`, `has_antigen`, `pkd` and `has_pkd` to the tokens."""

    def __init__(self, antibodies, antigens, pkds, max_len, max_antigen_len):
        self.antibodies = SequenceData(antibodies, max_len)
        self.sequences = self.antibodies.sequences
        self.antigens = list(antigens)
        self.pkds = list(pkds)
        encoded = [encode_residues(a[:max_antigen_len]) if a else [] for a in self.antigens]
        width = max(1, max(map(len, encoded), default=1))
        self.antigen_tokens = torch.full((len(encoded), width), PAD_ID, dtype=torch.long)
        for i, e in enumerate(encoded):
            self.antigen_tokens[i, :len(e)] = torch.tensor(e, dtype=torch.long)
        self.antigen_lengths = torch.tensor([len(e) for e in encoded])
        self.has_antigen = self.antigen_lengths > 0
        self.pkd = torch.tensor([p if p is not None else 0.0 for p in self.pkds],
                                dtype=torch.float32)
        self.has_pkd = torch.tensor([p is not None for p in self.pkds])

    def __len__(self):
        return len(self.antibodies)

    def batch(self, indices):
        batch = self.antibodies.batch(indices)
        width = max(1, int(self.antigen_lengths[indices].max()))
        batch.update(antigen=self.antigen_tokens[indices, :width],
                     has_antigen=self.has_antigen[indices], pkd=self.pkd[indices],
                     has_pkd=self.has_pkd[indices])
        return batch


def condition(antigen, pkd, max_antigen_len):
    """One sampling condition (a one-row batch of condition tensors) for an antigen sequence
    and a pKd, either of which may be None."""
    tokens = encode_residues(antigen[:max_antigen_len]) if antigen else [PAD_ID]
    return {"antigen": torch.tensor([tokens], dtype=torch.long),
            "has_antigen": torch.tensor([bool(antigen)]),
            "pkd": torch.tensor([pkd if pkd is not None else 0.0], dtype=torch.float32),
            "has_pkd": torch.tensor([pkd is not None])}
