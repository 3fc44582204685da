"""Real DFT transport data (transmission T(E) and density of states DOS(E) of DNA duplexes) read
into plain records, from two formats.

(a) G3NAT pickles, one record per file. The layout follows G3NAT's writer and loader
(github.com/wliverno/G3NAT: DNADataset/convert_to_pickle.py `build_record`, and the reader
g3nat/data/pickle.py `load_single_pickle`; the '_' for a missing base is from
g3nat/graph/construction.py `sequence_to_graph`). A record is a dict:

    sequence                str, primary strand 5'->3', lower case in G3NAT's files ('aaac')
    complementary_sequence  str, the other strand also written 5'->3' (the reverse complement:
                            'gttt' for 'aaac'), '_' for a missing base; optional, G3NAT's loader
                            defaults it to the full reverse complement
    Egrid                   numpy float64 (E,), absolute energies in eV (G3NAT's loader centres
                            them on their mean; this reader keeps them as in the file)
    T, DOS                  numpy float64 (E,), linear (not log10); G3NAT's writer clamps them
                            to >= 1e-25, so real records are positive
    contacts                dict, optional: contact_type 'same' | 'cross', coupling_eV (float,
                            the electrode coupling Gamma in eV, both electrodes), left_atoms and
                            right_atoms (1-based ATOM numbers in the PDB, not base indices)
    (v2 records also carry DOSAtom, atoms, gjf_text, energy_reference_eV: read and ignored)

Contacts are placed as G3NAT's loader places them: 'same' puts the left electrode on primary
base 0 and the right one on primary base L-1; 'cross' puts the left electrode on primary base 0
and the right one on complementary base 0 (the 5' end of that strand). Both carry coupling_eV.
Without a `contacts` dict, or without one of its two keys, G3NAT's defaults apply ('same',
0.1 eV). Differences from G3NAT's loader, on purpose: an unknown contact_type is refused (G3NAT
warns and uses 'same'), empty left_atoms/right_atoms are refused (G3NAT's writer refuses them),
and the atom lists are otherwise not used (G3NAT does not use them either).

Pickles are read with a restricted unpickler: the only globals a file may name are numpy's
array, dtype and scalar reconstruction (numpy.ndarray, numpy.dtype, numpy[._]core.multiarray.
_reconstruct and .scalar; numpy[._]core.numeric._frombuffer, which protocol 5 uses for arrays;
_codecs.encode, which protocols 0-2 use for bytes) and the builtins of plain data (dict, list,
tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool). Anything else is
refused by name before it is called, so a hostile file executes nothing.

(b) A manifest CSV with the columns
    sequence    primary strand 5'->3' (A, T, G, C)
    complement  optional: 5'->3', '-' (or '_') for a missing base; empty: the full complement
    contacts    optional: see parse_contacts; empty: L:p0@0.1;R:p{L-1}@0.1
    spectrum    a CSV path relative to the manifest (or absolute), with the header
                energy_eV,transmission,dos and one row per energy (absolute eV, linear T, DOS)
Other columns are ignored. Blank lines are skipped.

Every problem raises data.DataError with one message that names the file (and line) and the
field. Records of one data set may have different energy grids: nothing is resampled.
"""

import codecs
import csv
import importlib
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import DataError, read_lines
from tight_binding import COMPLEMENT as PAIR
from tight_binding import GAMMA as DEFAULT_GAMMA   # 0.1 eV, G3NAT's default coupling too
from tight_binding import MISSING, Contact, default_contacts, full_complement

SPECTRUM_HEADER = ("energy_eV", "transmission", "dos")
PICKLE_SUFFIXES = (".pkl", ".pickle")
G3NAT_REQUIRED = ("sequence", "Egrid", "T", "DOS")


