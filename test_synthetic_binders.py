"""The built-in binder data: determinism, anchors, lengths, the hidden rule and its scoring."""

import importlib.util
import re
import time

import numpy as np
import pytest

import synthetic_binders as sb

N = 2000


@pytest.fixture(scope="module")
def records():
    return sb.synthetic_binder_records(N, seed=7)


def _spearman(x, y):
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):   # average ranks of ties
            r[v == value] = r[v == value].mean()
        return r
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def test_same_seed_same_records_and_different_seeds_differ(records):
    assert sb.synthetic_binder_records(N, seed=7) == records
    assert sb.synthetic_binder_records(200, seed=8) != records[:200]
    assert sb.synthetic_binder_records(50, seed=7) == records[:50]
    assert sb.held_out_antigens(40, seed=7) == sb.held_out_antigens(40, seed=7)
    a = sb.synthetic_light_chains(30, np.random.default_rng(1))
    assert a == sb.synthetic_light_chains(30, np.random.default_rng(1))


# FR1 (30, Cys at 21) + CDR-H1 (5) + Trp + 13 + CDR-H2 (16-17) + 27 + YYCA[RK] + CDR-H3 rest
# (8-25, paratope included) + WGxG + 7
HEAVY_RE = re.compile(r"^.{21}C.{13}W.{56,57}YYCA[RK].{8,25}WG.G.{7}$")
# FR1 (22-23, ending in Cys) + CDR-L1 (11-14) + Trp + 14 + CDR-L2 (7) + 29 + Y[YF]C + CDR-L3
# (7-11) + FGxG + 6
LIGHT_RE = re.compile(r"^.{21,22}C.{11,14}W.{50}Y[YF]C(.{7,11})FG.G.{6}$")


def test_anchors_and_lengths_of_every_chain(records):
    loci = []
    for antibody, _, _ in records:
        heavy, light = antibody.split("|")
        assert HEAVY_RE.match(heavy), heavy
        assert heavy[21] == "C" and heavy[35] == "W" and re.match("WG.G", heavy[-11:])
        assert 110 <= len(heavy) <= 135
        m = LIGHT_RE.match(light)
        assert m, light
        assert light[21] == "C" or light[22] == "C"
        assert 100 <= len(light) <= 120
        assert set(antibody) <= set(sb._AMINO_ACIDS) | {"|"}
        loci.append("K" if light[22] == "C" else "L")
    kappa = loci.count("K") / len(loci)
    assert 0.55 < kappa < 0.65


def test_light_chains_kappa_lambda_share_and_loci():
    sequences, loci = sb.synthetic_light_chains(3000, np.random.default_rng(3))
    assert set(loci) == {"K", "L"}
    assert 0.57 < loci.count("K") / len(loci) < 0.63
    for seq, locus in zip(sequences, loci):
        assert LIGHT_RE.match(seq), seq
        assert 100 <= len(seq) <= 120
        # kappa keeps Cys at index 22, lambda (no IMGT position 10) at index 21
        assert seq[22 if locus == "K" else 21] == "C"


def test_every_antigen_carries_exactly_one_motif(records):
    classes = []
    for _, antigen, _ in records:
        if antigen is None:
            continue
        assert sb.ANTIGEN_MIN_LEN <= len(antigen) <= sb.ANTIGEN_MAX_LEN
        hits = [m for m in sb.EPITOPES for _ in re.finditer(f"(?={m})", antigen)]
        assert len(hits) == 1, antigen
        classes.append(sb.epitope_class(antigen))
    assert set(classes) == set(range(sb.N_CLASSES))
    share_without = sum(a is None for _, a, _ in records) / len(records)
    assert 0.07 < share_without < 0.13
    assert 0.07 < sum(p is None for _, _, p in records) / len(records) < 0.13


def test_constants_make_the_rule_clean():
    assert len(sb.EPITOPES) == len(sb.PARATOPES) == sb.N_CLASSES
    assert len(set(sb.EPITOPES)) == sb.N_CLASSES and all(len(m) == 6 for m in sb.EPITOPES)
    assert all(len(p) == 4 and not set(p) & set("CW") for p in sb.PARATOPES)
    for i in range(sb.PARATOPE_LEN):   # a wrong class's paratope matches nowhere
        assert len({p[i] for p in sb.PARATOPES}) == sb.N_CLASSES
    # No motif holds another or itself overlapping, so one insertion is one occurrence.
    for a in sb.EPITOPES:
        for b in sb.EPITOPES:
            assert a == b or b not in a


