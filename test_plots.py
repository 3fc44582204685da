"""plots.py: real PNGs written atomically when matplotlib is there, a clear refusal when not."""

import sys

import numpy as np
import pytest

import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_MATPLOTLIB = "matplotlib is not installed (optional: pip install -r requirements-dev.txt)"

TRANSFORMER_HISTORY = {
    "epoch": [1, 2, 3],
    "train_loss": [1.84, 0.91, 0.62],
    "val_loss": [0.88, 0.67, 0.58],
    "validity": [0.04, None, 0.87],
    "diversity": [0.99, None, 1.0],
    "lr": [1e-3, 1e-3, 1e-3],
}
GNN_HISTORY = {"epoch": [1], "train_loss": [2.5], "val_loss": [2.1],
               "validity": [None], "diversity": [None], "lr": [1e-3]}


def assert_only_png(folder, name):
    """`name` is a real PNG of some size and the atomic write left no temporary file."""
    assert sorted(p.name for p in folder.iterdir()) == [name]
    data = (folder / name).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000


@pytest.mark.parametrize("history", [TRANSFORMER_HISTORY, GNN_HISTORY,
                                     {k: GNN_HISTORY[k] for k in ("epoch", "train_loss",
                                                                   "val_loss", "lr")}],
                         ids=["transformer-3-epochs", "gnn-1-epoch", "no-sampling-keys"])
def test_write_curves(tmp_path, history):
    pytest.importorskip("matplotlib", reason=NO_MATPLOTLIB)
    plots.write_curves(tmp_path / "run_curves.png", history)
    assert_only_png(tmp_path, "run_curves.png")


def test_write_transport_figure(tmp_path):
    pytest.importorskip("matplotlib", reason=NO_MATPLOTLIB)
    energies = np.linspace(-3.0, 3.0, 100)
    true = np.stack([-8 + 6 * np.exp(-(energies - c) ** 2) for c in (-1.0, -0.5, 0.0, 0.5)])
    predicted = true + 0.3 * np.sin(energies)
    labels = ["GATTACA", "CGCGAATT", "ATATAT", "GGGCCCAAATTTGGGCCCAAATTTGGGCCC"]
    plots.write_transport_figure(tmp_path / "gnn_transport.png", energies, true, predicted,
                                 labels)
    assert_only_png(tmp_path, "gnn_transport.png")


def test_without_matplotlib(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(plots, "_AVAILABLE", None)

    assert plots.available() is False
    assert "pip install matplotlib" in plots.ENABLE_HINT
    with pytest.raises(plots.PlotsUnavailable):
        plots.write_curves(tmp_path / "run_curves.png", TRANSFORMER_HISTORY)
    with pytest.raises(plots.PlotsUnavailable):
        plots.write_transport_figure(tmp_path / "t.png", np.zeros(3), np.zeros((1, 3)),
                                     np.zeros((1, 3)), ["A"])
    assert list(tmp_path.iterdir()) == []
