"""Training curves: a run's per-epoch numbers, read back from its JSON-lines log and drawn
as one PNG beside it (``log.jsonl`` -> ``log.png``, ``bas_log.jsonl`` -> ``bas_log.png``).

The picture is drawn from the log file, not from memory: the log stays the one record of a
run, and a resumed run draws its whole history. Matplotlib draws off-screen (the Agg
canvas, without pyplot's global state), so a machine without a display trains the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bas.logs import JsonLines
from bas.outputs import replace_atomic

# Numbers of an evaluation that are bookkeeping, not scores: drawn among the percentages
# they would squash them (a count of images, the CAM threshold picked).
BOOKKEEPING = frozenset({"images", "threshold"})

LOSSES, SCORES, LR = "loss terms", "scores (%)", "lr"

Curve = tuple[list[int], list[float]]  # epochs, values


def scalars(record: dict) -> dict[str, float]:
    """A log line's numbers by name: ``lr``, and ``<section>/<key>`` for each number in a
    section (``train/ce``, ``test/gt_known``); nested tables (per threshold) are left out."""
    found = {}
    for key, value in record.items():
        if isinstance(value, dict):
            found.update({f"{key}/{k}": float(v) for k, v in value.items() if _is_number(v)})
        elif key != "epoch" and _is_number(value):
            found[key] = float(value)
    return found


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_curves(log: str | Path) -> dict[str, Curve]:
    """Every number of the log as a curve over the epochs that have it (an evaluation every
    few epochs gives a curve with fewer points)."""
    curves: dict[str, Curve] = {}
    for record in JsonLines(log).records():
        for name, value in scalars(record).items():
            epochs, values = curves.setdefault(name, ([], []))
            epochs.append(record["epoch"])
            values.append(value)
    return curves


def panel(name: str) -> str | None:
    """Where a number is drawn: training loss terms together; scores (evaluation metrics and
    training accuracies, all percentages) together; the lr apart, on a log scale; None for
    bookkeeping."""
    section, _, key = name.rpartition("/")
    if key in BOOKKEEPING:
        return None
    if section == "train":
        return SCORES if "acc" in key else LOSSES
    if section:
        return SCORES
    return LR if key == "lr" else None


def draw_curves(log: str | Path, png: str | Path | None = None) -> Path | None:
    """Draw the log's curves into ``png`` (default: beside the log, same stem), replaced
    atomically so that a viewer never reads half a file. Every point has a marker: a log of
    one epoch is one dot per curve. Returns the PNG's path; None, drawing nothing, when the
    log has no number to draw."""
    log = Path(log)
    png = log.with_suffix(".png") if png is None else Path(png)
    panels: dict[str, dict[str, Curve]] = {LOSSES: {}, SCORES: {}, LR: {}}
    for name, curve in read_curves(log).items():
        where = panel(name)
        if where is not None:
            panels[where][name.removeprefix("train/") if where == LOSSES else name] = curve
    panels = {title: curves for title, curves in panels.items() if curves}
    if not panels:
        return None

    figure = Figure(figsize=(9, 2.2 + 2.6 * len(panels)), layout="constrained")
    heights = [1 if title == LR else 3 for title in panels]
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (title, curves) in zip(axes, panels.items()):
        for name, (epochs, values) in curves.items():
            ax.plot(epochs, values, marker="o", markersize=4, label=name)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if title == LR:
            ax.set_yscale("log")
        else:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    epochs = [epoch for curves in panels.values() for xs, _ in curves.values() for epoch in xs]
    axes[-1].set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # one epoch: a unit-wide axis, not 1 +- 0.05
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes[-1].set_xlabel("epoch")
    figure.suptitle(f"{log.parent.name}/{log.name}")

    def write(fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(figure).print_png(f)

    replace_atomic(write, png)
    return png
