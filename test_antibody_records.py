"""antibody_records: every format read back, every bad record named by file and line, skips
counted, and the three real paired/antigen/affinity files."""

import json

import pytest

import antibody
from antibody_records import Record, is_paired, load_records, parse_pair
from conftest import SHARED_DATA
from data import DataError

H = "EVQLVESGGGLVQPGGSLRLSCAAS"
L = "DIQMTQSPSSLSASVGDRVTITC"
AG = "RVQPTESIVRFPNITNLCPF"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path, **kwargs):
    with pytest.raises(DataError) as caught:
        load_records(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------

def test_csv_antibody_sequence_with_antigen_and_pkd(tmp_path):
    path = write(tmp_path, "a.csv", "antibody_sequence,Antigen_Sequence,PKD,binds\n"
                                    f"{H}|{L},{AG},7.5,1\n"
                                    f"{H.lower()} | {L} ,{AG},,1\n"
                                    "\n"
                                    f"{H},,8,0\n")
    records, report = load_records(path)
    assert records == [Record(f"{H}|{L}", AG, 7.5, 2), Record(f"{H}|{L}", AG, None, 3),
                       Record(H, None, 8.0, 5)]
    assert report.kept == 3 and report.summary(path) is None and not report.truncated
    assert is_paired(records)    # a mixed file is allowed, and is paired


def test_csv_heavy_light_ignores_other_columns(tmp_path):
    path = write(tmp_path, "b.csv", "id,Heavy,LIGHT,light_locus,pKd\n"
                                    f"x1,{H},{L},K,9.25\n"
                                    f"x2,{H[:5]}-..{H[5:]},,L,\n")
    records, _ = load_records(path)
    assert records == [Record(f"{H}|{L}", None, 9.25, 2), Record(H, None, None, 3)]


def test_json_array_and_json_lines(tmp_path):
    objects = [{"antibody_heavy": H, "antibody_light": L, "antigen_sequence": AG, "pKd": 6.1},
               {"Antibody_Heavy": H, "antibody_light": None, "antigen_sequence": "", "pkd": "7"},
               {"antibody_sequence": f"{H}|{L}", "PKD": None, "note": "ignored"}]
    expected = [Record(f"{H}|{L}", AG, 6.1, 1), Record(H, None, 7.0, 2),
                Record(f"{H}|{L}", None, None, 3)]
    array = write(tmp_path, "r.json", json.dumps(objects, indent=2))
    assert load_records(array)[0] == expected      # line = index in the array + 1
    text = "\n".join(json.dumps(o) for o in objects[:2]) + "\n\n" + json.dumps(objects[2])
    expected[2] = expected[2]._replace(line=4)
    assert load_records(write(tmp_path, "r.jsonl", text))[0] == expected
    assert load_records(write(tmp_path, "r.txt", text))[0] == expected   # told by content


def test_single_chain_fasta_csv_and_txt_match_antibody_py(tmp_path):
    fasta = write(tmp_path, "s.fasta", f">a\n{H[:10]}\n{H[10:]}\n>b\n{L}\n")
    records, _ = load_records(fasta)
    assert records == [Record(H, None, None, 2), Record(L, None, None, 5)]
    assert not is_paired(records)
    therasabdab = write(tmp_path, "t.csv", f"Therapeutic,HeavySequence\nx,{H}\n")
    assert load_records(therasabdab)[0] == [Record(H, None, None, 2)]
    txt = write(tmp_path, "s.txt", f"{H}\n\n{H}|{L}\n")
    assert load_records(txt)[0] == [Record(H, None, None, 1), Record(f"{H}|{L}", None, None, 3)]


def test_parse_pair():
    assert parse_pair(f"{H}|{L}") == (H, L)
    assert parse_pair(f" {H} ") == (H, None)
    assert parse_pair(f"{H}|") == (H, None)
    with pytest.raises(ValueError):
        parse_pair(f"{H}|{L}|{L}")


# ------------------------------------------------------------------------------------------
# Bad records: one line naming the file and the line
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, line, what", [
    ("a.csv", f"antibody_sequence,pKd\n{H},7\n{H},abc\n", 3, "pKd 'abc' is not a finite number"),
    ("a.csv", f"antibody_sequence,pKd\n{H},nan\n", 2, "pKd 'nan' is not a finite number"),
    ("a.csv", f"heavy,light,pKd\n{H},{L},7\n{H},{L}\n", 3, "2 columns, but 'pKd' is column 3"),
    ("a.csv", f"heavy,light\n{H},{L}\n,{L}\n", 3, "empty heavy chain"),
    ("a.csv", f"antibody_sequence\n{H}|\n|{L}\n", 3, "empty heavy chain"),
    ("a.csv", f"heavy,light\n{H},{L}1\n", 2, "unexpected character '1' in the light chain"),
    ("a.csv", f"antibody_sequence,antigen_sequence\n{H},{AG}!\n", 2,
     "unexpected character '!' in the antigen"),
    ("a.csv", f"antibody_sequence\n{H}|{L}|{L}\n", 2, "more than one '|'"),
    ("a.csv", f"antigen_sequence,pKd\n{AG},7\n", 1, "no antibody column"),
    ("a.json", f'[{{"antibody_heavy": "{H}"}},\n 5]', 2, "a number, expected an object"),
    ("a.json", f'[{{"antibody_heavy": "{H}"}},\n {{"antibody_heavy": }}]', 2,
     "not valid JSON (Expecting value at column 21)"),
    ("a.json", f'[{{"antibody_heavy": "{H}", "pKd": Infinity}}]', 1,
     "pKd inf is not a finite number"),
    ("a.json", '[{"antibody_heavy": 12}]', 1, "the antibody is a number, not text"),
    ("a.json", f'[{{"antibody_light": "{L}"}}]', 1, "empty heavy chain"),
    ("a.json", f'[{{"antigen_sequence": "{AG}"}}]', 1, "no antibody sequence"),
    ("a.json", f'[{{"antibody_sequence": "{H}", "antibody_heavy": "{H}"}}]', 1,
     "both an antibody_sequence and heavy/light chains"),
    ("a.jsonl", f'{{"antibody_heavy": "{H}"}}\n{{"antibody_heavy": "{H}",}}\n', 2,
     "not valid JSON (Expecting property name enclosed in double quotes at column"),
    ("a.jsonl", f'{{"antibody_heavy": "{H}"}}\n["{H}"]\n', 2, "an array, expected an object"),
    ("a.fasta", f">a\n{H}\n>b\n\n>c\n{H}\n", 4, "no antibody sequence"),
    ("a.fasta", f">a\n{H}\n>b\n{H}|{L}\n", 4, "unexpected character '|' in the antibody"),
    ("a.txt", f"{H}\n{H} {L}\n", 2, "unexpected character ' ' in the antibody"),
])
def test_bad_record_names_file_and_line(tmp_path, name, text, line, what):
    path = write(tmp_path, name, text)
    message = error_of(path)
    assert message.startswith(f"{path} line {line}: ") and what in message, message


