"""Stage train_cam: IRN's CAM net, whose maps the BAS seeds are fused with.

Uses the weights at ``--cam_weights_name`` (or ``<name>.pth``, the file IRN's train_cam
writes) when the file exists, e.g. IRN's res50_cam.pth; otherwise trains them there with
IRN's settings (train_cam.py), resuming an interrupted run; IRN's ``--cam_batch_size``,
``--cam_num_epoches``, ``--cam_learning_rate``, ``--cam_weight_decay`` and
``--cam_crop_size`` apply where run_sample.py has them (``WSSS.training.run_stage``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from WSSS.training import run_stage


def run(args: argparse.Namespace) -> Path:
    """The path of the CAM net's weights, trained first when absent."""
    return run_stage(args, "cam")
