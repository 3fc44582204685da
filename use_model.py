"""Using a trained model: `train.py --sample N` and `--predict ...` read a checkpoint, hand the
model to its family (families/), which samples or predicts, and write the family's output
(FASTA, CSV, and any companion file the family adds). They never write to the run's
checkpoints.
"""

from pathlib import Path

import checkpoint as ckpt
import data
import families
import models
from messages import EXIT_OK, UsageError, check
from settings import COMMON_DEFAULTS, check_writable_folder, merge_settings


def load_model(path, family, state=None):
    """(model in eval mode on the CPU, checkpoint state) from a verified checkpoint of the
    `family` model (`state`: the file, already read by `ckpt.load_checkpoint`).

    Raises:
        ckpt.CheckpointError: a bad file, or a checkpoint of another model family.
    """
    state = state or ckpt.load_checkpoint(path)
    try:
        config = models.config_from_dict(state["config"])
    except ValueError as e:
        raise ckpt.CheckpointError(str(e)) from None
    if config.model != family:
        raise ckpt.CheckpointError(f"holds a {config.model} model, not a {family}")
    model = models.build_model(config)
    model.load_state_dict(state["model_state_dict"])
    return model.eval(), state


def _read(path):
    """A checkpoint's verified state, or UsageError naming the file."""
    check(path.exists(), f"no checkpoint {path}; train first, or give --checkpoint PATH")
    try:
        state = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as e:
        raise UsageError(f"cannot use {path}: {e}") from None
    check(state["config"].get("model") in families.NAMES,
          f"cannot use {path}: it holds an unknown model family "
          f"{state['config'].get('model')!r}")
    return state


def use_trained_model(explicit):
    """--sample N or --predict ...: read a checkpoint, write FASTA or CSV, print what was done."""
    check(not ("sample" in explicit and "predict" in explicit),
          "--sample and --predict are separate uses: give one")
    use = "sample" if "sample" in explicit else "predict"
    state = None
    if "model" in explicit:
        family = families.get(explicit["model"])
    elif "checkpoint" in explicit:   # the checkpoint says which family it holds
        state = _read(Path(explicit["checkpoint"]))
        family = families.get(state["config"].get("model"))
    else:
        family = families.for_use(use)
    check(family.use == use, f"--{use} does not apply to a {family.name} model "
                             f"(it takes --{family.use})")
    folder = Path(explicit.get("checkpoint_dir") or COMMON_DEFAULTS["checkpoint_dir"])
    name = explicit.get("name") or f"{family.name}_{explicit.get('config', 'tiny')}"
    path = Path(explicit.get("checkpoint") or ckpt.RunFiles(folder, name).best)
    check(path.exists(), f"no checkpoint {path}; train first, or give --checkpoint PATH")
    try:
        model, state = load_model(path, family.name, state)
    except ckpt.CheckpointError as e:
        raise UsageError(f"cannot use {path}: {e}") from None
    run_name = state["args"].get("name", name)
    val = "n/a" if state["val_loss"] is None else f"{state['val_loss']:.4f}"
    where = f"{path} (epoch {state['epoch']}, val loss {val})"
    output = Path(explicit.get("output") or folder / family.use_output.format(name=run_name))
    try:
        text, report, companions = family.use_trained(explicit, model, state,
                                                      merge_settings({}, state["args"]), where)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    # Companion files go next to the output: its name with the family's suffix for the
    # extension (p.csv -> p_hamiltonians.json), so each output keeps its own.
    companions = {output.with_name(output.stem + suffix): content
                  for suffix, content in companions.items()}
    check_writable_folder(output.parent, "--output")
    ckpt.write_text(output, text)
    for path, content in companions.items():
        ckpt.write_text(path, content)
    print(f"{report}; written to {' and '.join(str(p) for p in [output, *companions])}")
    return EXIT_OK
