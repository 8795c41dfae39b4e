"""The GPU rows of docs/speed.md in one run, each with an output check against the CPU.

- random walk (make_sem_seg_labels): ours (sparse) on the GPU and on the CPU, and the
  original's dense walk on the GPU; check: the GPU's maps against ours on the CPU.
- make_cam, BAS+CAM seeds of one VOC-sized image, fp32 and bf16 autocast; check: the
  seed maps (each at most 1) against the CPU's fp32 ones.
- training steps of the WSSS nets and of the WSOL generators, fp32 and bf16 autocast:
  images/s and peak allocated memory, each configuration in a fresh process; check: the
  first batch's loss against the CPU's fp32 one (relative difference).

A check passes when the difference is within the row's tolerance: float64 rounding for
the sparse walk; float32 against float64 for the dense one; for the nets, the GPU's TF32
convolutions (PyTorch's default) in fp32 and bf16's 8-bit mantissa in bf16. torchrun
with several GPUs is not measured here (one GPU).

    python benchmarks/gpu.py              # on CUDA: a few minutes
    python benchmarks/gpu.py --dry-run    # every row on the CPU at tiny sizes, in seconds
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace

import numpy as np
import randomwalk_speed
import speed
import torch
import wsss_speed

from bas.backbones import ARCHS
from bas.errors import ArgumentError, run_main
from WSSS.randomwalk import propagate

DTYPES = ("fp32", "bf16")
NET_TOLERANCE = {"fp32": 1e-2, "bf16": 1e-1}  # TF32 convolutions; bf16's 8-bit mantissa


def sizes(dry_run: bool) -> Namespace:
    """The settings of every row: the documented sizes, or tiny ones for a dry run."""
    if dry_run:
        return Namespace(
            walk=(6, 8), walk_repeats=1, wsol_batch=1, wsol_size=64, wsol_classes=5, wsss_batch=1, wsss_crop=32,
            image_size=(24, 32), steps=1, warmup=0, fresh_process=False,
        )  # fmt: skip
    return Namespace(
        walk=(94, 128), walk_repeats=3, wsol_batch=8, wsol_size=224, wsol_classes=200, wsss_batch=2, wsss_crop=None,
        image_size=(375, 500), steps=5, warmup=2, fresh_process=True,
    )  # fmt: skip


def seconds(run, repeats: int, device: torch.device) -> tuple[object, float]:
    """(the result of a first, untimed call of ``run``; seconds per call after it)."""
    return run(), speed.timed(run, repeats, 0, device)


def check(difference: float, tolerance: float) -> str:
    return f"{difference:.1e} {'<=' if difference <= tolerance else 'OVER'} {tolerance:.0e}"


def walk_rows(device: torch.device, s: Namespace) -> list[tuple[str, str, str, str]]:
    """Ours on ``device`` and on the CPU, the dense original on ``device``."""
    walk = Namespace(radius=5, beta=10.0, exp_times=8)
    seeds, edge = randomwalk_speed.make_maps(*s.walk, 3)

    def ours(on: torch.device):
        return lambda: propagate(seeds.to(on), edge.to(on), walk.radius, walk.beta, walk.exp_times)

    cpu, cpu_s = seconds(ours(torch.device("cpu")), s.walk_repeats, torch.device("cpu"))
    gpu, gpu_s = seconds(ours(device), s.walk_repeats, device)
    dense, build_s, squaring_s = randomwalk_speed.dense_propagate(
        seeds.to(device), edge.to(device), walk.radius, walk.beta, walk.exp_times, walk.exp_times
    )
    dense_s = build_s + sum(squaring_s)
    h, w = s.walk
    return [
        (f"random walk {h} x {w}, ours, CPU", f"{cpu_s:.3f} s", "", "reference"),
        (
            f"random walk {h} x {w}, ours, {device.type}",
            f"{gpu_s:.3f} s",
            f"{cpu_s / gpu_s:.1f}x the CPU",
            check((gpu.cpu() - cpu).abs().max().item(), 1e-9),
        ),
        (
            f"random walk {h} x {w}, dense original, {device.type}",
            f"{dense_s:.3f} s",
            f"{dense_s / gpu_s:.1f}x ours",
            check((dense.cpu() - cpu).abs().max().item(), 1e-4),
        ),
    ]


def make_cam_rows(device: torch.device, s: Namespace) -> list[tuple[str, str, str, str]]:
    """make_cam on ``device`` in each dtype, its seed maps against the CPU's fp32 ones."""
    args = Namespace(device="cpu", image_size=s.image_size, steps=s.steps, warmup=s.warmup)
    reference = wsss_speed.make_cam_seeds("fp32", args)()["high_res"]
    rows = []
    for dtype in DTYPES:
        args.device = device.type
        seed, per_image = seconds(wsss_speed.make_cam_seeds(dtype, args), s.steps, device)
        difference = np.abs(seed["high_res"] - reference).max()
        h, w = s.image_size
        title, checked = f"make_cam {w} x {h} {dtype}", check(difference, NET_TOLERANCE[dtype])
        rows.append((title, f"{1000 * per_image:.0f} ms/image", "", checked))
    return rows


def train_rows(device: torch.device, s: Namespace) -> list[tuple[str, str, str, str]]:
    """Each WSSS net and WSOL generator in each dtype: speed and memory on ``device``, and
    the first loss against the CPU's fp32 one."""
    wsss = Namespace(crop=s.wsss_crop, batch=s.wsss_batch, steps=s.steps, warmup=s.warmup)
    wsol = Namespace(batch=s.wsol_batch, size=s.wsol_size, num_classes=s.wsol_classes, steps=s.steps, warmup=s.warmup)
    configurations = [(f"WSSS {method} ResNet50", wsss, wsss_speed, (method,)) for method in ("bas", "cam")]
    configurations += [(f"WSOL {arch}", wsol, speed, (arch,)) for arch in ARCHS]
    fresh = speed.isolated if s.fresh_process else lambda function, *args: function(*args)
    rows = []
    for title, args, module, what in configurations:
        reference = module.first_loss(*what, "fp32", Namespace(**vars(args), device="cpu"))
        on_device = Namespace(**vars(args), device=device.type)
        for dtype in DTYPES:
            timing = (*what, dtype, False, on_device) if module is speed else (*what, dtype, on_device)
            images_s, peak, loss = fresh(module.train_speed, *timing)
            difference = abs(loss - reference) / abs(reference)
            checked = check(difference, NET_TOLERANCE[dtype])
            rows.append((f"train {title} {dtype}", f"{images_s:.2f} images/s", f"{peak:.0f} MiB", checked))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Prints the table; exits with status 1 when a check is over its tolerance."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every row on the CPU at tiny sizes")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise ArgumentError("no CUDA device; --dry-run runs every row on the CPU at tiny sizes")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny sizes: a second thread costs more than it gains
    s = sizes(args.dry_run)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}{' (dry run: tiny sizes)' if args.dry_run else ''}\n")
    rows = [*walk_rows(device, s), *make_cam_rows(device, s), *train_rows(device, s)]
    print(f"| {'row':<44} | {'time or speed':<16} | {'vs / peak':<14} | {'check: difference vs tolerance':<30} |")
    print(f"|{'-' * 46}|{'-' * 18}|{'-' * 16}|{'-' * 32}|")
    for row in rows:
        print(f"| {row[0]:<44} | {row[1]:<16} | {row[2]:<14} | {row[3]:<30} |", flush=True)
    print("\ntorchrun over several GPUs: not measured (one GPU).")
    if any("OVER" in row[3] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
