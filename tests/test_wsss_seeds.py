"""WSSS seed files: ours (.npz) hold plain arrays; the original's pickled .npy dicts are
rebuilt admitting numpy arrays and torch tensors only, so a crafted seed runs no code."""

import os
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from bas.errors import DatasetError
from WSSS import metrics
from WSSS.datasets import voc_masks
from WSSS.seeds import read_seed, seed_path, write_seed
from WSSS.steps import eval_cam

SHAPE = (6, 8)


class Planted:
    """Pickles as the call ``call(*args)``: what a crafted seed makes its reader run."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def original_seed(keys, cam, high_res, tensors=False):
    """A seed dict as the original's make_cam saves it: keys and cam as CPU torch tensors
    (keys a strided view, as torch.nonzero(label)[:, 0] gives them), high_res numpy."""
    if not tensors:
        return {"keys": keys, "cam": cam, "high_res": high_res}
    label = torch.zeros(20)
    label[torch.from_numpy(keys)] = 1
    return {"keys": torch.nonzero(label)[:, 0], "cam": torch.from_numpy(cam), "high_res": high_res}


def hand_seed(index):
    """A small seed of two classes: (keys, cam, high_res), different per index."""
    keys = np.array([index % 3, 5 + index], np.int64)
    high_res = np.zeros((2, *SHAPE), np.float32)
    high_res[0, : 2 + index % 3] = 0.9
    high_res[1, :, : 1 + index] = 0.6
    high_res[1, 0, 0] = 0.125
    return keys, high_res[:, ::4, ::4].copy(), high_res


def masks_folder(root, ids):
    """A VOC2012-like folder whose masks put the first seed class on the top rows."""
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for index, image_id in enumerate(ids):
        keys, _, _ = hand_seed(index)
        mask = np.zeros(SHAPE, np.uint8)
        mask[:3] = keys[0] + 1
        mask[-1] = 255
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc_masks(root, "val")


def score(folder, masks):
    return eval_cam.score_seeds(folder, masks, metrics.SWEEP, 20)


# ----------------------------------------------------------------- crafted seeds
def planted_calls(marker):
    """Calls that would create ``marker`` if a seed's reader ran them, and the global each names."""
    touch = Planted(os.system, f"touch {marker}")
    return {
        "os.system": (touch, f"{os.system.__module__}.system"),
        "open": (Planted(open, str(marker), "w"), f"{open.__module__}.open"),
        "eval": (Planted(eval, f"open({str(marker)!r}, 'w')"), "builtins.eval"),
        "subprocess": (Planted(subprocess.run, ["touch", str(marker)]), "subprocess.run"),
        # a tensor's storage is a pickle inside the pickle: torch reads it as one more file
        "storage": (Planted(torch.storage._load_from_bytes, pickle.dumps(touch, protocol=2)), "tensor storage"),
    }


@pytest.mark.parametrize("call", ["os.system", "open", "eval", "subprocess", "storage"])
def test_a_crafted_seed_is_refused_before_it_runs_anything(tmp_path, call):
    marker = tmp_path / "ran"
    planted, named = planted_calls(marker)[call]
    masks = masks_folder(tmp_path / "VOC2012", ["2007_000000"])
    crafted = tmp_path / "seeds" / "2007_000000.npy"
    crafted.parent.mkdir()
    keys, cam, high_res = hand_seed(0)
    np.save(crafted, {"keys": keys, "cam": planted, "high_res": high_res}, allow_pickle=True)
    with pytest.raises(DatasetError) as refused:
        score(crafted.parent, masks)
    message = str(refused.value)
    assert message.startswith(f"{crafted}: refused ") and named in message and "\n" not in message
    assert not marker.exists()