@dataclass(frozen=True, eq=False)
class TransportRecord:
    """One duplex and its spectrum. The arrays are float64 of one length E >= 2, energies
    strictly increasing (eV as in the file), transmission and dos positive. Treat them as
    read-only."""
    primary: str                # A/T/G/C, 5'->3'
    complement: str             # 5'->3', '-' for a missing base; base j pairs primary[L-1-j]
    contacts: tuple             # of Contact, left electrode's first
    energies: np.ndarray
    transmission: np.ndarray
    dos: np.ndarray
    source: str                 # "file" or "file line N", for messages


# ------------------------------------------------------------------------------------------
# Duplexes and contacts
# ------------------------------------------------------------------------------------------

def _check_primary(text, where, field):
    primary = text.strip().upper()
    if not primary:
        raise DataError(f"{where}: {field}: empty; a sequence of A, T, G, C is needed")
    for i, b in enumerate(primary):
        if b not in PAIR:
            raise DataError(f"{where}: {field}: unknown base {b!r} at position {i} of "
                            f"{primary!r} (A, T, G, C only)")
    return primary


def _check_complement(text, primary, where, field):
    """The complement as a record holds it ('-' for missing), or DataError; empty: full."""
    expected = full_complement(primary)
    complement = text.strip().upper().replace("_", MISSING)
    if not complement:
        return expected
    if len(complement) != len(primary):
        raise DataError(f"{where}: {field}: {complement!r} has {len(complement)} bases, the "
                        f"sequence {len(primary)} (expected {expected!r}, '-' for a missing base)")
    for j, (c, e) in enumerate(zip(complement, expected)):
        if c != MISSING and c != e:
            raise DataError(f"{where}: {field}: base {j} of {complement!r} is {c!r}, which does "
                            f"not pair with sequence base {len(primary) - 1 - j} "
                            f"({primary[len(primary) - 1 - j]!r}); expected {expected!r} written "
                            f"5'->3', '-' for a missing base")
    return complement


def _gamma(text, where):
    try:
        gamma = float(text)
    except ValueError:
        raise DataError(f"{where}: contacts: coupling {text!r} is not a number (eV)") from None
    if not (math.isfinite(gamma) and gamma > 0):
        raise DataError(f"{where}: contacts: coupling {text!r} must be a positive number of eV")
    return gamma


def _site(primary, complement, strand, base, where, field="contacts"):
    """Refuses a contact site that is out of range or on a missing base."""
    letter, seq = ("p", primary) if strand == "primary" else ("c", complement)
    name = "primary strand" if strand == "primary" else "complementary strand"
    if not 0 <= base < len(seq):
        raise DataError(f"{where}: {field}: site {letter}{base} is out of range (the {name} has "
                        f"{len(seq)} bases, {letter}0..{letter}{len(seq) - 1})")
    if seq[base] == MISSING:
        raise DataError(f"{where}: {field}: site {letter}{base} is on a missing base "
                        f"(complement {complement!r})")


def contacts_for_type(contact_type, gamma, primary, complement, where, field="contacts"):
    """G3NAT's placement: 'same' = left on p0, right on p{L-1}; 'cross' = left on p0, right on
    c0 (the 5' end of the complementary strand); both electrodes couple with `gamma` eV."""
    if contact_type == "same":
        contacts = default_contacts(primary, gamma)
    elif contact_type == "cross":
        contacts = (Contact("left", "primary", 0, gamma), Contact("right", "complement", 0, gamma))
    else:
        raise DataError(f"{where}: {field}: contact type {contact_type!r} is neither 'same' "
                        f"(both electrodes on the primary strand) nor 'cross'")
    for c in contacts:
        _site(primary, complement, c.strand, c.base, where, field)
    return contacts


_ELECTRODES = {"l": "left", "left": "left", "r": "right", "right": "right"}
_STRANDS = {"p": "primary", "c": "complement"}


