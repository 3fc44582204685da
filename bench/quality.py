"""Do the models learn their science? Held-out quality of both models against simple baselines.

    python bench/quality.py                    # both, about 10 minutes on 2 CPU cores
    python bench/quality.py --model gnn        # about 2 minutes
    python bench/quality.py --model transformer

Transformer: trains on the real human VH set (../shared/data/oas_jaffe2022_donor3_vh.fasta,
8,185 sequences) with the command printed below, then compares its held-out perplexity with a
position-aware unigram model (P(token | position)) and a bigram model (P(token | previous
token)) fitted on the same training split (add-k smoothing, k chosen on the held-out set,
which flatters the baselines), and samples 1,000 sequences to measure validity (rule check,
and IMGT when anarcism is installed), uniqueness and novelty.

GNN: trains on the built-in tight-binding duplexes, then compares held-out R² and MAE (in
decades) of log10 T(E) and log10 DOS(E) with two baselines that ignore the graph: the mean
training spectrum, and an MLP on the base counts (A, T, G, C, missing bases, length). An
ablation trains the same GNN with every edge given one type, to show what the edge types
(backbone 5'->3', 3'->5', hydrogen bond, contact) add. Last, a curiosity without a target:
the model's prediction for the duplex `aaac` beside a real DFT+NEGF spectrum of it.
"""

import argparse
import contextlib
import csv
import io
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import antibody  # noqa: E402
import data  # noqa: E402
import dna  # noqa: E402
import metrics  # noqa: E402
import tight_binding  # noqa: E402
import use_model  # noqa: E402
from families import gnn, transformer  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
OAS = SHARED / "oas_jaffe2022_donor3_vh.fasta"
DFT = SHARED / "g3nat_dft_sample" / "aaac_run1_gamma0.1_T_DOS.csv"

TRANSFORMER_RUN = ["--data", str(OAS), "--epochs", "7", "--batch-size", "32", "--lr", "2e-3",
                   "--lr-schedule", "cosine", "--warmup-steps", "100", "--eval-interval", "7",
                   "--eval-samples", "100", "--checkpoint-every-minutes", "0"]
GNN_RUN = ["--model", "gnn", "--num-samples", "4000", "--epochs", "30", "--lr-schedule",
           "cosine", "--checkpoint-every-minutes", "0"]


def train(args, folder):
    """Run train.py; returns its stdout and wall seconds."""
    command = [sys.executable, str(REPO / "train.py"), *args, "--checkpoint-dir", str(folder)]
    print("$ python train.py " + " ".join(args), flush=True)
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout, seconds


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |")


# --------------------------------------------------------------------------------------------
# Antibody language model
# --------------------------------------------------------------------------------------------

def targets(sequences):
    """(position, previous token, token) of every predicted token, as the model sees them:
    each residue and the end token, given <bos> and the residues before."""
    triples = []
    for s in sequences:
        tokens = antibody.encode(s)
        triples += [(i, tokens[i], tokens[i + 1]) for i in range(len(tokens) - 1)]
    return np.array(triples)


def smoothed_perplexity(train_counts, val_context, val_token, k):
    """Perplexity of held-out tokens under add-k smoothed conditional counts
    (`train_counts[context, token]`)."""
    probs = (train_counts + k) / (train_counts + k).sum(axis=1, keepdims=True)
    nll = -np.log(probs[val_context, val_token]).mean()
    return math.exp(nll)


def baseline_perplexities(train_seqs, val_seqs):
    train_t, val_t = targets(train_seqs), targets(val_seqs)
    positions = max(train_t[:, 0].max(), val_t[:, 0].max()) + 1
    unigram = np.zeros((positions, antibody.VOCAB_SIZE))
    np.add.at(unigram, (train_t[:, 0], train_t[:, 2]), 1)
    bigram = np.zeros((antibody.VOCAB_SIZE, antibody.VOCAB_SIZE))
    np.add.at(bigram, (train_t[:, 1], train_t[:, 2]), 1)
    best = {}
    for name, counts, context in (("position-aware unigram", unigram, val_t[:, 0]),
                                  ("bigram", bigram, val_t[:, 1])):
        best[name] = min(smoothed_perplexity(counts, context, val_t[:, 2], k)
                         for k in (1.0, 0.1, 0.01, 0.001))
    return best


