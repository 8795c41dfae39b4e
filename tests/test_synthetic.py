"""The synthetic demo set: deterministic, in the CUB release format, boxes = mask extents."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bas.outputs import MARKER
from WSOL import cli, synthetic
from WSOL.datasets import cub_release
from WSOL.synthetic import class_colour, make_synthetic
from WSOL.train import get_args_parser


def test_deterministic_and_seeded(tmp_path):
    a = make_synthetic(tmp_path / "a", num_train=6, num_test=4, seed=3)
    b = make_synthetic(tmp_path / "b", num_train=6, num_test=4, seed=3)
    c = make_synthetic(tmp_path / "c", num_train=6, num_test=4, seed=4)
    for name in ("images.txt", "bounding_boxes.txt", "image_class_labels.txt", "train_test_split.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    first = [np.asarray(Image.open(s.path)) for s in cub_release(a, "train")]
    assert all(np.array_equal(x, np.asarray(Image.open(s.path))) for x, s in zip(first, cub_release(b, "train")))
    assert any(not np.array_equal(x, np.asarray(Image.open(s.path))) for x, s in zip(first, cub_release(c, "train")))


def test_release_layout_boxes_and_discs(tmp_path):
    root = make_synthetic(tmp_path / "Synthetic", num_classes=4, num_train=12, num_test=8)
    train, test = cub_release(root, "train"), cub_release(root, "test")
    assert len(train) == 12 and len(test) == 8
    assert {s.label for s in train} == {s.label for s in test} == {0, 1, 2, 3}
    for sample in train + test:
        mask = np.asarray(Image.open(sample.mask_paths[0])) > 127
        rows, cols = np.nonzero(mask)
        assert sample.boxes.tolist() == [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]]
        image = np.asarray(Image.open(sample.path)).astype(int)
        x0, y0, x1, y1 = sample.boxes[0].astype(int)
        inside = image[y0:y1, x0:x1]
        distance = np.abs(inside - class_colour(sample.label)).sum(-1)
        assert (distance < 60).sum() >= 10, "the class disc must show inside the box"


def test_rewrite_leaves_a_sibling_alone_and_replaces_only_its_own_set(tmp_path):
    """A folder named like a temporary one is not ours to remove; our own set is rebuilt."""
    (tmp_path / "Synthetic.partial" / "junk").mkdir(parents=True)
    root = make_synthetic(tmp_path / "Synthetic", num_train=4, num_test=4)
    assert (tmp_path / "Synthetic.partial" / "junk").is_dir()
    assert len(cub_release(root, "train")) == 4
    make_synthetic(root, num_train=6, num_test=4)
    assert len(cub_release(root, "train")) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Synthetic", "Synthetic.partial"]


def test_ensure_keeps_a_current_set_and_rebuilds_an_earlier_generators(tmp_path, monkeypatch):
    """A set of this generator's version is used whatever its size; one an earlier version drew
    (or one with no version in its marker) is replaced by the default set."""
    root = synthetic.make_synthetic(tmp_path / "Synthetic", num_train=6, num_test=4)
    default = functools.partial(synthetic.make_synthetic, num_train=3, num_test=2)  # the default set, made small
    monkeypatch.setattr(synthetic, "make_synthetic", default)
    assert synthetic.ensure_synthetic(root) == root and len(cub_release(root, "train")) == 6
    marker = json.loads((root / MARKER).read_text())
    marker["params"]["version"] = synthetic.GENERATOR_VERSION - 1
    (root / MARKER).write_text(json.dumps(marker))
    synthetic.ensure_synthetic(root)
    assert len(cub_release(root, "train")) == 3
    assert json.loads((root / MARKER).read_text())["params"]["version"] == synthetic.GENERATOR_VERSION


# ------------------------------------------------------------- where the set is written
def test_a_mistyped_data_dir_is_reported_not_made(tmp_path):
    """train.py's default --root Synthetic with a --data-dir that does not exist: one line,
    and no set is written (neither there nor at the default place)."""
    train = Path(__file__).resolve().parents[1] / "WSOL" / "train.py"
    command = [sys.executable, str(train), "--data-dir", "nope", "--workers", "0", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.splitlines()[-1:] == [
        "error: nope: no such folder; the demo set is written only to data/Synthetic, "
        "or elsewhere with --make-synthetic"
    ], result.stderr
    assert not (tmp_path / "nope").exists() and not (tmp_path / "data").exists()


def test_the_demo_set_is_written_at_its_place_or_with_the_flag(tmp_path, monkeypatch):
    """Written at data/Synthetic in the current folder, or elsewhere with --make-synthetic; a
    demo set is used wherever it lies."""
    monkeypatch.chdir(tmp_path)
    small = functools.partial(synthetic.make_synthetic, num_train=3, num_test=2)
    monkeypatch.setattr(synthetic, "make_synthetic", small)

    def training_images(*argv):
        args = get_args_parser().parse_args(list(argv))
        cli.resolve_preset(args)
        return len(cli.load_samples(args, "train"))

    assert training_images() == 3 and (tmp_path / "data" / "Synthetic" / "images.txt").is_file()
    assert training_images("--data-dir", "elsewhere", "--make-synthetic") == 3
    assert training_images("--data-dir", "elsewhere") == 3
