"""Speed of IRN's random walk (make_sem_seg_labels), the original's dense method against
ours (WSSS.randomwalk.propagate), side by side on the same maps, on the CPU and on CUDA.

- dense: the original's procedure: the (h*w) x (h*w) affinity matrix built on the padded
  grid and cropped, ``aff ** beta`` divided by its column sums, squared ``exp_times`` times,
  the seeds (times 1 - edge) multiplied by it. At VOC's stride-4 size (94 x 128) the matrix
  takes 0.6 GB and the squarings 8 x 12032^3 = 1.4e13 multiply-adds: minutes on a few CPU
  cores. ``--dense-squarings K`` runs only K of them on the CPU and extrapolates the rest
  linearly (printed as an estimate; agreement is then not measured on the CPU).
- sparse: ours, the one-step operator as a float64 CSR matrix applied 2^exp_times times;
  the time includes building it. On the CPU it is also timed on one thread: its products are small
  enough that a second thread often costs more than it gains.
- agreement: make_sem_seg_labels' labels at the seeds' stride (divided by the global max,
  the background plane 0.22 in front, argmax) equal between the two, and the largest
  absolute difference of the propagated maps.

The maps are synthetic: a few elliptic objects whose outlines are strong edges (as IRN's
sigmoid gives them) over weak noise, and one seed blob per object class.

    python benchmarks/randomwalk_speed.py                       # full dense run: minutes on a CPU
    python benchmarks/randomwalk_speed.py --dense-squarings 1   # one CPU squaring, the rest estimated
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from speed import synchronize

from WSSS.randomwalk import path, propagate

BG_THRESHOLD = 0.22  # make_sem_seg_labels' background score


def make_maps(h: int, w: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(seeds C x h x w, edge 1 x h x w): C objects, each an elliptic outline of strong edges
    with a seed blob (``** 1.5`` as BAS's make_sem_seg_labels) around its centre."""
    generator = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    edge = torch.rand(h, w, generator=generator) * 0.2
    seeds = []
    size = torch.tensor([h, w], dtype=torch.float32)
    for _ in range(classes):
        cy, cx = (0.2 + 0.6 * torch.rand(2, generator=generator)) * size  # centre in the middle 60 %
        ry, rx = (0.1 + 0.2 * torch.rand(2, generator=generator)) * size  # semi-axes 10 to 30 % of the side
        radial = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        edge = torch.maximum(edge, torch.sigmoid(12 * (0.15 - (radial.sqrt() - 1).abs())))
        seeds.append(torch.exp(-2 * radial) ** 1.5)
    return torch.stack(seeds), edge[None]


def dense_propagate(seeds, edge, radius, beta, exp_times, squarings):
    """The original's dense procedure; ``squarings`` of its ``exp_times`` squarings run.
    -> (result, or None when some were skipped; seconds to build; seconds per squaring)."""
    device = seeds.device
    synchronize(device)
    start = time.perf_counter()
    c, h, w = seeds.shape
    hp, wp, floor = h + radius, w + 2 * radius, radius - 1
    padded = F.pad(edge, (radius, radius, 0, radius), value=1.0)[0]  # h+r x w+2r
    rows, cols = torch.arange(hp - floor, device=device), torch.arange(floor, wp - floor, device=device)
    sy, sx = torch.meshgrid(rows, cols, indexing="ij")  # the sources: all but the last floor rows and side columns
    half_plane = [(dy, dx) for dy in range(radius) for dx in range(-floor, radius) if (dy, dx) > (0, 0)]
    aff = torch.eye(hp * wp, dtype=seeds.dtype, device=device)
    for dy, dx in (d for d in half_plane if d[0] ** 2 + d[1] ** 2 < radius**2):
        max_edge = torch.stack([padded[sy + y, sx + x] for y, x in path(dy, dx)]).amax(0)
        src, dst = (sy * wp + sx).flatten(), ((sy + dy) * wp + sx + dx).flatten()
        aff[src, dst] = aff[dst, src] = (1 - max_edge).flatten()
    aff = aff.view(hp, wp, hp, wp)[:h, radius:-radius, :h, radius:-radius].reshape(h * w, h * w)
    trans = aff.pow_(beta)
    trans /= trans.sum(0, keepdim=True)
    synchronize(device)
    build_s = time.perf_counter() - start
    squaring_s = []
    for _ in range(squarings):
        start = time.perf_counter()
        trans = trans @ trans
        synchronize(device)
        squaring_s.append(time.perf_counter() - start)
    if squarings < exp_times:
        return None, build_s, squaring_s
    start = time.perf_counter()
    rw = ((seeds * (1 - edge)).reshape(c, h * w) @ trans).view(c, h, w)
    synchronize(device)
    return rw, build_s + time.perf_counter() - start, squaring_s