def test_an_npy_of_numbers_or_an_npz_of_objects_is_no_seed(tmp_path):
    np.save(tmp_path / "numbers.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetError, match=r"numbers\.npy: an array of float32 \(2, 3\), not a seed"):
        read_seed(tmp_path / "numbers.npy")
    np.savez(tmp_path / "objects.npz", keys=np.array([0]), high_res=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match=r"objects\.npz: not a seed file \(Object arrays cannot be loaded"):
        read_seed(tmp_path / "objects.npz")


# ------------------------------------------------------------- the original's seeds
@pytest.mark.parametrize("tensors", [False, True], ids=["numpy", "torch"])
def test_an_original_seed_reads_back_exactly(tmp_path, tensors):
    keys, cam, high_res = hand_seed(2)
    np.save(tmp_path / "a.npy", original_seed(keys, cam, high_res, tensors), allow_pickle=True)
    for maps, expected in (("high_res", high_res), ("cam", cam)):
        read_keys, read_maps = read_seed(tmp_path / "a.npy", maps)
        assert read_keys.dtype == np.int64 and read_keys.tolist() == keys.tolist()
        assert read_maps.dtype == np.float32
        np.testing.assert_array_equal(read_maps, expected)


# ------------------------------------------------------------------------ ours
def test_our_seed_round_trips_and_holds_no_pickle(tmp_path):
    keys, cam, high_res = hand_seed(1)
    write_seed(tmp_path, "b", {"keys": keys.astype(np.int32), "cam": cam, "high_res": high_res.astype(np.float64)})
    assert os.listdir(tmp_path) == ["b.npz"]  # no temporary file left
    with np.load(tmp_path / "b.npz", allow_pickle=False) as stored:
        assert sorted(stored.files) == ["cam", "high_res", "keys"]
        assert [stored[name].dtype for name in ("keys", "cam", "high_res")] == [np.int64, np.float32, np.float32]
        np.testing.assert_array_equal(stored["keys"], keys)
        np.testing.assert_array_equal(stored["cam"], cam)
        np.testing.assert_array_equal(stored["high_res"], high_res)
    for maps, expected in (("high_res", high_res), ("cam", cam)):
        read_keys, read_maps = read_seed(seed_path(tmp_path, "b"), maps)
        np.testing.assert_array_equal(read_keys, keys)
        np.testing.assert_array_equal(read_maps, expected)


def test_our_file_is_read_before_the_originals(tmp_path):
    assert seed_path(tmp_path, "c") == tmp_path / "c.npz"  # neither: where make_cam writes it
    keys, cam, high_res = hand_seed(0)
    np.save(tmp_path / "c.npy", original_seed(keys, cam, high_res), allow_pickle=True)
    assert seed_path(tmp_path, "c") == tmp_path / "c.npy"
    write_seed(tmp_path, "c", {"keys": keys[:1], "cam": cam[:1], "high_res": high_res[:1]})
    assert seed_path(tmp_path, "c") == tmp_path / "c.npz"
    assert read_seed(seed_path(tmp_path, "c"))[0].tolist() == keys[:1].tolist()


def test_a_folder_mixing_both_formats_scores_as_either(tmp_path):
    ids = [f"2007_{i:06d}" for i in range(4)]
    masks = masks_folder(tmp_path / "VOC2012", ids)
    (tmp_path / "original").mkdir()
    for index, image_id in enumerate(ids):
        keys, cam, high_res = hand_seed(index)
        write_seed(tmp_path / "ours", image_id, {"keys": keys, "cam": cam, "high_res": high_res})
        seed = original_seed(keys, cam, high_res, tensors=index % 2 == 1)
        np.save(tmp_path / "original" / f"{image_id}.npy", seed, allow_pickle=True)
    (tmp_path / "mixed").mkdir()
    for index, image_id in enumerate(ids):
        shutil.copy(seed_path(tmp_path / ("ours" if index < 2 else "original"), image_id), tmp_path / "mixed")
    assert sorted(os.listdir(tmp_path / "mixed")) == [f"{i}{s}" for i, s in zip(ids, [".npz", ".npz", ".npy", ".npy"])]
    counts = score(tmp_path / "mixed", masks)
    np.testing.assert_array_equal(counts, score(tmp_path / "ours", masks))
    np.testing.assert_array_equal(counts, score(tmp_path / "original", masks))
    assert counts[1:, 1:].sum() > 0  # classes were scored, not only the background
