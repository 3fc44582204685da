"""Model quality: the metric functions against hand-computed cases, nucleus sampling, and short
runs of both models that must learn. The quality targets themselves are measured by
bench/quality.py, not here."""

import math
import shutil

import pytest
import torch

import checkpoint as ckpt
import decoding
import metrics
import models
from conftest import GNN_ARGS, TRANSFORMER_ARGS, load, run_main


def test_r2_and_mae_by_hand():
    # true 1, 2, 4 (mean 7/3): SS_tot = 16/9 + 1/9 + 25/9 = 42/9; SS_res = 1.
    assert metrics.r2([1, 2, 3], [1, 2, 4]) == pytest.approx(1 - 9 / 42)
    assert metrics.r2([5, 5], [5, 5]) != metrics.r2([5, 5], [5, 5])   # NaN: no variance
    assert metrics.r2([[1, 2], [3, 4]], [[1, 2], [3, 4]]) == 1.0
    assert metrics.mae([1, 2, 3], [2, 2, 1]) == pytest.approx(1.0)


def test_perplexity_uniqueness_novelty_by_hand():
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(math.log(25)) == pytest.approx(25.0)   # uniform over 25 tokens
    assert math.isfinite(metrics.perplexity(1e6))
    assert metrics.uniqueness(["AA", "AA", "BB", "CC"]) == 0.75
    assert metrics.novelty(["AA", "AA", "BB", "CC"], {"AA", "DD"}) == 0.5


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    assert torch.equal(decoding._nucleus(probs.clone(), 0.7), torch.tensor([[0.0, 0.5, 0.3]]))
    assert torch.equal(decoding._nucleus(probs.clone(), 0.5), torch.tensor([[0.0, 0.5, 0.0]]))
    assert torch.equal(decoding._nucleus(probs.clone(), 1.0), probs)


def test_tiny_top_p_is_greedy_whatever_the_seed():
    torch.manual_seed(0)
    model = models.build_model(models.get_config("transformer", "tiny"))
    a = model.generate(3, torch.Generator().manual_seed(1), top_p=1e-9, max_len=20)
    b = model.generate(3, torch.Generator().manual_seed(2), top_p=1e-9, max_len=20)
    assert torch.equal(a, b)


def test_short_transformer_run_learns_and_records_its_measures(tmp_path, capsys):
    assert run_main([*TRANSFORMER_ARGS, "--epochs", 3, "--eval-interval", 3]) == 0
    out = capsys.readouterr().out
    history = load(tmp_path / "checkpoints" / "transformer_tiny_latest.pt")["history"]
    assert history["val_loss"][-1] < history["val_loss"][0]
    assert history["perplexity"] == [pytest.approx(math.exp(v)) for v in history["val_loss"]]
    assert history["validity"][:2] == [None, None] and history["novelty"][2] is not None
    assert "| perplexity " in out and "| novelty " in out
    assert '"perplexity"' in (tmp_path / "checkpoints" / "transformer_tiny_progress.json"
                              ).read_text()


def test_short_gnn_run_learns_and_records_r2_and_mae(tmp_path, capsys):
    assert run_main([*GNN_ARGS, "--epochs", 3]) == 0
    out = capsys.readouterr().out
    history = load(tmp_path / "checkpoints" / "gnn_tiny_latest.pt")["history"]
    assert history["val_loss"][-1] < history["val_loss"][0]
    assert len(history["r2_log10_T"]) == 3 and all(0 < v < 1 for v in history["r2_log10_T"])
    assert all(v > 0 for v in history["mae_log10_DOS"])
    assert "log10 T R² " in out and "log10 DOS R² " in out


def test_a_checkpoint_without_the_new_measures_resumes(finished_run, tmp_path, capsys):
    """An older checkpoint: without the GNN's measures, and with the all-None sampling columns
    that every family's history carried before each family kept only its own."""
    folder = tmp_path / "checkpoints"
    shutil.copytree(finished_run, folder)
    state = ckpt.load_checkpoint(folder / "gnn_tiny_latest.pt")
    old = {k: state["history"][k] for k in ("epoch", "train_loss", "val_loss")}
    old.update(validity=[None] * 3, diversity=[None] * 3, lr=state["history"]["lr"])
    ckpt.save_checkpoint({**state, "history": old}, folder / "gnn_tiny_latest.pt")
    assert run_main([*GNN_ARGS, "--epochs", 4]) == 0
    history = load(folder / "gnn_tiny_latest.pt")["history"]
    assert history["r2_log10_T"][:3] == [None, None, None] and history["r2_log10_T"][3] > 0
    assert all(len(values) == 4 for values in history.values())
    assert "validity" not in history
