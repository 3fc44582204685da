"""`--model gnn`: a message-passing network that predicts the electronic transport of DNA
duplexes, log10 T(E) and log10 DOS(E) on an energy grid, directly.

Data: the built-in duplexes with spectra from tight_binding.py, or a DNA CSV (dna.py). Per
epoch: R² and mean absolute error of both spectra on the validation set, and a figure of
predicted against true T(E). `--predict` writes a trained model's spectra as CSV.
"""

import os
from dataclasses import replace

import numpy as np
import torch

import data
import dft_data
import dna
import metrics
import plots
import tight_binding
from families import Family


def _one_grid(grids):
    """The energy grid the files with spectra share (None: none has spectra)."""
    paths = list(grids)
    for path in paths[1:]:
        if not np.array_equal(grids[path], grids[paths[0]]):
            raise data.DataError(f"{path}: its energy grid ({len(grids[path])} points) is "
                                 f"not that of {paths[0]} ({len(grids[paths[0]])} points); "
                                 f"every split must share one grid")
    return grids[paths[0]] if paths else None


class TransportGNNFamily(Family):
    name = "gnn"
    defaults = {"num_samples": 2000, "epochs": 20, "batch_size": 64, "lr": 1e-3,
                "warmup_steps": 50, "loss": "mse", "huber_delta": 1.0}
    losses = ("mse", "huber")
    measures = ("r2_log10_T", "r2_log10_DOS", "mae_log10_T", "mae_log10_DOS")
    use = "predict"
    use_output = "{name}_predictions.csv"

    def load_dataset(self, settings, config):
        """The built-in duplexes with spectra computed on the config's grid, or DNA files
        (--data, or --train-data/--val-data/--test-data): with spectra, the files' own grid
        (one for all of them); without, spectra computed on the config's."""
        grids = {}

        def read(path):
            # A record: (duplex, its log spectra or None, its contacts or None).
            duplexes, targets, grid, contacts = dna.load_transport_data(path)
            if grid is not None:
                grids[path] = grid
            return [(d, None if targets is None else targets[i], c)
                    for i, (d, c) in enumerate(zip(duplexes, contacts))]

        def builtin():
            return [(d, None, None) for d in dna.synthetic_duplexes(settings["num_samples"],
                                                                    settings["seed"])]
        # Records of one duplex (the same strands with other contacts, or another run) stay on
        # one side of the split: otherwise validation would score memorised duplexes.
        records, splits, source = data.records_and_splits(
            settings, read, builtin, groups_of=lambda rs: [r[0] for r in rs])
        duplexes = [r[0] for r in records]
        contacts = [r[2] for r in records]
        grid = _one_grid(grids)
        given = [r[1] is not None for r in records]
        targets = np.stack([r[1] for r in records]) if all(given) else None
        # Spectra computed here are not part of the fingerprint: they depend on the machine's
        # floating point library at the last bit, and a run may move between machines. A grid
        # the file states (not the default one of its size) is, and so are contacts other
        # than the default ones.
        parts = ["dna", duplexes, None if targets is None else targets.tobytes()]
        if any(given) and targets is None:
            parts.append(np.stack([r[1] for r in records if r[1] is not None]).tobytes())
        if grid is not None and not np.array_equal(grid, tight_binding.default_energy_grid(
                len(grid))):
            parts.append(grid.tobytes())
        if any(contacts):
            parts.append(repr(contacts))
        if targets is None:
            grid = grid if grid is not None else tight_binding.default_energy_grid(
                config.n_energies)
            computed = tight_binding.log_spectra(
                [d for d, g in zip(duplexes, given) if not g], grid,
                [c for c, g in zip(contacts, given) if not g])
            rows = iter(computed)
            targets = np.stack([r[1] if g else next(rows) for r, g in zip(records, given)])
        fingerprint = data.split_fingerprint(data.fingerprint(*parts), splits)
        return data.Dataset(dna.GraphData(duplexes, targets, contacts), splits.train,
                            splits.val, fingerprint, {"energy_grid": torch.from_numpy(grid)},
                            test=splits.test)

    def fit_config(self, config, dataset, settings):
        """The model predicts one value per energy of the data's grid, and trains with the
        chosen loss."""
        return replace(config, n_energies=len(dataset.checkpoint_extras["energy_grid"]),
                       loss=settings["loss"], huber_delta=settings["huber_delta"])

    def prepare_fresh_model(self, model, dataset):
        # The model predicts standardised spectra: the scale comes from the training targets.
        targets = dataset.data.targets[dataset.train]
        model.set_target_scale(targets.to(model.target_mean.device))

    def test_measures(self, evaluation, test_loss):
        return self.epoch_measures(evaluation, None, test_loss)

    def epoch_measures(self, evaluation, epoch, val_loss):
        """R² and mean absolute error (decades) of log10 T(E) and log10 DOS(E) over the
        validation set, from the model's predictions in physical units (rank 0 only)."""
        if not evaluation.main:
            return {}
        predicted, true = self._validation_predictions(evaluation)
        measures = {}
        for index, name in ((0, "T"), (1, "DOS")):
            measures[f"r2_log10_{name}"] = metrics.r2(predicted[:, index], true[:, index])
            measures[f"mae_log10_{name}"] = metrics.mae(predicted[:, index], true[:, index])
        return measures

    @torch.no_grad()
    def _validation_predictions(self, evaluation):
        model = evaluation.model
        model.eval()
        predicted, true = [], []
        for batch in evaluation.val_batches():
            with evaluation.autocast():
                predicted.append(model.predict(batch).float().cpu())
            true.append(batch["target"].cpu())
        model.train()
        return torch.cat(predicted).numpy(), torch.cat(true).numpy()

    def summary_parts(self, measures):
        return [f"log10 {name} R² {measures[f'r2_log10_{name}']:.3f} MAE "
                f"{measures[f'mae_log10_{name}']:.2f}" for name in ("T", "DOS")
                if measures.get(f"r2_log10_{name}") is not None]

    def status_lines(self, history):
        """The last validation scores, e.g. "log10 T: R² 0.998, MAE 0.09 decades"."""
        lines = []
        for name in ("T", "DOS"):
            r2 = [v for v in history.get(f"r2_log10_{name}", []) if v is not None]
            mae = [v for v in history.get(f"mae_log10_{name}", []) if v is not None]
            if r2 and mae:
                lines.append(f"log10 {name}: R² {r2[-1]:.4f}, MAE {mae[-1]:.3f} decades "
                             f"(validation)")
        return lines

    def write_figures(self, evaluation):
        """NAME_transport.png: predicted against true log10 T(E) for four validation
        duplexes."""
        dataset, model = evaluation.dataset, evaluation.model
        shown = dataset.val[:4]
        batch = {k: v.to(evaluation.device) for k, v in dataset.data.batch(shown).items()}
        model.eval()
        with torch.no_grad():
            predicted = model.predict(batch)[:, 0].float().cpu().numpy()
        model.train()
        plots.write_transport_figure(
            evaluation.out_dir / evaluation.run.transport_figure.name,
            dataset.checkpoint_extras["energy_grid"].numpy(),
            batch["target"][:, 0].cpu().numpy(), predicted,
            [dataset.data.duplexes[int(i)][0] for i in shown])

    def use_trained(self, explicit, model, state, settings, where):
        """--predict SEQUENCES|FILE: CSV of predicted log10 T(E) and log10 DOS(E)."""
        duplexes, contacts = read_duplexes(explicit["predict"], explicit.get("contacts"))
        return (*self.predicted_spectra(model, state, where, duplexes, contacts), {})

    @staticmethod
    def predicted_spectra(model, state, where, duplexes, contacts):
        """(the --predict CSV, the report line) for the duplexes."""
        spectra = predict(model, duplexes, contacts)
        grid = state["energy_grid"].numpy()
        report = (f"Predicted log10 T(E) and log10 DOS(E) for {len(duplexes)} duplexes with "
                  f"{where}, {len(grid)} energies from {grid[0]:g} to {grid[-1]:g} eV")
        return predictions_csv(duplexes, spectra, grid, contacts), report