def transformer_quality(work):
    if not OAS.exists():
        print(f"skipped: {OAS} is absent")
        return
    stdout, seconds = train(TRANSFORMER_RUN, work)
    best = torch.load(work / "transformer_tiny_best.pt", weights_only=True)
    model_ppl = math.exp(best["val_loss"])
    sequences, _ = antibody.load_antibody_sequences(str(OAS), 158)
    train_idx, val_idx = data.split_indices(len(sequences), 0.1, 0)
    train_seqs = [sequences[i] for i in train_idx]
    val_seqs = [sequences[i] for i in val_idx]
    baselines = baseline_perplexities(train_seqs, val_seqs)

    model, _ = use_model.load_model(work / "transformer_tiny_best.pt", "transformer")
    rows = []
    for temperature, top_p in ((1.0, 1.0), (1.0, 0.95)):
        started = time.monotonic()
        sampled = transformer.sample_sequences(model, 1000, temperature, 0, top_p)
        imgt = metrics.imgt_validity(sampled)
        rows.append([f"T={temperature:g}, top-p={top_p:g}",
                     f"{100 * metrics.validity(sampled):.1f}%",
                     "n/a (no anarcism)" if imgt is None else f"{100 * imgt:.1f}%",
                     f"{100 * metrics.uniqueness(sampled):.1f}%",
                     f"{100 * metrics.novelty(sampled, train_seqs):.1f}%",
                     f"{time.monotonic() - started:.0f} s"])
    print(f"\nTransformer on {OAS.name}: {len(train_seqs)} train / {len(val_seqs)} held out, "
          f"trained in {seconds:.0f} s (best epoch {best['epoch']})")
    print([line for line in stdout.splitlines() if re.match(r"Epoch \d+/\d+ \|", line)][-1])
    table([["this model (tiny, 0.95M parameters)", f"{model_ppl:.3f}"]] +
          [[name, f"{value:.3f}"] for name, value in baselines.items()],
          ["held-out perplexity per token", "value"])
    print()
    table(rows, ["1,000 samples", "validity (rules)", "validity (IMGT)", "uniqueness",
                 "novelty", "sampling time"])
    return {"perplexity": model_ppl, **baselines}


# --------------------------------------------------------------------------------------------
# DNA transport GNN
# --------------------------------------------------------------------------------------------

def base_count_features(duplexes):
    rows = []
    for primary, complement in duplexes:
        rows.append([primary.count(b) for b in "ATGC"] + [complement.count("-"), len(primary)])
    return torch.tensor(rows, dtype=torch.float32)


def mlp_on_base_counts(train_dup, train_y, val_dup):
    """A 2-hidden-layer MLP from base counts to the 2 x n_energies log10 spectra."""
    torch.manual_seed(0)
    x, xv = base_count_features(train_dup), base_count_features(val_dup)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    y = torch.as_tensor(train_y, dtype=torch.float32).flatten(1)
    y_mean, y_std = y.mean(0), y.std(0).clamp_min(1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(),
                              torch.nn.Linear(256, 256), torch.nn.GELU(),
                              torch.nn.Linear(256, y.shape[1]))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(2000):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net((x - mean) / std), (y - y_mean) / y_std)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = net((xv - mean) / std) * y_std + y_mean
    return out.view(len(val_dup), 2, -1).double().numpy()


def scores(predicted, true):
    return [f"{metrics.r2(predicted[:, 0], true[:, 0]):.3f}",
            f"{metrics.mae(predicted[:, 0], true[:, 0]):.2f}",
            f"{metrics.r2(predicted[:, 1], true[:, 1]):.3f}",
            f"{metrics.mae(predicted[:, 1], true[:, 1]):.3f}"]


