"""Two processes on the CPU (gloo) through torchrun: training, exact evaluation, resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from WSOL import evaluator
from WSOL.synthetic import make_synthetic
from WSOL.train import get_args_parser

TRAIN = Path(__file__).resolve().parents[1] / "WSOL" / "train.py"
COMMON = ["--workers", "0", "--no-progress", "--batch-size", "16", "--threshold", "0.2", "0.4", "--decay-epoch", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=48, num_test=15, seed=2)


def torchrun(data_dir, output_dir, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(TRAIN), "--data-dir", str(data_dir), "--output-dir", str(output_dir), *COMMON, *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_train_evaluate_exactly_and_resume(data_dir, tmp_path):
    torchrun(data_dir, tmp_path / "whole", "--epochs", "2")
    torchrun(data_dir, tmp_path / "parts", "--epochs", "1")
    torchrun(data_dir, tmp_path / "parts", "--epochs", "2", "--resume")

    # Resumed under DDP == uninterrupted under DDP.
    whole = torch.load(tmp_path / "whole" / "last.pth", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "last.pth", weights_only=True)
    for name, value in whole["model"].items():
        assert torch.equal(value, parts["model"][name]), name
    records = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]

    # The sharded evaluation of 15 images over 2 processes (8 + 7, no padding) equals a
    # single-process evaluation of the same checkpoint.
    test = records[-1]["test"]
    assert test["images"] == 15
    torch.save({**whole, "arch": "tiny", "method": "bas", "num_classes": 4}, tmp_path / "final.pth")
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(tmp_path / "final.pth"), "--workers", "0"]
    argv += ["--no-progress", "--no-maxboxacc", "--threshold", "0.2", "0.4", "--output-dir", str(tmp_path / "ev")]
    single = evaluator.evaluate_model(evaluator.get_args_parser().parse_args(argv))
    assert {k: single[k] for k in test} == test


@pytest.mark.parametrize("argv", [["--local_rank=1"], ["--local-rank=1"], ["--local-rank", "1"]])
def test_legacy_launcher_flag_is_accepted(argv):
    """torch.distributed.launch passes the local rank as a flag, old and new spelling."""
    assert get_args_parser().parse_args(argv).local_rank == 1
