"""`--model transformer`: an autoregressive language model of antibody heavy chains (VH).

Data: the built-in VH-like set or a FASTA/CSV/TXT file (antibody.py). Per epoch: perplexity,
and every --eval-interval epochs the validity, diversity and novelty of sampled sequences,
which are also written as FASTA. `--sample N` draws sequences from a trained model.
"""

import math

import numpy as np
import torch

import antibody
import checkpoint as ckpt
import data
import metrics
from families import Family
from messages import check, warn


class AntibodyLanguageModel(Family):
    name = "transformer"
    defaults = {"num_samples": 2000, "epochs": 5, "batch_size": 32, "lr": 1e-3,
                "warmup_steps": 50}
    measures = ("perplexity", "validity", "diversity", "novelty")
    use = "sample"
    use_output = "{name}_generated.fasta"

    def load_dataset(self, settings, config):
        path = settings["data"]
        if path:
            sequences, load_report = antibody.load_antibody_sequences(path, config.max_len - 2)
            if load_report.summary(path):
                warn(load_report.summary(path))
        else:
            sequences = antibody.synthetic_antibodies(settings["num_samples"], settings["seed"])
        return data.split_dataset(antibody.SequenceData(sequences, config.max_len), settings,
                                  data.fingerprint("antibody", sequences),
                                  path or "built-in data")

    def epoch_measures(self, evaluation, epoch, val_loss):
        measures = {"perplexity": metrics.perplexity(val_loss)}
        settings = evaluation.settings
        if evaluation.main and (epoch % settings["eval_interval"] == 0
                                or epoch == settings["epochs"]):
            measures.update(self._sample_metrics(evaluation, epoch))
        return measures

    def _sample_metrics(self, evaluation, epoch):
        """Validity, diversity and novelty of sampled sequences, also written as FASTA.
        Sampling has its own generator, seeded by (seed, epoch): it never moves the training
        RNG, so runs with and without sampling train identically."""
        settings = evaluation.settings
        seed = int(np.random.SeedSequence([settings["seed"], 5, epoch]).generate_state(1)[0])
        tokens = evaluation.model.generate(settings["eval_samples"],
                                           torch.Generator().manual_seed(seed))
        sequences = [antibody.decode(t) for t in tokens]
        fasta = "".join(f">epoch{epoch}_sample{i}\n{s}\n" for i, s in enumerate(sequences))
        try:
            ckpt.write_text(evaluation.out_dir / evaluation.run.samples.name, fasta)
        except OSError as e:
            warn(f"could not write sampled sequences to {evaluation.out_dir}: "
                 f"{e.strerror or e}")
        if "training_sequences" not in evaluation.cache:
            dataset = evaluation.dataset
            evaluation.cache["training_sequences"] = {dataset.data.sequences[int(i)]
                                                      for i in dataset.train}
        return {"validity": metrics.validity(sequences),
                "diversity": metrics.diversity(sequences),
                "novelty": metrics.novelty(sequences, evaluation.cache["training_sequences"])}

    def summary_parts(self, measures):
        parts = []
        if measures.get("perplexity") is not None:
            parts.append(f"perplexity {measures['perplexity']:.3f}")
        for key in ("validity", "diversity", "novelty"):
            if measures.get(key) is not None:
                parts.append(f"{key} {_percent(measures[key])}")
        return parts

    def status_lines(self, history):
        if not history.get("validity"):
            return []   # before the first epoch
        latest = {key: next((v for v in reversed(history.get(key, [])) if v is not None), None)
                  for key in ("validity", "diversity")}
        return [f"Validity: {_percent(latest['validity'])}",
                f"Diversity: {_percent(latest['diversity'])}"]

    def use_trained(self, explicit, model, state, settings, where):
        """--sample N: FASTA of N sampled sequences and a report of their quality."""
        n, seed = explicit["sample"], explicit.get("seed", 0)
        temperature, top_p = explicit.get("temperature", 1.0), explicit.get("top_p", 1.0)
        check(n > 0, f"--sample must be a positive integer (got {n})")
        check(0 < top_p <= 1, f"--top-p must be in (0, 1] (got {top_p})")
        check(math.isfinite(temperature) and temperature > 0,
              f"--temperature must be a positive number (got {temperature})")
        sequences = sample_sequences(model, n, temperature, seed, top_p)
        try:
            dataset = self.load_dataset(settings, model.config)
            training = [dataset.data.sequences[int(i)] for i in dataset.train]
            novelty = (f", novelty {100 * metrics.novelty(sequences, training):.1f}% (not among"
                       f" the {len(training)} training sequences)")
        except data.DataError as e:
            novelty = f", novelty not measured (the training data cannot be read: {e})"
        imgt = metrics.imgt_validity(sequences)
        validity = f"validity {100 * metrics.validity(sequences):.1f}% (built-in rule check)"
        validity += (" (IMGT check not run: pip install anarcism to add it)" if imgt is None else
                     f", {100 * imgt:.1f}% (IMGT: anarcism numbers one human VH domain with "
                     f"Cys23, Trp41, Cys104, Trp118)")
        nucleus = f", top-p {top_p:g}" if top_p < 1 else ""
        report = (f"Sampled {n} sequences from {where}, temperature {temperature:g}{nucleus}, "
                  f"seed {seed}: {validity}, diversity "
                  f"{100 * metrics.diversity(sequences):.1f}%{novelty}")
        return fasta(sequences, f"sample_t{temperature:g}_seed{seed}"), report, {}


def _percent(value):
    return "n/a" if value is None else f"{100 * value:.1f}%"


def sample_sequences(model, n, temperature, seed, top_p=1.0):
    """`n` sequences drawn from the model with a generator seeded by `seed` only: the same
    checkpoint, n, temperature, top_p and seed give the same sequences."""
    tokens = model.generate(n, torch.Generator().manual_seed(seed), temperature=temperature,
                            top_p=top_p)
    return [antibody.decode(t) for t in tokens]


def fasta(sequences, prefix):
    return "".join(f">{prefix}_{i}\n{s}\n" for i, s in enumerate(sequences, 1))


FAMILY = AntibodyLanguageModel()
