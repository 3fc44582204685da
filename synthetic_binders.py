"""Built-in data for the conditioned antibody generator: paired antibodies ("HEAVY|LIGHT")
with an antigen and an affinity (pKd), made so that a model can follow a hidden rule ONLY by
reading the antigen, and so that both its obedience and the affinity its antibodies would
reach can be measured on its samples.

The hidden rule
---------------
- Every antigen is a random protein-like sequence (40-120 residues) carrying exactly one of
  N_CLASSES = 8 epitope motifs (EPITOPES, 6 residues each, built from rare residues so that
  a background practically never holds one; a background that does is drawn again). The
  motif's index is the antigen's class. The class also shows in the antigen's surface: its
  background draws the class's two SURFACE_RESIDUES four times as often as UniProt's
  composition would. (A first design had the motif alone, and the motifs are anagrams of one
  another: a tiny model trained 6 epochs on 4,000 records had learnt nothing of the rule,
  the same paratope loss with the antigen as without. The surface bias is a feature a
  model can read by pooling the antigen; it still has to read the antigen.)
- Each class k has a paratope (PARATOPES[k], 4 residues, no Cys or Trp). At every one of the
  4 positions the 8 paratopes have 8 different residues, so writing the paratope of the
  wrong class scores 0 matches, not a partial hit.
- An antibody's paratope is the first 4 residues of its CDR-H3: those right after the end of
  the heavy chain's FR3, which ends "...YYCAR" or "...YYCAK" in all five germlines (these 5
  residues are never mutated). `paratope_matches` counts the positions that equal the
  antigen's paratope (0..4); an antibody obeys the rule when all 4 match.
- Affinity: pKd = PKD_BASE + matches + N(0, PKD_NOISE), rounded to 0.01, i.e. 5..9 with a
  little measurement noise. `achieved_pkd` is the noise-free 5 + matches.

A training record draws a class and a match count m (4 for half the records, else 0..3
evenly: MATCH_SHARES; with 0..4 uniform, a tiny model had not learnt to read the antigen
after 7 epochs), writes the paratope with its first m positions right and the others
replaced by other residues (random, each different from the right one), then the rest of
CDR-H3 as antibody.synthetic_antibodies does (a random core and an end like "FDY"). The
positions are met in order, as if ranked by how much each contact adds: which positions a
pKd asks for then follows from the pKd. (With the right positions drawn at random, a tiny
model sampled at a requested pKd of 7 wrote 0.9 right positions on average instead of 2,
and requested and achieved pKd correlated at 0.61 only: docs/model-quality.md.) The heavy chain's frameworks are those of antibody.py (five human IGHV
germlines, IGHJ FR4s, the same mutation rates); the light chain is a human kappa (60%) or
lambda (40%) chain from `synthetic_light_chains`. 10% of records drop the antigen and,
independently, 10% drop the pKd, so the optional conditions are exercised; a record without
an antigen still has the paratope (and pKd) of a class drawn for it.

Measuring a model
-----------------
Sample with a held-out antigen (`held_out_antigens`: another random stream, so none equals a
training antigen; classes balanced) and a target pKd, then score the heavy chains:
- obedience: the share with `obeys_rule`. Ask for pKd 9 (EVAL_PKD) here: the data pair
  lower pKds with fewer matches, and without a pKd only 1 record in 5 has all 4.
- affinity: `achieved_pkd` against the requested pKd (a model that reads both conditions
  reaches about the pKd it was asked for, within 5..9).
- chance: a model that ignores the antigen writes the same paratope distribution for every
  class, so its obedience is sum_k P(class k) P(writes paratope k) <= max_k P(class k):
  1/8 on balanced classes (`chance_obedience`). Because the paratopes differ at every
  position its expected matches are at most 4/8, so its achieved pKd is at most 5.5
  (`chance_pkd`).

Everything is a function of the seed alone: numpy's default_rng([seed, stream]) (PCG64) gives
the same numbers on every machine.
"""

import re

import numpy as np

import antibody
from antibody import _CDR_RESIDUES, _CDR_WEIGHTS, _mutate
from data import STREAM_BINDERS, STREAM_HELD_OUT_ANTIGENS

# (STREAM_BINDERS, STREAM_HELD_OUT_ANTIGENS = 5, 6 live in data.py with the other streams:
# the training records and the held-out antigens draw from different streams.)

# --------------------------------------------------------------------------------------------
# The hidden rule
# --------------------------------------------------------------------------------------------

