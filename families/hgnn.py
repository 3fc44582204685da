"""`--model hgnn`: the Hamiltonian GNN (G3NAT's). Message passing over the duplex graph
predicts a tight-binding Hamiltonian, an on-site energy per base and a coupling per backbone
and hydrogen-bond pair, and a differentiable NEGF layer turns it into log10 T(E) and
log10 DOS(E) on the data's energy grid (models.HamiltonianGNN).

Data, per-epoch measures, summary, figure and the --predict CSV are the gnn family's (the
same duplexes and spectra). `--predict` also writes the predicted Hamiltonian and local DOS of
each duplex next to the CSV, as NAME_hamiltonians.json for NAME.csv.
"""

import json
from dataclasses import replace

import torch

import tight_binding
from families.gnn import TransportGNNFamily, graph_batches, read_duplexes
from models import COUPLING_KINDS

HAMILTONIANS_SUFFIX = "_hamiltonians.json"


class HamiltonianGNNFamily(TransportGNNFamily):
    name = "hgnn"
    # The gnn family's defaults. Measured on 900 built-in duplexes (tiny, eta 1e-6): lr 3e-3
    # led after 3 epochs (val R² of T 0.84 against 0.73 with 1e-3) but its loss jumped back
    # up in the 4th (R² 0.57), while 1e-3 kept improving (0.78). An epoch costs ~5x gnn's
    # (the NEGF inverts n_energies matrices per duplex): 3.9 s against 0.8 s for 4,000.
    defaults = TransportGNNFamily.defaults

    def fit_config(self, config, dataset, settings):
        """The model's NEGF runs on the data's grid: its size and ends."""
        grid = dataset.checkpoint_extras["energy_grid"]
        return replace(super().fit_config(config, dataset, settings),
                       energy_min=float(grid[0]), energy_max=float(grid[-1]))

    def prepare_fresh_model(self, model, dataset):
        # The grid's exact points (a file's may not be evenly spaced); no target scale: the
        # loss is in decades.
        model.set_energy_grid(dataset.checkpoint_extras["energy_grid"])

    def use_trained(self, explicit, model, state, settings, where):
        """--predict SEQUENCES|FILE: the gnn family's CSV of log10 T(E) and log10 DOS(E), and a
        companion JSON of each duplex's predicted Hamiltonian and local DOS."""
        duplexes, contacts = read_duplexes(explicit["predict"], explicit.get("contacts"))
        text, report = self.predicted_spectra(model, state, where, duplexes, contacts)
        return (text, f"{report}, with each duplex's Hamiltonian and local DOS",
                {HAMILTONIANS_SUFFIX: hamiltonians_json(model, duplexes, contacts)})


@torch.no_grad()
def hamiltonians(model, duplexes, contacts=None):
    """models.HamiltonianGNN.hamiltonian for each duplex, in batches of 256."""
    return [h for batch in graph_batches(model, duplexes, contacts)
            for h in model.hamiltonian(batch)]


def hamiltonians_json(model, duplexes, contacts=None):
    """The predicted Hamiltonians as JSON: the energy grid and eta, then per duplex its sites
    (base, strand, position 5'->3' in that strand, on-site energy, LDOS(E)), couplings (two
    site indices, kind, eV) and electrode contacts (site, gamma), energies in eV."""
    def number(value):
        return float(f"{value:.6g}")

    records = []
    for (primary, complement), h in zip(duplexes, hamiltonians(model, duplexes, contacts)):
        bases, _ = tight_binding.duplex_sites(primary, complement)
        positions = [("primary", k) for k in range(len(primary))] + [
            ("complement", j) for j, b in enumerate(complement) if b != tight_binding.MISSING]
        sites = [{"site": k, "base": base, "strand": strand, "position": position,
                  "onsite_eV": number(onsite), "ldos_per_eV": [number(v) for v in ldos]}
                 for k, (base, (strand, position), onsite, ldos)
                 in enumerate(zip(bases, positions, h["onsite"].tolist(), h["ldos"].T.tolist()))]
        couplings = [{"sites": pair, "kind": COUPLING_KINDS[kind], "eV": number(value)}
                     for pair, kind, value in zip(h["pairs"].tolist(), h["kind"].tolist(),
                                                  h["coupling"].tolist())]
        contacts = {side: [{"site": k, "gamma_eV": number(g)}
                           for k, g in enumerate(h[f"gamma_{side}"].tolist()) if g]
                    for side in ("left", "right")}
        records.append({"sequence": primary, "complement": complement, "sites": sites,
                        "couplings": couplings, "contacts": contacts})
    return json.dumps({"energies_eV": model.energy_grid.tolist(), "eta_eV": model.eta,
                       "duplexes": records}, indent=1) + "\n"


FAMILY = HamiltonianGNNFamily()
