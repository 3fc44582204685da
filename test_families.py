"""Model families: the loop, start-up and saving name none of them, every registered family
has the whole interface, and a family added from outside trains, saves and resumes without a
change to the loop."""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import families
import models
import settings
from conftest import REPO, assert_same_run, load, run_main

# The code that must work for any family: it reaches a family only through families.Family.
FAMILY_NEUTRAL = ("train.py", "startup.py", "settings.py", "run_state.py", "checkpoint.py",
                  "background_save.py", "distributed.py", "report.py", "run_status.py",
                  "retention.py", "messages.py", "use_model.py", "data.py")


def code_words(path):
    """Identifiers and string constants of a module, docstrings and comments left out."""
    tree = ast.parse(Path(path).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in docstrings:
                yield node.lineno, node.value
        elif isinstance(node, ast.Name):
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            yield node.lineno, node.attr


@pytest.mark.parametrize("module", FAMILY_NEUTRAL)
def test_loop_start_up_and_saving_name_no_family(module):
    names = re.compile(r"\b(" + "|".join(map(re.escape, families.NAMES)) + r")\b", re.I)
    found = [(line, word) for line, word in code_words(REPO / module) if names.search(word)]
    assert found == [], f"{module} names a family at {found}"


def test_the_check_sees_a_family_named_in_code(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text('"""Mentions transformer in a docstring: fine."""\n'
                      'def f(config):\n    return config.model == "gnn"\n')
    words = [word for _, word in code_words(sneaky)]
    assert words.count("gnn") == 1
    assert not any("Mentions" in word for word in words)


@pytest.mark.parametrize("name", families.NAMES)
def test_every_registered_family_has_the_whole_interface(name):
    family = families.get(name)
    assert family.name == name and family is families.FAMILIES[name]
    loss_settings = {"loss", "huber_delta"} if family.losses else set()
    optional = set(family.defaults) - set(settings.FAMILY_SETTINGS)
    assert set(settings.FAMILY_SETTINGS) <= set(family.defaults)
    assert optional - loss_settings <= {"label_smoothing"}
    assert loss_settings <= optional
    assert not family.losses or family.defaults["loss"] == family.losses[0]
    assert not set(family.measures) & {"epoch", "train_loss", "val_loss", "lr"}
    assert family.use in ("sample", "predict") and "{name}" in family.use_output
    for size in models.CONFIG_NAMES:
        assert models.get_config(name, size).model == name


# --------------------------------------------------------------------------------------------
# A family from outside: a least-squares fit of y = w·x, registered the three documented ways
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ToyConfig:
    name: str
    features: int
    model: str = "toy"


class ToyModule(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.features, 1)

    def loss(self, batch):
        prediction = self.linear(batch["x"]).squeeze(1)
        return F.mse_loss(prediction, batch["y"]), torch.tensor(len(batch["y"]))


class ToyData:
    def __init__(self, n, seed):
        rng = np.random.default_rng([seed, 99])
        self.x = torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32))
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])

    def __len__(self):
        return len(self.y)

    def batch(self, indices):
        return {"x": self.x[indices], "y": self.y[indices]}


class ToyFamily(families.Family):
    name = "toy"
    defaults = {"num_samples": 64, "epochs": 2, "batch_size": 8, "lr": 1e-2, "warmup_steps": 0}
    measures = ("mean_abs_weight",)
    use = "predict"
    use_output = "{name}_toy.csv"

    def load_dataset(self, run_settings, config):
        samples = ToyData(run_settings["num_samples"], run_settings["seed"])
        return data.split_dataset(samples, run_settings, data.fingerprint("toy", len(samples)),
                                  "built-in data")

    def epoch_measures(self, evaluation, epoch, val_loss):
        return {"mean_abs_weight": evaluation.model.linear.weight.abs().mean().item()}

    def summary_parts(self, measures):
        return [f"mean |w| {measures['mean_abs_weight']:.3f}"]


@pytest.fixture
def toy_family(monkeypatch):
    config_rows = {size: ToyConfig(size, features=3) for size in models.CONFIG_NAMES}
    monkeypatch.setitem(models.CONFIGS, "toy", config_rows)
    monkeypatch.setitem(models._FAMILY_CLASSES, "toy", (ToyConfig, ToyModule))
    monkeypatch.setitem(families.FAMILIES, "toy", ToyFamily())
    monkeypatch.setattr(families, "NAMES", families.NAMES + ("toy",))


def test_a_family_added_from_outside_trains_and_resumes_exactly(toy_family, tmp_path, capsys):
    args = ["--model", "toy", "--checkpoint-every-minutes", "0"]
    straight = ["--checkpoint-dir", tmp_path / "straight"]
    assert run_main([*args, *straight, "--epochs", 4]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Epoch 4/4 \| train loss \S+ \| val loss \S+ \| mean \|w\| \S+", out)
    halves = ["--checkpoint-dir", tmp_path / "halves"]
    assert run_main([*args, *halves, "--epochs", 2]) == 0
    assert run_main([*args, *halves, "--epochs", 4]) == 0
    assert "Resuming from" in capsys.readouterr().out
    a, b = (load(tmp_path / run / "toy_tiny_latest.pt") for run in ("straight", "halves"))
    assert_same_run(a, b)
    assert list(a["history"]) == ["epoch", "train_loss", "val_loss", "lr", "mean_abs_weight"]
    assert None not in a["history"]["mean_abs_weight"]
