"""Quality metrics: of sampled antibody sequences (validity, uniqueness, novelty), of a language
model (perplexity), and of predicted spectra (R², mean absolute error).

Validity is a rule check for "looks like a real heavy-chain variable domain" built from the
conserved anchors that every functional human VH carries; the windows were measured on 8,185
real VH domains (OAS, Jaffe et al. 2022) and 182 therapeutic VH (Thera-SAbDab) so that both
score near 100%, while shuffled versions of the same sequences score near 0%.
"""

import math

import numpy as np

from antibody import AMINO_ACIDS

MIN_LENGTH, MAX_LENGTH = 100, 150
FIRST_CYS_POSITIONS = range(18, 26)   # 0-based; Kabat C22 / IMGT C23 is at index 21 in real VH
CYS_TO_TRP = range(10, 19)            # Kabat W36 / IMGT W41: 14 residues later in most VH
TRP_TO_CYS = range(54, 73)            # Kabat C92 / IMGT C104: 59-65 residues later
CYS_TO_J_MOTIF = range(4, 32)         # CDR-H3 of 3-30 residues, then W-G-x-G (Kabat W103)
J_MOTIF_TO_END = range(8, 19)         # FR4 "WGQGTLVTVSS" is 11 residues


def _positions(sequence, residue, start, distances):
    return [start + d for d in distances
            if start + d < len(sequence) and sequence[start + d] == residue]


def is_valid_vh(sequence):
    """True when the sequence has only the 20 amino acids, a VH length and the anchors
    Cys22 - Trp36 - Cys92 - W-G-x-G (Kabat) at plausible distances from one another."""
    if not MIN_LENGTH <= len(sequence) <= MAX_LENGTH or set(sequence) - set(AMINO_ACIDS):
        return False
    for c1 in _positions(sequence, "C", 0, FIRST_CYS_POSITIONS):
        for w1 in _positions(sequence, "W", c1, CYS_TO_TRP):
            for c2 in _positions(sequence, "C", w1, TRP_TO_CYS):
                for j in _positions(sequence, "W", c2, CYS_TO_J_MOTIF):
                    if (sequence[j + 1:j + 2] == "G" and sequence[j + 3:j + 4] == "G"
                            and len(sequence) - j in J_MOTIF_TO_END):
                        return True
    return False


def validity(sequences):
    """Share of sequences (0-1) that pass `is_valid_vh`; 0 for no sequences."""
    return sum(map(is_valid_vh, sequences)) / len(sequences) if sequences else 0.0


def diversity(sequences):
    """Share of distinct sequences among those given (0-1); 0 for no sequences."""
    return len(set(sequences)) / len(sequences) if sequences else 0.0


def novelty(sequences, training):
    """Share of sequences (0-1) that are not in `training` (the training set); 0 for none."""
    known = set(training)
    return sum(s not in known for s in sequences) / len(sequences) if sequences else 0.0


IMGT_ANCHORS = {23: "C", 41: "W", 104: "C", 118: "W"}


def imgt_validity(sequences):
    """Share of sequences (0-1) that anarcism numbers as exactly one human heavy-chain domain
    in IMGT with the conserved anchors Cys 23, Trp 41, Cys 104 and Trp 118; None when the
    optional `anarcism` package is not installed."""
    try:
        import anarcism
    except ImportError:
        return None
    if not sequences:
        return 0.0
    valid = 0
    for sequence in sequences:
        try:
            domains = anarcism.number_sequence(sequence, allowed_species=["human"],
                                               allowed_chains=["H"]).domains
        except Exception:   # anarcism refuses some inputs (e.g. unknown letters): not valid
            continue
        if len(domains) != 1 or domains[0].chain_type != "H":
            continue
        residues = {r.position: r.amino_acid for r in domains[0].numbering
                    if not r.insertion_code}
        valid += all(residues.get(p) == aa for p, aa in IMGT_ANCHORS.items())
    return valid / len(sequences)


def uniqueness(sequences):
    """Share of distinct sequences among those sampled (0-1): the same as `diversity`."""
    return diversity(sequences)


def perplexity(mean_nll):
    """exp of the mean negative log-likelihood per token (natural log), capped to stay finite."""
    return math.exp(min(mean_nll, 700.0))


def r2(predicted, true):
    """Coefficient of determination over all values: 1 - SS_res / SS_tot (numpy arrays)."""
    true = np.asarray(true, dtype=np.float64)
    residual = np.sum((np.asarray(predicted, dtype=np.float64) - true) ** 2)
    total = np.sum((true - true.mean()) ** 2)
    return float(1.0 - residual / total) if total > 0 else float("nan")


def mae(predicted, true):
    """Mean absolute error over all values (in decades, for log10 spectra)."""
    return float(np.mean(np.abs(np.asarray(predicted, dtype=np.float64) -
                                np.asarray(true, dtype=np.float64))))
