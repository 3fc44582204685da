"""Do the models learn their science? Held-out quality of both models against simple baselines.

    python bench/quality.py                    # both, about 10 minutes on 2 CPU cores
    python bench/quality.py --model gnn        # about 2 minutes
    python bench/quality.py --model transformer
    python bench/quality.py --model paired|conditional|antigens   # bench/antibody_pairs.py

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
import antibody_pairs  # noqa: E402
import data  # noqa: E402
import dna  # noqa: E402
import metrics  # noqa: E402
import tight_binding  # noqa: E402
import use_model  # noqa: E402
from families import gnn, hgnn, transformer  # noqa: E402

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
    duplexes, spectra, train_idx, val_idx, _ = held_out(4000)
    train_dup = [duplexes[i] for i in train_idx]
    val_dup = [duplexes[i] for i in val_idx]
    val_y = spectra[val_idx]

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

    mean_spectrum = np.broadcast_to(spectra[train_idx].mean(0), val_y.shape)
    rows.append(["mean training spectrum"] + scores(mean_spectrum, val_y))
    rows.append(["MLP on base counts"] + scores(mlp_on_base_counts(
        train_dup, spectra[train_idx], val_dup), val_y))
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


# --------------------------------------------------------------------------------------------
# DNA Hamiltonian GNN: in range, the Hamiltonian it recovers, its speed; and extrapolation
# --------------------------------------------------------------------------------------------

HGNN_RUN = ["--model", "hgnn", "--num-samples", "4000", "--epochs", "30", "--lr-schedule",
            "cosine", "--checkpoint-every-minutes", "0"]


def epoch_seconds(stdout):
    """The median wall seconds of the run's epochs (training and validation), from its log."""
    times = [float(m.group(1)) for m in re.finditer(r"^Epoch \d+/\d+ \|.* \| ([\d.]+)s$",
                                                    stdout, re.M)]
    return float(np.median(times))


def held_out(count, seed=0):
    """The built-in set's duplexes, spectra and train/validation split, as the runs split it."""
    duplexes = dna.synthetic_duplexes(count, seed)
    grid = tight_binding.default_energy_grid(100)
    spectra = tight_binding.log_spectra(duplexes, grid)
    train_idx, val_idx = data.split_indices(len(duplexes), 0.1, seed, groups=duplexes)
    return duplexes, spectra, train_idx.numpy(), val_idx.numpy(), grid


def true_couplings(primary, complement):
    """{(site i, site j) with i < j: (kind, table key, eV)} of the tight-binding model."""
    bases, couplings = tight_binding.duplex_sites(primary, complement)
    out = {}
    for i, j, t, kind in couplings:
        # A backbone pair's key is 5'->3' (i is 5' of j); a hydrogen bond's is A-T or G-C.
        key = bases[i] + bases[j] if kind == "backbone" else "".join(sorted(bases[i] + bases[j]))
        out[(min(i, j), max(i, j))] = (kind, key, t)
    return out


def recovered_hamiltonian(model, duplexes):
    """Rows comparing the predicted on-site energies (per base) and couplings (per stacking
    pair and per base pair) with the tight-binding model's, over `duplexes`; and the overall
    mean absolute errors in meV. Couplings are compared by magnitude: flipping the sign of
    one site's orbital flips the sign of its couplings and leaves T and DOS unchanged (up to
    the sign of the products around the duplex's rings), so the sign is a gauge choice the
    spectra cannot fix. On-site energies are absolute: the built-in grid is in absolute eV
    and the model predicts them relative to its middle (0 eV here)."""
    onsite, coupling, negative = {}, {}, 0
    by_place = {"primary-strand stacking": [], "complementary-strand stacking": [],
                "hydrogen bonds": []}
    for (primary, complement), h in zip(duplexes, hgnn.hamiltonians(model, duplexes)):
        bases, _ = tight_binding.duplex_sites(primary, complement)
        for base, value in zip(bases, h["onsite"].tolist()):
            onsite.setdefault(base, []).append(value)
        truth = true_couplings(primary, complement)
        for (i, j), value in zip(h["pairs"].tolist(), h["coupling"].tolist()):
            kind, key, true = truth[(i, j)]
            coupling.setdefault((kind, key), []).append(abs(value))
            negative += value < 0
            place = ("hydrogen bonds" if kind == "hbond" else "primary-strand stacking"
                     if j < len(primary) else "complementary-strand stacking")
            by_place[place].append(abs(abs(value) - true))
    rows, errors = [], {"onsite": [], "coupling": []}
    for base in "GACT":
        values = np.array(onsite[base])
        errors["onsite"] += list(np.abs(values - tight_binding.ONSITE[base]))
        rows.append([f"on-site {base}", f"{1000 * tight_binding.ONSITE[base]:.0f}",
                     f"{1000 * values.mean():.1f} ± {1000 * values.std():.1f}",
                     f"{1000 * np.abs(values - tight_binding.ONSITE[base]).mean():.1f}"])
    tables = {"backbone": tight_binding.INTRA_STRAND, "hbond": tight_binding.HYDROGEN_BOND}
    for (kind, key), values in sorted(coupling.items()):
        values, true = np.array(values), tables[kind][key]
        errors["coupling"] += list(np.abs(values - true))
        label = (f"stacking {key[0]}->{key[1]}" if kind == "backbone"
                 else f"H-bond {key[0]}-{key[1]}")
        rows.append([label, f"{1000 * true:.0f}",
                     f"{1000 * values.mean():.1f} ± {1000 * values.std():.1f}",
                     f"{1000 * np.abs(values - true).mean():.1f}"])
    errors.update(by_place)
    return rows, {k: 1000 * float(np.mean(v)) for k, v in errors.items()}, negative


