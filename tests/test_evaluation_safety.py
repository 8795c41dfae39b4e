"""Evaluation that cannot mislead: saved maps of one model and one set of settings per folder,
top-k within the model's classes, no progress bars in logs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bas.errors import ArgumentError, OutputError
from bas.outputs import MARKER, claim, read_marker
from WSOL import count_pxap, evaluator
from WSOL.cli import MAPS_KIND
from WSOL.models import build_model
from WSOL.synthetic import make_synthetic

FAST = ["--workers", "0", "--no-progress"]
CPU = torch.device("cpu")


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=4, num_test=6, seed=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two 4-class demo generators in our format, with other weights."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for seed, name in enumerate(("a.pth", "b.pth")):
        torch.manual_seed(seed)
        model = build_model("tiny", 4)
        entries = {"model": model.state_dict(), "arch": "tiny", "method": "bas", "num_classes": 4}
        torch.save({**entries, "root": "Synthetic", "best_thr": 0.3, "epoch": 1}, folder / name)
        paths[name] = folder / name
    return paths


def evaluate(data_dir: Path, checkpoint: Path, *argv: str, progress: bool = False) -> dict:
    flags = ["--data-dir", str(data_dir), "--checkpoint", str(checkpoint), "--no-maxboxacc", "--workers", "0"]
    flags += [] if progress else ["--no-progress"]
    return evaluator.evaluate_model(evaluator.get_args_parser().parse_args([*flags, *argv]), CPU)


# ------------------------------------------------------------------- saved maps
def test_saved_maps_record_the_weights_and_settings_that_made_them(data_dir, checkpoints, tmp_path):
    maps, output = tmp_path / "maps", ["--output-dir", str(tmp_path / "ev")]
    evaluate(data_dir, checkpoints["a.pth"], "--save-maps", str(maps), "--threshold", "0.2", *output)
    marker = read_marker(maps)
    stat = checkpoints["a.pth"].stat()
    assert marker["weights"] == {"name": "a.pth", "bytes": stat.st_size, "written": stat.st_mtime_ns}
    assert marker["settings"] == {"topk": 1, "size": 96, "precision": "fp32"}
    assert marker["thresholds"] == [0.2]
    files = snapshot(maps)
    # The same weights and settings again (a run interrupted, then started again): the same maps.
    evaluate(data_dir, checkpoints["a.pth"], "--save-maps", str(maps), "--threshold", "0.4", *output)
    assert {name: data for name, data in snapshot(maps).items() if name != MARKER} == {
        name: data for name, data in files.items() if name != MARKER
    }
    assert read_marker(maps)["thresholds"] == [0.4]  # what --maps scores at, by default


def test_saved_maps_of_other_weights_or_settings_are_never_mixed(data_dir, checkpoints, tmp_path):
    maps, output = tmp_path / "maps", ["--output-dir", str(tmp_path / "ev")]
    evaluate(data_dir, checkpoints["a.pth"], "--save-maps", str(maps), *output)
    before = snapshot(maps)
    with pytest.raises(OutputError) as caught:
        evaluate(data_dir, checkpoints["b.pth"], "--save-maps", str(maps), *output)
    message = str(caught.value)
    assert message.startswith(f"{maps} holds maps of a.pth (") and ", not of b.pth (" in message
    assert message.endswith("; choose another --save-maps or remove it") and "\n" not in message
    with pytest.raises(OutputError, match=r"holds maps of a\.pth .*top-1 .*not of a\.pth .*top-4"):
        evaluate(data_dir, checkpoints["a.pth"], "--save-maps", str(maps), "--topk", "4", *output)
    assert snapshot(maps) == before
    assert not (tmp_path / "ev").exists()  # stopped before any work


def test_saved_maps_of_unrecorded_weights_are_not_added_to(data_dir, checkpoints, tmp_path):
    """An earlier version's maps folder names a checkpoint path, not the weights."""
    maps = claim(tmp_path / "maps", MAPS_KIND, thresholds=[0.2], checkpoint=str(checkpoints["a.pth"]))
    np.save(maps / "old.npy", np.zeros((96, 96), np.float32))
    before = snapshot(maps)
    with pytest.raises(OutputError, match=r"holds maps of weights it does not record, not of a\.pth"):
        evaluate(data_dir, checkpoints["a.pth"], "--save-maps", str(maps), "--output-dir", str(tmp_path / "ev"))
    assert snapshot(maps) == before


# ------------------------------------------------------------------------- top-k
def test_a_presets_topk_above_the_classes_takes_every_class(data_dir, checkpoints, tmp_path, caplog):
    """CUB's preset averages the maps of 80 classes; a 4-class model on CUB-format data has 4."""
    cub = ["--root", "CUB", "--output-dir", str(tmp_path / "ev"), "--threshold", "0.2", "0.5"]
    with caplog.at_level("INFO"):
        clamped = evaluate(data_dir, checkpoints["a.pth"], *cub)
    assert "top-k 80 of the preset: the model has 4 classes, maps of all 4" in caplog.messages
    assert clamped == evaluate(data_dir, checkpoints["a.pth"], *cub, "--topk", "4")
    assert "cls_top5" not in clamped and "top5_loc" not in clamped  # 4 classes: top-5 says nothing


def test_pxap_with_a_presets_topk_above_the_classes(data_dir, checkpoints, tmp_path):
    argv = ["--root", "CUB", "--data-dir", str(data_dir), "--checkpoint", str(checkpoints["a.pth"]), *FAST]
    argv += ["--output-dir", str(tmp_path / "ev")]
    report = count_pxap.evaluate(count_pxap.get_args_parser().parse_args(argv), CPU)
    again = count_pxap.evaluate(count_pxap.get_args_parser().parse_args([*argv, "--topk", "4"]), CPU)
    assert report == again and report["images"] == 6


def test_a_requested_topk_above_the_classes_stops(data_dir, checkpoints, tmp_path):
    with pytest.raises(ArgumentError, match="--topk 5: the model has 4 classes"):
        evaluate(data_dir, checkpoints["a.pth"], "--topk", "5", "--output-dir", str(tmp_path / "ev"))
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(checkpoints["a.pth"]), "--topk", "5", *FAST]
    with pytest.raises(ArgumentError, match="--topk 5: the model has 4 classes"):
        count_pxap.evaluate(count_pxap.get_args_parser().parse_args(argv), CPU)


# ------------------------------------------------------------------ progress bars
def test_no_progress_bars_where_stderr_is_no_terminal(data_dir, checkpoints, tmp_path, capsys):
    report = evaluate(data_dir, checkpoints["a.pth"], "--output-dir", str(tmp_path / "ev"), progress=True)
    assert report["images"] == 6
    err = capsys.readouterr().err
    assert "it/s" not in err and "\r" not in err
