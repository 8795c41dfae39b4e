"""Any file given as weights or as a checkpoint, whatever it holds, stops with one line that
names it and says what is wrong with it; never a traceback, never advice to load unsafely."""

import io
import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

from bas.backbones import build_backbone, load_imagenet_weights
from bas.checkpoints import read_checkpoint
from bas.errors import CheckpointError, run_main
from bas.outputs import claim
from WSOL import evaluator
from WSOL import train as wsol_train
from WSOL.models import build_model, load_checkpoint
from WSOL.synthetic import make_synthetic
from WSSS import train_bas as wsss_train
from WSSS import training as wsss_training
from WSSS.steps.make_cam import load_net
from WSSS.synthetic import make_synthetic_voc

FAST = ["--workers", "0", "--no-progress"]


class Settings:
    """An object of a class of its own: pickled, it is no tensor nor plain container."""


def torch_file_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def zip_bytes() -> bytes:
    """A zip archive of another kind, such as a download holding the weights file."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights/README.txt", "hello\n")
    return buffer.getvalue()


TORCH_FILE = torch_file_bytes({"w": torch.zeros(1000)})
NOT_PYTORCH = "not a PyTorch file: no zip archive or pickle header"
PLAIN_PICKLE = "not a PyTorch file: a plain pickle, not written by torch.save"
TRUNCATED = "truncated or corrupt PyTorch file"
# File contents, each with a part of the line it must give.
CONTENTS = {
    "text": (b"hello\n", NOT_PYTORCH),
    "empty": (b"", "(empty file)"),
    "random": (random.Random(0).randbytes(512), NOT_PYTORCH),
    "pickled_set": (pickle.dumps({1, 2}), PLAIN_PICKLE),
    "pickled_object": (pickle.dumps(Settings()), PLAIN_PICKLE),
    "truncated": (TORCH_FILE[: len(TORCH_FILE) // 2], TRUNCATED),
    "zip": (zip_bytes(), "not a PyTorch file: a zip archive without torch.save's data.pkl"),
    "wrong_keys": (torch_file_bytes({"something.else": torch.zeros(3)}), "something.else"),  # the example key
}
UNREADABLE = [name for name in CONTENTS if name != "wrong_keys"]


@pytest.fixture(scope="module")
def wsol_data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=8, num_test=4, seed=1)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "VOCdevkit"
    return make_synthetic_voc(root, num_train_aug=4, num_train=2, num_val=1, seed=1) / "VOC2012"


def error_line_of(main, argv: list[str], capsys) -> str:
    """The one ``error:`` line a script prints, checking that it exits with status 2."""
    with pytest.raises(SystemExit) as stopped:
        run_main(main, argv)
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def message_of(load) -> str:
    with pytest.raises(CheckpointError) as caught:
        load()
    return str(caught.value)


def assert_names(message: str, path: Path, expected: str) -> None:
    assert str(path) in message and expected in message, message
    assert "\n" not in message and "weights_only" not in message


@pytest.fixture(params=list(CONTENTS))
def weights(request, tmp_path) -> tuple[Path, str]:
    """A weights file of each kind of content, and a part of the line it must give."""
    content, expected = CONTENTS[request.param]
    path = tmp_path / f"{request.param}.pth"
    path.write_bytes(content)
    return path, expected


@pytest.mark.parametrize("name", UNREADABLE)
def test_read_checkpoint(name, tmp_path):
    content, expected = CONTENTS[name]
    path = tmp_path / "c.pth"
    path.write_bytes(content)
    message = message_of(lambda: read_checkpoint(path))
    assert_names(message, path, expected)
    assert message.startswith(f"{path}: not a checkpoint of this project or of the original BAS release (")


def test_files_of_torch_before_zip_archives_still_load(tmp_path):
    weights = {"w": torch.arange(3.0)}
    torch.save(weights, tmp_path / "c.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(tmp_path / "c.pth")["model"]["w"], weights["w"])


def test_pretrained_weights_with_other_objects_are_named_as_such(tmp_path):
    (tmp_path / "c.pth").write_bytes(torch_file_bytes({"w": torch.zeros(1), "settings": Settings()}))
    message = message_of(lambda: load_imagenet_weights("tiny", build_backbone("tiny"), str(tmp_path / "c.pth")))
    assert_names(message, tmp_path / "c.pth", "(it holds objects other than tensors and plain containers)")


def test_a_state_dict_of_other_values_is_refused(tmp_path):
    (tmp_path / "c.pth").write_bytes(torch_file_bytes({"model": {"head.0.weight": 3}}))
    message = message_of(lambda: load_checkpoint(build_model("tiny", 3), tmp_path / "c.pth"))
    assert_names(message, tmp_path / "c.pth", "1 of another type (e.g. head.0.weight: int, not a tensor)")


def test_pretrained_loader(weights):
    path, expected = weights
    message = message_of(lambda: load_imagenet_weights("tiny", build_backbone("tiny"), str(path)))
    assert_names(message, path, expected)


def test_pretrained_weights_of_wrong_keys_say_what_does_not_fit(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(CONTENTS["wrong_keys"][0])
    message = message_of(lambda: load_imagenet_weights("tiny", build_backbone("tiny"), str(path)))
    assert message == (
        f"{path} does not fit the tiny backbone: no tensor matches; 1 unexpected (e.g. something.else); "
        "15 missing (e.g. 0.weight); expected torchvision key names"
    )


def test_missing_pretrained_weights(tmp_path):
    message = message_of(lambda: load_imagenet_weights("tiny", build_backbone("tiny"), str(tmp_path / "no.pth")))
    assert message == f"{tmp_path / 'no.pth'}: no such file"


def test_make_cam_weights(weights):
    path, expected = weights
    assert_names(message_of(lambda: load_net("cam", str(path), 20, "tiny")), path, expected)


def test_evaluator_checkpoint(weights, tmp_path, capsys):
    path, expected = weights
    argv = ["--checkpoint", str(path), "--output-dir", str(tmp_path / "eval"), *FAST]
    assert_names(error_line_of(evaluator.main, argv, capsys), path, expected)


def test_wsol_train_pretrained(weights, wsol_data, tmp_path, capsys):
    path, expected = weights
    argv = ["--data-dir", str(wsol_data), "--output-dir", str(tmp_path / "run"), "--pretrained", str(path), *FAST]
    assert_names(error_line_of(wsol_train.main, argv, capsys), path, expected)


@pytest.mark.parametrize("name", UNREADABLE)
def test_wsol_train_resume(name, wsol_data, tmp_path, capsys):
    run = claim(tmp_path / "run", wsol_train.RUN_KIND)
    (run / "last.pth").write_bytes(CONTENTS[name][0])
    argv = ["--data-dir", str(wsol_data), "--output-dir", str(run), "--resume", "--batch-size", "4", *FAST]
    assert_names(error_line_of(wsol_train.main, argv, capsys), run / "last.pth", CONTENTS[name][1])


@pytest.mark.parametrize("name", UNREADABLE)
def test_wsss_train_resume(name, voc, tmp_path, capsys):
    run = claim(tmp_path / "run", wsss_training.RUN_KIND)
    (run / "bas_last.pth").write_bytes(CONTENTS[name][0])
    argv = ["--dataset", "voc", "--voc12_root", str(voc), "--arch", "tiny", "--output-dir", str(run)]
    argv += ["--resume", "--batch-size", "4", "--crop-size", "32", "--resize-square", "36", *FAST]
    assert_names(error_line_of(wsss_train.main, argv, capsys), run / "bas_last.pth", CONTENTS[name][1])
