"""Speed of the WSSS part, as one table.

- Training: forward + backward + SGD step of the multi-label BAS net (ResNet50, crop 448)
  and of IRN's CAM net (crop 512), fp32 and bf16 autocast: images/s and peak memory, each
  configuration in a fresh process.
- make_cam: seconds per VOC-sized image (500 x 375 JPEG) for BAS+CAM seeds at the four
  scales with their flips, from the file to the seed's arrays: the original's procedure,
  re-implemented step by step (its loading and resizing, the BAS net's whole ResNet50 with
  the layer4, class conv and score it computes and leaves unused, IRN's CAM net, every
  class resized before the GT classes are picked), against ours in fp32 and bf16
  (``make_cam.InferenceNet``), in interleaved rounds in one process, the maps compared.
- eval_cam: ours (each seed read once, all thresholds in one pass) against the original's
  procedure, re-implemented step by step (its eval_cam run once per threshold: every seed
  unpickled and every mask read again, the background plane padded in front, argmax, and
  chainercv's confusion, a bincount per image), and against the floor of just reading
  every seed and mask once. The three are timed in interleaved rounds in one process,
  the mIoUs checked equal. The files are synthetic, of VOC's size and in the original's
  format: seeds as its make_cam pickles them (``np.save`` of a dict holding torch tensors
  and a numpy array), unpickled by ``np.load`` in the original's procedure (the benchmark
  wrote them) and by ``WSSS.seeds.read_seed``, which runs no code, in ours and in the
  floor; palette masks of blocks with a void border.

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
import torch.nn.functional as F
from PIL import Image
from speed import isolated, peak_mib, timed

from bas.data import IMAGENET_MEAN, IMAGENET_STD
from WSSS import metrics
from WSSS.datasets import SCALES, VOC_CLASSES, MultiScaleSet, Sample, voc_masks
from WSSS.models import BASNet, CAMNet, build_model, draw_positive, multilabel_bas_loss, multilabel_soft_margin_loss
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
    """The original's eval_cam at one threshold, re-implemented with its calls: every seed
    unpickled by ``np.load`` (the benchmark's own files) and every mask read, the background
    plane t padded in front, argmax, mapped through keys + 1; the confusion of all images,
    IoU and nanmean."""
    preds, labels = [], []
    for image_id in ids:
        seed = np.load(cam_dir / f"{image_id}.npy", allow_pickle=True).item()
        cams = np.pad(seed["high_res"], ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=t)
        keys = np.pad(seed["keys"] + 1, (1, 0), mode="constant")
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


def original_item(path: Path, scales: tuple[float, ...]) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """The original's VOC12ClassificationDatasetMSF item, step by step: the image read as an
    RGB uint8 array; per scale, PIL's bicubic resize to (round(H s), round(W s)) where the
    size changes, the per-channel normalization in float64 into a float32 array, HWC to CHW,
    the mirror stacked behind; then the data loader's batch of one. (pairs, (H, W))."""
    with Image.open(path) as file:
        image = np.asarray(file.convert("RGB"))  # H x W x 3, as imageio reads a JPEG
    height, width = image.shape[:2]
    pairs = []
    for scale in scales:
        size = (int(np.round(height * scale)), int(np.round(width * scale)))
        scaled = image
        if size != (height, width):
            scaled = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BICUBIC))
        normalized = np.empty_like(scaled, np.float32)
        for channel in range(3):
            normalized[..., channel] = (scaled[..., channel] / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        chw = np.transpose(normalized, (2, 0, 1))
        pairs.append(torch.stack([torch.as_tensor(np.stack([chw, np.flip(chw, -1)]))]))  # 1 x 2 x 3 x h x w
    return pairs, (height, width)


def original_bas_maps(net: BASNet, pair: torch.Tensor) -> torch.Tensor:
    """The original BAS net's forward without labels: the whole ResNet50, layer3's output
    cloned, layer4, the class conv and its average pool computed and left unused, then M of
    the clone; the mirror's M flipped back and added. 2 x 3 x h x w -> C x h' x w'."""
    features = net.head(pair)
    tapped = features.clone()
    F.adaptive_avg_pool2d(net.classifier_cls(net.tail(features)), 1).flatten(1)  # the unused score
    maps = net.classifier_loc(tapped)
    return maps[0] + maps[1].flip(-1)


def original_cam_maps(net: CAMNet, pair: torch.Tensor) -> torch.Tensor:
    """IRN's CAM net's forward at inference: the four stages, the class conv's weight applied
    by F.conv2d, ReLU; the mirror's maps flipped back and added."""
    maps = F.relu(F.conv2d(net.tail(net.head(pair)), net.classifier_cls.weight))
    return maps[0] + maps[1].flip(-1)


def original_fused(outputs: list[torch.Tensor], size: tuple[int, int], valid: torch.Tensor):
    """One net's maps of every scale (C x h x w each) summed at the stride-4 size and at the
    stride-16-rounded-up size as the original does (every class resized, the GT classes
    picked afterwards), then each normalised by its max + 1e-5."""
    height, width = size
    strided, up = make_cam.strided_size(size, 4), tuple(16 * s for s in make_cam.strided_size(size, 16))
    low = torch.sum(
        torch.stack([F.interpolate(o[None], strided, mode="bilinear", align_corners=False)[0] for o in outputs]), 0
    )
    high = [F.interpolate(o[:, None], up, mode="bilinear", align_corners=False) for o in outputs]
    high = torch.sum(torch.stack(high, 0), 0)[:, 0, :height, :width]
    low, high = low[valid], high[valid]
    low /= F.adaptive_max_pool2d(low, (1, 1)) + 1e-5
    high /= F.adaptive_max_pool2d(high, (1, 1)) + 1e-5
    return low, high


@torch.no_grad()
def original_seed(nets: dict[str, torch.nn.Module], path: Path, label: torch.Tensor, device: torch.device) -> dict:
    """The original's make_cam for one image, re-implemented step by step: its loading
    (``original_item``), the BAS net on every scale's pair, then the CAM net's, each net's
    maps summed and normalised, the two added and normalised again."""
    pairs, size = original_item(path, SCALES)
    valid = torch.nonzero(label)[:, 0]
    bas_low, bas_high = original_fused([original_bas_maps(nets["bas"], p[0].to(device)) for p in pairs], size, valid)
    cam_low, cam_high = original_fused([original_cam_maps(nets["cam"], p[0].to(device)) for p in pairs], size, valid)
    low, high = cam_low + bas_low, cam_high + bas_high
    low /= F.adaptive_max_pool2d(low, (1, 1)) + 1e-5
    high /= F.adaptive_max_pool2d(high, (1, 1)) + 1e-5
    return {"keys": valid, "cam": low.cpu(), "high_res": high.cpu().numpy()}


def seed_nets(device: torch.device) -> dict[str, torch.nn.Module]:
    """ResNet50 BAS and CAM nets drawn on the CPU (every device maps the same), their
    BatchNorm statistics and affine parameters drawn too, so that folding them is no no-op."""
    torch.manual_seed(0)
    nets = {method: build_model(method, CLASSES).eval() for method in ("bas", "cam")}
    with torch.no_grad():
        for module in (m for net in nets.values() for m in net.modules()):
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.8, 1.2)
                module.bias.uniform_(-0.1, 0.1)
    return {method: net.to(device) for method, net in nets.items()}


