"""Speed of the WSSS part, as one table.

- Training: forward + backward + SGD step of the multi-label BAS net (ResNet50, crop 448)
  and of IRN's CAM net (crop 512), fp32 and bf16 autocast: images/s and peak memory, each
  configuration in a fresh process.
- make_cam: milliseconds per VOC-sized image (500 x 375) for BAS+CAM seeds at the four
  scales with their flips (each flip pair one batch), the stride-4 and full-size maps.
- eval_cam: ours (each seed read once, all thresholds in one pass) against the original's
  procedure, re-implemented step by step (its eval_cam run once per threshold: every seed
  unpickled and every mask read again, the background plane padded in front, argmax, and
  chainercv's confusion, a bincount per image), and against the floor of just reading
  every seed and mask once. The three are timed in interleaved rounds in one process,
  the mIoUs checked equal. The files are synthetic, of VOC's size and in the original's
  format: seeds as its make_cam pickles them (``np.save`` of a dict holding torch tensors
  and a numpy array), read here, as by eval_cam, with ``WSSS.seeds.read_seed``, which
  rebuilds the pickle without running code (slower than ``np.load``'s plain unpickling,
  which makes the re-implementation slightly slower than the original); palette masks of
  blocks with a void border.

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
from WSSS.metrics import IGNORE
from WSSS.seeds import read_seed, seed_path
from WSSS.steps import eval_cam, make_cam

CLASSES = 20


def write_files(root: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` seeds in the original's format under root/cam and their masks in a VOC2012
    folder under root/VOC2012; the ids."""
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
        low = torch.from_numpy(high_res[:, ::4, ::4].copy())
        np.save(cam_dir / f"{image_id}.npy", {"keys": torch.from_numpy(keys), "cam": low, "high_res": high_res})
        blocks = rng.choice([0, *(keys + 1)], (h // 25 + 1, w // 25 + 1)).astype(np.uint8)
        mask = np.kron(blocks, np.ones((25, 25), np.uint8))[:h, :w]
        mask[:, :3] = IGNORE
        image = Image.fromarray(mask, mode="P")
        image.putpalette([(37 * v) % 256 for v in range(768)])
        image.save(voc / "SegmentationClass" / f"{image_id}.png")
        ids.append(image_id)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return ids


def chainercv_label(path: Path) -> np.ndarray:
    """A mask as chainercv's VOC dataset gives it: the palette indices as int32, void -1."""
    with Image.open(path) as image:
        label = np.array(image.convert("P"), dtype=np.int32)
    label[label == IGNORE] = -1
    return label


def chainercv_confusion(preds: list[np.ndarray], labels: list[np.ndarray]) -> np.ndarray:
    """chainercv's calc_semantic_segmentation_confusion, step by step: per image, the
    matrix grown to the largest label seen, then one bincount of the pixels labelled >= 0."""
    n = 0
    confusion = np.zeros((0, 0), dtype=np.int64)
    for pred, label in zip(preds, labels):
        pred, label = pred.flatten(), label.flatten()
        largest = np.max((pred, label))
        if largest >= n:
            grown = np.zeros((largest + 1, largest + 1), dtype=np.int64)
            grown[:n, :n] = confusion
            n, confusion = largest + 1, grown
        valid = label >= 0
        confusion += np.bincount(n * label[valid].astype(int) + pred[valid], minlength=n * n).reshape(n, n)
    return confusion


def original_eval_cam(cam_dir: Path, voc: Path, ids: list[str], t: float) -> float:
    """The original's eval_cam at one threshold, re-implemented: every seed and mask read,
    the background plane t padded in front, argmax, mapped through keys + 1; the confusion
    of all images, IoU and nanmean."""
    preds, labels = [], []
    for image_id in ids:
        seed_keys, high_res = read_seed(cam_dir / f"{image_id}.npy")
        cams = np.pad(high_res, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=t)
        keys = np.pad(seed_keys + 1, (1, 0), mode="constant")
        preds.append(keys[np.argmax(cams, axis=0)].copy())
        labels.append(chainercv_label(voc / "SegmentationClass" / f"{image_id}.png"))
    confusion = chainercv_confusion(preds, labels)
    diag = np.diag(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(diag / (confusion.sum(1) + confusion.sum(0) - diag)))


def training(method: str, dtype: str, args: argparse.Namespace):
    """(model, optimizer, loss of one batch) for training one WSSS net on ``args.device``;
    the weights and the batch are drawn on the CPU, so that every device starts from the same."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(method, CLASSES).train().to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    crop = args.crop or (448 if method == "bas" else 512)
    images = torch.randn(args.batch, 3, crop, crop)
    labels = (torch.rand(args.batch, CLASSES) < 0.15).float()
    labels[:, 0] = 1  # every image has a positive class
    positive = draw_positive(labels, torch.Generator().manual_seed(0))  # the class of each BAS image's AMC
    images, labels, positive = images.to(device), labels.to(device), positive.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    def loss() -> torch.Tensor:
        with autocast:
            if method == "bas":
                return multilabel_bas_loss(model(images, labels, positive), labels, positive)[0]
            return multilabel_soft_margin_loss(model(images, labels), labels)[0]

    return model, optimizer, loss


def first_loss(method: str, dtype: str, args: argparse.Namespace) -> float:
    """The loss of the first training batch, before any step: what the devices must agree on."""
    return training(method, dtype, args)[2]().item()


def train_speed(method: str, dtype: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """(images/s, peak MiB, the first batch's loss) of training steps of one WSSS net; run
    in a fresh process."""
    device = torch.device(args.device)
    _, optimizer, loss = training(method, dtype, args)
    first = loss().item()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return args.batch / timed(step, args.steps, args.warmup, device), peak_mib(device), first


class Autocast:
    """A net whose class maps are computed under bf16 autocast and handed on in float32,
    so that make_cam's resizing, sums and normalisation stay in float32."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        self.net, self.device = net, device

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.net.class_maps(images).float()


def make_cam_seeds(dtype: str, args: argparse.Namespace):
    """A call that makes the BAS+CAM seed of one ``args.image_size`` image (ResNet50 nets,
    four scales + flips) on ``args.device``, the nets under bf16 autocast for "bf16"; the
    nets and the image are drawn on the CPU, so that every device maps the same."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    nets = {method: build_model(method, CLASSES).eval().to(device) for method in ("bas", "cam")}
    if dtype == "bf16":
        nets = {method: Autocast(net, device) for method, net in nets.items()}
    label = np.zeros(CLASSES, np.float32)
    label[[3, 11]] = 1
    h, w = args.image_size
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    pairs = []
    for scale in SCALES:
        scaled = to_tensor(rescale(image, scale))
        pairs.append(torch.stack([scaled, scaled.flip(-1)]))
    item = MultiScaleItem("2007_000000", (h, w), label, pairs)
    return lambda: make_cam.image_seeds(nets, ["bas+cam"], item, device)["bas+cam"]


def make_cam_ms(dtype: str, args: argparse.Namespace) -> float:
    """Milliseconds per image of ``make_cam_seeds``; run in a fresh process."""
    return 1000 * timed(make_cam_seeds(dtype, args), args.steps, args.warmup, torch.device(args.device))


def eval_cam_times(files: int, rounds: int) -> dict[str, float]:
    """Seconds of the original's procedure (25 passes), ours (one pass) and the floor (every
    seed and mask read once, nothing else) on the same ``files``, best of ``rounds``
    interleaved rounds, after checking that both give the same mIoUs."""
    thresholds = list(metrics.SWEEP)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ids = write_files(root, files)
        cam_dir, voc = root / "cam", root / "VOC2012"
        masks = voc_masks(voc, "val")

        def original() -> list[float]:
            return [100 * original_eval_cam(cam_dir, voc, ids, t) for t in thresholds]

        def ours() -> list[float]:
            counts = eval_cam.score_seeds(cam_dir, masks, thresholds, CLASSES)
            return eval_cam.summarize(counts, thresholds, VOC_CLASSES)["miou"]

        def floor() -> None:
            for index, image_id in enumerate(ids):
                read_seed(seed_path(cam_dir, image_id))
                masks[index]

        np.testing.assert_allclose(ours(), original(), rtol=1e-12)
        runs = {"original": original, "ours": ours, "floor": floor}
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: min(seconds) for name, seconds in times.items()}


def eval_cam_rows(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # the seeds are numpy work; keep torch's thread pool out of the way
    seconds = eval_cam_times(args.files, args.rounds)
    original, ours, floor = seconds["original"], seconds["ours"], seconds["floor"]
    print(f"eval_cam, {args.files} seeds of about 500 x 375, {len(metrics.SWEEP)} thresholds (mIoUs equal)")
    print(f"best of {args.rounds} interleaved rounds; {'ms/image':>9} {'vs ours':>8}")
    rows = (
        ("the original's procedure, re-implemented", original),
        ("ours (one pass)", ours),
        ("reading every seed and mask once", floor),
    )
    for name, value in rows:
        print(f"{name:<42} {1000 * value / args.files:>9.2f} {value / ours:>7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", nargs="+", default=["train", "make_cam", "eval_cam"], choices=["train", "make_cam", "eval_cam"]
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2, help="training batch (the original: 16 over 4 GPUs)")
    parser.add_argument("--crop", type=int, help="training crop (default: 448 for BAS, 512 for CAM, as the original)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--image-size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"), help="make_cam")
    parser.add_argument("--files", type=int, default=200, help="seed files for eval_cam")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the eval_cam timings")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}, {CLASSES} classes\n")

    if "train" in args.only:
        memory = "peak alloc MiB" if device.type == "cuda" else "peak RSS MiB"
        print(f"{'training, batch ' + str(args.batch):<26} {'images/s':>9} {memory:>14}")
        for method in ("bas", "cam"):
            for dtype in args.dtype:
                speed, peak, _ = isolated(train_speed, method, dtype, args)
                print(f"{method + ' ResNet50 ' + dtype:<26} {speed:9.2f} {peak:14.0f}", flush=True)
        print()
    if "make_cam" in args.only:
        ms = isolated(make_cam_ms, "fp32", args)
        h, w = args.image_size
        print(f"make_cam, BAS+CAM ResNet50, {w} x {h}, scales {SCALES} + flips: {ms:.0f} ms/image\n")
    if "eval_cam" in args.only:
        eval_cam_rows(args)


if __name__ == "__main__":
    main()
