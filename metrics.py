"""Quality metrics: of sampled antibody sequences (validity, uniqueness, novelty), of a language
model (perplexity), and of predicted spectra (R², mean absolute error).

Validity is a rule check for "looks like a real heavy-chain variable domain" built from the
conserved anchors that every functional human VH carries; the windows were measured on 8,185
real VH domains (OAS, Jaffe et al. 2022) and 182 therapeutic VH (Thera-SAbDab) so that both
score near 100%, while shuffled versions of the same sequences score near 0%.  Light chains
(`is_valid_vl`, kappa and lambda alike) and "HEAVY|LIGHT" pairs (`pair_validity`) have the same
kind of check, with windows measured on 7,201 natively paired human VH+VL; `light_chain_type`
tells kappa from lambda without anarcism; `imgt_validity` and `imgt_pair_validity` check with
anarcism's IMGT numbering instead.  `composition_divergence` and `length_divergence` compare
sampled sequences with a reference set (Jensen-Shannon divergence, base 2).
"""

import math
from collections import Counter

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


# Light chains (VL, kappa and lambda alike): Cys23 - Trp41 - Cys104 - F-G-x-G with Phe118 (IMGT).
# Measured on the 7,201 real light chains of ../shared/data/oas_jaffe2022_donor3_paired.csv
# (anarcism IMGT numbering, 0-based indices; every chain has C23, W41, C104 and F118):
#   length 101-119; first Cys at index 21 (all 2,847 lambda), 22 (4,353 kappa) or 23 (1);
#   Cys23 -> Trp41 8-22 residues (12-18 in 99.7%: CDR-L1 of 5-12); Trp41 -> Cys104 51-59 (53 in
#   97.5%); Cys104 -> Phe118 5-20 (CDR-L3 of 4-19, 9-13 in 98.5%); Phe118 -> end 10 in all (FR4
#   "FGQGTKVEIK" / "FGGGTKLTVL", IMGT 118-127); 7,147 (99.25%) carry F-G-x-G strictly, the rest
#   F-A-x-G, F-G-x-A/R/V... and are not valid by this rule.  The windows below cover every
#   measured value with a residue or two to spare (Phe118 -> end 8-12: a chain cut at IMGT 128
#   or carrying the constant region's first residue; 13 would let through one real heavy chain
#   with F-G-W-G in its CDR-H3).  Measured with them: 99.25% of the real light chains valid (all
#   54 misses lack F-G-x-G), 0 of 7,201 shuffled versions (residues permuted; seeds 0-4 of
#   random.Random alike), 0 of the 7,201 real heavy chains (W-G-x-G) and, as a check on data not
#   used for the windows, 98.4% of the 1,587 CoV-AbDab light chains (anarcism: 99.6%; the
#   misses are cut inside FR1 or carry the constant region's first residues "GQPKAAPSVTL").
VL_MIN_LENGTH, VL_MAX_LENGTH = 95, 125
VL_FIRST_CYS_POSITIONS = range(19, 26)
VL_CYS_TO_TRP = range(7, 24)
VL_TRP_TO_CYS = range(49, 62)
VL_CYS_TO_PHE = range(4, 22)
VL_PHE_TO_END = range(8, 13)


def _vl_anchors(sequence):
    """0-based indices (Cys23, Trp41, Cys104, Phe118) of the first combination of light-chain
    anchors at plausible distances, or None (no length or letter checks)."""
    for c1 in _positions(sequence, "C", 0, VL_FIRST_CYS_POSITIONS):
        for w1 in _positions(sequence, "W", c1, VL_CYS_TO_TRP):
            for c2 in _positions(sequence, "C", w1, VL_TRP_TO_CYS):
                for f in _positions(sequence, "F", c2, VL_CYS_TO_PHE):
                    if (sequence[f + 1:f + 2] == "G" and sequence[f + 3:f + 4] == "G"
                            and len(sequence) - f in VL_PHE_TO_END):
                        return c1, w1, c2, f
    return None


def is_valid_vl(sequence):
    """True when the sequence has only the 20 amino acids, a VL length (95-125) and the anchors
    Cys23 - Trp41 - Cys104 - F-G-x-G (Phe118; IMGT, kappa and lambda alike) at plausible
    distances from one another and from the ends (windows measured on real light chains)."""
    if (not VL_MIN_LENGTH <= len(sequence) <= VL_MAX_LENGTH
            or set(sequence) - set(AMINO_ACIDS)):
        return False
    return _vl_anchors(sequence) is not None


