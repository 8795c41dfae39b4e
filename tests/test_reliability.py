"""What a user must be able to trust: their files are never touched, errors say what is
wrong in one line, checkpoints and saved maps are checked, saved maps score as the model."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bas.checkpoints import read_checkpoint, save_atomic
from bas.errors import ArgumentError, CheckpointError, DatasetError, OutputError
from bas.outputs import MARKER, build_folder, claim
from WSOL import count_pxap, evaluator
from WSOL import train as train_script
from WSOL.models import build_model
from WSOL.presets import PRESETS
from WSOL.synthetic import make_synthetic

WSOL = Path(__file__).resolve().parents[1] / "WSOL"
FAST = ["--workers", "0", "--no-progress"]


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` with its bytes and mode: equal snapshots, untouched folder."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=32, num_test=8, seed=1)


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    """A trained run's best checkpoint (one epoch)."""
    run = tmp_path_factory.mktemp("run") / "run"
    argv = ["--data-dir", str(data_dir), "--output-dir", str(run), *FAST, "--epochs", "1", "--batch-size", "16"]
    train_script.train(train_script.get_args_parser().parse_args([*argv, "--threshold", "0.2", "0.4"]))
    return run / "best_loc.pth"


@pytest.fixture
def foreign(tmp_path):
    """A user's folder, looking like the CUB release."""
    folder = tmp_path / "CUB_200_2011"
    (folder / "images" / "001.Bird").mkdir(parents=True)
    (folder / "images.txt").write_text("1 001.Bird/a.jpg\n")
    (folder / "images" / "001.Bird" / "a.jpg").write_bytes(b"not really a jpeg")
    (folder / "notes").write_text("my notes\n")
    return folder


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a failed script (log lines may precede it), with no traceback."""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_script(script: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(WSOL / script), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)


# ----------------------------------------------------------------- the user's files
def test_synthetic_default_never_replaces_a_real_dataset(foreign, tmp_path):
    """--data-dir without --root: the demo set is not written over the user's dataset."""
    before = snapshot(foreign)
    result = run_script("train.py", "--data-dir", str(foreign), *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert error_line(result).startswith(f"error: {foreign} holds files this project did not write")
    assert error_line(result).endswith("did you mean --root CUB?")
    assert snapshot(foreign) == before
    assert not (tmp_path / "logs").exists()  # nothing written anywhere else either
    for script in ("evaluator.py", "count_pxap.py"):
        result = run_script(script, "--data-dir", str(foreign), "--checkpoint", "missing.pth", cwd=tmp_path)
        assert result.returncode == 2 and snapshot(foreign) == before, result.stderr


def test_every_writer_leaves_a_foreign_folder_alone(foreign, data_dir, checkpoint):
    before = snapshot(foreign)
    with pytest.raises(OutputError, match="did not write"):
        make_synthetic(foreign, num_train=4, num_test=4)
    with pytest.raises(OutputError):
        claim(foreign, "anything")
    with pytest.raises(OutputError):
        build_folder(foreign, "anything", lambda folder: None)
    common = ["--data-dir", str(data_dir), *FAST]
    train_argv = [*common, "--output-dir", str(foreign), "--epochs", "1"]
    with pytest.raises(OutputError, match="Choose another --output-dir"):
        train_script.train(train_script.get_args_parser().parse_args(train_argv))
    evaluation = [*common, "--checkpoint", str(checkpoint)]
    for extra in (["--output-dir", str(foreign)], ["--save-maps", str(foreign)]):
        with pytest.raises(OutputError):
            evaluator.evaluate_model(evaluator.get_args_parser().parse_args([*evaluation, *extra]), torch.device("cpu"))
    with pytest.raises(OutputError):
        count_pxap.evaluate(
            count_pxap.get_args_parser().parse_args([*evaluation, "--output-dir", str(foreign)]), torch.device("cpu")
        )
    assert snapshot(foreign) == before


def test_own_folders_are_reused_and_marked(tmp_path):
    folder = claim(tmp_path / "out", "a kind")
    (folder / "file").write_text("x")
    assert claim(folder, "a kind") == folder  # ours: reused
    with pytest.raises(OutputError, match="holds a a kind written by this project, not a another kind"):
        claim(folder, "another kind")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert json.loads((claim(empty, "k") / MARKER).read_text()) == {"kind": "k"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        claim(tmp_path / "file", "k")


def test_interrupted_build_leaves_nothing(tmp_path):
    def write(folder):
        (folder / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_folder(tmp_path / "set", "k", write)
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_before_its_first_epoch_leaves_no_folder(tmp_path):
    data = make_synthetic(tmp_path / "Synthetic", num_train=8, num_test=4)
    broken = data / "images" / "001.Class_1" / "img_00001.jpg"  # a training image
    broken.write_bytes(b"broken")
    result = run_script(
        "train.py", "--data-dir", str(data), "--output-dir", str(tmp_path / "run"), "--workers", "1", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert error_line(result) == f"error: {broken}: cannot read the image (cannot identify image file '{broken}')"
    assert not (tmp_path / "run").exists()
    debug = run_script("train.py", "--data-dir", str(data), "--workers", "0", "--debug", cwd=tmp_path)
    assert "Traceback" in debug.stderr and debug.returncode != 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs 0: must be positive"),
        (["--batch-size", "-4"], "--batch-size -4: must be positive"),
        (["--lr", "0"], "--lr 0: must be positive"),
        (["--threshold", "0.2", "1.5"], r"--threshold 1.5: must lie in \[0, 1\]"),
        (["--workers", "-1"], "--workers -1: must be 0 or more"),
    ],
)
def test_training_flags_are_checked_before_any_work(flags, message, tmp_path):
    argv = ["--data-dir", str(tmp_path / "never"), "--output-dir", str(tmp_path / "run"), *flags]
    with pytest.raises(ArgumentError, match=message):
        train_script.train(train_script.get_args_parser().parse_args(argv))
    assert list(tmp_path.iterdir()) == []  # not even the synthetic set was written


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        train_script.train(train_script.get_args_parser().parse_args(["--output-dir", str(tmp_path / "run")]))


# ------------------------------------------------------------------------ checkpoints
def test_corrupt_or_foreign_checkpoints_are_named_without_unsafe_advice(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x02garbage" * 10)
    torch.save({"model": {"w": torch.zeros(1)}, "opt": ArgumentError("x")}, tmp_path / "pickled.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    for name in ("empty.pth", "garbage.pth", "pickled.pth", "list.pth"):
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name}: not a checkpoint of this project or of the original BAS")
        assert "weights_only" not in message and "\n" not in message


def test_a_checkpoint_wins_over_a_contradicting_flag(data_dir, checkpoint, tmp_path):
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(checkpoint), *FAST, "--output-dir", str(tmp_path)]
    with pytest.raises(CheckpointError, match=r"holds a arch 'tiny' model; --arch vgg contradicts it \(drop --arch\)"):
        evaluator.evaluate_model(evaluator.get_args_parser().parse_args([*argv, "--arch", "vgg"]), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="--num-classes 7 contradicts it"):
        evaluator.evaluate_model(
            evaluator.get_args_parser().parse_args([*argv, "--num-classes", "7"]), torch.device("cpu")
        )


def test_a_release_checkpoint_of_another_size_gives_one_line(tmp_path):
    from WSOL.models import load_checkpoint

    torch.save({"model": build_model("tiny", 7).state_dict()}, tmp_path / "seven.pth.tar")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(build_model("tiny", 4), tmp_path / "seven.pth.tar")
    assert "\n" not in str(caught.value) and "tensors of another shape (e.g. classifier_cls" in str(caught.value)


def test_checkpoints_get_the_usual_permissions(tmp_path):
    save_atomic({"x": torch.zeros(1)}, tmp_path / "c.pth")
    (tmp_path / "plain").write_text("x")
    assert stat.S_IMODE((tmp_path / "c.pth").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "c.pth").stat().st_mode) == 0o666 & ~mask


# ------------------------------------------------------------------------- saved maps
def test_saved_maps_round_trip_to_the_models_numbers(data_dir, checkpoint, tmp_path):
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(checkpoint), *FAST, "--threshold", "0.2", "0.3"]
    argv += ["--save-maps", str(tmp_path / "maps"), "--output-dir", str(tmp_path / "ev")]
    model = evaluator.evaluate_model(evaluator.get_args_parser().parse_args(argv), torch.device("cpu"))
    saved = np.load(next((tmp_path / "maps").rglob("*.npy")))
    crop = PRESETS["Synthetic"]["tiny"].crop  # maps come at the crop size, wsolevaluation's format
    assert saved.shape == (crop, crop) and saved.min() == 0 and saved.max() == 1
    args = evaluator.get_args_parser().parse_args(["--data-dir", str(data_dir), "--maps", str(tmp_path / "maps")])
    again = evaluator.evaluate_saved_maps(args)
    for key in ("MaxBoxAccV2", "IoU30", "IoU50", "IoU70", "best_threshold_IoU50"):
        assert again[key] == model[key], key
    assert again["threshold"] in (0.2, 0.3)  # the thresholds recorded with the maps, not a default
    assert args.output_dir == tmp_path / "maps" / "eval_test"