N_CLASSES = 8
# Epitope motifs: rare residues (W, C, H, M, Y), so that a background of natural composition
# holds one with a probability of about 1e-7 (such a background is drawn again).
EPITOPES = ("HWCMYQ", "CYWHMF", "MHYWCN", "WMFCHY", "YCMHWP", "FWYMCH", "QMCWYH", "PHMYWC")
# Paratopes: the first 4 residues of CDR-H3 that bind class k. No C or W; at each position
# the 8 classes use 8 different residues.
PARATOPES = ("DYRS", "EGYT", "GSDY", "HRFE", "KTLN", "NDGQ", "RFEV", "SLKA")
PARATOPE_LEN = 4
# How many paratope positions a record gets right: half the records are full binders (as in
# a database of binders), the other half spread evenly over 0-3, so the pKd still varies.
MATCH_SHARES = (0.125, 0.125, 0.125, 0.125, 0.5)
PKD_BASE = 5.0      # pKd with no paratope position right
PKD_NOISE = 0.2     # standard deviation of the measurement noise on a record's pKd
EVAL_PKD = PKD_BASE + PARATOPE_LEN   # the target pKd under which to measure obedience

ANTIGEN_MIN_LEN, ANTIGEN_MAX_LEN = 40, 120
# Each class's two surface residues (each class its own pair; a background that holds a
# motif by chance is drawn again), drawn SURFACE_BIAS times as often as naturally.
SURFACE_RESIDUES = ("AL", "DK", "EG", "IS", "TV", "NR", "PQ", "FY")
SURFACE_BIAS = 4.0

_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# UniProtKB/Swiss-Prot residue frequencies (%), in _AMINO_ACIDS order.
_BACKGROUND = np.array([8.25, 1.37, 5.45, 6.75, 3.86, 7.07, 2.27, 5.96, 5.84, 9.66, 2.42, 4.06,
                        4.70, 3.93, 5.53, 6.56, 5.34, 6.87, 1.08, 2.92])
_BACKGROUND /= _BACKGROUND.sum()
_AA_BYTES = np.frombuffer(_AMINO_ACIDS.encode("ascii"), dtype="S1")


def _surface_composition(cls):
    weights = _BACKGROUND.copy()
    for residue in SURFACE_RESIDUES[cls]:
        weights[_AMINO_ACIDS.index(residue)] *= SURFACE_BIAS
    return weights / weights.sum()


_SURFACE = [_surface_composition(k) for k in range(N_CLASSES)]
_CLASS_OF = {motif: k for k, motif in enumerate(EPITOPES)}
# Every occurrence of any motif, overlapping ones included.
_EPITOPE_RE = re.compile("(?=(" + "|".join(EPITOPES) + "))")
# The end of a heavy chain's FR3; the paratope follows it.
_FR3_END_RE = re.compile("YYCA[RK]")

# --------------------------------------------------------------------------------------------
# Light chains: human kappa and lambda germlines
# --------------------------------------------------------------------------------------------

# (FR1, CDR-L1, FR2, CDR-L2, FR3) of six common human IGKV/IGLV germlines, Kabat CDRs as in
# antibody._V_GENES. FR1 ends with Cys23 (IMGT 23; index 22 in kappa, 21 in lambda, whose
# FR1 lacks position 10), FR2 starts with Trp (IMGT 41), FR3 ends "...YYC" (Cys IMGT 104).
_KAPPA_V_GENES = (
    ("DIQMTQSPSSLSASVGDRVTITC", "RASQSISSYLN", "WYQQKPGKAPKLLIY", "AASSLQS",
     "GVPSRFSGSGSGTDFTLTISSLQPEDFATYYC"),  # IGKV1-39
    ("EIVLTQSPGTLSLSPGERATLSC", "RASQSVSSSYLA", "WYQQKPGQAPRLLIY", "GASSRAT",
     "GIPDRFSGSGSGTDFTLTISRLEPEDFAVYYC"),  # IGKV3-20
    ("DIQMTQSPSTLSASVGDRVTITC", "RASQSISSWLA", "WYQQKPGKAPKLLIY", "DASSLES",
     "GVPSRFSGSGSGTEFTLTISSLQPDDFATYYC"),  # IGKV1-5
)
_LAMBDA_V_GENES = (
    ("QSVLTQPPSASGTPGQRVTISC", "SGSSSNIGSNTVN", "WYQQLPGTAPKLLIY", "SNNQRPS",
     "GVPDRFSGSKSGTSASLAISGLQSEDEADYYC"),  # IGLV1-44
    ("QSALTQPASVSGSPGQSITISC", "TGTSSDVGGYNYVS", "WYQQHPGKAPKLMIY", "EVSNRPS",
     "GVSNRFSGSKSGNTASLTISGLQAEDEADYYC"),  # IGLV2-14
    ("SYVLTQPPSVSVAPGKTARITC", "GGNNIGSKSVH", "WYQQKPGQAPVLVIY", "YDSDRPS",
     "GIPERFSGSNSGNTATLTISRVEAGDEADYYC"),  # IGLV3-21
)
# The first residues of CDR-L3 as each germline encodes them, and typical ends before the J
# region (no Cys or Trp, so that the anchors stay unique).
_KAPPA_L3_STARTS = ("QQ", "QQ", "QQ")
_LAMBDA_L3_STARTS = ("AA", "SS", "QV")
_KAPPA_L3_ENDS = ("T", "LT", "PT", "YT", "PLT")
_LAMBDA_L3_ENDS = ("VV", "YV", "LV", "AV")
# Human J regions (FR4); each starts with the F-G-x-G motif (Phe IMGT 118).
_KAPPA_J_GENES = ("FGQGTKVEIK", "FGGGTKVEIK", "FGQGTKLEIK")
_LAMBDA_J_GENES = ("FGGGTKLTVL", "FGTGTKVTVL")
KAPPA_SHARE = 0.6
L3_MIN_LEN, L3_MAX_LEN = 7, 11


