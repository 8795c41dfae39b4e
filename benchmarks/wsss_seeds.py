"""Speed of eval_cam: ours (each seed read once, all thresholds in one pass) against the
original's procedure (its eval_cam run once per threshold, every seed and mask read again
each time), side by side on the same files, with the mIoUs checked equal.

The files are synthetic, of VOC's size and format: images about 500 x 375, 1 to 3
classes each, seeds in the original's format (torch tensors and a numpy array in a
pickled dict), palette masks with a void border, written to a temporary folder.

    python benchmarks/wsss_seeds.py                 # 200 files, the original's 25 thresholds
    python benchmarks/wsss_seeds.py --files 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from WSSS import metrics
from WSSS.datasets import VOC_CLASSES, voc_masks
from WSSS.steps import eval_cam

CLASSES = 20


def write_files(root: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` seeds and masks under ``root`` (seeds in root/cam, a VOC2012 folder in root/VOC2012)."""
    rng = np.random.default_rng(seed)
    cam_dir, voc = root / "cam", root / "VOC2012"
    (voc / "SegmentationClass").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    cam_dir.mkdir()
    ids = []
    for i in range(count):
        image_id = f"2007_{i:06d}"
        h, w = (375, 500) if i % 2 else (int(rng.integers(330, 501)), int(rng.integers(330, 501)))
        keys = np.sort(rng.choice(CLASSES, int(rng.integers(1, 4)), replace=False))
        high_res = rng.random((len(keys), h, w), dtype=np.float32)
        low = high_res[:, ::4, ::4].copy()
        np.save(
            cam_dir / f"{image_id}.npy",
            {"keys": torch.from_numpy(keys), "cam": torch.from_numpy(low), "high_res": high_res},
        )
        mask = rng.choice([0, *(keys + 1)], (h, w)).astype(np.uint8)
        mask[:, :3] = 255
        image = Image.fromarray(mask, mode="P")
        image.putpalette([(37 * v) % 256 for v in range(768)])
        image.save(voc / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return ids


def original_eval_cam(cam_dir: Path, voc: Path, ids: list[str], t: float) -> float:
    """The original's eval_cam at one threshold, written plainly: read every seed and mask,
    pad the background plane t in front, argmax, map through keys + 1, then one confusion
    matrix (chainercv's per-image bincount), IoU and nanmean."""
    preds, labels = [], []
    for image_id in ids:
        seed = np.load(cam_dir / f"{image_id}.npy", allow_pickle=True).item()
        cams = np.pad(seed["high_res"], ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=t)
        keys = np.pad(seed["keys"] + 1, (1, 0), mode="constant")
        preds.append(keys[np.argmax(cams, axis=0)].copy())
        with Image.open(voc / "SegmentationClass" / f"{image_id}.png") as image:
            label = np.asarray(image, dtype=np.int32).copy()
        label[label == 255] = -1
        labels.append(label)
    n = CLASSES + 1
    confusion = np.zeros((n, n), dtype=np.int64)
    for pred, label in zip(preds, labels):
        valid = label >= 0
        confusion += np.bincount(n * label[valid] + pred[valid], minlength=n * n).reshape(n, n)
    diag = np.diag(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(diag / (confusion.sum(1) + confusion.sum(0) - diag)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    thresholds = list(metrics.SWEEP)
    torch.set_num_threads(1)  # the seeds are numpy work; keep torch's thread pool out of the way

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ids = write_files(root, args.files)
        cam_dir, voc = root / "cam", root / "VOC2012"

        start = time.perf_counter()
        original = [original_eval_cam(cam_dir, voc, ids, t) for t in thresholds]
        original_s = time.perf_counter() - start

        start = time.perf_counter()
        counts = eval_cam.score_seeds(cam_dir, voc_masks(voc, "val"), thresholds, CLASSES)
        ours = eval_cam.summarize(counts, thresholds, VOC_CLASSES)["miou"]
        ours_s = time.perf_counter() - start

    np.testing.assert_allclose(ours, 100 * np.array(original), rtol=1e-12)
    print(f"eval_cam, {args.files} seeds of about 500 x 375, {len(thresholds)} thresholds (mIoUs equal)")
    print(f"{'':<32} {'total s':>9} {'ms/image':>9}")
    for name, seconds in (("original (25 passes)", original_s), ("ours (one pass)", ours_s)):
        print(f"{name:<32} {seconds:>9.2f} {1000 * seconds / args.files:>9.2f}")
    print(f"speed-up: {original_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
