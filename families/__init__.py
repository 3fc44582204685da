"""Model families: everything the training loop, start-up and `--sample`/`--predict` need to
know about a kind of model, behind one small interface, so that none of them names a family.

A family is one module in this folder with a `Family` subclass, registered in `FAMILIES`
below. Its config class, size-table rows and nn.Module are in models.py; its loss is the
module's `loss(batch)`, which returns (mean loss, count) for a batch of its data.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Evaluation:
    """What a family's per-epoch measures and figures may use (the training loop makes one)."""
    model: object           # the plain module (not the DDP or compiled wrapper)
    dataset: object         # data.Dataset
    device: object
    autocast: object        # () -> the context manager the loop's forward passes run in
    settings: dict
    run: object             # checkpoint.RunFiles
    main: bool              # rank 0 (the only one that writes files)
    cache: dict = field(default_factory=dict)   # kept for the whole run

    @property
    def out_dir(self):
        """Where sampled sequences and figures go: --output-dir, else the run's folder."""
        return Path(self.settings["output_dir"] or self.run.directory)

    def val_batches(self):
        """The validation set in batches of --batch-size, each moved to the device, with the
        loop's order (which the measures' sums depend on, to the last bit)."""
        val, size = self.dataset.val, self.settings["batch_size"]
        for start in range(0, len(val), size):
            batch = self.dataset.data.batch(val[start:start + size])
            yield {k: v.to(self.device) for k, v in batch.items()}


class Family:
    """The interface. A subclass sets the class attributes and overrides what it has."""

    name = None        # the --model name; also the `model` field of its configs
    defaults = {}      # num_samples, epochs, batch_size, lr, warmup_steps
    measures = ()      # per-epoch measures, the history's columns beyond epoch, losses and lr
    use = None         # the trained-model flag it answers: "sample" or "predict"
    use_output = None  # default output file of that use, "{name}" standing for the run name
    losses = ()        # the --loss choices, the first the default (none: the flag is refused)

    def load_dataset(self, settings, config):
        """The run's data.Dataset: built-in data from settings["seed"] and
        settings["num_samples"], or settings["data"]; data.DataError for a bad file."""
        raise NotImplementedError

    def fit_config(self, config, dataset, settings):
        """The config a new run of this data and these settings trains (e.g. the data's
        number of energies, the loss); the table's row unchanged by default."""
        return config

    def prepare_fresh_model(self, model, dataset):
        """Set what a new model takes from its training data (not called on resume)."""

    def epoch_measures(self, evaluation, epoch, val_loss):
        """This epoch's measures (some of `measures`) on rank 0; the other ranks record None."""
        return {}

    def test_measures(self, evaluation, test_loss):
        """The measures of the test set (--test-data) with the best model: `evaluation`'s
        validation set is the test set. None beyond the loss by default."""
        return {}

    def summary_parts(self, measures):
        """Pieces of the epoch's summary line for the measures taken, e.g. "perplexity 3.1"."""
        return []

    def status_lines(self, history):
        """Lines of the status file after the losses, e.g. "Validity: 93.0%"."""
        return []

    def write_figures(self, evaluation):
        """Figures beyond the learning curves, when matplotlib is installed; OSError may
        escape (the loop warns)."""

    def use_trained(self, explicit, model, state, settings, where):
        """Do --sample or --predict with a loaded model (`where`: the checkpoint, as the report
        names it). Returns (output text, report line, {suffix: text} of companion files, each
        written next to the output as its name with the suffix in place of its extension;
        usually empty); data.DataError for bad input."""
        raise NotImplementedError


# The registry: `--model NAME` is the module families/NAME.py, whose FAMILY is its Family. The
# order is that of --help and of the default (the first).
REGISTERED = ("transformer", "seq2seq", "gnn", "hgnn")
FAMILIES = {name: importlib.import_module(f"families.{name}").FAMILY for name in REGISTERED}
NAMES = tuple(FAMILIES)


def get(name):
    """The family registered as `name` (KeyError for an unknown one)."""
    return FAMILIES[name]


def for_use(flag):
    """The family that --sample or --predict means when --model does not say."""
    return next(family for family in FAMILIES.values() if family.use == flag)
