"""PNG figures of a run: learning curves and, for the GNN, predicted against true T(E).

matplotlib is optional: training never needs it, so it is imported only when a figure is
asked for. Callers check `available()` first and otherwise tell the user `ENABLE_HINT`.
Figures are drawn with `matplotlib.figure.Figure` and the Agg canvas, not pyplot, so nothing
touches pyplot's global figure list or needs a display, and a figure is freed when it goes
out of scope. Each PNG is rendered to memory and written with `checkpoint.atomic_write`, so a
reader (or a kill mid-write) never sees half an image. Nothing here prints.
"""

import importlib
import io
import math

from checkpoint import atomic_write

ENABLE_HINT = ("plots are off: matplotlib is not installed "
               "(pip install matplotlib to get NAME_curves.png)")

DPI = 100
# A run redraws its figures at an epoch's end at most this often (and always at its last
# epoch or a stop): drawing both GNN figures takes about 0.5 s, longer than an epoch of the
# GNN on its default built-in data (0.4 s on 2 CPU cores).
REDRAW_INTERVAL_S = 30.0
_AVAILABLE = None  # cached answer of available(); None until first asked


class PlotsUnavailable(RuntimeError):
    """A figure was asked for but matplotlib cannot be imported (check `available()`)."""


def available():
    """Whether matplotlib (with its Agg canvas) can be imported; the answer is cached."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            importlib.import_module("matplotlib.figure")
            importlib.import_module("matplotlib.backends.backend_agg")
            _AVAILABLE = True
        except ImportError:
            _AVAILABLE = False
    return _AVAILABLE


def _new_figure(**kwargs):
    """A Figure on its own Agg canvas (no pyplot), or PlotsUnavailable."""
    if not available():
        raise PlotsUnavailable(ENABLE_HINT)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Render to PNG bytes first, then replace `path` atomically with them."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    data = buffer.getvalue()
    fig.clear()
    atomic_write(path, lambda f: f.write(data))


def _points(epochs, values, scale=1.0):
    """The (epochs, values) pairs whose value is known, values multiplied by `scale`."""
    pairs = [(e, scale * v) for e, v in zip(epochs, values) if v is not None]
    return [e for e, _ in pairs], [v for _, v in pairs]


def write_curves(path, history):
    """Write NAME_curves.png: train and validation loss per epoch and, when sampling produced
    any, validity and diversity in percent in a second panel below.

    `history` holds per-epoch lists under "epoch", "train_loss", "val_loss" and optionally
    "validity", "diversity" and "rule_obeyed" (fractions 0..1, None where an epoch did not
    sample).
    Markers are drawn so that a run of one epoch still shows its point.
    """
    epochs = list(history["epoch"])
    validity = history.get("validity") or []
    diversity = history.get("diversity") or []
    obeyed = history.get("rule_obeyed") or []
    sampled = any(v is not None for v in (*validity, *diversity))

    fig = _new_figure(figsize=(6.4, 6.4 if sampled else 3.8))
    from matplotlib.ticker import MaxNLocator
    axes = fig.subplots(2 if sampled else 1, 1, sharex=True, squeeze=False)[:, 0]
    loss_ax = axes[0]
    loss_ax.plot(*_points(epochs, history["train_loss"]), "o-", label="train loss")
    loss_ax.plot(*_points(epochs, history["val_loss"]), "s--", label="validation loss")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Learning curves")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)

    if sampled:
        metric_ax = axes[1]
        metric_ax.plot(*_points(epochs, validity, 100), "o-", label="validity")
        metric_ax.plot(*_points(epochs, diversity, 100), "s--", label="diversity")
        if any(v is not None for v in obeyed):   # the conditioned model's built-in rule
            metric_ax.plot(*_points(epochs, obeyed, 100), "^-.", label="rule obeyed")
        metric_ax.set_ylabel("% of sampled sequences")
        metric_ax.set_ylim(-5, 105)
        metric_ax.legend()
        metric_ax.grid(alpha=0.3)

    axes[-1].set_xlabel("epoch")
    # Whole epochs only on the x axis: a short run would otherwise get ticks at 1.5, 2.5, ...
    # and a single epoch ticks at 0.96, 0.98, ...
    if len(set(epochs)) <= 12:
        axes[-1].set_xticks(sorted(set(epochs)))
    else:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path)


def write_transport_figure(path, energies, true_log10_t, predicted_log10_t, labels):
    """Write the GNN's check figure: one panel per validation duplex with log10 T(E), true as
    a solid line and predicted dashed, so a fit can be judged by eye.

    `energies` is (n_energies,) in eV; `true_log10_t` and `predicted_log10_t` are
    (k, n_energies); `labels` holds the k duplexes' sequences (panel titles).
    """
    k = len(labels)
    cols = max(1, math.ceil(math.sqrt(k)))
    rows = max(1, math.ceil(k / cols))
    fig = _new_figure(figsize=(3.4 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.set_visible(False)
            continue
        ax.plot(energies, true_log10_t[i], "-", label="true")
        ax.plot(energies, predicted_log10_t[i], "--", label="predicted")
        label = str(labels[i])
        ax.set_title(label if len(label) <= 28 else label[:27] + "\u2026", fontsize=9)
        ax.grid(alpha=0.3)
        if i // cols == rows - 1 or i + cols >= k:
            ax.set_xlabel("Energy (eV)")
        if i % cols == 0:
            ax.set_ylabel("log10 T(E)")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Transmission: true vs predicted (validation duplexes)")
    _save(fig, path)