# Kappa or lambda from four residues, each a vote (measured on the same 7,201 light chains;
# share right of the 7,147 valid ones, the rest no vote):
#   the first Cys (IMGT 23) at index 22 in kappa, 21 in lambda (lambda lacks IMGT 10): 99.99%;
#   the residue after it R/K in kappa (RA, KS, RS...), T/S/G/A/E in lambda (TG, SG...): 95.9%
#   (Q, as in kappa QA and lambda QG, is no vote);
#   FR4 IMGT 125 (Phe118 + 7) E/D/Q in kappa ("EIK"), T/S in lambda ("TVL"): 98.6%;
#   FR4 IMGT 127 (Phe118 + 9) K/R/N in kappa, L/V in lambda: 98.2%.
# Their sum decides; a tie or no vote is None.  Accuracy against the file's light_locus column:
# 7,201 of 7,201 (100%), none undecided (the J region alone: 99.1%, 0.9% ties); with the first
# residue cut off (Cys23 one place early) 98.8%, the first two 99.9%; against anarcism's K/L on
# the 1,580 CoV-AbDab light chains it numbers: 99.9% (1 undecided, none wrong).
_KAPPA_AFTER_CYS, _LAMBDA_AFTER_CYS = set("RK"), set("TSGAE")
_KAPPA_IMGT125, _LAMBDA_IMGT125 = set("EDQ"), set("TS")
_KAPPA_IMGT127, _LAMBDA_IMGT127 = set("KRN"), set("LV")


def _vote(residue, kappa, lam):
    return 1 if residue in kappa else -1 if residue in lam else 0


def light_chain_type(sequence):
    """"K" (kappa), "L" (lambda) or None (undecided) for a light chain, without anarcism: votes
    from the position of Cys23 and the residue after it, and from FR4 residues IMGT 125 and 127
    after the F-G-x-G motif (see the measured accuracy above)."""
    anchors = _vl_anchors(sequence)
    if anchors:
        c1, f = anchors[0], anchors[3]
    else:   # not a valid VL: take what can be found
        c1 = next(iter(_positions(sequence, "C", 0, VL_FIRST_CYS_POSITIONS)), None)
        motifs = [i for i in range(len(sequence) - 3)
                  if sequence[i] == "F" and sequence[i + 1] == "G" and sequence[i + 3] == "G"]
        f = motifs[-1] if motifs else None
    votes = 0
    if c1 is not None:
        votes += 1 if c1 == 22 else -1 if c1 == 21 else 0
        votes += _vote(sequence[c1 + 1:c1 + 2], _KAPPA_AFTER_CYS, _LAMBDA_AFTER_CYS)
    if f is not None:
        votes += _vote(sequence[f + 7:f + 8], _KAPPA_IMGT125, _LAMBDA_IMGT125)
        votes += _vote(sequence[f + 9:f + 10], _KAPPA_IMGT127, _LAMBDA_IMGT127)
    return "K" if votes > 0 else "L" if votes < 0 else None


def kappa_share(light_chains):
    """Share (0-1) of light chains that `light_chain_type` calls kappa among those it calls
    kappa or lambda; None when it calls none."""
    types = [t for t in map(light_chain_type, light_chains) if t]
    return sum(t == "K" for t in types) / len(types) if types else None


def pair_validity(pairs):
    """Validity of "HEAVY|LIGHT" pairs: {"heavy": share with a valid heavy chain (`is_valid_vh`),
    "light": share with a valid light chain (`is_valid_vl`), "pair": share where both hold};
    a string without "|" has no light chain (its heavy chain is the whole string); 0.0s for no
    pairs."""
    heavy = light = both = 0
    for pair in pairs:
        heavy_chain, bar, light_chain = pair.partition("|")
        vh, vl = is_valid_vh(heavy_chain), bool(bar) and is_valid_vl(light_chain)
        heavy, light, both = heavy + vh, light + vl, both + (vh and vl)
    n = len(pairs)
    return {"heavy": heavy / n if n else 0.0, "light": light / n if n else 0.0,
            "pair": both / n if n else 0.0}


IMGT_ANCHORS = {23: "C", 41: "W", 104: "C", 118: "W"}
IMGT_LIGHT_ANCHORS = {23: "C", 41: "W", 104: "C", 118: "F"}

# anarcism (HMMER on the bundled germline HMMs) took 3.0 ms per real light chain
# (allowed_chains ["K", "L"], all 7,201 of the paired file) and 1.7-1.8 ms per real heavy chain
# (["H"]) on one CPU core here: imgt_pair_validity on 1,000 real pairs took 4.5 s (the rule
# check, pair_validity, 0.012 s); shuffled chains are refused fast, about 0.15 ms each.


