"""dft_data: G3NAT pickles (restricted unpickling), the manifest CSV, the contacts syntax, and the
messages of bad records. Fixtures are written into tmp_path by each test."""

import os
import pickle

import numpy as np
import pytest

import data
import dft_data
from conftest import SHARED_DATA
from dft_data import Contact

SAMPLE_CSV = SHARED_DATA / "g3nat_dft_sample" / "aaac_run1_gamma0.1_T_DOS.csv"


def g3nat_record(**changes):
    """A dict shaped like G3NAT's convert_to_pickle.build_record (v1 keys, small grid)."""
    energies = np.linspace(-6.3, -4.3, 11)
    record = {
        "sequence": "aaac",
        "complementary_sequence": "gttt",
        "contacts": {"left_atoms": [1, 2, 3], "right_atoms": [120, 121],
                     "coupling_eV": 0.1, "contact_type": "same"},
        "Egrid": energies,
        "T": np.exp(energies),
        "DOS": np.linspace(1.0, 2.0, 11),
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def write_pickle(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def write_spectrum(path, energies, transmission=None, dos=None):
    transmission = np.full(len(energies), 1e-3) if transmission is None else transmission
    dos = np.full(len(energies), 2.0) if dos is None else dos
    lines = ["energy_eV,transmission,dos"] + [f"{float(e)!r},{float(t)!r},{float(d)!r}"
                         for e, t, d in zip(energies, transmission, dos)]
    path.write_text("\n".join(lines) + "\n")
    return path


def refused(call, *args):
    with pytest.raises(data.DataError) as e:
        call(*args)
    return str(e.value)


# ------------------------------------------------------------------------------------------
# G3NAT pickles
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_g3nat_pickle_round_trips_at_every_protocol(tmp_path, protocol):
    original = g3nat_record()
    path = write_pickle(tmp_path / "aaac_run1.pkl", original, protocol)
    record = dft_data.read_pickle_record(path)
    assert (record.primary, record.complement) == ("AAAC", "GTTT")
    assert record.contacts == (Contact("left", "primary", 0, 0.1),
                               Contact("right", "primary", 3, 0.1))
    for got, key in ((record.energies, "Egrid"), (record.transmission, "T"), (record.dos, "DOS")):
        assert got.dtype == np.float64 and got.shape == (11,)
        np.testing.assert_array_equal(got, original[key])   # eV as in the file: not centred
    assert record.source == str(path)
    (again,) = dft_data.read_dft(path)
    assert again.primary == "AAAC" and again.contacts == record.contacts


def test_g3nat_cross_contacts_and_v2_extras_and_plain_lists(tmp_path):
    extras = {"DOSAtom": np.ones((40, 11)), "gjf_text": "%chk=aaac\n",
              "atoms": {"element": ["C", "H"], "resseq": [1, 1], "xyz": np.zeros((2, 3))},
              "energy_reference_eV": np.float64(-5.3)}
    rec = g3nat_record(contacts={"left_atoms": [1], "right_atoms": [200],
                                 "coupling_eV": np.float64(0.6), "contact_type": "cross"},
                       T=[1e-3] * 11, **extras)
    record = dft_data.read_pickle_record(write_pickle(tmp_path / "r.pickle", rec))
    assert record.contacts == (Contact("left", "primary", 0, 0.6),
                               Contact("right", "complement", 0, 0.6))
    np.testing.assert_array_equal(record.transmission, np.full(11, 1e-3))


def test_g3nat_defaults_when_complement_and_contacts_are_absent_and_underscore_is_missing(
        tmp_path):
    record = dft_data.read_pickle_record(write_pickle(
        tmp_path / "a.pkl", g3nat_record(complementary_sequence=None, contacts=None)))
    assert record.complement == "GTTT"          # the reverse complement, as G3NAT's loader
    assert record.contacts == (Contact("left", "primary", 0, 0.1),
                               Contact("right", "primary", 3, 0.1))
    record = dft_data.read_pickle_record(write_pickle(
        tmp_path / "b.pkl", g3nat_record(complementary_sequence="g_tt")))
    assert record.complement == "G-TT"


def test_g3nat_missing_key_is_refused_naming_key_and_file(tmp_path):
    path = write_pickle(tmp_path / "no_t.pkl", g3nat_record(T=None))
    message = refused(dft_data.read_pickle_record, path)
    assert str(path) in message and "missing key 'T'" in message


class _SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __reduce__(self):
        return eval, ("open('x', 'w')",)


def test_malicious_pickle_is_refused_by_name_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path / "record.pkl",
                        g3nat_record(sequence=_SystemCall(f"touch {marker}")))
    message = refused(dft_data.read_pickle_record, path)
    assert message == (f"{path}: refuses to load {os.system.__module__}.system (only numpy "
                       f"arrays, dtypes, dicts, lists, strings and numbers)")
    assert not marker.exists()
    # builtins are admitted by name, not as a module
    path = write_pickle(tmp_path / "eval.pkl", {"sequence": _Eval()})
    assert "refuses to load builtins.eval" in refused(dft_data.read_pickle_record, path)
    # and so is any class, even a harmless one
    path = write_pickle(tmp_path / "class.pkl", g3nat_record(contacts=_Eval))
    assert f"refuses to load {__name__}._Eval" in refused(dft_data.read_pickle_record, path)


def test_corrupt_or_wrong_pickles_are_refused(tmp_path):
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle")
    assert "not a readable pickle" in refused(dft_data.read_pickle_record, tmp_path / "junk.pkl")
    path = write_pickle(tmp_path / "list.pkl", [1, 2])
    assert "holds a list; a G3NAT record is a dict" in refused(dft_data.read_pickle_record, path)


@pytest.mark.parametrize("changes, expected", [
    ({"sequence": "aaxc"}, "sequence: unknown base 'X' at position 2"),
    ({"complementary_sequence": "gtat"}, "complementary_sequence: base 2 of 'GTAT' is 'A'"),
    ({"complementary_sequence": "_ttt", "contacts": {"contact_type": "cross"}},
     "contacts.contact_type: site c0 is on a missing base"),
    ({"contacts": {"contact_type": "diagonal"}}, "contact type 'diagonal' is neither 'same'"),
    ({"contacts": {"coupling_eV": 0.0}}, "contacts.coupling_eV: 0.0 must be a positive"),
    ({"contacts": {"left_atoms": []}}, "contacts.left_atoms: empty; the left electrode"),
    ({"T": np.ones(10)}, "T: 10 values but Egrid has 11"),
    ({"DOS": np.array(["1"] * 11)}, "DOS: array of <U1; expected a numeric array"),
    ({"T": np.r_[np.ones(5), 0.0, np.ones(5)]}, "at index 5 (Egrid -5.3 eV): T: 0.0 is not "
                                                "positive"),
    ({"Egrid": np.linspace(1, 0, 11)}, "at index 1 (Egrid 0.9 eV): Egrid: 0.9 after 1.0; "
                                       "energies must be strictly increasing"),
    ({"Egrid": np.ones(1), "T": np.ones(1), "DOS": np.ones(1)}, "Egrid: 1 energies; at least 2"),
])
def test_bad_g3nat_records_name_file_and_field(tmp_path, changes, expected):
    path = write_pickle(tmp_path / "bad.pkl", g3nat_record(**changes))
    message = refused(dft_data.read_pickle_record, path)
    assert message.startswith(str(path)) and expected in message


def test_pickle_folder_reads_pkl_and_pickle_files_sorted(tmp_path):
    write_pickle(tmp_path / "b.pickle", g3nat_record(sequence="gc", complementary_sequence="gc"))
    write_pickle(tmp_path / "a.pkl", g3nat_record())
    (tmp_path / "notes.txt").write_text("not a record")
    records = dft_data.read_pickle_folder(tmp_path)
    assert [r.primary for r in records] == ["AAAC", "GC"]
    assert [r.source for r in dft_data.read_dft(tmp_path)] == [str(tmp_path / "a.pkl"),
                                                               str(tmp_path / "b.pickle")]
    (tmp_path / "empty").mkdir()
    assert "no *.pkl or *.pickle files" in refused(dft_data.read_dft, tmp_path / "empty")


# ------------------------------------------------------------------------------------------
# Contacts syntax
# ------------------------------------------------------------------------------------------

def test_contacts_default_keywords_and_several_sites_per_electrode():
    parse = dft_data.parse_contacts
    assert parse("", "AAAC", "GTTT", "m") == (Contact("left", "primary", 0, 0.1),
                                              Contact("right", "primary", 3, 0.1))
    assert parse("cross@0.6", "AAAC", "GTTT", "m") == (Contact("left", "primary", 0, 0.6),
                                                       Contact("right", "complement", 0, 0.6))
    assert parse(" r:c0@0.05 ; L: p0, c3@0.2 ; R:p3; ", "AAAC", "GTTT", "m") == (
        Contact("left", "primary", 0, 0.2), Contact("left", "complement", 3, 0.2),
        Contact("right", "complement", 0, 0.05), Contact("right", "primary", 3, 0.1))


@pytest.mark.parametrize("text, expected", [
    ("L:p0;R:p4", "contacts: site p4 is out of range (the primary strand has 4 bases, p0..p3)"),
    ("L:p0;R:c1", "contacts: site c1 is on a missing base (complement 'G-TT')"),
    ("L:p0@0;R:p3", "contacts: coupling '0' must be a positive number of eV"),
    ("L:p0@abc;R:p3", "contacts: coupling 'abc' is not a number"),
    ("L:p0,c3", "contacts: 'L:p0,c3': the right electrode has no contact"),
    ("L:p0;R:x3", "contacts: site 'x3' in 'R:x3' is not p<i>"),
    ("L:p0@0.1,p1@0.2;R:p3", "more than one '@'"),
    ("L:p0;L:p0@0.3;R:p3", "the left electrode touches p0 twice"),
    ("p0;R:p3", "entry 'p0' must start with 'L:' or 'R:'"),
    ("same;R:p3", "'same' stands alone"),
])
def test_bad_contacts_are_refused_with_the_reason(text, expected):
    message = refused(dft_data.parse_contacts, text, "AAAC", "G-TT", "manifest.csv line 2")
    assert message.startswith("manifest.csv line 2: contacts: ") and expected in message


# ------------------------------------------------------------------------------------------
# Manifest CSV
# ------------------------------------------------------------------------------------------

def test_manifest_reads_records_with_their_own_grids_and_contacts(tmp_path):
    (tmp_path / "spectra").mkdir()
    write_spectrum(tmp_path / "spectra" / "one.csv", [-1.0, 0.0, 1.0], [1e-5, 1e-4, 1e-3],
                   [1.0, 2.0, 3.0])
    write_spectrum(tmp_path / "two.csv", np.linspace(-6.0, -4.0, 5))
    (tmp_path / "manifest.csv").write_text(
        "sequence,complement,contacts,spectrum,note\n"
        "acgt,a-gt,\"L:p0,c3@0.2;R:p3;R:c0@0.05\",spectra/one.csv,first\n"
        "\n"
        "ggc,,,two.csv,\n")
    first, second = dft_data.read_dft(tmp_path / "manifest.csv")
    assert (first.primary, first.complement) == ("ACGT", "A-GT")
    assert first.contacts == (Contact("left", "primary", 0, 0.2),
                              Contact("left", "complement", 3, 0.2),
                              Contact("right", "primary", 3, 0.1),
                              Contact("right", "complement", 0, 0.05))
    np.testing.assert_array_equal(first.energies, [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(first.transmission, [1e-5, 1e-4, 1e-3])
    np.testing.assert_array_equal(first.dos, [1.0, 2.0, 3.0])
    assert first.source == f"{tmp_path / 'manifest.csv'} line 2"
    assert (second.primary, second.complement) == ("GGC", "GCC")
    assert second.contacts == (Contact("left", "primary", 0, 0.1),
                               Contact("right", "primary", 2, 0.1))
    assert second.energies.shape == (5,) and second.source.endswith("manifest.csv line 4")


@pytest.mark.parametrize("row, spectrum, expected", [
    ("aczt,,,s.csv", None, "line 2: sequence: unknown base 'Z' at position 2"),
    ("aaac,gttg,,s.csv", None, "line 2: complement: base 3 of 'GTTG' is 'G', which does not "
                               "pair with sequence base 0 ('A')"),
    ("aaac,gtt,,s.csv", None, "line 2: complement: 'GTT' has 3 bases, the sequence 4"),
    ("aaac,,L:p0;R:c9,s.csv", None, "line 2: contacts: site c9 is out of range"),
    ("aaac,,,", None, "line 2: spectrum: empty"),
    ("aaac,,,gone.csv", None, "line 2: spectrum: cannot read"),
    ("aaac,,,s.csv", "energy,T,DOS\n-1,1,1\n0,1,1\n", "s.csv line 1: header: energy,T,DOS; "
                                                      "expected energy_eV,transmission,dos"),
    ("aaac,,,s.csv", "energy_eV,transmission,dos\n-1,1,1\n0,x1,1\n",
     "s.csv line 3: transmission: 'x1' is not a number (spectrum of "),
    ("aaac,,,s.csv", "energy_eV,transmission,dos\n-1,1,1\n0,1\n", "s.csv line 3: 2 values"),
    ("aaac,,,s.csv", "energy_eV,transmission,dos\n-1,1,1\n0,1,-2\n1,1,1\n",
     "s.csv line 3 (spectrum of "),
    ("aaac,,,s.csv", "energy_eV,transmission,dos\n-1,0,1\n0,1,1\n",
     "s.csv line 2 (spectrum of "),
    ("aaac,,,s.csv", "energy_eV,transmission,dos\n-1,1,1\n1,1,1\n1,1,1\n",
     "s.csv line 4 (spectrum of "),
    ("aaac,,,s.csv", "energy_eV,transmission,dos\n-1,1,1\n", "energy_eV: 1 energies; at least 2"),
    ("aaac,,,s.csv", "energy_eV,transmission,dos\n-1,1,1\n0,nan,1\n",
     "transmission: nan is not a finite number"),
])
def test_bad_manifest_records_name_file_line_and_field(tmp_path, row, spectrum, expected):
    write_spectrum(tmp_path / "s.csv", [-1.0, 0.0, 1.0])
    if spectrum is not None:
        (tmp_path / "s.csv").write_text(spectrum)
    (tmp_path / "m.csv").write_text("sequence,complement,contacts,spectrum\n" + row + "\n")
    message = refused(dft_data.read_manifest, tmp_path / "m.csv")
    assert expected in message and (str(tmp_path / "m.csv") in message)


def test_bad_spectrum_values_say_which_and_why(tmp_path):
    (tmp_path / "s.csv").write_text("energy_eV,transmission,dos\n-1,1,1\n0,1,-2\n")
    (tmp_path / "m.csv").write_text("sequence,spectrum\naaac,s.csv\n")
    message = refused(dft_data.read_manifest, tmp_path / "m.csv")
    assert message == (f"{tmp_path / 's.csv'} line 3 (spectrum of {tmp_path / 'm.csv'} line 2): "
                       f"dos: -2.0 is not positive (log10 of it is taken)")


def test_manifest_without_spectrum_column_or_records_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("sequence,complement\naaac,\n")
    assert "line 1: header: no 'spectrum' column" in refused(dft_data.read_dft,
                                                             tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("sequence,spectrum\n\n")
    assert "no records" in refused(dft_data.read_dft, tmp_path / "m.csv")
    assert "no such file or folder" in refused(dft_data.read_dft, tmp_path / "absent.csv")
    (tmp_path / "x.json").write_text("{}")
    assert "not a pickle" in refused(dft_data.read_dft, tmp_path / "x.json")


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data (the real DFT sample) is "
                                                     "not on this machine")
def test_real_g3nat_dft_sample_reads_through_a_manifest(tmp_path):
    spectrum = os.path.relpath(SAMPLE_CSV, tmp_path)
    (tmp_path / "manifest.csv").write_text(
        f"sequence,complement,contacts,spectrum\naaac,,same@0.1,{spectrum}\n")
    (record,) = dft_data.read_dft(tmp_path / "manifest.csv")
    assert (record.primary, record.complement) == ("AAAC", "GTTT")
    assert record.contacts == (Contact("left", "primary", 0, 0.1),
                               Contact("right", "primary", 3, 0.1))
    assert record.energies.shape == record.transmission.shape == record.dos.shape == (201,)
    assert record.energies[0] == pytest.approx(-6.303145)
    assert record.energies[-1] == pytest.approx(-4.303145)
    assert np.all(np.diff(record.energies) > 0)
    assert np.all(record.transmission > 0) and np.all(record.dos > 0)
    assert np.isfinite(np.log10(record.transmission)).all()