def test_bad_saved_maps_are_named(data_dir, tmp_path):
    from WSOL.datasets import cub_release

    samples = cub_release(data_dir, "test")
    good = np.full((64, 64), 0.5, dtype=np.float32)
    nan_block, scaled, three_d = good.copy(), good * 6, good[None]
    nan_block[:8, :8] = np.nan
    argv = ["--data-dir", str(data_dir), "--maps", str(tmp_path / "maps"), "--output-dir", str(tmp_path / "ev")]
    for bad, message in ((nan_block, "NaN or infinite"), (scaled, r"values in \[3, 3\]"), (three_d, "2-D float")):
        for sample in samples:
            path = tmp_path / "maps" / f"{sample.image_id}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, bad if sample is samples[-1] else good)
        with pytest.raises(DatasetError, match=f"{samples[-1].image_id}.npy: .*{message}"):
            evaluator.evaluate_saved_maps(evaluator.get_args_parser().parse_args(argv))


# -------------------------------------------------------------------- small things
def test_overlays_are_enlarged_and_captioned(data_dir, checkpoint, tmp_path):
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(checkpoint), *FAST, "--save-images", "2"]
    report = evaluator.evaluate_model(
        evaluator.get_args_parser().parse_args([*argv, "--output-dir", str(tmp_path / "ev")]), torch.device("cpu")
    )
    pictures = sorted((tmp_path / "ev" / "images").glob("*.png"))
    assert len(pictures) == 2
    width, height = Image.open(pictures[0]).size
    assert width >= 256 and height > width  # enlarged from 56 px, with the caption band below
    assert "cls_top5" not in report and "top5_loc" not in report  # 4 classes: top-5 says nothing
    assert report["epoch"] == 1


def test_metrics_hold_no_float_noise(data_dir, checkpoint, tmp_path):
    argv = ["--data-dir", str(data_dir), "--checkpoint", str(checkpoint), *FAST, "--output-dir", str(tmp_path)]
    evaluator.main([*argv, "--threshold", "0.1", "0.3"])
    text = (tmp_path / "metrics.json").read_text()
    for key, value in json.loads(text).items():
        if "threshold" in key and key != "per_threshold":
            assert len(repr(value)) <= 6, (key, value)