def gnn_quality(work):
    stdout, seconds = train(GNN_RUN, work / "full")
    duplexes = dna.synthetic_duplexes(4000, 0)
    grid = tight_binding.default_energy_grid(100)
    spectra = tight_binding.log_spectra(duplexes, grid)
    train_idx, val_idx = data.split_indices(len(duplexes), 0.1, 0)
    train_dup = [duplexes[i] for i in train_idx]
    val_dup = [duplexes[i] for i in val_idx]
    val_y = spectra[val_idx.numpy()]

    model, _ = use_model.load_model(work / "full" / "gnn_tiny_best.pt", "gnn")
    rows = [["GNN (tiny, edge types)"] + scores(gnn.predict(model, val_dup), val_y)]

    # Ablation: the same run with every edge of one type.
    original = dna.GraphData.batch

    def one_edge_type(self, indices):
        batch = original(self, indices)
        batch["edge_type"] = torch.zeros_like(batch["edge_type"])
        return batch

    dna.GraphData.batch = one_edge_type
    try:
        import train as train_module
        print("$ python train.py " + " ".join(GNN_RUN) + "   # with every edge of one type")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = train_module.main([*GNN_RUN, "--checkpoint-dir", str(work / "one_type")])
        assert code == 0, code
        ablated, _ = use_model.load_model(work / "one_type" / "gnn_tiny_best.pt", "gnn")
        rows.append(["GNN, all edges one type"] + scores(gnn.predict(ablated, val_dup),
                                                         val_y))
    finally:
        dna.GraphData.batch = original

    mean_spectrum = np.broadcast_to(spectra[train_idx.numpy()].mean(0), val_y.shape)
    rows.append(["mean training spectrum"] + scores(mean_spectrum, val_y))
    rows.append(["MLP on base counts"] + scores(mlp_on_base_counts(
        train_dup, spectra[train_idx.numpy()], val_dup), val_y))
    print(f"\nGNN on built-in tight-binding data: {len(train_dup)} train / {len(val_dup)} held "
          f"out, trained in {seconds:.0f} s")
    print([line for line in stdout.splitlines() if re.match(r"Epoch \d+/\d+ \|", line)][-1])
    table(rows, ["held out", "R² log10 T", "MAE log10 T (decades)", "R² log10 DOS",
                 "MAE log10 DOS (decades)"])
    dft_curiosity(model)


def dft_curiosity(model):
    if not DFT.exists():
        print(f"DFT curiosity skipped: {DFT} is absent")
        return
    with open(DFT) as f:
        rows = [(float(r["energy_eV"]), float(r["transmission"]), float(r["dos"]))
                for r in csv.DictReader(f)]
    energy, t, dos = map(np.array, zip(*rows))
    predicted = gnn.predict(model, [("AAAC", tight_binding.full_complement("AAAC"))])[0]
    tb = tight_binding.log_spectra([("AAAC", tight_binding.full_complement("AAAC"))],
                          tight_binding.default_energy_grid(100))[0]
    print(f"\nDFT+NEGF sample (duplex aaac, {len(energy)} energies {energy[0]:.2f} to "
          f"{energy[-1]:.2f} eV around the HOMO):")
    print(f"  DFT:            log10 T from {np.log10(t).min():.1f} to {np.log10(t).max():.1f}, "
          f"log10 DOS from {np.log10(dos).min():.2f} to {np.log10(dos).max():.2f}")
    print(f"  tight binding:  log10 T from {tb[0].min():.1f} to {tb[0].max():.1f} "
          f"(-3 to 3 eV around the G on-site energy)")
    print(f"  GNN prediction: log10 T from {predicted[0].min():.1f} to {predicted[0].max():.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("transformer", "gnn", "both"), default="both")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(options.workdir or scratch)
        if options.model in ("gnn", "both"):
            gnn_quality(work / "gnn")
        if options.model in ("transformer", "both"):
            transformer_quality(work / "transformer")


if __name__ == "__main__":
    main()
