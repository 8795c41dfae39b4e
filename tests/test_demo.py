"""The README's WSOL headline on its demo set: BAS localizes the objects that CAM misses."""

import pytest
import torch

from WSOL import evaluator
from WSOL.presets import PRESETS
from WSOL.synthetic import make_synthetic
from WSOL.train import get_args_parser, train

SWEEP = [f"{threshold:g}" for threshold in PRESETS["Synthetic"]["tiny"].sweep]  # the README's evaluation


@pytest.mark.slow
def test_bas_beats_cam_on_the_demo_set(tmp_path):
    """The demo set train.py writes, seed 6, one epoch each: BAS's best checkpoint of the
    README's six epochs is its first (GT-known 99.25 with one thread, 99.00 with two), where
    CAM is at 69.75 (its best of six: 86.50). Each checkpoint is scored by the evaluator at
    the README's thresholds."""
    data = make_synthetic(tmp_path / "Synthetic")
    common = ["--data-dir", str(data), "--workers", "0", "--no-progress"]
    gt_known = {}
    for method in ("bas", "cam"):
        run = tmp_path / method
        argv = [*common, "--output-dir", str(run), "--method", method, "--seed", "6", "--epochs", "1"]
        train(get_args_parser().parse_args(argv))
        argv = [*common, "--checkpoint", str(run / "best_loc.pth"), "--threshold", *SWEEP, "--no-maxboxacc"]
        argv += ["--output-dir", str(tmp_path / f"{method}_eval")]
        report = evaluator.evaluate_model(evaluator.get_args_parser().parse_args(argv), torch.device("cpu"))
        gt_known[method] = report["gt_known"]
    assert gt_known["bas"] > 95 and gt_known["bas"] - gt_known["cam"] > 15, gt_known
