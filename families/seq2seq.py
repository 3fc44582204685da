"""`--model seq2seq`: the antibody seed's generator. A transformer encoder reads an antigen's
amino-acid sequence, a target pKd enters as a learned embedding, and a decoder writes the
antibody as `<bos> heavy <sep> light <eos>`. Either condition may be absent from a record.

Data: the built-in antigen-antibody set (synthetic_binders.py: a hidden rule ties each
antigen to the CDR-H3 that binds it, and the pKd to how well the rule is met), or antibody
records in CSV, JSON or JSON Lines (antibody_records.py). Per epoch: perplexity; every
--eval-interval epochs, sampled pairs for the validation records' conditions, measured by
sample_quality.py, and on the built-in data the share that obeys the rule for held-out
antigens (with and without the antigen) and the rank correlation between requested and
achieved pKd. `--sample N --antigen SEQ|FASTA --pkd X` writes conditioned pairs as FASTA.
"""

import math
import os
from dataclasses import replace

import numpy as np
import torch

import antibody
import antibody_records
import data
import decoding as decoding_module
import metrics
import sample_quality
import synthetic_binders
from families.transformer import AntibodyLanguageModel, training_reference_of, write_samples
from messages import check, warn

# Requested pKd of the rule-obedience samples: the top of the built-in data's range.
OBEY_PKD = 9.0