def _anarcism():
    try:
        import anarcism
    except ImportError:
        return None
    return anarcism


def _imgt_chain_type(anarcism, sequence, chains, anchors):
    """The chain type anarcism gives `sequence` when it numbers it as exactly one human domain of
    one of `chains` with the IMGT `anchors` ({position: residue}) in place, else None."""
    try:
        domains = anarcism.number_sequence(sequence, allowed_species=["human"],
                                           allowed_chains=list(chains)).domains
    except Exception:   # anarcism refuses some inputs (e.g. unknown letters): not valid
        return None
    if len(domains) != 1 or domains[0].chain_type not in chains:
        return None
    residues = {r.position: r.amino_acid for r in domains[0].numbering if not r.insertion_code}
    if all(residues.get(p) == aa for p, aa in anchors.items()):
        return domains[0].chain_type
    return None


def imgt_validity(sequences):
    """Share of sequences (0-1) that anarcism numbers as exactly one human heavy-chain domain
    in IMGT with the conserved anchors Cys 23, Trp 41, Cys 104 and Trp 118; None when the
    optional `anarcism` package is not installed."""
    anarcism = _anarcism()
    if anarcism is None:
        return None
    if not sequences:
        return 0.0
    valid = sum(_imgt_chain_type(anarcism, s, ("H",), IMGT_ANCHORS) is not None
                for s in sequences)
    return valid / len(sequences)


def imgt_pair_validity(pairs):
    """Validity of "HEAVY|LIGHT" pairs by anarcism (IMGT): the heavy chain must be exactly one
    human "H" domain with Cys23, Trp41, Cys104 and Trp118, the light chain exactly one human "K"
    or "L" domain with Cys23, Trp41, Cys104 and Phe118.  Returns {"heavy", "light", "pair"}
    shares as `pair_validity` does, plus "kappa": the share of valid light chains that anarcism
    types K (0.0 when none is valid); 0.0s for no pairs; None when the optional `anarcism`
    package is not installed.  About 4.5 ms per real pair (see above)."""
    anarcism = _anarcism()
    if anarcism is None:
        return None
    heavy = light = both = kappa = 0
    for pair in pairs:
        heavy_chain, bar, light_chain = pair.partition("|")
        vh = _imgt_chain_type(anarcism, heavy_chain, ("H",), IMGT_ANCHORS) is not None
        light_type = (_imgt_chain_type(anarcism, light_chain, ("K", "L"), IMGT_LIGHT_ANCHORS)
                      if bar else None)
        vl = light_type is not None
        heavy, light, both = heavy + vh, light + vl, both + (vh and vl)
        kappa += light_type == "K"
    n = len(pairs)
    return {"heavy": heavy / n if n else 0.0, "light": light / n if n else 0.0,
            "pair": both / n if n else 0.0, "kappa": kappa / light if light else 0.0}


def _js_divergence(p, q):
    """Jensen-Shannon divergence (base 2, 0-1) between two count vectors over the same support;
    NaN when either has no counts."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(max(0.5 * kl(p) + 0.5 * kl(q), 0.0), 1.0))


def _residues(sequence):
    return sequence.replace("|", "")


def composition_divergence(sequences, reference):
    """Jensen-Shannon divergence (base 2, so in [0, 1]; 0 for identical compositions, 1 for
    disjoint ones) between the amino-acid composition of `sequences` and that of `reference`:
    counts of the 20 amino acids pooled over all sequences of each side; "|" (the heavy|light
    separator) and any other letter are ignored.  NaN when a side has no amino acid at all."""
    def composition(seqs):
        counts = dict.fromkeys(AMINO_ACIDS, 0)
        for sequence in seqs:
            for residue in sequence:
                if residue in counts:
                    counts[residue] += 1
        return [counts[aa] for aa in AMINO_ACIDS]

    return _js_divergence(composition(sequences), composition(reference))


def length_divergence(sequences, reference):
    """Jensen-Shannon divergence (base 2, in [0, 1]) between the length distributions of
    `sequences` and `reference`: histograms over integer lengths (residues, "|" not counted) on
    the union of the lengths either side has.  NaN when a side is empty."""
    lengths = [len(_residues(s)) for s in sequences]
    ref_lengths = [len(_residues(s)) for s in reference]
    support = sorted(set(lengths) | set(ref_lengths))
    if not support:
        return float("nan")
    p, q = Counter(lengths), Counter(ref_lengths)
    return _js_divergence([p[n] for n in support], [q[n] for n in support])


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


def _ranks(values):
    """Ranks 1..n, ties given their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b):
    """Spearman's rank correlation of two sequences (ties averaged); nan when either is
    constant."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
