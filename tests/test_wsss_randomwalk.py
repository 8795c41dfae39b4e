"""IRN's random walk: the sparse propagation against the original's dense procedure
written here plainly (padded edge map, pairs by path, dense matrix, column-normalised,
squared exp_times times), and hand-made cases whose answer is known."""

import math

import pytest
import torch

from WSSS.randomwalk import path, propagate

BG_THRESHOLD = 0.22  # make_sem_seg_labels' background score


# ----------------------------------------------------------- the plain dense reference
def dense_random_walk(seeds, edge, radius=5, beta=10, exp_times=8):
    """propagate_to_edge as the original does it, in float64, one pixel pair at a time."""
    c, h, w = seeds.shape
    seeds, edge = seeds.double(), edge.double().reshape(h, w)
    # The edge map padded with 1 left, right and below; pairs are listed from each source
    # of the padded grid's inner part to its neighbours in the lower half-plane.
    hp, wp = h + radius, w + 2 * radius
    padded = torch.ones(hp, wp, dtype=torch.float64)
    padded[:h, radius : radius + w] = edge
    floor = radius - 1
    values = padded.tolist()
    directions = [(0, x) for x in range(1, radius)]
    directions += [(y, x) for y in range(1, radius) for x in range(-floor, radius) if x * x + y * y < radius**2]
    aff = torch.eye(hp * wp, dtype=torch.float64)
    for dy, dx in directions:
        points = [
            (y, x)
            for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1
        ]
        for sy in range(hp - floor):
            for sx in range(floor, wp - floor):
                a = 1 - max(values[sy + y][sx + x] for y, x in points)
                src, dst = sy * wp + sx, (sy + dy) * wp + sx + dx
                aff[src, dst] = aff[dst, src] = a
    aff = aff.view(hp, wp, hp, wp)[:h, radius : radius + w, :h, radius : radius + w].reshape(h * w, h * w)
    scaled = aff**beta
    trans = scaled / scaled.sum(0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    return ((seeds * (1 - edge)).reshape(c, h * w) @ trans).view(c, h, w)


def labels(rw):
    """make_sem_seg_labels' labels (at the seeds' stride): divide by the global max, put the
    background plane in front, argmax."""
    rw = rw / rw.max()
    return torch.cat([torch.full_like(rw[:1], BG_THRESHOLD), rw]).argmax(0)


def structured_edge(h, w, generator):
    """An ellipse contour of strong edges (not quite 1, as a sigmoid gives) plus weak noise."""
    y, x = torch.meshgrid(torch.arange(h) - h / 2 + 0.5, torch.arange(w) - w / 2 + 0.5, indexing="ij")
    ring = ((y / (0.35 * h)) ** 2 + (x / (0.3 * w)) ** 2 - 1).abs() < 0.25
    noise = torch.rand(h, w, generator=generator) * 0.3
    return (ring * 0.95 + noise).clamp(max=1.0)[None]  # 1 x h x w


# ------------------------------------------------------------------ agreement with dense
@pytest.mark.parametrize("h, w, classes", [(12, 16, 2), (20, 24, 3)])
def test_matches_dense_original(h, w, classes):
    generator = torch.Generator().manual_seed(h * w)
    edge = structured_edge(h, w, generator)
    seeds = torch.rand(classes, h, w, generator=generator) ** 1.5
    expected = dense_random_walk(seeds, edge)
    got = propagate(seeds, edge)
    assert got.shape == (classes, h, w) and got.dtype == torch.float32
    # float64 inside: only the float32 result is rounded (float32 steps would drift to ~5e-5)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6)
    assert (labels(got.double()) == labels(expected)).double().mean() >= 0.999
    # the map has structure: inside and outside the ring do not become one constant
    assert expected.std(dim=(1, 2)).min() > 1e-3


@pytest.mark.parametrize("exp_times", [0, 1, 3])
def test_matches_dense_at_few_steps(exp_times):
    generator = torch.Generator().manual_seed(exp_times)
    edge = torch.rand(1, 9, 11, generator=generator)
    seeds = torch.rand(2, 9, 11, generator=generator)
    expected = dense_random_walk(seeds, edge, exp_times=exp_times)
    torch.testing.assert_close(propagate(seeds.double(), edge, exp_times=exp_times), expected)


# ------------------------------------------------------------------------ known answers
def test_path_is_the_pixels_along_the_segment():
    assert path(0, 3) == ((0, 0), (0, 1), (0, 2), (0, 3))
    # the longest path of radius 5: 11 pixels from (0, 0) to (4, 2)
    assert set(path(4, 2)) == {(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (3, 1), (2, 2), (3, 2), (4, 2), (0, 1), (4, 1)}
    assert set(path(-4, -2)) == {(-y, -x) for y, x in path(4, 2)}


def test_one_step_is_the_weighted_mean_of_the_neighbourhood():
    """exp_times = 0 is T itself (one step), not the identity: a unit seed at the centre
    spreads to exactly the 69 pixels within radius 5, each getting 1 / its degree (69)."""
    seeds = torch.zeros(1, 20, 24, dtype=torch.float64)
    seeds[0, 10, 12] = 1
    rw = propagate(seeds, torch.zeros(20, 24, dtype=torch.float64), exp_times=0)[0]
    y, x = torch.meshgrid(torch.arange(20) - 10, torch.arange(24) - 12, indexing="ij")
    disc = y**2 + x**2 < 25
    assert disc.sum() == 69
    torch.testing.assert_close(rw[disc], torch.full((69,), 1 / 69, dtype=torch.float64))
    assert (rw[~disc] == 0).all()


def test_zero_edge_spreads_to_the_degree_weighted_mean():
    """With no edges every step averages over the neighbourhood; 256 steps converge to one
    value per class: the mean of the seeds weighted by each pixel's degree (a pixel near
    the border has fewer neighbours), not their plain mean."""
    h, w = 12, 16
    seeds = torch.rand(2, h, w, dtype=torch.float64)
    rw = propagate(seeds, torch.zeros(1, h, w))
    counts = torch.zeros(h, w, dtype=torch.float64)
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            if dy * dy + dx * dx < 25:
                counts[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] += 1
    expected = (seeds * counts).sum((1, 2)) / counts.sum()
    torch.testing.assert_close(rw, expected[:, None, None].expand(2, h, w), rtol=0, atol=1e-9)
    assert (seeds.mean((1, 2)) - expected).abs().max() > 1e-3  # the weighting matters


@pytest.mark.parametrize("closed", [True, False])
def test_closed_contour_keeps_the_seed_inside(closed):
    h, w = 20, 24
    edge = torch.zeros(h, w)
    edge[4, 5:18] = edge[15, 5:18] = 1
    edge[4:16, 5] = edge[4:16, 17] = 1
    if not closed:
        edge[9:11, 17] = 0  # a gap of two pixels in the right side
    seeds = torch.zeros(1, h, w)
    seeds[0, 8:12, 8:12] = 1
    rw = propagate(seeds, edge)[0]
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[5:15, 6:17] = True
    outside = ~inside & (edge == 0)
    assert rw[inside].min() > 0.01
    if closed:
        assert (rw[outside] == 0).all() and (rw[edge == 1] == 0).all()
    else:
        assert rw[outside].min() > 0


def test_edge_shapes_and_bad_input():
    generator = torch.Generator().manual_seed(1)
    seeds = torch.rand(3, 10, 13, generator=generator)
    edge = torch.rand(10, 13, generator=generator)
    torch.testing.assert_close(propagate(seeds, edge, exp_times=4), propagate(seeds, edge[None], exp_times=4))
    with pytest.raises(ValueError, match="does not match"):
        propagate(seeds, edge[:, :12])
    with pytest.raises(ValueError, match="C x h x w"):
        propagate(seeds[0], edge)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(2)
    edge = structured_edge(32, 40, generator)
    seeds = torch.rand(3, 32, 40, generator=generator)
    got = propagate(seeds.cuda(), edge.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), propagate(seeds, edge), rtol=0, atol=1e-5)
    assert math.isfinite(got.sum().item())