class ConditionedAntibodyGenerator(AntibodyLanguageModel):
    name = "seq2seq"
    defaults = {"num_samples": 2000, "epochs": 10, "batch_size": 32, "lr": 1e-3,
                "warmup_steps": 50, "label_smoothing": 0.0}
    measures = ("perplexity", *sample_quality.MEASURES, "rule_obeyed",
                "rule_obeyed_without_antigen", "pkd_spearman")
    use = "sample"
    use_output = "{name}_generated.fasta"

    # -- data -----------------------------------------------------------------------------

    def load_dataset(self, settings, config):
        max_residues = config.max_len - 3   # <bos>, <sep>, <eos>
        max_antigen = settings.get("max_antigen_length") or config.max_antigen_len

        def read(path):
            records, report = antibody_records.load_records(path, max_residues)
            if report.summary(path):
                warn(report.summary(path))
            return records

        def builtin():
            return [antibody_records.Record(*r, line=0) for r in
                    synthetic_binders.synthetic_binder_records(settings["num_samples"],
                                                               settings["seed"])]
        # Records of one antibody (against several antigens) stay on one side of the split:
        # otherwise validation would score an antibody the model has learnt.
        records, splits, source = data.records_and_splits(
            settings, read, builtin, groups_of=lambda rs: [r.antibody for r in rs])
        long = [r for r in records if r.antigen and len(r.antigen) > max_antigen]
        if long:
            warn(f"{len(long)} antigen(s) longer than {max_antigen} residues (the longest "
                 f"{max(len(r.antigen) for r in long)}) are cropped to their first "
                 f"{max_antigen} (--max-antigen-length)")
        samples = antibody.ConditionedData([r.antibody for r in records],
                                           [r.antigen for r in records],
                                           [r.pkd for r in records], config.max_len,
                                           max_antigen)
        fingerprint = data.split_fingerprint(
            data.fingerprint("antibody-conditioned",
                             [(r.antibody, r.antigen, r.pkd) for r in records], max_antigen),
            splits)
        return data.Dataset(samples, splits.train, splits.val, fingerprint, test=splits.test)

    def fit_config(self, config, dataset, settings):
        return replace(config, label_smoothing=settings["label_smoothing"],
                       max_antigen_len=settings.get("max_antigen_length")
                       or config.max_antigen_len)

    # -- per-epoch measures: the transformer's, for pairs sampled under conditions ---------

    def sample_measures(self, evaluation, epoch, generator):
        """Pairs sampled for the conditions of validation records (their antigens are not
        trained on), measured against the training data; on the built-in data also the
        hidden rule's measures."""
        settings, dataset = evaluation.settings, evaluation.dataset
        n = settings["eval_samples"]
        rows = dataset.val[torch.arange(n) % len(dataset.val)]
        model = evaluation.model
        sequences = _decode_all(model.generate(n, generator, _conditions_of(dataset.data, rows)))
        lines = []
        for i, (sequence, row) in enumerate(zip(sequences, rows.tolist())):
            pkd = dataset.data.pkds[row]
            tag = f"val_record={row} pKd={'none' if pkd is None else f'{pkd:.2f}'}"
            lines.append(f">epoch{epoch}_sample{i} {tag}\n{sequence}\n")
        write_samples(evaluation, "".join(lines))
        measures = sample_quality.measure(sequences, training_reference_of(evaluation))
        if not (settings.get("train_data") or settings["data"]):   # the built-in data
            measures.update(_rule_measures(model, dataset.data, rows, generator))
        return measures

    def summary_parts(self, measures):
        parts = super().summary_parts(measures)
        if measures.get("rule_obeyed") is not None:
            parts.append(f"rule obeyed {sample_quality.percent(measures['rule_obeyed'])} "
                         f"(without antigen "
                         f"{sample_quality.percent(measures['rule_obeyed_without_antigen'])})")
            parts.append(f"pKd Spearman {_number(measures['pkd_spearman'])}")
        return parts

    def status_lines(self, history):
        lines = super().status_lines(history)
        latest = {key: sample_quality.latest(history, key) for key in
                  ("rule_obeyed", "rule_obeyed_without_antigen", "pkd_spearman")}
        if latest["rule_obeyed"] is not None:
            lines.append(f"Rule obeyed (held-out antigens): "
                         f"{sample_quality.percent(latest['rule_obeyed'])}, without the antigen "
                         f"{sample_quality.percent(latest['rule_obeyed_without_antigen'])}")
            lines.append(f"pKd Spearman (requested vs achieved): "
                         f"{_number(latest['pkd_spearman'])}")
        return lines

    # -- --sample ------------------------------------------------------------------------------

    def use_trained(self, explicit, model, state, settings, where):
        """--sample N [--antigen SEQ|FASTA] [--pkd X]: FASTA of heavy|light pairs for each
        antigen (or none), with the report of their quality and the condition used."""
        n, seed = explicit["sample"], explicit.get("seed", 0)
        decoding = decoding_module.from_flags(explicit)
        check(n > 0, f"--sample must be a positive integer (got {n})")
        antigens = read_antigens(explicit.get("antigen"))
        pkd = explicit.get("pkd")
        check(pkd is None or math.isfinite(pkd), f"--pkd must be a number (got {pkd})")
        config = model.config
        generator = torch.Generator().manual_seed(seed)
        sequences, text = [], []
        for label, antigen in antigens:
            if antigen and len(antigen) > config.max_antigen_len:
                warn(f"--antigen {label}: {len(antigen)} residues, cropped to the model's "
                     f"{config.max_antigen_len}")
            tokens = model.generate(n, generator,
                                    antibody.condition(antigen, pkd, config.max_antigen_len),
                                    decoding)
            drawn = _decode_all(tokens)
            sequences += drawn
            tag = f"antigen={label}" if antigen else "antigen=none"
            tag += f" pKd={pkd:g}" if pkd is not None else " pKd=none"
            text += [f">sample_{len(text) + i} {tag}\n{s}\n" for i, s in enumerate(drawn, 1)]
        reference = self.training_reference(settings, config)
        quality = sample_quality.report(sequences, reference[0] if reference[0] else None,
                                        None)
        if reference[1]:
            quality += f", novelty not measured ({reference[1]})"
        condition = (f"antigen {', '.join(label for label, a in antigens)}"
                     if antigens[0][1] else "no antigen")
        condition += f", pKd {pkd:g}" if pkd is not None else ", no pKd"
        report = (f"Sampled {len(sequences)} pairs from {where} ({condition}; "
                  f"{decoding.describe()}, seed {seed}): {quality}")
        return "".join(text), report, {}


