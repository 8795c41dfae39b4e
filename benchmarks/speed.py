"""Speed of training and evaluation, as one table.

- Training: forward + backward + SGD step of each BAS generator at 224 x 224, in fp32
  and under bf16 autocast: images/s and the peak memory of the run (resident set on
  the CPU, allocated memory on CUDA). ``--deepcopy`` also times the original's frozen
  tail (a deep copy of the tail every step), side by side, for the speed-up.
- Evaluation: the generator's forward pass (class scores and GT-class maps) per image,
  and the post-processing of one map per image for the original protocol (one CAM
  threshold) and for MaxBoxAccV2 (1,000 CAM thresholds), with its share of the forward;
  the original protocol's is also timed against a re-implementation of the original's
  code (image by image, a Python pixel count), side by side, for the speed-up.

Each configuration runs in a fresh process, so that peak memory is its own.

    python benchmarks/speed.py                               # everything, on CUDA when present
    python benchmarks/speed.py --device cpu --arch mobilenet --deepcopy
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from unittest import mock

import cv2
import numpy as np
import torch
from scipy import ndimage

from bas import amc
from bas.amc import bas_loss
from bas.backbones import ARCHS
from WSOL import metrics
from WSOL.models import build_model


def deepcopy_call(modules, x):
    """The original's frozen tail: deep copies of the modules, run as they are."""
    for module in modules:
        x = copy.deepcopy(module)(x)
    return x


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float:
    """This process's peak memory: allocated on CUDA, resident set (KiB on Linux) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def timed(run, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``run``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def training(arch: str, dtype: str, args: argparse.Namespace):
    """(model, optimizer, loss of one batch) for training ``arch`` on ``args.device``; the
    weights and the batch are drawn on the CPU, so that every device starts from the same."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(arch, args.num_classes).train().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images = torch.randn(args.batch, 3, args.size, args.size).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch,)).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    def loss() -> torch.Tensor:
        with autocast:
            return bas_loss(model(images, labels), labels, alpha=0.5, beta=1.5)[0]

    return model, optimizer, loss


def first_loss(arch: str, dtype: str, args: argparse.Namespace) -> float:
    """The loss of the first training batch, before any step: what the devices must agree on."""
    return training(arch, dtype, args)[2]().item()


def train_speed(arch: str, dtype: str, deepcopy: bool, args: argparse.Namespace) -> tuple[float, float, float]:
    """(images/s, peak MiB, the first batch's loss) of training steps; run in a fresh process."""
    device = torch.device(args.device)
    _, optimizer, loss = training(arch, dtype, args)
    first = loss().item()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    with mock.patch.object(amc, "frozen_call", deepcopy_call) if deepcopy else nullcontext():
        seconds = timed(step, args.steps, args.warmup, device)
    return args.batch / seconds, peak_mib(device), first


@torch.inference_mode()
def forward_ms(arch: str, args: argparse.Namespace) -> float:
    """Milliseconds per image of the evaluation forward pass (scores and GT-class maps)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(arch, args.num_classes).to(device).eval()
    images = torch.randn(args.eval_batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.num_classes, (args.eval_batch,), device=device)
    return 1000 * timed(lambda: model.localize(images, labels), args.steps, args.warmup, device) / args.eval_batch


def most_frequent_label(labels: list[list[int]]) -> int:
    """The original's choice of component, step for step: every pixel's label looked up in a
    dict in Python (a zero skipped, a new label entered at 0, then counted), the labels sorted
    by count, the most frequent kept (ties: the label met first); -1 without foreground."""
    counts: dict[int, int] = {}
    for row in labels:
        for label in row:
            if label == 0:
                continue
            if label not in counts.keys():
                counts[label] = 0
            counts[label] += 1
    if not counts:
        return -1
    return sorted(counts.items(), key=lambda pair: pair[1], reverse=True)[0][0]


def inclusive_iou(box: list[int], gt_box: np.ndarray) -> float:
    """The original's IoU of two boxes, corners inclusive (+1), in Python scalars."""
    width = max(0, min(box[2], gt_box[2]) - max(box[0], gt_box[0]) + 1)
    height = max(0, min(box[3], gt_box[3]) - max(box[1], gt_box[1]) + 1)
    inter = width * height
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    return inter / float(area + (gt_box[2] - gt_box[0] + 1) * (gt_box[3] - gt_box[1] + 1) - inter)