def negf_evaluations_per_second(duplexes, grid, repeats=5):
    """(graph x energy) evaluations per second of the NEGF layer on the true Hamiltonians of
    `duplexes` padded into one batch: forward alone, and forward + backward."""
    H = [tight_binding.hamiltonian(p, c) for p, c in duplexes]
    size = max(len(h) for h in H)
    batch = torch.zeros(len(H), size, size, dtype=torch.float64)
    mask = torch.zeros(len(H), size, dtype=torch.bool)
    gamma_left = torch.zeros(len(H), size, dtype=torch.float64)
    gamma_right = torch.zeros_like(gamma_left)
    for b, ((primary, _), h) in enumerate(zip(duplexes, H)):
        batch[b, :len(h), :len(h)] = h
        mask[b, :len(h)] = True
        gamma_left[b, 0] = gamma_right[b, len(primary) - 1] = tight_binding.GAMMA
    energies = torch.as_tensor(grid)
    rates = []
    for backward in (False, True):
        started = time.perf_counter()
        for _ in range(repeats):
            H_ = batch.clone().requires_grad_(backward)
            T, DOS, _ = tight_binding.padded_negf(H_, mask, gamma_left, gamma_right, energies,
                                                  1e-3)
            if backward:
                (torch.log10(T).sum() + torch.log10(DOS).sum()).backward()
        rates.append(repeats * len(duplexes) * len(grid) / (time.perf_counter() - started))
    return rates


def hgnn_quality(work):
    stdout, seconds = train(HGNN_RUN, work / "hgnn")
    duplexes, spectra, train_idx, val_idx, grid = held_out(4000)
    val_dup = [duplexes[i] for i in val_idx]
    val_y = spectra[val_idx]
    model, _ = use_model.load_model(work / "hgnn" / "hgnn_tiny_best.pt", "hgnn")
    rows = [["Hamiltonian GNN (tiny)"] + scores(gnn.predict(model, val_dup), val_y)]
    gnn_stdout, gnn_seconds = train(GNN_RUN, work / "gnn")
    direct, _ = use_model.load_model(work / "gnn" / "gnn_tiny_best.pt", "gnn")
    rows.append(["direct GNN (tiny)"] + scores(gnn.predict(direct, val_dup), val_y))
    print(f"\nHamiltonian GNN on built-in tight-binding data (4-10 bp): {len(train_idx)} train "
          f"/ {len(val_idx)} held out; trained in {seconds:.0f} s (direct GNN: "
          f"{gnn_seconds:.0f} s)")
    print([line for line in stdout.splitlines() if re.match(r"Epoch \d+/\d+ \|", line)][-1])
    table(rows, ["held out", "R² log10 T", "MAE log10 T (decades)", "R² log10 DOS",
                 "MAE log10 DOS (decades)"])

    h_rows, errors, negative = recovered_hamiltonian(model, val_dup)
    print(f"\nRecovered Hamiltonian on the {len(val_dup)} held-out duplexes (meV; couplings "
          f"by magnitude, {negative} predicted negative):")
    table(h_rows, ["term", "tight binding", "predicted mean ± sd", "mean |error|"])
    print(f"mean |error| over all sites: on-site {errors['onsite']:.1f} meV, couplings "
          f"{errors['coupling']:.1f} meV (" + ", ".join(
              f"{place} {errors[place]:.1f}" for place in ("primary-strand stacking",
                                                          "complementary-strand stacking",
                                                          "hydrogen bonds")) + ")")

    hgnn_epoch, gnn_epoch = epoch_seconds(stdout), epoch_seconds(gnn_stdout)
    forward, both = negf_evaluations_per_second(val_dup[:64], grid)
    print(f"\nSpeed (median epoch, {len(train_idx)} training + {len(val_idx)} validation "
          f"duplexes): Hamiltonian GNN {hgnn_epoch:.1f} s = {len(duplexes) / hgnn_epoch:.0f} "
          f"graphs/s; direct GNN {gnn_epoch:.1f} s = {len(duplexes) / gnn_epoch:.0f} graphs/s; "
          f"ratio {hgnn_epoch / gnn_epoch:.1f}x")
    print(f"NEGF layer, 64 duplexes x {len(grid)} energies per call: {forward:,.0f} (graph x "
          f"energy) evaluations/s forward, {both:,.0f}/s forward + backward")