def _cdr_residues(rng, size):
    return "".join(_CDR_RESIDUES[i] for i in rng.choice(len(_CDR_RESIDUES), size=size,
                                                          p=_CDR_WEIGHTS))


def _light_chain(rng):
    kappa = rng.random() < KAPPA_SHARE
    genes = _KAPPA_V_GENES if kappa else _LAMBDA_V_GENES
    g = int(rng.integers(len(genes)))
    fr1, cdr1, fr2, cdr2, fr3 = genes[g]
    fr1 = _mutate(fr1, 0.03, rng, protected={len(fr1) - 1})
    fr2 = _mutate(fr2, 0.03, rng, protected={0})
    fr3 = _mutate(fr3, 0.03, rng, protected={len(fr3) - 3, len(fr3) - 2, len(fr3) - 1})
    cdr1 = _mutate(cdr1, 0.10, rng)
    cdr2 = _mutate(cdr2, 0.10, rng)
    start = (_KAPPA_L3_STARTS if kappa else _LAMBDA_L3_STARTS)[g]
    ends = _KAPPA_L3_ENDS if kappa else _LAMBDA_L3_ENDS
    end = ends[rng.integers(len(ends))]
    length = int(rng.integers(L3_MIN_LEN, L3_MAX_LEN + 1))
    cdr3 = start + _cdr_residues(rng, length - len(start) - len(end)) + end
    j_genes = _KAPPA_J_GENES if kappa else _LAMBDA_J_GENES
    fr4 = _mutate(j_genes[rng.integers(len(j_genes))], 0.02, rng, protected={0, 1, 3})
    return fr1 + cdr1 + fr2 + cdr2 + fr3 + cdr3 + fr4, "K" if kappa else "L"


def synthetic_light_chains(n, rng):
    """(sequences, loci): `n` human-like light chains (104-111 residues), about 60% kappa
    ("K") and 40% lambda ("L"), from three kappa and three lambda germlines with framework
    mutations at 3%, CDR-L1/L2 mutations at 10%, a random CDR-L3 of 7-11 residues and a
    human J region. Cys23, Trp41, "YYC" (Cys104) and F-G-x-G are always in place."""
    chains = [_light_chain(rng) for _ in range(n)]
    return [c[0] for c in chains], [c[1] for c in chains]


# --------------------------------------------------------------------------------------------
# Heavy chains with a paratope, antigens with an epitope
# --------------------------------------------------------------------------------------------

def _paratope(cls, matches, rng):
    """The paratope of class `cls` with its first `matches` positions right and the others
    replaced by random residues, each different from the right one."""
    right = PARATOPES[cls]
    chars = list(right)
    for i in range(matches, PARATOPE_LEN):
        p = _CDR_WEIGHTS.copy()
        p[_CDR_RESIDUES.index(right[i])] = 0.0
        chars[i] = _CDR_RESIDUES[rng.choice(len(_CDR_RESIDUES), p=p / p.sum())]
    return "".join(chars)


def _heavy_chain(paratope, rng):
    """A VH as antibody.synthetic_antibodies builds it, CDR-H3 starting with `paratope`; the
    "YYCAR"/"YYCAK" ending FR3 is kept whole so that the paratope can be found."""
    return antibody.synthetic_heavy_chain(rng, cdr3_start=paratope, fr3_kept=(1, 2, 3, 4, 5))