def inference_nets(dtype: str, device: torch.device) -> dict[str, make_cam.InferenceNet]:
    """``seed_nets`` as make_cam runs them (``make_cam.InferenceNet``), bf16 for "bf16"."""
    amp = "bf16" if dtype == "bf16" else None
    return {name: make_cam.InferenceNet(net, device, amp) for name, net in seed_nets(device).items()}


def one_image(path: Path, size: tuple[int, int]) -> MultiScaleSet:
    """make_cam's dataset of one image: a JPEG of ``size`` (H, W), written at ``path``."""
    label = np.zeros(CLASSES, np.float32)
    label[[3, 11]] = 1
    return MultiScaleSet([Sample("2007_000000", write_image(path, size), label)], SCALES)


def make_cam_seeds(dtype: str, args: argparse.Namespace):
    """A call that makes the BAS+CAM seed of one ``args.image_size`` image (ResNet50 nets,
    four scales + flips, the image loaded beforehand) on ``args.device`` as make_cam does,
    in bf16 for "bf16"; the nets are drawn on the CPU, so that every device maps the same."""
    device = torch.device(args.device)
    nets = inference_nets(dtype, device)
    with tempfile.TemporaryDirectory() as folder:
        item = one_image(Path(folder) / "image.jpg", args.image_size)[0]
    return lambda: make_cam.image_seeds(nets, ["bas+cam"], item, device)["bas+cam"]


def write_image(path: Path, size: tuple[int, int]) -> Path:
    """An H x W JPEG of smooth colour gradients with noise, about as costly to decode as a photo."""
    h, w = size
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 1, h)[:, None, None] * np.linspace(0, 1, w)[None, :, None] * rng.random(3)
    pixels = np.clip(255 * gradient + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def make_cam_times(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per image of the original's make_cam procedure and of ours in each of
    ``args.dtype``, from the JPEG to the seed's arrays, best of ``args.rounds`` interleaved
    rounds after one untimed; and ours' largest difference to the original's maps in each."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        dataset = one_image(Path(folder) / "2007_000000.jpg", args.image_size)
        path, label = dataset.samples[0].path, torch.from_numpy(dataset.samples[0].label)
        nets = seed_nets(device)
        runs = {"original": lambda: original_seed(nets, path, label, device)}
        for dtype in args.dtype:
            ours = inference_nets(dtype, device)
            runs[dtype] = lambda ours=ours: make_cam.image_seeds(ours, ["bas+cam"], dataset[0], device)["bas+cam"]
        seeds = {name: run() for name, run in runs.items()}  # also the untimed round
        reference = seeds["original"]
        differences = {}
        for dtype in args.dtype:
            np.testing.assert_array_equal(seeds[dtype]["keys"], reference["keys"].numpy())
            differences[dtype] = max(
                float(np.abs(seeds[dtype][key] - np.asarray(reference[key])).max()) for key in ("cam", "high_res")
            )
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(timed(run, 1, 0, device))
    return {name: min(seconds) for name, seconds in times.items()}, differences


def make_cam_rows(args: argparse.Namespace) -> None:
    seconds, differences = make_cam_times(args)
    h, w = args.image_size
    original = seconds["original"]
    print(f"make_cam, BAS+CAM ResNet50 seeds of one {w} x {h} JPEG, scales {SCALES} + flips")
    print(f"best of {args.rounds} interleaved rounds; {'s/image':>9} {'speed-up':>9} {'max |diff|':>11}")
    print(f"{'the original procedure, re-implemented':<42} {original:>9.2f} {1:>8.2f}x")
    for dtype in args.dtype:
        name = f"ours, {dtype}"
        print(f"{name:<42} {seconds[dtype]:>9.2f} {original / seconds[dtype]:>8.2f}x {differences[dtype]:>11.1e}")
    print()


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
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the make_cam and eval_cam timings")
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
        make_cam_rows(args)
    if "eval_cam" in args.only:
        eval_cam_rows(args)


if __name__ == "__main__":
    main()
