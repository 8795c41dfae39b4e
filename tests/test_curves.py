"""Training curves: the PNG drawn from the JSON-lines log, and the optional TensorBoard log."""

import json
import sys

import cv2
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from test_train import data_dir, run_train  # noqa: F401 (data_dir: the tiny synthetic set, a fixture)

from bas import curves
from bas.curves import LOSSES, LR, SCORES, draw_curves, panel, read_curves
from WSOL import train


def wsol_record(epoch: int, evaluated: bool = True) -> dict:
    """A log line as WSOL/train.py writes it (evaluations carry bookkeeping and a nested table)."""
    record = {"epoch": epoch, "lr": 0.01 / epoch}
    record["train"] = {"ce": 1.4 / epoch, "ce_fg": 1.3 / epoch, "bas": 0.2, "area": 0.5, "cls_acc": 30.0 * epoch}
    if evaluated:
        scores = {"cls_top1": 40.0 + epoch, "top1_loc": 20.0 + epoch, "gt_known": 50.0 + epoch}
        record["test"] = {"images": 16, "threshold": 0.2, **scores, "per_threshold": {"0.2": {"gt_known": 51.0}}}
    return record


def write_log(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def read_png(path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} does not open as an image"
    return image


def lines_of(axes) -> dict:
    """The curves drawn on a matplotlib axes, by label: (epochs, values)."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}


def test_three_epochs_give_a_png_beside_the_log(tmp_path, monkeypatch):
    """The PNG is a figure of three panels, each with its curves at the epochs that have them."""
    figures = []

    def recording_canvas(figure):
        figures.append(figure)
        return FigureCanvasAgg(figure)

    monkeypatch.setattr(curves, "FigureCanvasAgg", recording_canvas)
    log = tmp_path / "run" / "log.jsonl"
    write_log(log, [wsol_record(1, evaluated=False), wsol_record(2), wsol_record(3)])
    assert draw_curves(log) == tmp_path / "run" / "log.png"
    [figure] = figures
    losses, scores, lr = figure.axes
    assert [axes.get_ylabel() for axes in figure.axes] == [LOSSES, SCORES, LR] and lr.get_yscale() == "log"
    epochs = [1, 2, 3]
    assert lines_of(losses) == {
        "ce": (epochs, [1.4, 0.7, 1.4 / 3]),
        "ce_fg": (epochs, [1.3, 0.65, 1.3 / 3]),
        "bas": (epochs, [0.2, 0.2, 0.2]),
        "area": (epochs, [0.5, 0.5, 0.5]),
    }
    assert lines_of(scores) == {
        "train/cls_acc": (epochs, [30.0, 60.0, 90.0]),
        "test/cls_top1": ([2, 3], [42.0, 43.0]),  # the first epoch was not evaluated
        "test/top1_loc": ([2, 3], [22.0, 23.0]),
        "test/gt_known": ([2, 3], [52.0, 53.0]),
    }
    assert lines_of(lr) == {"lr": (epochs, [0.01, 0.005, 0.01 / 3])}
    image = read_png(tmp_path / "run" / "log.png")
    assert list(image.shape[:2]) == [round(inches * figure.dpi) for inches in figure.get_size_inches()[::-1]]
    assert sorted(p.name for p in log.parent.iterdir()) == ["log.jsonl", "log.png"]  # no temporary file left


def test_panels_keep_losses_scores_and_bookkeeping_apart(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log, [wsol_record(1, evaluated=False), wsol_record(2)])
    curves = read_curves(log)
    assert curves["train/ce"] == ([1, 2], [1.4, 0.7])
    assert curves["test/gt_known"] == ([2], [52.0])  # evaluated at epoch 2 only
    assert "test/per_threshold" not in curves and "epoch" not in curves
    assert [panel(name) for name in ("train/ce", "train/area")] == [LOSSES, LOSSES]
    assert [panel(name) for name in ("train/cls_acc", "test/top1_loc")] == [SCORES, SCORES]
    assert panel("test/threshold") is None and panel("test/images") is None


def test_a_one_epoch_log_gives_a_readable_png(tmp_path):
    log = tmp_path / "bas_log.jsonl"  # WSSS: loss terms and lr only
    write_log(log, [{"epoch": 1, "lr": 0.005, "train": {"ce": 0.7, "ce_fg": 0.6, "bas": 0.1, "area": 0.4}}])
    image = read_png(draw_curves(log))
    assert image.shape[0] >= 300 and image.std() > 10
    assert (tmp_path / "bas_log.png").is_file()


def test_a_log_with_nothing_to_draw_draws_nothing(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log, [{"epoch": 1, "note": "no numbers", "images": 3}])  # bookkeeping is not drawn
    assert draw_curves(log) is None and sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_the_png_is_redrawn_with_the_whole_history(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log, [wsol_record(1), wsol_record(2)])
    before = draw_curves(log).read_bytes()
    with log.open("a") as f:
        f.write(json.dumps(wsol_record(3)) + "\n")
    after = draw_curves(log).read_bytes()
    assert after != before
    assert read_curves(log)["train/ce"][0] == [1, 2, 3]


def test_tensorboard_without_the_package_stops_with_one_line(data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it now fails
    argv = ["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "run"), "--workers", "0", "--tensorboard"]
    with pytest.raises(SystemExit) as stop:
        train.run_main(train.main, argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: --tensorboard needs the tensorboard package: pip install tensorboard\n"
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_training_draws_the_curves_of_the_whole_run(data_dir, tmp_path):  # noqa: F811
    """Also across a resume: the PNG is drawn from the log, not from the session's memory."""
    run = tmp_path / "run"
    run_train(data_dir, run, "--epochs", "1")
    first = read_png(run / "log.png")
    run_train(data_dir, run, "--epochs", "2", "--resume")
    assert read_curves(run / "log.jsonl")["test/gt_known"][0] == [1, 2]
    assert read_png(run / "log.png").shape == first.shape


def test_tensorboard_gets_each_epochs_numbers(data_dir, tmp_path, monkeypatch):  # noqa: F811
    """What the run hands to TensorBoard's SummaryWriter, through a recording stand-in (the
    package is optional and not installed for the tests)."""
    writers = []

    class RecordingWriter:
        def __init__(self, log_dir, purge_step):
            self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
            writers.append(self)

        def add_scalar(self, name, value, step):
            self.scalars.append((name, step))

        def flush(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr("bas.training.summary_writer_class", lambda: RecordingWriter)
    run_train(data_dir, tmp_path / "run", "--epochs", "2", "--tensorboard")
    (writer,) = writers
    assert writer.log_dir == tmp_path / "run" / "tensorboard" and writer.purge_step == 1 and writer.closed
    names = {name for name, _ in writer.scalars}
    assert {"lr", "train/ce", "train/area", "test/gt_known"} <= names
    assert [step for name, step in writer.scalars if name == "train/ce"] == [1, 2]
