"""`--model transformer`: an autoregressive language model of antibody heavy chains (VH), or
of paired heavy|light chains (`<bos> heavy <sep> light <eos>`) when its data are pairs.

Data: the built-in VH-like set (antibody.py) or antibody records: FASTA/CSV/TXT of single
chains, or CSV/JSON/JSON Lines of pairs (antibody_records.py; an antigen or pKd in them is
not used by this unconditioned model: --model seq2seq reads them). Per epoch: perplexity,
and every --eval-interval epochs the measures of sampled sequences (sample_quality.py),
which are also written as FASTA. `--sample N` draws sequences from a trained model.
"""

from dataclasses import replace

import numpy as np
import torch

import antibody
import antibody_records
import checkpoint as ckpt
import data
import decoding as decoding_module
import metrics
import models
import sample_quality
from families import Family
from messages import check, say, warn


class AntibodyLanguageModel(Family):
    name = "transformer"
    defaults = {"num_samples": 2000, "epochs": 5, "batch_size": 32, "lr": 1e-3,
                "warmup_steps": 50, "label_smoothing": 0.0}
    measures = ("perplexity", *sample_quality.MEASURES)
    use = "sample"
    use_output = "{name}_generated.fasta"

    def load_dataset(self, settings, config):
        ignored = []

        def read(path):
            # Paired records are read with the paired context; the config follows the data.
            records, report = antibody_records.load_records(path, models.PAIRED_MAX_LEN - 3)
            if report.summary(path):
                warn(report.summary(path))
            unpaired_limit = config.max_len - 2
            if not antibody_records.is_paired(records):
                too_long = [r for r in records if len(r.antibody) > unpaired_limit]
                if too_long:
                    warn(f"{path}: skipped {len(too_long)} too long for the model (first at "
                         f"line {too_long[0].line})")
                    records = [r for r in records if len(r.antibody) <= unpaired_limit]
            if any(r.antigen or r.pkd is not None for r in records):
                ignored.append(path)
            return records

        def builtin():
            return [antibody_records.Record(s, None, None, 0) for s in
                    antibody.synthetic_antibodies(settings["num_samples"], settings["seed"])]
        records, splits, source = data.records_and_splits(settings, read, builtin)
        if ignored:
            say(f"Note: the transformer is not conditioned: the antigens and pKd in "
                f"{', '.join(ignored)} are not used (--model seq2seq reads them)")
        sequences = [r.antibody for r in records]
        paired = antibody_records.is_paired(records)
        max_len = models.PAIRED_MAX_LEN if paired else config.max_len
        fingerprint = data.split_fingerprint(data.fingerprint("antibody", sequences), splits)
        return data.Dataset(antibody.SequenceData(sequences, max_len), splits.train,
                            splits.val, fingerprint, test=splits.test)

    def fit_config(self, config, dataset, settings):
        """Pairs need the paired context; label smoothing is the run's."""
        return replace(config, max_len=dataset.data.tokens.shape[1],
                       label_smoothing=settings["label_smoothing"])

    # -- per-epoch measures (shared with the conditioned generator) ------------------------

    def epoch_measures(self, evaluation, epoch, val_loss):
        measures = {"perplexity": metrics.perplexity(val_loss)}
        settings = evaluation.settings
        if evaluation.main and (epoch % settings["eval_interval"] == 0
                                or epoch == settings["epochs"]):
            generator = torch.Generator().manual_seed(sampling_seed(settings, epoch))
            measures.update(self.sample_measures(evaluation, epoch, generator))
        return measures

    def sample_measures(self, evaluation, epoch, generator):
        """The measures of --eval-samples sampled sequences (sample_quality.py), which are
        also written as FASTA."""
        tokens = evaluation.model.generate(evaluation.settings["eval_samples"], generator)
        sequences = [antibody.decode(t) for t in tokens]
        write_samples(evaluation, "".join(f">epoch{epoch}_sample{i}\n{s}\n"
                                          for i, s in enumerate(sequences)))
        return sample_quality.measure(sequences, training_reference_of(evaluation))

    def test_measures(self, evaluation, test_loss):
        return {"perplexity": metrics.perplexity(test_loss)}

    def summary_parts(self, measures):
        parts = []
        if measures.get("perplexity") is not None:
            parts.append(f"perplexity {measures['perplexity']:.3f}")
        return parts + sample_quality.summary_parts(measures)

    def status_lines(self, history):
        return sample_quality.status_lines(history)

    def training_reference(self, settings, config):
        """(TrainingReference of the run's training sequences, None), or (None, why not)
        when the run's data cannot be read any more (for --sample's novelty)."""
        try:
            dataset = self.load_dataset(settings, config)
        except data.DataError as e:
            return None, f"the training data cannot be read: {e}"
        return _reference(dataset), None

    # -- --sample ------------------------------------------------------------------------------

    def use_trained(self, explicit, model, state, settings, where):
        """--sample N: FASTA of N sampled sequences and a report of their quality."""
        n, seed = explicit["sample"], explicit.get("seed", 0)
        check(n > 0, f"--sample must be a positive integer (got {n})")
        check("antigen" not in explicit and "pkd" not in explicit,
              "--antigen and --pkd condition a seq2seq model; this transformer is not "
              "conditioned")
        decoding = decoding_module.from_flags(explicit)
        tokens = model.generate(n, torch.Generator().manual_seed(seed), decoding=decoding)
        sequences = [antibody.decode(t) for t in tokens]
        reference, why_not = self.training_reference(settings, model.config)
        quality = sample_quality.report(sequences, reference)
        if why_not:
            quality += f", novelty not measured ({why_not})"
        report = (f"Sampled {len(sequences)} sequences from {where}, {decoding.describe()}, "
                  f"seed {seed}: {quality}")
        return fasta(sequences, _prefix(decoding, seed)), report, {}


def _prefix(decoding, seed):
    if decoding.method == "sample":
        return f"sample_t{decoding.temperature:g}_seed{seed}"
    return decoding.method


def sample_sequences(model, n, temperature, seed, top_p=1.0):
    """`n` sequences drawn from the model with a generator seeded by `seed` only: the same
    checkpoint, n, temperature, top_p and seed give the same sequences."""
    tokens = model.generate(n, torch.Generator().manual_seed(seed), temperature=temperature,
                            top_p=top_p)
    return [antibody.decode(t) for t in tokens]


def fasta(sequences, prefix):
    return "".join(f">{prefix}_{i}\n{s}\n" for i, s in enumerate(sequences, 1))


def sampling_seed(settings, epoch):
    """The seed of an epoch's evaluation samples, from (seed, epoch) alone: sampling has its
    own generator and never moves the training RNG, so runs with and without sampling train
    identically."""
    return int(np.random.SeedSequence([settings["seed"], 5, epoch]).generate_state(1)[0])


def training_reference_of(evaluation):
    """The run's TrainingReference (its training sequences), built once per run."""
    if "reference" not in evaluation.cache:
        evaluation.cache["reference"] = _reference(evaluation.dataset)
    return evaluation.cache["reference"]


def _reference(dataset):
    return sample_quality.TrainingReference(dataset.data.sequences[int(i)]
                                            for i in dataset.train)


def write_samples(evaluation, text):
    """Write an epoch's sampled sequences (FASTA text) to the run's samples file; a failure
    is a warning (the samples are a view of the run, not part of it)."""
    try:
        ckpt.write_text(evaluation.out_dir / evaluation.run.samples.name, text)
    except OSError as e:
        warn(f"could not write sampled sequences to {evaluation.out_dir}: {e.strerror or e}")


FAMILY = AntibodyLanguageModel()