def _number(value):
    return "n/a (every sample achieved the same pKd)" if value is None else f"{value:.3f}"


def read_antigens(argument):
    """[(label, sequence)] for --antigen: a sequence, or a FASTA file of one or more
    antigens; [("none", None)] without it."""
    if not argument:
        return [("none", None)]
    if os.path.exists(argument):
        lines = data.read_lines(argument)
        if any(line.startswith(">") for line in lines):
            records = [(header.split()[0] if header else
                        f"{os.path.basename(argument)}:{number}", sequence)
                       for number, sequence, header in antibody.fasta_records(argument, lines)]
        else:   # one sequence per line
            records = [(f"{os.path.basename(argument)}:{number}", line.strip())
                       for number, line in enumerate(lines, 1) if line.strip()]
        antigens = [(label, sequence.upper()) for label, sequence in records]
    else:
        antigens = [(f"{argument[:12]}..({len(argument)} aa)" if len(argument) > 15
                     else argument, argument.upper())]
    check(antigens, f"--antigen {argument}: no sequence in it")
    for label, sequence in antigens:
        bad = sorted(set(sequence) - set(antibody.AMINO_ACIDS))
        check(not bad, f"--antigen {label}: {''.join(bad)!r} are not amino acids "
                       f"(give a sequence of the 20 amino acids, or a FASTA file)")
    return antigens


def _conditions_of(samples, rows):
    """The condition tensors of records `rows` (antigens cropped to the batch's longest)."""
    batch = samples.batch(rows)
    return {k: batch[k] for k in ("antigen", "has_antigen", "pkd", "has_pkd")}


def _decode_all(tokens):
    return [antibody.decode(t) for t in tokens]


def _rule_measures(model, samples, rows, generator):
    """On the built-in data: the share of pairs sampled for held-out antigens at the top pKd
    that obey the hidden rule, the same without the antigen (the chance level of a model
    that ignores it), and the Spearman correlation between requested pKd (5-9, spread
    evenly) and the pKd the sampled CDR-H3 achieves under the rule."""
    antigens = [samples.antigens[int(r)] for r in rows]
    with_antigen = [i for i, a in enumerate(antigens) if a]
    if not with_antigen:
        return {}
    rows = rows[with_antigen]
    antigens = [antigens[i] for i in with_antigen]
    n = len(rows)
    base = _conditions_of(samples, rows)
    top = dict(base, pkd=torch.full((n,), OBEY_PKD), has_pkd=torch.ones(n, dtype=torch.bool))
    heavy = [sample_quality.heavy_of(s) for s in _decode_all(model.generate(n, generator, top))]
    obeyed = np.mean([synthetic_binders.obeys_rule(h, a) for h, a in zip(heavy, antigens)])
    blind = dict(top, has_antigen=torch.zeros(n, dtype=torch.bool))
    heavy = [sample_quality.heavy_of(s) for s in _decode_all(model.generate(n, generator, blind))]
    blind_obeyed = np.mean([synthetic_binders.obeys_rule(h, a) for h, a in zip(heavy, antigens)])
    requested = torch.linspace(5.0, 9.0, n)
    graded = dict(base, pkd=requested, has_pkd=torch.ones(n, dtype=torch.bool))
    heavy = [sample_quality.heavy_of(s)
             for s in _decode_all(model.generate(n, generator, graded))]
    achieved = [synthetic_binders.achieved_pkd(h, a) for h, a in zip(heavy, antigens)]
    rho = metrics.spearman(requested.tolist(), achieved)
    # Undefined (every sample achieved the same pKd) is recorded as not measured.
    return {"rule_obeyed": float(obeyed), "rule_obeyed_without_antigen": float(blind_obeyed),
            "pkd_spearman": None if math.isnan(rho) else rho}


FAMILY = ConditionedAntibodyGenerator()