EXTRAPOLATION_TRAIN = (4000, 4, 8, 0)    # count, shortest, longest, seed
EXTRAPOLATION_TEST = (500, 11, 16, 1)


def minimum_slope(lengths, log10_t):
    """Least-squares slope, in decades per base pair, of each duplex's minimum log10 T(E)
    over the grid against its length."""
    return float(np.polyfit(lengths, log10_t.min(axis=1), 1)[0])


def extrapolation_quality(work):
    """Both GNNs trained on 4-8 bp built-in data, tested on 11-16 bp."""
    import bench.dna_data as dna_data
    work.mkdir(parents=True, exist_ok=True)
    dna_data.write_dna_csv(work / "train_4-8.csv", *EXTRAPOLATION_TRAIN)
    test_dup, test_y, grid = dna_data.write_dna_csv(work / "test_11-16.csv",
                                                    *EXTRAPOLATION_TEST)
    lengths = np.array([len(p) for p, _ in test_dup])
    true_slope = minimum_slope(lengths, test_y[:, 0])
    rows, predictions = [], {}
    for model_name, label in (("hgnn", "Hamiltonian GNN"), ("gnn", "direct GNN")):
        args = [*(HGNN_RUN if model_name == "hgnn" else GNN_RUN)]
        args[args.index("--num-samples"):args.index("--num-samples") + 2] = [
            "--data", str(work / "train_4-8.csv")]
        _, seconds = train(args, work / model_name)
        model, _ = use_model.load_model(work / model_name / f"{model_name}_tiny_best.pt",
                                        model_name)
        predicted = gnn.predict(model, test_dup)
        predictions[label] = predicted
        slope = minimum_slope(lengths, predicted[:, 0])
        rows.append([label, f"{metrics.mae(predicted[:, 0], test_y[:, 0]):.2f}",
                     f"{metrics.r2(predicted[:, 0], test_y[:, 0]):.3f}",
                     f"{slope:.3f}", f"{100 * slope / true_slope:.0f}%", f"{seconds:.0f} s"])
    print(f"\nExtrapolation: trained on {EXTRAPOLATION_TRAIN[0]} duplexes of 4-8 bp, tested on "
          f"{len(test_dup)} of 11-16 bp; tight-binding slope of the minimum of log10 T(E): "
          f"{true_slope:.3f} decades per bp")
    table(rows, ["model", "MAE log10 T (decades)", "R² log10 T", "slope of min log10 T",
                 "of the truth", "training"])
    picture = work / "extrapolation_14bp.png"
    write_extrapolation_picture(picture, grid, lengths, test_dup, test_y, predictions)
    print(f"picture: {picture}")


def write_extrapolation_picture(path, grid, lengths, duplexes, true, predictions):
    """log10 T(E) of the first three 14 bp test duplexes: the truth and both models."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = np.flatnonzero(lengths == 14)[:3]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
    for ax, k in zip(axes[0], shown):
        ax.plot(grid, true[k, 0], "k-", label="tight binding (truth)")
        for (label, predicted), style in zip(predictions.items(), ("C0--", "C3:")):
            ax.plot(grid, predicted[k, 0], style, label=label)
        ax.set_title(f"{duplexes[k][0]} / {duplexes[k][1]}", fontsize=8)
        ax.set_xlabel("Energy (eV)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("log10 T(E)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("14 bp duplexes, models trained on 4-8 bp")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all",
                        choices=("transformer", "gnn", "hgnn", "extrapolation", "paired",
                                 "conditional", "antigens", "all"))
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(options.workdir or scratch)
        if options.model in ("gnn", "all"):
            gnn_quality(work / "gnn")
        if options.model in ("hgnn", "all"):
            hgnn_quality(work / "hgnn")
        if options.model in ("extrapolation", "all"):
            extrapolation_quality(work / "extrapolation")
        if options.model in ("transformer", "all"):
            transformer_quality(work / "transformer")
        if options.model in ("paired", "all"):
            antibody_pairs.paired_quality(work / "paired", train, table, baseline_perplexities)
        if options.model in ("conditional", "all"):
            antibody_pairs.conditional_quality(work / "conditional", train, table)
        if options.model in ("antigens", "all"):
            antibody_pairs.antigen_gains(work / "antigens", train, table)


if __name__ == "__main__":
    main()
