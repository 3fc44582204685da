"""Using a trained model: sample antibody sequences to FASTA, predict DNA transport to CSV.

train.py's `--sample N` and `--predict ...` call these; they read a checkpoint and never
write to the run's checkpoints.
"""

import os

import numpy as np
import torch

import checkpoint as ckpt
import data
import models


def load_model(path, family):
    """(model in eval mode on the CPU, checkpoint state) from a verified checkpoint of the
    `family` model.

    Raises:
        ckpt.CheckpointError: a bad file, or a checkpoint of the other model family.
    """
    state = ckpt.load_checkpoint(path)
    config = models.config_from_dict(state["config"])
    if config.model != family:
        raise ckpt.CheckpointError(f"holds a {config.model} model, not a {family}")
    model = models.build_model(config)
    model.load_state_dict(state["model_state_dict"])
    return model.eval(), state


def sample_sequences(model, n, temperature, seed, top_p=1.0):
    """`n` sequences drawn from the model with a generator seeded by `seed` only: the same
    checkpoint, n, temperature, top_p and seed give the same sequences."""
    tokens = model.generate(n, torch.Generator().manual_seed(seed), temperature=temperature,
                            top_p=top_p)
    return [data.decode(t) for t in tokens]


def fasta(sequences, prefix):
    return "".join(f">{prefix}_{i}\n{s}\n" for i, s in enumerate(sequences, 1))


def read_duplexes(text, n_energies):
    """Duplexes (primary, full complement) from comma-separated sequences given on the command
    line, or from a file: a CSV with a `sequence` column (and optionally `complement`), or one
    sequence per line.

    Raises:
        data.DataError: with the file and line, or the sequence, at fault.
    """
    if os.path.isfile(text):
        with open(text, encoding="utf-8", errors="replace") as f:
            first = f.readline().strip().lower()
        if "sequence" in first.split(","):
            return data.load_duplexes(text, n_energies)[0]
        with open(text, encoding="utf-8", errors="replace") as f:
            rows = [(n, line.strip().upper()) for n, line in enumerate(f, 1) if line.strip()]
        where = {s: f"{text} line {n}" for n, s in rows}
        sequences = [s for _, s in rows]
    else:
        sequences = [s.strip().upper() for s in text.split(",") if s.strip()]
        where = {s: f"sequence {s!r}" for s in sequences}
    if not sequences:
        raise data.DataError(f"{text}: no sequences")
    for s in sequences:
        if set(s) - set("ATGC"):
            raise data.DataError(f"{where[s]}: must be A, T, G, C only (or a file that exists)")
    return [(s, data.full_complement(s)) for s in sequences]


@torch.no_grad()
def predict(model, duplexes):
    """log10 T(E) and log10 DOS(E), float64 (N, 2, n_energies)."""
    graphs = data.GraphData(duplexes, np.zeros((len(duplexes), 2, model.config.n_energies)))
    out = [model.predict(graphs.batch(torch.arange(i, min(i + 256, len(duplexes)))))
           for i in range(0, len(duplexes), 256)]
    return torch.cat(out).double().numpy()


def predictions_csv(duplexes, spectra):
    """The CSV format `--data` reads: sequence, complement, log10_T_0.., log10_DOS_0.."""
    n = spectra.shape[2]
    header = ["sequence", "complement"] + [f"log10_T_{k}" for k in range(n)] + [
        f"log10_DOS_{k}" for k in range(n)]
    lines = [",".join(header)]
    for (primary, complement), values in zip(duplexes, spectra):
        lines.append(",".join([primary, complement] + [f"{v:.6g}" for v in values.ravel()]))
    return "\n".join(lines) + "\n"