def synthetic_antigen(cls, rng):
    """An antigen of class `cls`: a random sequence of 40-120 residues, of natural composition
    but for the class's surface residues, with EPITOPES[cls] at a random position and no
    other motif anywhere (a draw that would hold another occurrence is made again)."""
    motif = EPITOPES[cls]
    while True:
        length = int(rng.integers(ANTIGEN_MIN_LEN, ANTIGEN_MAX_LEN + 1))
        background = _AA_BYTES[rng.choice(len(_AMINO_ACIDS), size=length - len(motif),
                                          p=_SURFACE[cls])].tobytes().decode("ascii")
        at = int(rng.integers(len(background) + 1))
        antigen = background[:at] + motif + background[at:]
        if len(_EPITOPE_RE.findall(antigen)) == 1:
            return antigen


def synthetic_binder_records(n, seed, antigen_share=0.9, pkd_share=0.9):
    """`n` records (antibody "HEAVY|LIGHT", antigen or None, pKd or None), a function of
    `seed` alone. Each record draws a class, a match count 0..4 (MATCH_SHARES), the heavy chain,
    the light chain, the antigen and the pKd noise, then whether to keep the antigen
    (probability `antigen_share`) and the pKd (`pkd_share`)."""
    rng = np.random.default_rng([seed, STREAM_BINDERS])
    records = []
    for _ in range(n):
        cls = int(rng.integers(N_CLASSES))
        matches = int(rng.choice(PARATOPE_LEN + 1, p=MATCH_SHARES))
        heavy = _heavy_chain(_paratope(cls, matches, rng), rng)
        light, _ = _light_chain(rng)
        antigen = synthetic_antigen(cls, rng)
        pkd = round(PKD_BASE + matches + float(rng.normal(0.0, PKD_NOISE)), 2)
        keep_antigen, keep_pkd = rng.random(2) < (antigen_share, pkd_share)
        records.append((heavy + "|" + light, antigen if keep_antigen else None,
                        pkd if keep_pkd else None))
    return records


def held_out_antigens(n, seed):
    """`n` (antigen, class) pairs for evaluation, from a stream of their own (so that none is
    a training antigen of any run: two random 40-120-residue sequences practically never
    coincide), with balanced classes (class i % 8, in a seeded order)."""
    rng = np.random.default_rng([seed, STREAM_HELD_OUT_ANTIGENS])
    classes = rng.permutation(np.arange(n) % N_CLASSES)
    return [(synthetic_antigen(int(k), rng), int(k)) for k in classes]


# --------------------------------------------------------------------------------------------
# Evaluation of generated antibodies
# --------------------------------------------------------------------------------------------

def epitope_class(antigen):
    """The class of the epitope motif an antigen carries; None when it has none, carries
    motifs of two classes, or is None/empty."""
    if not antigen:
        return None
    classes = {_CLASS_OF[m] for m in _EPITOPE_RE.findall(antigen)}
    return classes.pop() if len(classes) == 1 else None


def paratope(heavy):
    """The 4 residues after the last "YYCAR"/"YYCAK" of a heavy chain (fewer where the chain
    ends early), or None without one. A "HEAVY|LIGHT" pair is read by its heavy chain."""
    heavy = (heavy or "").split("|", 1)[0]
    end = None
    for m in _FR3_END_RE.finditer(heavy):
        end = m.end()
    return None if end is None else heavy[end:end + PARATOPE_LEN]


def paratope_matches(heavy, antigen):
    """How many of the 4 paratope positions of the heavy chain (or "HEAVY|LIGHT" pair) are
    those of the antigen's class: 0..4; 0 when the chain has no "YYCA[RK]" or the antigen no
    class."""
    cls = epitope_class(antigen)
    found = paratope(heavy)
    if cls is None or found is None:
        return 0
    return sum(a == b for a, b in zip(found, PARATOPES[cls]))


def obeys_rule(heavy, antigen):
    """True when the antibody's CDR-H3 starts with the paratope of the antigen's class."""
    return paratope_matches(heavy, antigen) == PARATOPE_LEN


def achieved_pkd(heavy, antigen):
    """The noise-free pKd the antibody would have for the antigen: 5.0 + matches."""
    return PKD_BASE + paratope_matches(heavy, antigen)


def chance_obedience(classes=None):
    """The best obedience of a model that ignores the antigen: the share of the commonest
    class among `classes` (the held-out antigens' classes), 1/8 when they are balanced (the
    default)."""
    if classes is None:
        return 1.0 / N_CLASSES
    classes = list(classes)
    return max(classes.count(k) for k in set(classes)) / len(classes) if classes else 0.0


def chance_pkd(classes=None):
    """The best mean achieved_pkd of a model that ignores the antigen: at each of the 4
    positions it can match at most the commonest class, so 5 + 4 * chance_obedience (5.5 on
    balanced classes)."""
    return PKD_BASE + PARATOPE_LEN * chance_obedience(classes)
