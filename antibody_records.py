"""Antibody records for the conditioned antibody models: an antibody (a heavy chain, or heavy
and light chains joined by '|'), optionally with its antigen's sequence and an affinity (pKd).

`load_records(path)` reads, told apart by suffix and content:

- CSV with `antibody_sequence` ("HEAVY|LIGHT" or "HEAVY"; a column named exactly `sequence`
  is read the same way), or with `heavy` and `light` (also `antibody_heavy`,
  `antibody_light`); optional `antigen_sequence` and `pKd`. Other columns are ignored, so
  CoV-AbDab, paired OAS and the Absci affinity files load as they are.
- JSON: an array of objects (`.json`, or a file starting with '['), or JSON Lines, one object
  a line (`.jsonl`/`.ndjson`, or a file starting with '{'), with the same keys as the CSV:
  `antibody_heavy`, `antibody_light`, `antigen_sequence`, `pKd`, or `antibody_sequence`.
- The single-chain formats of antibody.load_antibody_sequences: FASTA, a CSV whose sequence
  column is found as antibody.py finds it (`HeavySequence`, a header-less file), and TXT (one
  antibody a line, "HEAVY" or "HEAVY|LIGHT"). These have no antigen and no pKd.

Column names and keys match in any case. Empty or missing antigen, pKd and light chain are
None. One file may mix paired and heavy-only records.

Sequences are cleaned as antibody.py does: upper case, surrounding whitespace and alignment gaps
('-', '.') removed. A structural problem stops the read with DataError("FILE line N: ...");
records with residues outside the 20 amino acids (antibody or antigen) or an antibody longer
than `max_residues` are skipped and counted in the RecordReport.
"""

import csv
import json
import math
import os
import string
from dataclasses import dataclass
from typing import NamedTuple

from antibody import AMINO_ACIDS, LoadReport, csv_records, fasta_records
from data import DataError, read_lines


class Record(NamedTuple):
    antibody: str           # "HEAVY" or "HEAVY|LIGHT"
    antigen: str | None     # antigen amino acids; None when absent or empty
    pkd: float | None       # -log10 Kd (M); None when absent or empty
    line: int               # line in the file; in a JSON array, the record's index + 1


@dataclass
class RecordReport(LoadReport):
    """LoadReport's counts and summary line, plus `truncated`: True when `max_records` stopped
    the read with records still to come (the caller says so, naming its own flag)."""
    truncated: bool = False


# The record fields and the column names (or JSON keys, lower case) that give them; the first
# name present wins.
_FIELDS = {"pair": ("antibody_sequence", "sequence"),
           "heavy": ("antibody_heavy", "heavy"),
           "light": ("antibody_light", "light"),
           "antigen": ("antigen_sequence",),
           "pkd": ("pkd",)}
_LETTERS = set(string.ascii_uppercase) | {"*"}   # '*' (a stop) is a residue to skip, not an error
_JSON_TYPES = {str: "a string", int: "a number", float: "a number", bool: "true/false",
               list: "an array", dict: "an object", type(None): "null"}


def parse_pair(text):
    """"HEAVY|LIGHT" -> (HEAVY, LIGHT), "HEAVY" -> (HEAVY, None); parts are stripped, not
    cleaned. ValueError for more than one '|'."""
    heavy, _, light = text.partition("|")
    if "|" in light:
        raise ValueError("more than one '|' in an antibody (HEAVY|LIGHT)")
    return heavy.strip(), light.strip() or None


def is_paired(records):
    """True when any record has a light chain (the data need the '|' between chains)."""
    return any("|" in r.antibody for r in records)


