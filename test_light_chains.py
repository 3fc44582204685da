"""Light chains and pairs: the VL rule check, kappa/lambda without anarcism, pair validity (rule
and IMGT), and the Jensen-Shannon divergences of composition and length."""

import csv
import importlib.util
import math
import random
import sys

import pytest

import metrics
from conftest import SHARED_DATA

PAIRED = SHARED_DATA / "oas_jaffe2022_donor3_paired.csv"
needs_paired = pytest.mark.skipif(not PAIRED.exists(), reason="../shared/data (the real paired "
                                  "VH+VL file) is not on this machine")
needs_anarcism = pytest.mark.skipif(importlib.util.find_spec("anarcism") is None,
                                    reason="the optional anarcism package is not installed")

# Trastuzumab (kappa) and one natively paired lambda light chain of the OAS donor.
TRASTUZUMAB_VH = ("EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTS"
                  "KNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS")
TRASTUZUMAB_VL = ("DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISS"
                  "LQPEDFATYYCQQHYTTPPTFGQGTKVEIK")
LAMBDA_VL = ("QSVLTQPPSVSAAPGQKVTISCSGTTSNIERNSVSWFRQFPGTAPKLLIYENHRRPSGIPDRFSGSKSGTSGTLDISGLQ"
             "AGDEADYYCAAWDSSLNIWLFGGGTRLTVL")


def shuffled(sequence, rng):
    return "".join(rng.sample(sequence, len(sequence)))


@pytest.fixture(scope="module")
def paired():
    with open(PAIRED, newline="") as f:
        return list(csv.DictReader(f))


# ---- the light-chain rule ----

def test_hand_made_light_chains():
    assert metrics.is_valid_vl(TRASTUZUMAB_VL) and metrics.is_valid_vl(LAMBDA_VL)
    assert not metrics.is_valid_vl(TRASTUZUMAB_VH)              # W-G-x-G, not F-G-x-G
    assert not metrics.is_valid_vl(TRASTUZUMAB_VL.replace("FGQG", "FAQG"))   # no J motif
    assert not metrics.is_valid_vl(TRASTUZUMAB_VL[:-1] + "X")     # not an amino acid
    assert not metrics.is_valid_vl(TRASTUZUMAB_VL[30:])           # too short, no Cys23
    assert not metrics.is_valid_vl(TRASTUZUMAB_VL + "A" * 10)     # J motif too far from the end
    assert not metrics.is_valid_vl("")


@needs_paired
def test_real_light_chains_are_valid_and_shuffled_ones_are_not(paired):
    lights = [row["light"] for row in paired]
    assert sum(map(metrics.is_valid_vl, lights)) / len(lights) > 0.99       # measured 99.25%
    rng = random.Random(0)
    mixed = [shuffled(s, rng) for s in lights]
    assert sum(map(metrics.is_valid_vl, mixed)) / len(mixed) < 0.01        # measured 0%
    heavies = [row["heavy"] for row in paired]
    assert sum(map(metrics.is_valid_vl, heavies)) / len(heavies) < 0.001   # measured 0%


# ---- kappa or lambda ----

def test_light_chain_type_by_hand():
    assert metrics.light_chain_type(TRASTUZUMAB_VL) == "K"
    assert metrics.light_chain_type(LAMBDA_VL) == "L"
    assert metrics.light_chain_type("") is None
    assert metrics.light_chain_type("A" * 110) is None
    assert metrics.kappa_share([]) is None
    assert metrics.kappa_share(["A" * 110]) is None
    assert metrics.kappa_share([TRASTUZUMAB_VL, LAMBDA_VL, TRASTUZUMAB_VL, "A" * 110]) \
        == pytest.approx(2 / 3)


@needs_paired
def test_kappa_lambda_classifier_matches_the_locus_column(paired):
    types = [metrics.light_chain_type(row["light"]) for row in paired]
    accuracy = sum(t == row["light_locus"] for t, row in zip(types, paired)) / len(paired)
    assert accuracy > 0.97                                                  # measured 100%
    kappa = sum(row["light_locus"] == "K" for row in paired) / len(paired)
    assert metrics.kappa_share([row["light"] for row in paired]) == pytest.approx(kappa, abs=0.01)


# ---- pair validity by rule ----

def test_pair_validity_hand_made():
    good = f"{TRASTUZUMAB_VH}|{TRASTUZUMAB_VL}"
    assert metrics.pair_validity([good]) == {"heavy": 1.0, "light": 1.0, "pair": 1.0}
    assert metrics.pair_validity([]) == {"heavy": 0.0, "light": 0.0, "pair": 0.0}
    # no "|": the whole string is the heavy chain, the light chain is missing
    assert metrics.pair_validity([TRASTUZUMAB_VH]) == {"heavy": 1.0, "light": 0.0, "pair": 0.0}
    assert metrics.pair_validity([TRASTUZUMAB_VH + TRASTUZUMAB_VL])["light"] == 0.0
    bad_light = f"{TRASTUZUMAB_VH}|{shuffled(TRASTUZUMAB_VL, random.Random(0))}"
    assert metrics.pair_validity([good, bad_light, f"|{LAMBDA_VL}", "|"]) == {
        "heavy": 0.5, "light": 0.5, "pair": 0.25}
    # the chains the wrong way round are not a pair
    assert metrics.pair_validity([f"{TRASTUZUMAB_VL}|{TRASTUZUMAB_VH}"])["pair"] == 0.0


