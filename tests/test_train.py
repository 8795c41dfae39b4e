"""End to end on a tiny synthetic set: train, evaluate, resume."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bas.errors import CheckpointError
from WSOL import evaluator
from WSOL.cli import model_for_evaluation
from WSOL.synthetic import make_synthetic
from WSOL.train import fill_defaults, get_args_parser, train

WSOL = Path(__file__).resolve().parents[1] / "WSOL"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=48, num_test=16, seed=1)


def run_train(data_dir, output_dir, *extra):
    argv = ["--data-dir", str(data_dir), "--output-dir", str(output_dir), "--workers", "0", "--no-progress"]
    argv += ["--batch-size", "16", "--threshold", "0.2", "0.4", *extra]
    return train(get_args_parser().parse_args(argv))


def test_train_then_evaluate(data_dir, tmp_path, capsys):
    summary = run_train(data_dir, tmp_path / "run", "--epochs", "2")
    assert summary["images"] == 16 and 0 <= summary["gt_known"] <= 100
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"ce", "ce_fg", "bas", "area", "cls_acc"} <= set(records[0]["train"])
    for name in ("last.pth", "best_top1.pth", "best_gt.pth", "best_loc.pth", "summary.txt"):
        assert (tmp_path / "run" / name).is_file(), name

    argv = ["--data-dir", str(data_dir), "--checkpoint", str(tmp_path / "run" / "best_loc.pth"), "--workers", "0"]
    argv += [
        "--no-progress",
        "--tencrop",
        "--save-images",
        "3",
        "--save-maps",
        str(tmp_path / "maps"),
        "--output-dir",
        str(tmp_path / "ev"),
    ]
    args = evaluator.get_args_parser().parse_args(argv)
    report = evaluator.evaluate_model(args, torch.device("cpu"))
    assert report["images"] == 16
    assert 0 <= report["MaxBoxAccV2"] <= 100
    assert len(list((tmp_path / "ev" / "images").glob("*.png"))) == 3
    assert len(list((tmp_path / "maps").rglob("*.npy"))) == 16


def test_best_checkpoints_are_picked_over_the_demos_evaluation_sweep(tmp_path):
    """The demo evaluates at 0.1 .. 0.7 (README): its best checkpoints are picked at the best
    of the same thresholds; a paper preset keeps its single threshold."""
    argv = ["--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run")]
    args = get_args_parser().parse_args(argv)
    fill_defaults(args)
    assert args.threshold == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    args = get_args_parser().parse_args([*argv, "--root", "CUB", "--arch", "resnet"])
    fill_defaults(args)
    assert args.threshold == [0.1]
    args = get_args_parser().parse_args([*argv, "--threshold", "0.3"])
    fill_defaults(args)
    assert args.threshold == [0.3]


def test_resumed_run_equals_uninterrupted(data_dir, tmp_path):
    """Also with loader workers (kept across epochs) in one run and none in the other:
    batches and augmentations do not depend on them."""
    run_train(data_dir, tmp_path / "whole", "--epochs", "3", "--decay-epoch", "2")
    run_train(data_dir, tmp_path / "parts", "--epochs", "2", "--decay-epoch", "2", "--workers", "2")  # interrupted
    run_train(data_dir, tmp_path / "parts", "--epochs", "3", "--decay-epoch", "2", "--resume")
    whole = torch.load(tmp_path / "whole" / "last.pth", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "last.pth", weights_only=True)
    assert whole["epoch"] == parts["epoch"] == 3
    for name, value in whole["model"].items():
        assert torch.equal(value, parts["model"][name]), name
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("whole", "parts")]
    assert [json.loads(line)["test"] for line in logs[0]] == [json.loads(line)["test"] for line in logs[1]]
    # Resumed with another schedule, it would repeat neither run: it stops before any epoch.
    with pytest.raises(CheckpointError, match=r"last\.pth was trained with decay_epoch 2, not 1"):
        run_train(data_dir, tmp_path / "parts", "--epochs", "4", "--decay-epoch", "1", "--resume")
    assert torch.load(tmp_path / "parts" / "last.pth", weights_only=True)["epoch"] == 3


def test_saved_maps_are_scored_without_a_model(data_dir, tmp_path):
    """Maps equal to the GT masks localize every object: MaxBoxAccV2 and PxAP are 100."""
    from PIL import Image

    from WSOL import count_pxap
    from WSOL.datasets import cub_release

    for sample in cub_release(data_dir, "test"):
        mask = np.asarray(Image.open(sample.mask_paths[0]), dtype=np.float32) / 255
        path = tmp_path / "maps" / f"{sample.image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, mask)
    argv = ["--data-dir", str(data_dir), "--maps", str(tmp_path / "maps"), "--workers", "0"]
    argv += ["--output-dir", str(tmp_path / "ev")]  # the maps are not this project's: metrics go elsewhere
    report = evaluator.evaluate_saved_maps(evaluator.get_args_parser().parse_args([*argv, "--threshold", "0.5"]))
    assert report["images"] == 16 and report["gt_known"] == 100
    assert report["IoU30"] == report["IoU50"] == 100 and report["IoU70"] > 90
    pixel = count_pxap.evaluate(count_pxap.get_args_parser().parse_args(argv), torch.device("cpu"))
    # Bicubic resizing of the maps softens their edges against the nearest-resized masks.
    assert pixel["PxAP"] > 99.9 and pixel["PIoU"] > 97


def test_release_format_checkpoint_needs_only_the_arch(data_dir, tmp_path, monkeypatch):
    """The original release stores {'model', 'best_thr', 'epoch'} and nothing else: the
    evaluator scores exactly those weights, at that threshold, and reports that epoch."""
    from WSOL.models import build_model

    model = build_model("tiny", 4)
    release = tmp_path / "release.pth.tar"
    torch.save({"model": model.state_dict(), "best_thr": 0.3, "epoch": 9}, release)
    scored = []

    def recording(*args, **kwargs):
        loaded = model_for_evaluation(*args, **kwargs)
        scored.append(loaded[0].state_dict())
        return loaded

    monkeypatch.setattr(evaluator, "model_for_evaluation", recording)
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(release), "--arch", "tiny"]
    argv += ["--workers", "0", "--no-progress", "--no-maxboxacc", "--output-dir", str(tmp_path / "ev")]
    report = evaluator.evaluate_model(evaluator.get_args_parser().parse_args(argv), torch.device("cpu"))
    assert report["images"] == 16 and report["threshold"] == 0.3
    assert report["checkpoint"] == str(release) and report["epoch"] == 9
    [weights] = scored
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[name], value) for name, value in model.state_dict().items())


def test_ilsvrc_script_reports_a_missing_data_dir_in_one_line(tmp_path):
    """train_ILSVRC.py stops as train.py does: one error line naming the folder, status 2."""
    missing = tmp_path / "ILSVRC"
    command = [sys.executable, str(WSOL / "train_ILSVRC.py"), "--data-dir", str(missing), "--workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [result.stderr.splitlines()[-1]]
    assert errors[0].startswith(f"error: {missing / 'train'}: no such folder; expected class folders")