def timed_sparse(seeds, edge, args, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rw = propagate(seeds, edge, args.radius, args.beta, args.exp_times)  # warm-up
        synchronize(seeds.device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            rw = propagate(seeds, edge, args.radius, args.beta, args.exp_times)
        synchronize(seeds.device)
        return rw, (time.perf_counter() - start) / args.repeats
    finally:
        torch.set_num_threads(previous)


def labels(rw: torch.Tensor) -> torch.Tensor:
    rw = rw / rw.max()
    return torch.cat([torch.full_like(rw[:1], BG_THRESHOLD), rw]).argmax(0)


def compare(device: torch.device, args: argparse.Namespace) -> None:
    seeds, edge = (t.to(device) for t in make_maps(*args.size, args.classes))
    if device.type == "cuda":
        name, squarings = torch.cuda.get_device_name(device), args.exp_times
    else:
        name, squarings = f"CPU, {torch.get_num_threads()} threads", min(args.dense_squarings, args.exp_times)
    print(f"{name}", flush=True)
    dense, build_s, squaring_s = dense_propagate(seeds, edge, args.radius, args.beta, args.exp_times, squarings)
    dense_s = build_s + sum(squaring_s) / len(squaring_s) * args.exp_times if squaring_s else build_s
    how = "measured" if dense is not None else f"estimated from {squarings} squaring(s) of {args.exp_times}"
    print(f"  {'dense, original (' + how + ')':<58} {dense_s:10.3f} s", flush=True)
    rows = [("sparse, ours", torch.get_num_threads())]
    if device.type == "cpu" and torch.get_num_threads() > 1:
        rows.append(("sparse, ours, 1 thread", 1))
    for title, threads in rows:
        rw, sparse_s = timed_sparse(seeds, edge, args, threads)
        line = f"  {title:<58} {sparse_s:10.3f} s   {dense_s / sparse_s:8.0f}x faster"
        if dense is not None:
            same = (labels(rw) == labels(dense)).double().mean().item()
            line += f"   labels equal {100 * same:.3f} %   max |diff| {(rw - dense).abs().max().item():.1e}"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=[94, 128],
        metavar=("H", "W"),
        help="map size at stride 4 (a 375 x 500 VOC image gives 94 x 125)",
    )
    parser.add_argument("--classes", type=int, default=3, help="seed maps (an image's GT classes; VOC averages 1.5)")
    parser.add_argument("--radius", type=int, default=5, help="IRN's neighbourhood radius")
    parser.add_argument("--beta", type=float, default=10, help="IRN's affinity power")
    parser.add_argument("--exp-times", type=int, default=8, help="IRN's squarings: 2^8 = 256 steps")
    parser.add_argument(
        "--dense-squarings",
        type=int,
        default=8,
        help="squarings of the dense method run on the CPU (each a minute or so); fewer are extrapolated",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of the sparse method")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    args = parser.parse_args()

    h, w = args.size
    print(
        f"random walk, {h} x {w} at stride 4, {args.classes} classes, radius {args.radius}, beta {args.beta:g}, "
        f"2^{args.exp_times} steps, float32 maps (dense in float32 as the original, ours float64 inside), "
        f"torch {torch.__version__}"
    )
    with torch.inference_mode():
        for device in args.devices:
            compare(torch.device(device), args)


if __name__ == "__main__":
    main()