def parse_contacts(text, primary, complement, where):
    """The contacts of a duplex from a manifest cell, as a tuple of Contact (left first).

    Syntax: entries separated by ';', each `ELECTRODE:SITE[,SITE...][@GAMMA]`:
        ELECTRODE   L or R (or left, right; any case)
        SITE        p<i> for primary base i, c<i> for complementary base i (0-based, each strand
                    counted 5'->3' as written); p-<i>, c-<i> count from the 3' end (p-1 is
                    the primary strand's last base), so one spec fits duplexes of any length
        GAMMA       coupling in eV (> 0) for every site of the entry; default 0.1
    An electrode may have several entries (several sites, different couplings), e.g.
    `L:p0,c3@0.2;R:p3;R:c0@0.05`. The whole cell may instead be `same` or `cross` (optionally
    `@GAMMA`): G3NAT's two placements (see contacts_for_type). Empty or None: L:p0@0.1;R:p{L-1}@0.1.
    `primary` and `complement` are the checked strings of the record ('-' for a missing base);
    `where` prefixes every message (e.g. "manifest.csv line 3"). Raises DataError for a bad
    token, a site out of range or on a missing base, a coupling that is not positive, a site
    given twice for one electrode, or an electrode without any site.
    """
    text = (text or "").strip()
    if not text:
        return contacts_for_type("same", DEFAULT_GAMMA, primary, complement, where)
    entries = [e.strip() for e in text.split(";") if e.strip()]
    keyword, _, gamma_text = entries[0].partition("@")
    if keyword.strip().lower() in ("same", "cross"):
        if len(entries) > 1:
            raise DataError(f"{where}: contacts: {text!r}: '{keyword.strip()}' stands alone "
                            f"(it places both electrodes)")
        gamma = _gamma(gamma_text.strip(), where) if gamma_text.strip() else DEFAULT_GAMMA
        return contacts_for_type(keyword.strip().lower(), gamma, primary, complement, where)
    contacts = {"left": [], "right": []}
    for entry in entries:
        head, colon, rest = entry.partition(":")
        electrode = _ELECTRODES.get(head.strip().lower())
        if not colon or electrode is None:
            raise DataError(f"{where}: contacts: entry {entry!r} must start with 'L:' or 'R:' "
                            f"(e.g. L:p0@0.1;R:p{len(primary) - 1}@0.1)")
        if rest.count("@") > 1:
            raise DataError(f"{where}: contacts: entry {entry!r} has more than one '@': one "
                            f"coupling per entry; write separate entries for different couplings")
        sites, _, gamma_text = rest.partition("@")
        gamma = _gamma(gamma_text.strip(), where) if gamma_text.strip() else DEFAULT_GAMMA
        if not sites.strip():
            raise DataError(f"{where}: contacts: entry {entry!r} names no site (p<i> or c<i>)")
        for token in sites.split(","):
            token = token.strip()
            strand = _STRANDS.get(token[:1].lower())
            digits = token[2:] if token[1:2] == "-" else token[1:]
            if strand is None or not (digits.isascii() and digits.isdigit()):
                raise DataError(f"{where}: contacts: site {token!r} in {entry!r} is not p<i> "
                                f"(primary base i) or c<i> (complementary base i)")
            base = int(digits)
            if token[1:2] == "-":   # counted from the 3' end: p-1 is the last base
                length = len(primary)   # both strands have the primary's length
                if not 1 <= base <= length:
                    raise DataError(f"{where}: contacts: site {token} is out of range (counted "
                                    f"from the 3' end: {token[0]}-1..{token[0]}-{length})")
                base = length - base
            _site(primary, complement, strand, base, where)
            if any(c.strand == strand and c.base == base for c in contacts[electrode]):
                raise DataError(f"{where}: contacts: the {electrode} electrode touches "
                                f"{token} twice")
            contacts[electrode].append(Contact(electrode, strand, base, gamma))
    for electrode, letter in (("left", "L"), ("right", "R")):
        if not contacts[electrode]:
            raise DataError(f"{where}: contacts: {text!r}: the {electrode} electrode has no "
                            f"contact (add e.g. {letter}:p0@0.1)")
    return tuple(contacts["left"] + contacts["right"])


