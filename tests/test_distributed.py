"""Two processes on the CPU (gloo) through torchrun: training, exact evaluation, resume."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from WSOL import count_pxap, evaluator, inference
from WSOL import train as train_script
from WSOL.datasets import cub_release
from WSOL.datasets import test_transform as center_crop
from WSOL.models import build_model
from WSOL.synthetic import make_synthetic

WSOL = Path(__file__).resolve().parents[1] / "WSOL"
COMMON = ["--workers", "0", "--no-progress"]
THRESHOLDS = ["--threshold", "0.2", "0.4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=48, num_test=15, seed=2)


def torchrun(script, data_dir, output_dir, *extra, launcher="torch.distributed.run"):
    """Two processes of ``script``; the legacy launcher (torch.distributed.launch) passes --local-rank."""
    command = [sys.executable, "-m", launcher, "--standalone", "--nproc_per_node", "2"]
    command += [str(WSOL / script), "--data-dir", str(data_dir), "--output-dir", str(output_dir), *COMMON, *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def train(data_dir, output_dir, *extra):
    torchrun("train.py", data_dir, output_dir, "--batch-size", "16", "--decay-epoch", "1", *THRESHOLDS, *extra)


def evaluate_single(data_dir, last: Path, output_dir: Path) -> dict:
    """A single-process evaluation of a run's last.pth, at the training thresholds."""
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(last), "--arch", "tiny", "--method", "bas", *COMMON]
    argv += ["--output-dir", str(output_dir), *THRESHOLDS]
    return evaluator.evaluate_model(evaluator.get_args_parser().parse_args(argv), torch.device("cpu"))


def test_two_processes_train_evaluate_exactly_and_resume(data_dir, tmp_path):
    train(data_dir, tmp_path / "whole", "--epochs", "2")
    train(data_dir, tmp_path / "parts", "--epochs", "1")
    # Each epoch's logged metrics are those of the very model saved at that epoch (every
    # process evaluates with rank 0's BatchNorm statistics, the ones saved).
    logged = json.loads((tmp_path / "parts" / "log.jsonl").read_text())["test"]
    single = evaluate_single(data_dir, tmp_path / "parts" / "last.pth", tmp_path / "ev1")
    assert {k: single[k] for k in logged} == logged
    train(data_dir, tmp_path / "parts", "--epochs", "2", "--resume")

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
    checkpoint = ["--checkpoint", str(tmp_path / "final.pth")]
    argv = ["--data-dir", str(data_dir), *checkpoint, *COMMON, "--output-dir", str(tmp_path / "ev")]
    single = evaluator.evaluate_model(evaluator.get_args_parser().parse_args([*argv, *THRESHOLDS]), torch.device("cpu"))
    assert {k: single[k] for k in test} == test

    # evaluator.py and count_pxap.py under torchrun: the single-process numbers, MaxBoxAccV2 included.
    torchrun("evaluator.py", data_dir, tmp_path / "ev2", *checkpoint, *THRESHOLDS, "--save-images", "3")
    sharded = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert sharded == single
    assert len(list((tmp_path / "ev2" / "images").glob("*.png"))) == 3
    torchrun("count_pxap.py", data_dir, tmp_path / "px2", *checkpoint, launcher="torch.distributed.launch")
    pixel = count_pxap.evaluate(count_pxap.get_args_parser().parse_args(argv), torch.device("cpu"))
    assert json.loads((tmp_path / "px2" / "metrics_pxap.json").read_text()) == pixel


@pytest.mark.parametrize("script", [train_script, evaluator, count_pxap], ids=lambda module: module.__name__)
@pytest.mark.parametrize("argv", [["--local_rank=1"], ["--local-rank=1"], ["--local-rank", "1"]])
def test_legacy_launcher_flag_is_accepted(script, argv):
    """torch.distributed.launch passes the local rank as a flag, old and new spelling."""
    assert script.get_args_parser().parse_args(argv).local_rank == 1


def test_a_process_without_images_adds_nothing(data_dir):
    """More processes than test images: an empty share gathers with the others."""
    samples = cub_release(data_dir, "test")
    assert len(inference.box_results(iter([]), samples, [0.2, 0.4], 72, 64).indices) == 0
    maps = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    batch = inference.Batch(
        np.array([3, 1]), np.array([samples[3].label, 0]), torch.eye(4)[[samples[3].label, 1]], maps
    )
    whole = inference.box_results(iter([batch]), samples, [0.2, 0.4], 72, 64)
    parts = [inference.box_results(iter(share), samples, [0.2, 0.4], 72, 64) for share in ([], [batch])]
    gathered = inference.BoxResults.concatenate(parts)
    assert gathered.indices.tolist() == [1, 3] and np.array_equal(gathered.best_iou, whole.best_iou)
    assert gathered.top1.tolist() == [False, True]  # rows follow their index: image 1 is misclassified
    counts = [inference.maxboxacc_counts(iter(share), samples, 64) for share in ([], [batch])]
    assert np.array_equal(sum(counts), inference.maxboxacc_counts(iter([batch]), samples, 64))


def _maps_and_summary(rank: int, world: int, data_dir, shift: float) -> tuple[dict, dict]:
    """train.py's evaluation of a tiny model whose BatchNorm means are moved by ``shift``
    (as a rank's last training batch leaves its own statistics): the summary, and the
    maps it scored by sample index."""
    args = train_script.get_args_parser().parse_args(["--data-dir", str(data_dir), *COMMON, *THRESHOLDS])
    train_script.fill_defaults(args)
    torch.manual_seed(0)
    model = build_model("tiny", 4)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.add_(shift * torch.randn(buffer.shape, generator=torch.Generator().manual_seed(1)))
    samples = cub_release(data_dir, "test")
    loader = inference.evaluation_loader(samples, center_crop(72, 64), 8, 0, torch.device("cpu"), rank, world)
    maps = {}

    def predict(*a, **k):
        for batch in inference.predict(*a, **k):
            maps.update(zip(batch.indices.tolist(), batch.maps))
            yield batch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_script, "predict", predict)
        summary = train_script.evaluate(model, loader, samples, args, torch.device("cpu"), rank == 0)
    return summary, maps


def _evaluate_in_process(rank, init_file, data_dir, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    results[rank] = _maps_and_summary(rank, 2, data_dir, shift=rank)
    torch.distributed.destroy_process_group()


def test_evaluation_during_training_scores_the_saved_model(data_dir, tmp_path):
    """Both processes score with rank 0's weights and statistics (the ones saved): the
    maps and numbers of rank 0's model alone."""
    results = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_evaluate_in_process, (tmp_path / "init", data_dir, results), nprocs=2)
    summary, maps = _maps_and_summary(0, 1, data_dir, shift=0)
    assert results[0][0] == results[1][0] == summary
    scored = {**results[0][1], **results[1][1]}
    assert sorted(scored) == sorted(maps)
    for index, score_map in maps.items():
        np.testing.assert_array_equal(scored[index], score_map)
    assert train_script.predict is inference.predict  # the recording of the maps ended with the test
