"""Training-step throughput of the four BAS generators.

Times forward + backward + SGD step at batch 8, 224x224, in fp32 and under bf16
autocast, and prints images/s. ``--deepcopy`` also times the original's way of
running the frozen tail (a deep copy of the tail every step), side by side in the
same run, so the ratio between the two is measured on the same machine state.

    python benchmarks/train_step.py                    # all archs, fp32 and bf16
    python benchmarks/train_step.py --arch resnet --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import copy
import time
from contextlib import nullcontext
from unittest import mock

import torch

from bas import amc
from bas.amc import bas_loss
from bas.backbones import ARCHS
from WSOL.models import build_model


def deepcopy_call(modules, x):
    """The original's frozen tail: deep copies of the modules, run as they are."""
    for module in modules:
        x = copy.deepcopy(module)(x)
    return x


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(arch: str, device: torch.device, dtype: str, args: argparse.Namespace) -> float:
    model = build_model(arch, args.num_classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = bas_loss(model(images, labels), labels, alpha=0.5, beta=1.5)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return args.batch * args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=200, help="200 as on CUB")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--deepcopy", action="store_true", help="also time the original deep-copied frozen tail")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training step, batch {args.batch}, {args.size}x{args.size}, {name}, torch {torch.__version__}")
    header = f"{'arch':<10} {'dtype':<5} {'images/s':>9}"
    print(header + (f" {'deepcopy':>9} {'speed-up':>8}" if args.deepcopy else ""))
    for arch in args.arch:
        for dtype in args.dtype:
            ours = images_per_second(arch, device, dtype, args)
            line = f"{arch:<10} {dtype:<5} {ours:9.2f}"
            if args.deepcopy:
                with mock.patch.object(amc, "frozen_call", deepcopy_call):
                    original = images_per_second(arch, device, dtype, args)
                line += f" {original:9.2f} {ours / original:7.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
