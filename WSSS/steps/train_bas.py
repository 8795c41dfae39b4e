"""Stage train_bas: the BAS net whose foreground maps make the seeds.

Uses the weights at ``--bas_weights_name`` when the file exists (the original release's
epoch_10.pth.tar, or this stage's earlier result); otherwise trains them there as
train_bas.py does, resuming an interrupted run (``WSSS.training.run_stage``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from WSSS.training import run_stage


def run(args: argparse.Namespace) -> Path:
    """The path of the BAS net's weights, trained first when absent."""
    return run_stage(args, "bas")
