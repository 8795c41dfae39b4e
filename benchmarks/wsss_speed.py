"""Speed of the WSSS part, as one table.

- Training: forward + backward + SGD step of the multi-label BAS net (ResNet50, crop 448)
  and of IRN's CAM net (crop 512), fp32 and bf16 autocast: images/s and peak memory, each
  configuration in a fresh process.
- make_cam: milliseconds per VOC-sized image (500 x 375) for BAS+CAM seeds at the four
  scales with their flips (each flip pair one batch), the stride-4 and full-size maps.
- eval_cam: ours (each seed read once, all thresholds in one pass) against the original's
  procedure (its eval_cam run once per threshold, every seed and mask read again each
  time), side by side on the same files, with the mIoUs checked equal. The files are
  synthetic, of VOC's size and format: 1 to 3 classes each, seeds as make_cam writes them
  (``WSSS.seeds``), palette masks with a void border.

    python benchmarks/wsss_speed.py                 # everything, on CUDA when present
    python benchmarks/wsss_speed.py --only eval_cam --files 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from speed import isolated, peak_mib, timed

from WSSS import metrics
from WSSS.datasets import SCALES, VOC_CLASSES, MultiScaleItem, rescale, to_tensor, voc_masks
from WSSS.models import build_model, draw_positive, multilabel_bas_loss, multilabel_soft_margin_loss
from WSSS.seeds import read_seed, seed_path, write_seed
from WSSS.steps import eval_cam, make_cam

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
        write_seed(cam_dir, image_id, {"keys": keys, "cam": low, "high_res": high_res})
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
        seed_keys, high_res = read_seed(seed_path(cam_dir, image_id))
        cams = np.pad(high_res, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=t)
        keys = np.pad(seed_keys + 1, (1, 0), mode="constant")
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


def train_speed(method: str, dtype: str, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s, peak MiB) of training steps of one WSSS net; run in a fresh process."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(method, CLASSES).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    crop = 448 if method == "bas" else 512
    images = torch.randn(args.batch, 3, crop, crop, device=device)
    labels = (torch.rand(args.batch, CLASSES, device=device) < 0.15).float()
    labels[:, 0] = 1  # every image has a positive class
    positive = draw_positive(labels, torch.Generator().manual_seed(0))  # the class of each BAS image's AMC
    inputs = (images, labels, positive) if method == "bas" else (images, labels)
    loss_of = multilabel_bas_loss if method == "bas" else multilabel_soft_margin_loss
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = model(*inputs)
            loss, _ = loss_of(out, labels, positive) if method == "bas" else loss_of(out, labels)
        loss.backward()
        optimizer.step()

    return args.batch / timed(step, args.steps, args.warmup, device), peak_mib(device)


@torch.inference_mode()
def make_cam_ms(args: argparse.Namespace) -> float:
    """Milliseconds per 500 x 375 image of BAS+CAM seeds (ResNet50 nets, four scales + flips)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    nets = {method: build_model(method, CLASSES).to(device).eval() for method in ("bas", "cam")}
    label = np.zeros(CLASSES, np.float32)
    label[[3, 11]] = 1
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8))
    pairs = []
    for scale in SCALES:
        scaled = to_tensor(rescale(image, scale))
        pairs.append(torch.stack([scaled, scaled.flip(-1)]))
    item = MultiScaleItem("2007_000000", (375, 500), label, pairs)
    return 1000 * timed(lambda: make_cam.image_seeds(nets, ["bas+cam"], item, device), args.steps, args.warmup, device)


def eval_cam_rows(args: argparse.Namespace) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", nargs="+", default=["train", "make_cam", "eval_cam"], choices=["train", "make_cam", "eval_cam"]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2, help="training batch (the original: 16 over 4 GPUs)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--files", type=int, default=200, help="seed files for eval_cam")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}, {CLASSES} classes\n")

    if "train" in args.only:
        memory = "peak alloc MiB" if device.type == "cuda" else "peak RSS MiB"
        print(f"{'training, batch ' + str(args.batch):<26} {'images/s':>9} {memory:>14}")
        for method in ("bas", "cam"):
            for dtype in args.dtype:
                speed, peak = isolated(train_speed, method, dtype, args)
                print(f"{method + ' ResNet50 ' + dtype:<26} {speed:9.2f} {peak:14.0f}", flush=True)
        print()
    if "make_cam" in args.only:
        ms = isolated(make_cam_ms, args)
        print(f"make_cam, BAS+CAM ResNet50, 500 x 375, scales {SCALES} + flips: {ms:.0f} ms/image\n")
    if "eval_cam" in args.only:
        eval_cam_rows(args)


if __name__ == "__main__":
    main()