def format_contacts(contacts):
    """The `contacts` cell that parse_contacts reads back as `contacts` ('' for None, the
    default placement): one `L:p0@0.1` entry per contact, the coupling exact."""
    if contacts is None:
        return ""
    return ";".join(f"{c.electrode[0].upper()}:{c.strand[0]}{c.base}@{c.gamma!r}"
                    for c in contacts)


# ------------------------------------------------------------------------------------------
# Spectra
# ------------------------------------------------------------------------------------------

def _check_spectrum(energies, transmission, dos, where, names, at):
    """Refuses fewer than 2 energies, non-finite values, energies not strictly increasing and
    non-positive T or DOS. `names` are the three field names, `at(i)` locates value i."""
    if len(energies) < 2:
        raise DataError(f"{where}: {names[0]}: {len(energies)} energies; at least 2 are needed")
    for name, values in zip(names, (energies, transmission, dos)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise DataError(f"{at(bad[0])}: {name}: {float(values[bad[0]])!r} is not a finite "
                            f"number")
    steps = np.flatnonzero(np.diff(energies) <= 0)
    if steps.size:
        i = steps[0] + 1
        raise DataError(f"{at(i)}: {names[0]}: {float(energies[i])!r} after "
                        f"{float(energies[i - 1])!r}; energies must be strictly increasing")
    for name, values in zip(names[1:], (transmission, dos)):
        bad = np.flatnonzero(values <= 0)
        if bad.size:
            raise DataError(f"{at(bad[0])}: {name}: {float(values[bad[0]])!r} is not positive "
                            f"(log10 of it is taken)")


def _read_spectrum(path, where):
    """(energies, transmission, dos) from an energy_eV,transmission,dos CSV, or DataError.
    `where` (the manifest line) is named when the file itself cannot be read."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: spectrum: {path} is not a text file ({e.reason} at byte "
                        f"{e.start})") from None
    except OSError as e:
        raise DataError(f"{where}: spectrum: cannot read {path}: {e.strerror}") from None
    rows = [(n, row) for n, row in enumerate(csv.reader(lines), 1) if any(c.strip() for c in row)]
    header = tuple(c.strip() for c in rows[0][1]) if rows else ()
    if tuple(h.lower() for h in header) != tuple(h.lower() for h in SPECTRUM_HEADER):
        line = rows[0][0] if rows else 1
        raise DataError(f"{path} line {line}: header: {','.join(header) or '(empty)'}; expected "
                        f"{','.join(SPECTRUM_HEADER)} (spectrum of {where})")
    numbers, line_numbers = [], []
    for n, row in rows[1:]:
        if len(row) != 3:
            raise DataError(f"{path} line {n}: {len(row)} values; expected 3 "
                            f"({','.join(SPECTRUM_HEADER)}) (spectrum of {where})")
        values = []
        for name, cell in zip(SPECTRUM_HEADER, row):
            try:
                values.append(float(cell))
            except ValueError:
                raise DataError(f"{path} line {n}: {name}: {cell.strip()!r} is not a number "
                                f"(spectrum of {where})") from None
        numbers.append(values)
        line_numbers.append(n)
    table = np.array(numbers, dtype=np.float64).reshape(-1, 3)
    energies, transmission, dos = (np.ascontiguousarray(table[:, k]) for k in range(3))
    _check_spectrum(energies, transmission, dos, f"{path} (spectrum of {where})",
                    SPECTRUM_HEADER,
                    lambda i: f"{path} line {line_numbers[i]} (spectrum of {where})")
    return energies, transmission, dos


# ------------------------------------------------------------------------------------------
# G3NAT pickles
# ------------------------------------------------------------------------------------------

class _Refused(pickle.UnpicklingError):
    """A global that the restricted unpickler does not admit."""


_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
             "float", "complex", "bool")
_allowed = None


def _numpy_global(submodule, name):
    """numpy's own object, from numpy._core (numpy >= 2) or numpy.core (older)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    return None


def _allowed_globals():
    """(module, name) -> object: everything a pickle of numpy arrays and plain data names.
    _codecs.encode carries bytes in protocols 0-2; _frombuffer carries arrays in protocol 5."""
    global _allowed
    if _allowed is None:
        import builtins
        table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                 ("_codecs", "encode"): codecs.encode}
        for submodule, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                ("numeric", "_frombuffer")):
            obj = _numpy_global(submodule, name)
            if obj is not None:
                for package in ("numpy._core", "numpy.core"):
                    table[(f"{package}.{submodule}", name)] = obj
        for name in _BUILTINS:
            for module in ("builtins", "__builtin__"):
                table[(module, name)] = getattr(builtins, name)
        _allowed = table
    return _allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals of _allowed_globals(); refuses any other by name."""

    def find_class(self, module, name):
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def _load_pickle(path):
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except _Refused as e:
        raise DataError(f"{path}: refuses to load {e} (only numpy arrays, dtypes, dicts, lists, "
                        f"strings and numbers)") from None
    except OSError as e:
        raise DataError(f"cannot read pickle {path}: {e.strerror}") from None
    except Exception as e:   # a corrupt or truncated file: any error the unpickler raises
        raise DataError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _vector(value, where, field):
    """A 1-D float64 copy of a numeric numpy array or list, or DataError."""
    if isinstance(value, np.ndarray):
        ok = value.dtype.kind in "iuf"
    else:
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in value)
    if not ok:
        kind = f"array of {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise DataError(f"{where}: {field}: {kind}; expected a numeric array or list")
    array = np.array(value, dtype=np.float64)
    if array.ndim != 1:
        raise DataError(f"{where}: {field}: shape {array.shape}; expected one value per energy "
                        f"(1-D)")
    return array


def _number(value, where, field):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{where}: {field}: {value!r} is not a number")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise DataError(f"{where}: {field}: {value!r} must be a positive number of eV")
    return value


def read_pickle_record(path):
    """A TransportRecord from one G3NAT pickle (layout in the module docstring), or DataError.
    The file is read with a restricted unpickler: nothing in it is executed."""
    where = str(path)
    record = _load_pickle(path)
    if not isinstance(record, dict):
        raise DataError(f"{where}: holds a {type(record).__name__}; a G3NAT record is a dict")
    for key in G3NAT_REQUIRED:
        if key not in record:
            raise DataError(f"{where}: missing key {key!r} (a G3NAT record has sequence, "
                            f"complementary_sequence, Egrid, T, DOS, contacts)")
    for key in ("sequence", "complementary_sequence"):
        if key in record and not isinstance(record[key], str):
            raise DataError(f"{where}: {key}: {type(record[key]).__name__}; expected a string")
    primary = _check_primary(record["sequence"], where, "sequence")
    complement = _check_complement(record.get("complementary_sequence", ""), primary, where,
                                   "complementary_sequence")

    contacts = record.get("contacts", {})
    if not isinstance(contacts, dict):
        raise DataError(f"{where}: contacts: {type(contacts).__name__}; expected a dict with "
                        f"contact_type and coupling_eV")
    for side in ("left_atoms", "right_atoms"):
        atoms = contacts.get(side)
        if isinstance(atoms, (list, tuple, np.ndarray)) and len(atoms) == 0:
            raise DataError(f"{where}: contacts.{side}: empty; the {side[:-6]} electrode "
                            f"touches nothing")
    gamma = _number(contacts.get("coupling_eV", DEFAULT_GAMMA), where, "contacts.coupling_eV")
    contact_type = contacts.get("contact_type", "same")
    contact_type = contact_type.strip().lower() if isinstance(contact_type, str) else contact_type
    placed = contacts_for_type(contact_type, gamma, primary, complement, where,
                               "contacts.contact_type")

    energies, transmission, dos = (_vector(record[k], where, k) for k in ("Egrid", "T", "DOS"))
    for key, values in (("T", transmission), ("DOS", dos)):
        if len(values) != len(energies):
            raise DataError(f"{where}: {key}: {len(values)} values but Egrid has "
                            f"{len(energies)}")
    _check_spectrum(energies, transmission, dos, where, ("Egrid", "T", "DOS"),
                    lambda i: f"{where}: at index {i} (Egrid {float(energies[i])!r} eV)")
    return TransportRecord(primary, complement, placed, energies, transmission, dos, where)


def read_pickle_folder(folder):
    """The records of every *.pkl and *.pickle file directly in `folder`, sorted by name."""
    folder = Path(folder)
    try:
        paths = sorted(p for p in folder.iterdir()
                       if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    except OSError as e:
        raise DataError(f"cannot read folder {folder}: {e.strerror}") from None
    if not paths:
        raise DataError(f"{folder}: no *.pkl or *.pickle files")
    return [read_pickle_record(p) for p in paths]


# ------------------------------------------------------------------------------------------
# Manifest CSV
# ------------------------------------------------------------------------------------------

def read_manifest(path):
    """The records of a manifest CSV (columns in the module docstring), in file order."""
    path = Path(path)
    rows = [(n, row) for n, row in enumerate(csv.reader(read_lines(path)), 1)
            if any(c.strip() for c in row)]
    header = [h.strip().lower() for h in rows[0][1]] if rows else []
    for column in ("sequence", "spectrum"):
        if column not in header:
            raise DataError(f"{path} line {rows[0][0] if rows else 1}: header: no {column!r} "
                            f"column (columns: sequence, complement, contacts, spectrum; got "
                            f"{','.join(header) or 'nothing'})")
    col = {name: header.index(name) for name in ("sequence", "complement", "contacts",
                                                 "spectrum") if name in header}
    records = []
    for n, row in rows[1:]:
        where = f"{path} line {n}"
        if len(row) > len(header):
            raise DataError(f"{where}: {len(row)} columns, the header has {len(header)}")
        cells = {name: (row[i] if i < len(row) else "") for name, i in col.items()}
        primary = _check_primary(cells["sequence"], where, "sequence")
        complement = _check_complement(cells.get("complement", ""), primary, where, "complement")
        contacts = parse_contacts(cells.get("contacts", ""), primary, complement, where)
        spectrum = cells["spectrum"].strip()
        if not spectrum:
            raise DataError(f"{where}: spectrum: empty; give a CSV path relative to the manifest")
        spectrum_path = Path(os.path.join(path.parent, spectrum))
        energies, transmission, dos = _read_spectrum(spectrum_path, where)
        records.append(TransportRecord(primary, complement, contacts, energies, transmission,
                                       dos, where))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def is_dft_source(path):
    """Whether `path` is for `read_dft`: a folder, a pickle, or a CSV whose header has a
    `spectrum` column (a manifest; a DNA CSV has none)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    if path.suffix.lower() != ".csv" or not path.is_file():
        return False
    lines = read_lines(path)
    header = next(csv.reader(lines[:1]), [])
    return "spectrum" in [h.strip().lower() for h in header]


def read_dft(path):
    """The records at `path`: a folder of G3NAT pickles, one pickle (.pkl/.pickle), or a
    manifest CSV (.csv). Always a list; grids are returned as they are, not resampled."""
    path = Path(path)
    if path.is_dir():
        return read_pickle_folder(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return [read_pickle_record(path)]
    if path.suffix.lower() == ".csv":
        return read_manifest(path)
    raise DataError(f"{path}: not a pickle (.pkl, .pickle), a folder of them or a manifest "
                    f"CSV (.csv)")