# ---- pair validity by anarcism ----

def test_imgt_pair_validity_without_anarcism(monkeypatch):
    monkeypatch.setitem(sys.modules, "anarcism", None)       # import anarcism -> ImportError
    assert metrics.imgt_pair_validity([f"{TRASTUZUMAB_VH}|{TRASTUZUMAB_VL}"]) is None
    assert metrics.imgt_validity([TRASTUZUMAB_VH]) is None


@needs_anarcism
def test_imgt_pair_validity_hand_made():
    result = metrics.imgt_pair_validity([f"{TRASTUZUMAB_VH}|{TRASTUZUMAB_VL}",
                                         f"{TRASTUZUMAB_VH}|{LAMBDA_VL}",
                                         TRASTUZUMAB_VH, f"{TRASTUZUMAB_VL}|{TRASTUZUMAB_VH}"])
    assert result == {"heavy": 0.75, "light": 0.5, "pair": 0.5, "kappa": 0.5}
    assert metrics.imgt_pair_validity([]) == {"heavy": 0.0, "light": 0.0, "pair": 0.0,
                                              "kappa": 0.0}
    assert metrics.imgt_validity([TRASTUZUMAB_VH, TRASTUZUMAB_VL]) == 0.5
    assert metrics.imgt_validity([]) == 0.0


@needs_paired
@needs_anarcism
def test_imgt_pair_validity_on_real_and_shuffled_pairs(paired):
    sample = random.Random(1).sample(paired, 50)                # ~5 ms a pair
    real = metrics.imgt_pair_validity([f"{r['heavy']}|{r['light']}" for r in sample])
    assert real["pair"] >= 0.9 and real["heavy"] >= 0.9 and real["light"] >= 0.9
    kappa = sum(r["light_locus"] == "K" for r in sample) / len(sample)
    assert real["kappa"] == pytest.approx(kappa / real["light"], abs=0.05)
    rng = random.Random(0)
    mixed = [f"{shuffled(r['heavy'], rng)}|{shuffled(r['light'], rng)}" for r in sample[:20]]
    assert metrics.imgt_pair_validity(mixed)["pair"] == 0.0


# ---- Jensen-Shannon divergences ----

def test_divergences_of_identical_inputs_are_zero():
    sequences = [TRASTUZUMAB_VL, LAMBDA_VL, TRASTUZUMAB_VH + "|" + TRASTUZUMAB_VL]
    assert metrics.composition_divergence(sequences, list(reversed(sequences))) == 0.0
    assert metrics.length_divergence(sequences, list(reversed(sequences))) == 0.0
    # the same proportions count as the same distribution
    assert metrics.composition_divergence(["ACD"], ["ACDACD", "|"]) == pytest.approx(0.0)
    assert metrics.length_divergence(["AA"], ["CC", "DD", "E|F"]) == pytest.approx(0.0)


def test_divergences_of_disjoint_inputs_are_one():
    assert metrics.composition_divergence(["AAAC"], ["DDE|E"]) == pytest.approx(1.0)
    assert metrics.length_divergence(["AA", "AAA"], ["AAAA", "A|AAAA"]) == pytest.approx(1.0)


def test_divergences_by_hand():
    # P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4):
    # JS = 1/2 log2(4/3) + 1/2 (1/2 log2(2/3) + 1/2 log2(2)) = 0.311278...
    expected = 0.5 * math.log2(4 / 3) + 0.25 * (math.log2(2 / 3) + 1.0)
    assert expected == pytest.approx(0.3112781, abs=1e-7)
    assert metrics.composition_divergence(["AA"], ["AC"]) == pytest.approx(expected)
    assert metrics.composition_divergence(["A", "A|"], ["C|A"]) == pytest.approx(expected)
    assert metrics.length_divergence(["AAA"], ["AAA", "CCCC"]) == pytest.approx(expected)
    # symmetric, and a float in [0, 1]
    value = metrics.composition_divergence([TRASTUZUMAB_VH], [TRASTUZUMAB_VL])
    assert isinstance(value, float) and 0.0 < value < 1.0
    assert value == pytest.approx(metrics.composition_divergence([TRASTUZUMAB_VL],
                                                                 [TRASTUZUMAB_VH]))


def test_divergences_without_residues_are_nan():
    assert math.isnan(metrics.composition_divergence([], [TRASTUZUMAB_VL]))
    assert math.isnan(metrics.composition_divergence(["|"], [TRASTUZUMAB_VL]))
    assert math.isnan(metrics.length_divergence([], [TRASTUZUMAB_VL]))
    assert math.isnan(metrics.length_divergence([], []))