def test_rule_functions_on_hand_made_cases():
    fr3_end = "RFTISRDNSKNTLYLQMNSLRAEDTAVYYCAR"
    head = "EVQLLESGGGLVQPGGSLRLSCAASGFTFS" + "SYAMS" + "WVRQAPGKGLEWVS" + "AISGSGGSTYYADSVKG"
    tail = "GGYFDYWGQGTLVTVSS"
    antigen = "A" * 30 + sb.EPITOPES[2] + "G" * 40           # class 2, paratope "GSDY"
    assert sb.epitope_class(antigen) == 2
    assert sb.epitope_class("A" * 80) is None
    assert sb.epitope_class(None) is None and sb.epitope_class("") is None
    assert sb.epitope_class(sb.EPITOPES[0] + "AAA" + sb.EPITOPES[1]) is None   # two classes
    assert sb.epitope_class(sb.EPITOPES[3] + "AAA" + sb.EPITOPES[3]) == 3

    right = head + fr3_end + "GSDY" + tail
    assert sb.paratope(right) == "GSDY"
    assert sb.paratope_matches(right, antigen) == 4
    assert sb.obeys_rule(right, antigen)
    assert sb.achieved_pkd(right, antigen) == 9.0
    assert sb.obeys_rule(right + "|DIQMTQSPSSLSASVGDRVTITC", antigen)   # a pair: its heavy
    three = head + fr3_end + "GSDA" + tail
    assert sb.paratope_matches(three, antigen) == 3 and not sb.obeys_rule(three, antigen)
    assert sb.achieved_pkd(three, antigen) == 8.0
    other_class = head + fr3_end + sb.PARATOPES[5] + tail
    assert sb.paratope_matches(other_class, antigen) == 0
    ak = head + fr3_end[:-1] + "K" + "GSDY" + tail
    assert sb.paratope_matches(ak, antigen) == 4
    # the LAST YYCA[RK] counts
    assert sb.paratope_matches(head + "YYCARAAAA" + fr3_end + "GSDY" + tail, antigen) == 4
    assert sb.paratope_matches(head + fr3_end + "GSDY" + "YYCAKAAAA", antigen) == 0
    # no FR3 end, no antigen class, no antigen, a chain cut short
    assert sb.paratope_matches(head + "GSDY" + tail, antigen) == 0
    assert sb.paratope_matches(right, "A" * 80) == 0
    assert sb.paratope_matches(right, None) == 0 and sb.achieved_pkd(right, None) == 5.0
    assert sb.paratope_matches(head + fr3_end + "GS", antigen) == 2
    assert sb.paratope_matches("", antigen) == 0


def test_pkd_follows_matches_and_every_match_count_occurs(records):
    matches, pkds = [], []
    for antibody, antigen, pkd in records:
        if antigen is not None:
            m = sb.paratope_matches(antibody, antigen)
            assert sb.obeys_rule(antibody, antigen) == (m == 4)
            if pkd is not None:
                matches.append(m)
                pkds.append(pkd)
                assert abs(pkd - sb.achieved_pkd(antibody, antigen)) < 1.0
    assert set(matches) == set(range(5))
    for antibody, antigen, _ in records:   # the right positions are the paratope's first m
        if antigen is not None:
            found, right = sb.paratope(antibody), sb.PARATOPES[sb.epitope_class(antigen)]
            m = sb.paratope_matches(antibody, antigen)
            assert found[:m] == right[:m] and all(a != b for a, b in zip(found[m:], right[m:]))
    shares = np.bincount(matches) / len(matches)
    assert np.abs(shares - sb.MATCH_SHARES).max() < 0.03   # half full binders, 0..3 evenly
    assert _spearman(pkds, matches) > 0.9   # half the records tie at 4 matches
    pkds, matches = np.array(pkds), np.array(matches)
    assert abs(np.std(pkds - 5.0 - matches) - sb.PKD_NOISE) < 0.03


def test_held_out_antigens_are_disjoint_balanced_and_classed(records):
    held = sb.held_out_antigens(400, seed=7)
    training = {a for _, a, _ in records if a is not None}
    assert not training & {a for a, _ in held}
    assert len({a for a, _ in held}) == len(held)
    for antigen, cls in held:
        assert sb.epitope_class(antigen) == cls
    classes = [c for _, c in held]
    assert np.bincount(classes).tolist() == [50] * sb.N_CLASSES
    assert sb.chance_obedience(classes) == pytest.approx(1 / 8)
    assert sb.chance_obedience() == pytest.approx(1 / 8)
    assert sb.chance_pkd() == pytest.approx(5.5)
    assert sb.chance_obedience([0, 0, 1, 2]) == pytest.approx(0.5)


def test_antigen_blind_model_reaches_only_chance():
    """Writing one fixed paratope (the best an antigen-blind model can do) obeys 1/8."""
    held = sb.held_out_antigens(800, seed=1)
    heavy = "X" * 90 + "YYCAR" + sb.PARATOPES[0] + "GGFDYWGQGTLVTVSS"
    obey = np.mean([sb.obeys_rule(heavy, a) for a, _ in held])
    pkd = np.mean([sb.achieved_pkd(heavy, a) for a, _ in held])
    assert obey == pytest.approx(sb.chance_obedience())
    assert pkd == pytest.approx(sb.chance_pkd())


def test_ten_thousand_records_are_fast():
    start = time.perf_counter()
    out = sb.synthetic_binder_records(10_000, seed=0)
    elapsed = time.perf_counter() - start
    assert len(out) == 10_000
    assert elapsed < 5.0, f"{elapsed:.2f} s"


@pytest.mark.skipif(importlib.util.find_spec("anarcism") is None,
                    reason="the optional anarcism package is not installed")
def test_anarcism_numbers_the_chains_with_the_imgt_anchors(records):
    """anarcism (IMGT) numbers each chain as one human domain of its locus, anchors in place."""
    import anarcism
    heavy_anchors = {23: "C", 41: "W", 104: "C", 118: "W"}
    light_anchors = {23: "C", 41: "W", 104: "C", 118: "F"}
    for antibody, _, _ in records[:60]:
        heavy, light = antibody.split("|")
        kappa = light[22] == "C"
        for chain, types, anchors in ((heavy, ["H"], heavy_anchors),
                                      (light, ["K", "L"], light_anchors)):
            domains = anarcism.number_sequence(chain, allowed_species=["human"],
                                               allowed_chains=types).domains
            assert len(domains) == 1, chain
            assert domains[0].chain_type == ("H" if types == ["H"] else "K" if kappa else "L")
            residues = {r.position: r.amino_acid for r in domains[0].numbering
                        if not r.insertion_code}
            assert all(residues.get(p) == aa for p, aa in anchors.items()), chain