def load_records(path, max_residues=None, max_records=None):
    """(list of Record, RecordReport) from a file in one of the module's formats.

    `max_residues` bounds an antibody's residues (both chains, the '|' not counted);
    `max_records` keeps the first N usable records (report.truncated says if more followed).
    """
    lines = read_lines(path)
    suffix = os.path.splitext(str(path))[1].lower()
    first = next((line.strip() for line in lines if line.strip()), "")
    if suffix in (".fasta", ".fa", ".faa", ".fas") or first.startswith(">"):
        items = ((n, {"heavy": s}) for n, s, _ in fasta_records(path, lines))
    elif suffix in (".json", ".jsonl", ".ndjson") or first[:1] in ("[", "{"):
        items = _json_items(path, lines, array=first.startswith("["))
    elif suffix == ".csv":
        items = _csv_items(path, lines)
    else:
        items = ((n, {"pair": line}) for n, line in enumerate(lines, 1) if line.strip())

    report, records = RecordReport(), []
    for number, fields in items:
        if max_records is not None and len(records) >= max_records:
            report.truncated = True
            break
        record = _record(path, number, fields)
        chains = record.antibody.replace("|", "")
        if set(chains + (record.antigen or "")) - set(AMINO_ACIDS):
            report.skipped_residues += 1
        elif max_residues is not None and len(chains) > max_residues:
            report.skipped_length += 1
        else:
            records.append(record)
            continue
        report.first_skipped_line = report.first_skipped_line or number
    report.kept = len(records)
    if not records:
        summary = report.summary(path)
        raise DataError(f"{path}: no usable records" + (f" ({summary})" if summary else ""))
    return records, report


def _record(path, number, fields):
    """One Record from a record's raw fields (field name -> text, number or None)."""
    where = f"{path} line {number}"
    pair, heavy, light = (fields.get(k) for k in ("pair", "heavy", "light"))
    if not _blank(pair):
        if not (_blank(heavy) and _blank(light)):
            raise DataError(f"{where}: both an antibody_sequence and heavy/light chains; "
                            f"give one or the other")
        if not isinstance(pair, str):
            raise DataError(f"{where}: the antibody is {_JSON_TYPES.get(type(pair))}, not text")
        try:
            heavy, light = parse_pair(pair)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
    heavy = _sequence(where, heavy, "antibody" if _blank(light) else "heavy chain")
    light = _sequence(where, light, "light chain")
    if not heavy:
        raise DataError(f"{where}: {'empty heavy chain' if light else 'no antibody sequence'}")
    antigen = _sequence(where, fields.get("antigen"), "antigen")
    antibody = f"{heavy}|{light}" if light else heavy
    return Record(antibody, antigen or None, _pkd(where, fields.get("pkd")), number)


def _blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


def _sequence(where, value, what):
    """The cleaned sequence ("" when absent), or DataError for a character that is no letter."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: the {what} is {_JSON_TYPES.get(type(value))}, not text")
    sequence = value.strip().upper().replace("-", "").replace(".", "")
    bad = next((c for c in sequence if c not in _LETTERS), None)
    if bad is not None:
        raise DataError(f"{where}: unexpected character {bad!r} in the {what}")
    return sequence


def _pkd(where, value):
    if _blank(value):
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        pkd = float(value)
    except (TypeError, ValueError):
        pkd = math.nan
    if not math.isfinite(pkd):
        raise DataError(f"{where}: pKd {value!r} is not a finite number")
    return pkd


def _csv_items(path, lines):
    reader = csv.reader(lines)
    try:
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: {e}") from None
    names = [h.strip().lower() for h in rows[0]] if rows else []
    columns = {}
    for field, aliases in _FIELDS.items():
        column = next((names.index(a) for a in aliases if a in names), None)
        if column is not None:
            columns[field] = column
    if "pair" not in columns and "heavy" not in columns:
        if "antigen" in columns or "pkd" in columns or "light" in columns:
            raise DataError(f"{path} line 1: no antibody column (antibody_sequence, or heavy "
                            f"and light) in the header {rows[0]}")
        yield from ((n, {"heavy": s}) for n, s in csv_records(path, lines))
        return
    last = max(columns.values())
    for number, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= last:
            raise DataError(f"{path} line {number}: {len(row)} columns, but "
                            f"'{rows[0][last].strip()}' is column {last + 1}")
        yield number, {field: row[column] for field, column in columns.items()}


def _json_items(path, lines, array):
    if array:
        try:
            values = json.loads("\n".join(lines))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column "
                            f"{e.colno})") from None
        numbered = enumerate(values, 1)
    else:
        numbered = _json_lines(path, lines)
    for number, value in numbered:
        if not isinstance(value, dict):
            raise DataError(f"{path} line {number}: {_JSON_TYPES.get(type(value))}, expected "
                            f"an object with antibody_heavy or antibody_sequence")
        keys = {key.strip().lower(): v for key, v in value.items()}
        yield number, {field: next((keys[a] for a in aliases if a in keys), None)
                       for field, aliases in _FIELDS.items()}


def _json_lines(path, lines):
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number}: not valid JSON ({e.msg} at column "
                                f"{e.colno}; JSON Lines holds one object a line)") from None
