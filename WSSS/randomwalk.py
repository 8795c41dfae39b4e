"""IRN's random walk (Ahn et al., CVPR 2019), the last step of make_sem_seg_labels, as a
sparse neighbourhood propagation instead of a dense (h*w) x (h*w) matrix.

What the original computes, for seeds x (C x h x w) and an edge map e (h x w, in [0, 1]):

- pixels p != q are neighbours when q - p is one of the 68 offsets d with |d| < radius;
  their affinity is a(p, q) = 1 - max(e) over the *path* of d (the lattice points of the
  box spanned by 0 and d that lie closer than 1 to the line through them, both ends
  included), laid at p; a pixel's affinity with itself is 1 (not 1 - e(p));
- S = a ** beta (symmetric), T = S D^-1 with D the column sums (each column sums to 1);
- the result is (x * (1 - e)) @ T^(2^exp_times), x flattened row-major to C x (h*w), the
  power taken by squaring T ``exp_times`` times (exp_times = 0 is one step, T itself).

Because S is symmetric, x @ T is D^-1 S applied to each class map: every pixel becomes
the S-weighted mean of its neighbourhood (itself included). That operator has at most 69
entries a row, so we keep it as a CSR matrix (float64) and apply it 2^exp_times times:
the same product, in a different order of rounding. For a VOC image at stride 4 (94 x 128)
that is 256 sparse products of 0.8M entries, against the original's 0.6 GB matrix squared
eight times (1.4e13 multiply-adds). No max-normalisation happens here: make_sem_seg_labels
divides by the global maximum after upsampling.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
import torch.nn.functional as F


@cache
def path(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """The pixels, relative to p, whose edge values bound the affinity of p and p + (dy, dx):
    the box between 0 and (dy, dx), kept where the distance to the line is below 1."""
    length_sq = dy * dy + dx * dx
    return tuple(
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < length_sq
    )


@cache
def offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """(0, 0) and the 2 * 34 neighbour offsets of radius 5 (|d| < radius), sorted so that
    the columns of each CSR row come out sorted."""
    r = radius - 1
    return tuple((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if dy * dy + dx * dx < radius**2)


def transition(edge: torch.Tensor, radius: int = 5, beta: float = 10) -> torch.Tensor:
    """One step of the walk, D^-1 S (the transpose of the original's T), as an
    (h*w) x (h*w) CSR matrix on the edge's device and in its dtype. edge: h x w."""
    h, w = edge.shape
    r = radius - 1
    # Any padding value will do: a pair whose partner falls outside is masked below, and a
    # path between two pixels of the image stays inside its box, so inside the image.
    padded = F.pad(edge[None], (r, r, r, r), value=1.0)[0]  # h+2r x w+2r

    def window(y: int, x: int) -> torch.Tensor:  # the edge map shifted by (y, x): h x w
        return padded[r + y : r + y + h, r + x : r + x + w]

    ys = torch.arange(h, device=edge.device)[:, None]
    xs = torch.arange(w, device=edge.device)
    weights, inside = [], []
    for dy, dx in offsets(radius):
        if (dy, dx) == (0, 0):
            weights.append(torch.ones_like(edge))
        else:
            max_edge = torch.stack([window(y, x) for y, x in path(dy, dx)]).amax(0)
            weights.append((1 - max_edge) ** beta)
        inside.append(((ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)).expand(h, w))
    inside = torch.stack(inside, -1).view(h * w, -1)  # N x K, K = len(offsets)
    weights = torch.stack(weights, -1).view(h * w, -1) * inside
    weights = weights / weights.sum(1, keepdim=True)  # D^-1 S: each row sums to 1

    flat_offsets = torch.tensor([dy * w + dx for dy, dx in offsets(radius)], device=edge.device)
    columns = (torch.arange(h * w, device=edge.device)[:, None] + flat_offsets)[inside]
    rows = torch.zeros(h * w + 1, dtype=torch.long, device=edge.device)
    rows[1:] = inside.sum(1).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            rows.int(), columns.int(), weights[inside], (h * w, h * w), check_invariants=False
        )


def propagate(
    seeds: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10, exp_times: int = 8
) -> torch.Tensor:
    """The original's ``propagate_to_edge(seeds, edge, radius, beta, exp_times)`` (its
    C x 1 x h x w result without the 1), computed on the seeds' device, in their dtype.

    seeds: C x h x w float; edge: h x w or 1 x h x w at the same stride -> C x h x w."""
    if seeds.dim() != 3 or not seeds.is_floating_point():
        raise ValueError(f"seeds must be a C x h x w float tensor, got {tuple(seeds.shape)} {seeds.dtype}")
    c, h, w = seeds.shape
    if edge.dim() == 3 and edge.shape[0] == 1:
        edge = edge[0]
    if edge.shape != (h, w):
        raise ValueError(f"edge map {tuple(edge.shape)} does not match the seeds' {h} x {w}")
    # float64 inside: 256 float32 steps drift by about 5e-5 on a VOC-sized map, and these
    # small sparse products cost about the same in float64.
    edge = edge.to(seeds.device, torch.float64)
    step = transition(edge, radius, beta)
    x = (seeds.double() * (1 - edge)).reshape(c, h * w).T.contiguous()  # N x C
    for _ in range(2**exp_times):
        x = step @ x
    return x.T.reshape(c, h, w).to(seeds.dtype)