def test_no_usable_record_and_unreadable_file(tmp_path):
    assert error_of(write(tmp_path, "e.csv", "heavy,light\n")) == \
        f"{tmp_path / 'e.csv'}: no usable records"
    path = write(tmp_path, "x.csv", f"heavy,light\n{H}X,{L}\n")
    assert error_of(path) == (f"{path}: no usable records ({path}: skipped 1 with residues "
                              f"other than the 20 amino acids (first at line 2); kept 0)")
    assert "cannot read data file" in error_of(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------
# Skips, max_residues, max_records
# ------------------------------------------------------------------------------------------

def test_skipped_records_are_counted(tmp_path):
    path = write(tmp_path, "s.csv", "antibody_sequence,antigen_sequence\n"
                                    f"{H}|{L},{AG}\n"
                                    f"{H}|{L},{AG}X\n"        # antigen residue: skipped
                                    f"{H}B|{L},{AG}\n"        # antibody residue: skipped
                                    f"{H}*,\n"                # stop codon: skipped
                                    f"{H}|{L}{L},\n"          # too long: skipped
                                    f"{H},{AG}\n")
    limit = len(H) + len(L)                                  # the '|' does not count
    records, report = load_records(path, max_residues=limit)
    assert [r.line for r in records] == [2, 7]
    assert (report.kept, report.skipped_residues, report.skipped_length,
            report.first_skipped_line) == (2, 3, 1, 3)
    assert report.summary(path) == (f"{path}: skipped 3 with residues other than the 20 amino "
                                    f"acids and 1 too long for the model (first at line 3); "
                                    f"kept 2")


def test_max_records_keeps_the_first_usable_and_stops(tmp_path):
    body = "".join(f"{H}X\n" if i == 1 else f"{H}\n" for i in range(5))
    path = write(tmp_path, "m.csv", "heavy\n" + body + "!!!\n")   # the bad line is never read
    records, report = load_records(path, max_records=3)
    assert [r.line for r in records] == [2, 4, 5]
    assert report.truncated and report.kept == 3 and report.skipped_residues == 1
    records, report = load_records(write(tmp_path, "n.csv", "heavy\n" + f"{H}\n" * 3),
                                   max_records=3)
    assert len(records) == 3 and not report.truncated


# ------------------------------------------------------------------------------------------
# The real files in ../shared/data
# ------------------------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(),
                                  reason="../shared/data is not beside this clone")


@needs_shared
def test_real_paired_oas():
    records, report = load_records(SHARED_DATA / "oas_jaffe2022_donor3_paired.csv")
    assert len(records) == 7201 and report.summary("x") is None
    assert all("|" in r.antibody and r.antigen is None and r.pkd is None for r in records)
    assert is_paired(records)
    lengths = [len(parse_pair(r.antibody)[0]) for r in records]
    assert min(lengths) >= 111 and max(lengths) <= 136


@needs_shared
def test_real_covabdab_with_antigens():
    records, _ = load_records(SHARED_DATA / "covabdab_sars2_pairs.csv")
    assert len(records) == 1587
    assert all(r.antigen and r.pkd is None for r in records) and is_paired(records)
    assert len({r.antigen for r in records}) == 4          # RBD, S2, NTD, N


@needs_shared
def test_real_absci_affinities():
    records, _ = load_records(SHARED_DATA / "absci2023_trastuzumab_her2_spr_kd.csv")
    pkd = [r.pkd for r in records]
    assert len(records) == 758 and all(r.antigen is None for r in records)
    assert round(min(pkd), 2) == 5.60 and round(max(pkd), 2) == 9.25


@needs_shared
def test_real_single_chain_fasta_reads_as_antibody_py_does():
    path = SHARED_DATA / "oas_jaffe2022_donor3_vh.fasta"
    records, _ = load_records(path, max_residues=158)
    assert [r.antibody for r in records] == antibody.load_antibody_sequences(path, 158)[0]
    assert len(records) == 8185 and not is_paired(records)