def read_duplexes(text, contacts_text=None):
    """(duplexes, contacts) from comma-separated sequences given on the command line, or from
    a file: a CSV with a `sequence` column (and optionally `complement` and `contacts`), or
    one sequence per line. Sequences not from a CSV get the full complement, and the contacts
    of `contacts_text` (--contacts, dft_data.parse_contacts' syntax) or the default ones.

    Raises:
        data.DataError: with the file and line, or the sequence, at fault.
    """
    if os.path.isfile(text):
        with open(text, encoding="utf-8", errors="replace") as f:
            first = f.readline().strip().lower()
        if "sequence" in first.split(","):
            if contacts_text is not None:
                raise data.DataError(f"--contacts applies to sequences without a CSV; {text} "
                                     f"gives each duplex its own in a 'contacts' column")
            loaded = dna.load_duplexes(text)
            return loaded.duplexes, loaded.contacts
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
    duplexes = [(s, tight_binding.full_complement(s)) for s in sequences]
    contacts = [None if contacts_text is None else dna.normalised_contacts(
        p, dft_data.parse_contacts(contacts_text, p, c, f"--contacts for {where[p]}"))
        for p, c in duplexes]
    return duplexes, contacts


def graph_batches(model, duplexes, contacts=None, size=256):
    """The duplexes' graphs (without targets) in batches of `size`, for a trained model."""
    graphs = dna.GraphData(duplexes, np.zeros((len(duplexes), 2, model.config.n_energies)),
                           contacts)
    for start in range(0, len(duplexes), size):
        yield graphs.batch(torch.arange(start, min(start + size, len(duplexes))))


@torch.no_grad()
def predict(model, duplexes, contacts=None):
    """log10 T(E) and log10 DOS(E), float64 (N, 2, n_energies)."""
    out = [model.predict(batch) for batch in graph_batches(model, duplexes, contacts)]
    return torch.cat(out).double().numpy()


def predictions_csv(duplexes, spectra, energies, contacts=None):
    """The CSV format `--data` reads: sequence, complement, contacts, log10_T_0..,
    log10_DOS_0.., with the energy grid in its `energy_eV` row."""
    n = spectra.shape[2]
    header = ["sequence", "complement", "contacts"] + [f"log10_T_{k}" for k in range(n)] + [
        f"log10_DOS_{k}" for k in range(n)]
    grid = [repr(float(e)) for e in energies]
    lines = [",".join(header), ",".join([dna.ENERGY_ROW, "", ""] + grid + grid)]
    for (primary, complement), k, values in zip(duplexes, contacts or [None] * len(duplexes),
                                                spectra):
        lines.append(",".join([primary, complement, dft_data.format_contacts(k)] +
                              [f"{v:.6g}" for v in values.ravel()]))
    return "\n".join(lines) + "\n"


FAMILY = TransportGNNFamily()