def original_code_boxes(maps: np.ndarray, gt: list[np.ndarray], threshold: float, crop: int = 224):
    """The original evaluator's procedure, image by image, at one threshold, with its calls:
    the map min-max normalized (+1e-5) and resized bilinearly by cv2; a float64 map of zeros
    set to 1 above the threshold; its 8-connected components; the most frequent one by a
    Python tally; a float64 map of zeros set to 1 on it, x 255, rounded, resized nearest to the
    crop; its bounding box (the whole crop when empty); the best IoU over the GT boxes, one
    Python IoU each. scipy.ndimage stands in for skimage (not a dependency) in the labelling
    and the box: its components are numbered in the same row-major order and give the same
    boxes. -> boxes N x 4, best IoUs N."""
    boxes, best = [], []
    for raw, gt_boxes in zip(maps, gt):
        low, high = np.min(raw), np.max(raw)
        scaled = cv2.resize((raw - low) / (high - low + 1e-5), dsize=(crop, crop))
        foreground = np.zeros(scaled.shape)
        foreground[scaled > threshold] = 1
        components = ndimage.label(foreground, structure=np.ones((3, 3)))[0]
        kept = np.zeros(foreground.shape)
        kept[components == most_frequent_label(components.tolist())] = 1
        kept = cv2.resize(np.round(kept * 255), (crop, crop), interpolation=cv2.INTER_NEAREST)
        found = ndimage.find_objects(kept.astype(int))
        rows, cols = found[-1] if found else (slice(0, crop), slice(0, crop))
        box = [cols.start, rows.start, cols.stop, rows.stop]
        boxes.append(box)
        best.append(max([inclusive_iou(box, gt_box) for gt_box in gt_boxes], default=-1.0))
    return np.array(boxes), np.array(best)


def post_processing_ms(count: int = 64, rounds: int = 3) -> tuple[dict[str, float], float]:
    """Milliseconds per image of each protocol, on smooth random 28 x 28 maps (low-resolution
    noise upsampled and sharpened, the look of a generator's maps) and one GT box each; and of
    the original's code for the original protocol, timed in turns with ours (best of
    ``rounds``), after checking that both give the same boxes and IoUs."""
    rng = np.random.default_rng(0)
    maps = metrics.resize_maps(rng.random((count, 7, 7)).astype(np.float32), 28) ** 3
    corners = rng.integers(0, 112, (count, 2))
    gt = [np.array([[x, y, x + 100, y + 100]]) for x, y in corners]
    protocols = {
        "original (1 thr)": lambda: metrics.original_protocol_ious(maps, gt, [0.2]),
        "MaxBoxAccV2 (1000 thr)": lambda: metrics.maxboxacc_correct(maps, gt),
    }
    ours_iou, ours_boxes = metrics.original_protocol_ious(maps, gt, [0.2])
    boxes, best = original_code_boxes(maps, gt, 0.2)
    assert np.array_equal(ours_boxes[:, 0], boxes) and np.array_equal(ours_iou[:, 0], best), "boxes differ"
    times = {name: [] for name in [*protocols, "original's code"]}
    for _ in range(rounds):
        for name, run in protocols.items():
            times[name].append(timed(run, 3, 1, torch.device("cpu")))
        times["original's code"].append(timed(lambda: original_code_boxes(maps, gt, 0.2), 3, 1, torch.device("cpu")))
    ms = {name: 1000 * min(seconds) / count for name, seconds in times.items()}
    return {name: ms[name] for name in protocols}, ms["original's code"]


def isolated(function, *args):
    """``function(*args)`` in a fresh process (its own peak memory, no warm caches)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=200, help="200 as on CUB")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--deepcopy", action="store_true", help="also time the original deep-copied frozen tail")
    parser.add_argument("--no-train", action="store_true", help="evaluation only")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}, {args.size}x{args.size}, {args.num_classes} classes\n")

    if not args.no_train:
        memory = "peak alloc MiB" if device.type == "cuda" else "peak RSS MiB"
        header = f"{'training, batch ' + str(args.batch):<22} {'images/s':>9} {memory:>14}"
        print(header + (f" {'deepcopy img/s':>15} {'speed-up':>8}" if args.deepcopy else ""))
        for arch in args.arch:
            for dtype in args.dtype:
                speed, peak, _ = isolated(train_speed, arch, dtype, False, args)
                line = f"{arch + ' ' + dtype:<22} {speed:9.2f} {peak:14.0f}"
                if args.deepcopy:
                    original, _, _ = isolated(train_speed, arch, dtype, True, args)
                    line += f" {original:15.2f} {speed / original:7.2f}x"
                print(line, flush=True)
        print()

    post, original_code = post_processing_ms()
    ours = post["original (1 thr)"]
    print(f"{'post-processing':<22} {'ms/image':>10} {'original code ms':>17} {'speed-up':>8}   (CPU, same boxes)")
    print(f"{'original (1 thr)':<22} {ours:10.3f} {original_code:17.2f} {original_code / ours:7.1f}x\n", flush=True)
    header = f"{'evaluation per image':<22} {'forward ms':>10}" + "".join(f" {name + ' ms':>26}" for name in post)
    print(header + f"   (forward: batch {args.eval_batch}; post-processing: CPU, share of the forward)")
    for arch in args.arch:
        forward = isolated(forward_ms, arch, args)
        shares = "".join(f" {f'{ms:.2f} ({100 * ms / forward:.1f}%)':>26}" for ms in post.values())
        print(f"{arch:<22} {forward:10.1f}{shares}", flush=True)


if __name__ == "__main__":
    main()
