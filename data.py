"""Data machinery every model family shares: the error a bad input raises, reading a text file,
the train/validation split, each epoch's order, and the fingerprint that tells a resume whether
its data changed. The families' own data live in antibody.py and dna.py.

Everything here is deterministic: an epoch's order is a function of (seed, epoch), so a resumed
run sees exactly the batches an uninterrupted one would.
"""

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch

# The numpy random streams, one per use, all seeded by (--seed, stream): a new use takes a new
# number, so that no existing stream (and no existing run) changes.
STREAM_ANTIBODY, STREAM_DNA, STREAM_SPLIT, STREAM_EPOCH = 1, 2, 3, 4
STREAM_BINDERS, STREAM_HELD_OUT_ANTIGENS = 5, 6


class DataError(Exception):
    """Input data that cannot be used; the message names the file and line."""


@dataclass
class Dataset:
    """A family's data as the training loop sees it."""
    data: object            # has __len__ and batch(indices) -> dict of tensors
    train: torch.Tensor     # indices into `data`
    val: torch.Tensor
    fingerprint: str        # data.fingerprint of what defines the samples
    checkpoint_extras: dict = field(default_factory=dict)   # saved in every checkpoint
    test: torch.Tensor = None   # --test-data: scored once, at the end, with the best model


def read_lines(path):
    """The lines of a UTF-8 text file (a byte-order mark is dropped), or DataError."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror}") from None


def split_indices(n, val_fraction, seed, groups=None):
    """(train indices, validation indices): a seeded shuffle, at least one of each.

    With `groups` (a key per sample), the samples of a group never straddle the split:
    validation takes whole groups, in the shuffled order of their members, until it holds
    its share. Where every group has one sample this is the ungrouped split exactly.
    """
    order = np.random.default_rng([seed, STREAM_SPLIT]).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    if groups is None:
        val = order[:n_val]
    else:
        members = {}
        for i, key in enumerate(groups):
            members.setdefault(key, []).append(i)
        val, taken = [], set()
        for i in order:
            if len(val) >= n_val:
                break
            if groups[i] not in taken:
                taken.add(groups[i])
                val += members[groups[i]]
        if len(val) == n:
            raise DataError("every sample is the same duplex: none is left to train on")
    in_val = np.zeros(n, dtype=bool)
    in_val[np.asarray(val, dtype=np.int64)] = True
    return torch.from_numpy(np.flatnonzero(~in_val)), torch.from_numpy(np.flatnonzero(in_val))


def epoch_order(n, seed, epoch):
    """The order of an epoch's samples: a pure function of (n, seed, epoch)."""
    return torch.from_numpy(np.random.default_rng([seed, STREAM_EPOCH, epoch]).permutation(n))


def fingerprint(*parts):
    """A short digest of the data a run trains on, so a resume can tell if it changed.
    Parts are bytes (hashed as they are) or plain values (hashed by their repr)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else repr(part).encode())
    return h.hexdigest()[:16]


def split_dataset(samples, settings, fingerprint_, source, checkpoint_extras=None, groups=None):
    """A Dataset of `samples` split by --val-fraction and --seed (by whole `groups` where
    given), or DataError when there are too few to train and validate (`source` names the
    input in that message)."""
    if len(samples) < 2:
        raise DataError(f"{source}: at least 2 samples are needed (one to train, one to "
                        f"validate), got {len(samples)}")
    splits = _seeded_splits(len(samples), settings, groups, source)
    return Dataset(samples, splits.train, splits.val, split_fingerprint(fingerprint_, splits),
                   checkpoint_extras or {})


def _seeded_splits(n, settings, groups, source):
    try:
        train, val = split_indices(n, settings["val_fraction"], settings["seed"], groups)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    regrouped = groups is not None and not torch.equal(
        val, split_indices(n, settings["val_fraction"], settings["seed"])[1])
    return Splits(train, val, regrouped=regrouped)


@dataclass
class Splits:
    """Which records train, validate and test, as index tensors into the records."""
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor = None
    fixed: bool = False     # --val-data gave the validation set
    regrouped: bool = False  # grouping moved records across the plain seeded split


def records_and_splits(settings, read, builtin, groups_of=None):
    """(records, Splits, source) of a run's data: --data (or --train-data) or the built-in
    records, capped at --max-samples, split by --val-fraction and --seed (by whole groups,
    `groups_of(records)`, where given), or validated on --val-data; --test-data is appended
    after them. `read(path)` returns a file's records as a list, `builtin()` the built-in
    ones. DataError when there are too few to train and validate."""
    main_path = settings.get("train_data") or settings["data"]
    source = main_path or "built-in data"
    main = read(main_path) if main_path else builtin()
    if settings.get("max_samples"):
        main = main[:settings["max_samples"]]
    val = read(settings["val_data"]) if settings.get("val_data") else None
    test = read(settings["test_data"]) if settings.get("test_data") else None
    records = main + (val or []) + (test or [])
    n = len(main)
    if val is not None:
        if not main:
            raise DataError(f"{source}: no records to train on")
        train_idx, val_idx = torch.arange(n), torch.arange(n, n + len(val))
    else:
        if n < 2:
            raise DataError(f"{source}: at least 2 samples are needed (one to train, one to "
                            f"validate), got {n}")
        splits = _seeded_splits(n, settings, groups_of(main) if groups_of else None, source)
    test_idx = None if test is None else torch.arange(len(records) - len(test), len(records))
    if val is not None:
        return records, Splits(train_idx, val_idx, test_idx, fixed=True), source
    return records, replace(splits, test=test_idx), source


def split_fingerprint(base, splits):
    """The fingerprint `base` of a run's data, with what its split adds: a mark where
    grouping moved records across the plain seeded split (a run saved before splits were
    grouped trained on the plain one and must not resume on this one as if nothing changed),
    and the sizes of fixed splits (a run that moves a record from training to validation is
    another run). A plain seeded split adds nothing, so that existing runs resume."""
    if splits.regrouped:
        base = fingerprint(base, "grouped split")
    if splits.fixed or splits.test is not None:
        base = fingerprint(base, "splits", len(splits.train), len(splits.val),
                           0 if splits.test is None else len(splits.test))
    return base
