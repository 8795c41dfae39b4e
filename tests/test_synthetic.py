"""The synthetic demo set: deterministic, in the CUB release format, boxes = mask extents."""

import numpy as np
from PIL import Image

from WSOL.datasets import cub_release
from WSOL.synthetic import class_colour, make_synthetic


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
    import functools
    import json

    from bas.outputs import MARKER
    from WSOL import synthetic

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
