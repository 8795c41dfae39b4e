"""IRN's inter-pixel relation network (Ahn et al., CVPR 2019) on the WSSS backbones: the net,
the pixel pairs it learns from, their labels, and its losses.

What IRN computes, and we with it:

- **The net.** The backbone (``bas.backbones.resnet50(layout="wsss")`` from ImageNet weights,
  as IRN's, not the CAM or BAS net: IRN trains on the IR labels alone) is frozen: BatchNorm
  normalizes with its running statistics, no gradient reaches it (IRN detaches every stage's
  output). Its five stages (stem at stride 4, layer1 at 4, layer2 at 8, layer3 and layer4 at
  16) feed two branches of 1x1 convs + GroupNorm + ReLU at stride 4:
  the **edge** branch (32 channels per stage, each brought up to stride 4, concatenated, a
  1x1 conv with bias to one channel: B x 1 x h x w logits, a sigmoid makes them class
  boundary probabilities) and the **displacement** branch (stem 64 and layer1 128 channels
  at stride 4; layer2..4 256 channels at stride 8, merged by a 1x1 conv to 256 and brought to
  stride 4; all merged, 1x1 conv to 256, 1x1 conv to 2: B x 2 x h x w, each pixel's offset to
  its instance's centroid, in stride-4 cells). At evaluation the displacement's mean over the
  training images (measured once after training) is subtracted.
- **The pairs.** Each pixel p is paired with the pixels q = p + d, 0 < |d| < radius, of the
  lower half-plane (d = (0, x > 0) or (y > 0, any x)); only sources p far enough from the
  border that every q lies in the map are used (rows 0 .. h - r, columns r - 1 .. w - r).
  The affinity of a pair is 1 - the max edge probability on its path (the pixels of the box
  between p and q closer than 1 to the line through them: ``WSSS.randomwalk.path``).
- **The labels.** From the IR label map at stride 4 (0 background, c + 1 class c, 255
  unsure): a pair of two sure pixels is positive when both carry the same label (background
  positive when that is 0, foreground positive otherwise) and negative when they differ;
  pairs with an unsure pixel count for nothing.
- **The losses.** Positive pairs: -log(a + 1e-5), averaged over the background positives
  and over the foreground positives apart, the two means averaged; negative pairs:
  -log(1 + 1e-5 - a), averaged; displacement: |D(p) - D(q) - (q - p)| on foreground
  positives (the two pixels point at one centroid) and |D(p) - D(q)| on background
  positives, each summed over both coordinates and divided by twice the number of pairs;
  total (pos + neg) / 2 + (fg + bg) / 2. Each mean divides by the count + 1e-5, over the
  whole batch.

At inference (make_sem_seg_labels) the image and its mirror image run as one batch padded at
the bottom and right to the training crop, the two edge logit maps (the mirror's flipped
back) are averaged, then the sigmoid: ``IRN.edge_map``.

The demo's tiny backbone has no stride above 4, so its four stages (the two pooled conv
blocks, the third conv block, then each tail block) are all at stride 4; the first two feed
the displacement's last block directly, as IRN's stem and layer1, the last two its merge,
and every width is scaled down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bas.backbones import Backbone, load_imagenet_weights
from bas.checkpoints import load_state_dict_checked, load_torch_file, read_checkpoint
from bas.errors import CheckpointError
from WSSS.datasets import IGNORE
from WSSS.models import ARCHS, IMAGENET_ARCH, merge_aliases
from WSSS.randomwalk import offsets, path

log = logging.getLogger(__name__)

OUTPUT_STRIDE = 4  # of the edge and displacement maps, as of the IR labels
EPS = 1e-5  # in IRN's logs and in each mean's denominator


# ------------------------------------------------------------------------------- the pairs
def search_directions(radius: int) -> list[tuple[int, int]]:
    """The offsets d of the lower half-plane with 0 < |d| < radius, in IRN's order: grouped by
    the length of their path (shortest first), in row-major order within a group."""
    half = [(dy, dx) for dy, dx in offsets(radius) if dy > 0 or (dy == 0 and dx > 0)]
    return sorted(half, key=lambda d: len(path(*d)))  # stable: row-major within a length


def farthest_first(direction: tuple[int, int]) -> list[tuple[int, int]]:
    """The path of a direction (``WSSS.randomwalk.path``, row-major), farthest pixels first."""
    return sorted(path(*direction), key=lambda p: -abs(p[0]) - abs(p[1]))


class PathIndex:
    """The pixel pairs of IRN's losses on an h x w map at stride 4, as flat indices into it.

    ``src`` (N): the source pixels, row-major; ``dst`` (D x N): the partner of each source in
    each direction ``directions[k]`` = (dy, dx); ``paths``: one LongTensor per path length L,
    n_L x L x N, the pixels on the path of each pair (directions in the order of ``dst``; on
    each path the pixels row-major, or with ``irn_order`` the farthest from the source first,
    ties row-major: the order of the ``path_indices`` IRN's files store. The affinity is the
    same either way; its gradient sums in another order, so training differs in the last
    bits). ``to(device)`` moves the indices.
    """

    def __init__(self, radius: int, size: tuple[int, int], irn_order: bool = False) -> None:
        height, width = size
        self.radius, self.size = radius, (height, width)
        floor = radius - 1
        if height <= floor or width <= 2 * floor:
            raise ValueError(f"a {height} x {width} map has no pixel pair of radius {radius} inside it")
        self.directions = search_directions(radius)  # D pairs (dy, dx)
        ys = torch.arange(height - floor)[:, None]
        xs = torch.arange(floor, width - floor)[None]

        def flat(dy: int, dx: int) -> torch.Tensor:  # the sources shifted by (dy, dx), as flat indices: N
            return ((ys + dy) * width + xs + dx).reshape(-1)

        self.src = flat(0, 0)
        self.dst = torch.stack([flat(dy, dx) for dy, dx in self.directions])  # D x N
        pixels = farthest_first if irn_order else (lambda d: path(*d))  # a direction's path, in order
        by_length: dict[int, list[tuple[int, int]]] = {}  # the directions come shortest path first
        for d in self.directions:
            by_length.setdefault(len(path(*d)), []).append(d)
        self.paths = [
            torch.stack([torch.stack([flat(*p) for p in pixels(d)]) for d in group])
            for group in by_length.values()
        ]  # per length n: n_dirs x n x N

    def to(self, device: torch.device | str) -> PathIndex:
        self.src, self.dst = self.src.to(device), self.dst.to(device)
        self.paths = [p.to(device) for p in self.paths]
        return self

    def affinity(self, edge: torch.Tensor) -> torch.Tensor:
        """1 - the max edge probability on each pair's path: B x 1 x h x w -> B x D x N."""
        edge = edge.flatten(1)  # B x hw
        return torch.cat([1 - edge[:, p].amax(2) for p in self.paths], 1)  # per length: B x n_dirs x N

    def pair_displacement(self, displacement: torch.Tensor) -> torch.Tensor:
        """D(p) - D(q) of each pair: B x 2 x h x w -> B x 2 x D x N."""
        flat = displacement.flatten(2)  # B x 2 x hw
        return flat[:, :, self.src][:, :, None] - flat[:, :, self.dst]

    def offset_target(self) -> torch.Tensor:
        """q - p of each direction, what a foreground pair's D(p) - D(q) should be: 1 x 2 x D x 1."""
        return torch.tensor(self.directions, dtype=torch.float32, device=self.dst.device).T[None, :, :, None]

    def labels(self, ir_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(background positive, foreground positive, negative) of each pair, B x D x N float,
        from the IR labels at stride 4 (B x h x w: 0 background, c + 1, 255 unsure)."""
        flat = ir_label.flatten(1).long()  # B x hw
        source, partner = flat[:, self.src][:, None], flat[:, self.dst]  # B x 1 x N, B x D x N
        sure = (source != IGNORE) & (partner != IGNORE)
        same = source == partner
        positive = same & sure
        return (positive & (source == 0)).float(), (positive & (source > 0)).float(), (~same & sure).float()


# ------------------------------------------------------------------------------ the losses
def irn_loss(
    edge_logits: torch.Tensor,
    displacement: torch.Tensor,
    ir_label: torch.Tensor,
    pairs: PathIndex,
    count: Callable[[torch.Tensor], torch.Tensor] = lambda n: n,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IRN's loss of a batch: (total, its four terms detached).

    edge_logits: B x 1 x h x w; displacement: B x 2 x h x w; ir_label: B x h x w. ``count``
    turns this batch's pair counts (3) into the divisors: identity in one process; under DDP,
    which averages the processes' gradients, the mean count over the processes, so that each
    mean is over the global batch as in IRN's single-process run."""
    bg_pos, fg_pos, neg = pairs.labels(ir_label)  # B x D x N each
    n_bg, n_fg, n_neg = count(torch.stack([bg_pos.sum(), fg_pos.sum(), neg.sum()]))
    affinity = pairs.affinity(torch.sigmoid(edge_logits))  # B x D x N
    pos_loss = -torch.log(affinity + EPS)
    neg_loss = -torch.log(1 + EPS - affinity)
    pair_disp = pairs.pair_displacement(displacement)  # B x 2 x D x N
    parts = {
        "bg_pos": (bg_pos * pos_loss).sum() / (n_bg + EPS),
        "fg_pos": (fg_pos * pos_loss).sum() / (n_fg + EPS),
        "neg": (neg * neg_loss).sum() / (n_neg + EPS),
        "dp_fg": ((pair_disp - pairs.offset_target()).abs() * fg_pos[:, None]).sum() / (2 * n_fg + EPS),
        "dp_bg": (pair_disp.abs() * bg_pos[:, None]).sum() / (2 * n_bg + EPS),
    }
    affinity_loss = (parts["bg_pos"] / 2 + parts["fg_pos"] / 2 + parts["neg"]) / 2
    total = affinity_loss + (parts["dp_fg"] + parts["dp_bg"]) / 2
    return total, {name: value.detach() for name, value in parts.items()}


# --------------------------------------------------------------------------------- the net
@dataclass(frozen=True)
class Layout:
    """Where the branches tap a backbone, and their widths."""

    taps: tuple[int, ...]  # a stage ends after these children of head + tail (counted from 0)
    channels: tuple[int, ...]  # of each stage
    strides: tuple[int, ...]  # of each stage
    fine: int  # the first stages, at stride 4, go straight to the displacement's last block
    edge: tuple[int, int]  # edge branch: channels per stage, GroupNorm groups
    displacement_fine: tuple[tuple[int, int], ...]  # (channels, groups) of each fine stage
    displacement: tuple[int, int]  # (channels, groups) of the coarse stages, the merge, the last block


LAYOUTS = {
    # IRN's: stage1 = conv1..maxpool, then layer1, layer2, layer3 (head), layer4 (tail).
    "resnet50": Layout(
        taps=(3, 4, 5, 6, 7), channels=(64, 256, 512, 1024, 2048), strides=(4, 4, 8, 16, 16), fine=2,
        edge=(32, 4), displacement_fine=((64, 8), (128, 16)), displacement=(256, 16),
    ),
    # The tiny net: two pooled conv blocks, the third conv block (the head's end), each tail block.
    "tiny": Layout(
        taps=(7, 10, 13, 16), channels=(32, 64, 128, 128), strides=(4, 4, 4, 4), fine=2,
        edge=(16, 4), displacement_fine=((16, 4), (32, 4)), displacement=(64, 8),
    ),
}  # fmt: skip


def _block(inp: int, out: int, groups: int, upsample: int = 1) -> nn.Sequential:
    """1x1 conv (no bias) + GroupNorm, bilinear upsampling by ``upsample``, ReLU (IRN's order)."""
    up = nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False) if upsample > 1 else nn.Identity()
    return nn.Sequential(nn.Conv2d(inp, out, 1, bias=False), nn.GroupNorm(groups, out), up, nn.ReLU(inplace=True))


class IRN(nn.Module):
    """The frozen backbone (``head``, ``tail``: the WSSS nets' names, so their weights load by
    name) and IRN's two branches. ``forward`` gives the edge logits (B x 1 x h x w) and the
    displacement (B x 2 x h x w) at stride 4, minus ``displacement_mean`` in eval mode."""

    def __init__(self, arch: str, backbone: Backbone) -> None:
        super().__init__()
        self.arch, layout = arch, LAYOUTS[arch]
        self.head, self.tail = backbone.head, backbone.tail
        self.head.requires_grad_(False)
        self.tail.requires_grad_(False)
        self.taps = layout.taps

        ups = [stride // OUTPUT_STRIDE for stride in layout.strides]
        width, groups = layout.edge
        self.edge_taps = nn.ModuleList(_block(c, width, groups, up) for c, up in zip(layout.channels, ups))
        self.edge_out = nn.Conv2d(width * len(layout.channels), 1, 1)

        fine, (width, groups) = layout.fine, layout.displacement
        merge_stride = layout.strides[fine]  # the coarse stages meet at the first one's stride
        coarse_stages = zip(layout.channels[fine:], layout.strides[fine:])
        self.displacement_taps = nn.ModuleList(
            [_block(c, w, g) for c, (w, g) in zip(layout.channels[:fine], layout.displacement_fine)]
            + [_block(c, width, groups, stride // merge_stride) for c, stride in coarse_stages]
        )
        coarse = len(layout.channels) - fine
        self.displacement_merge = _block(width * coarse, width, groups, merge_stride // OUTPUT_STRIDE)
        fine_width = sum(w for w, _ in layout.displacement_fine)
        self.displacement_out = nn.Sequential(
            nn.Conv2d(fine_width + width, width, 1, bias=False),
            nn.GroupNorm(groups, width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2, 1, bias=False),
        )
        self.register_buffer("displacement_mean", torch.zeros(2))
        self.fine = fine

    def train(self, mode: bool = True) -> IRN:
        """The backbone stays in eval mode: its BatchNorm keeps the running statistics."""
        super().train(mode)
        self.head.eval()
        self.tail.eval()
        return self

    def branch_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(edge branch, displacement branch): IRN trains the second at 10x the lr."""
        edge = [*self.edge_taps.parameters(), *self.edge_out.parameters()]
        displacement = [
            *self.displacement_taps.parameters(),
            *self.displacement_merge.parameters(),
            *self.displacement_out.parameters(),
        ]
        return edge, displacement

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's stage outputs, without a graph: nothing trains there."""
        features, x = [], images
        with torch.no_grad():
            for position, module in enumerate([*self.head, *self.tail]):
                x = module(x)
                if position in self.taps:
                    features.append(x)
        return features

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: B x 3 x H x W -> (edge logits B x 1 x h x w, displacement B x 2 x h x w), h = H/4."""
        features = self.stages(images)
        h, w = features[0].shape[-2:]  # the first stage is at stride 4

        def at_output(x: torch.Tensor) -> torch.Tensor:  # upsampled maps may overshoot by a pixel
            return x[..., :h, :w]

        edges = [at_output(block(x)) for block, x in zip(self.edge_taps, features)]
        edge_logits = self.edge_out(torch.cat(edges, 1))

        moved = [block(x) for block, x in zip(self.displacement_taps, features)]
        fine, coarse = moved[: self.fine], moved[self.fine :]
        mh, mw = coarse[0].shape[-2:]
        merged = self.displacement_merge(torch.cat([x[..., :mh, :mw] for x in coarse], 1))
        displacement = self.displacement_out(torch.cat([*fine, at_output(merged)], 1))
        if not self.training:
            displacement = displacement - self.displacement_mean.view(1, 2, 1, 1)
        return edge_logits, displacement

    @torch.no_grad()
    def edge_map(self, pair: torch.Tensor, pad_to: int) -> torch.Tensor:
        """The class boundary map of an image, as make_sem_seg_labels uses it.

        pair: 2 x 3 x H x W, the image and its mirror image -> h x w probabilities at stride 4,
        h = (H - 1) // 4 + 1. The pair is padded at the bottom and right to ``pad_to`` (the
        training crop, as IRN: GroupNorm's statistics see the padding), or to the next
        multiple of 16 where the image is larger; the mirror's logits are flipped back
        and averaged with the image's, then the sigmoid."""
        height, width = pair.shape[-2:]
        size = [max(pad_to, -(-side // 16) * 16) for side in (height, width)]
        logits, _ = self(F.pad(pair, (0, size[1] - width, 0, size[0] - height)))  # 2 x 1 x h' x w'
        logits = logits[:, 0, : (height - 1) // OUTPUT_STRIDE + 1, : (width - 1) // OUTPUT_STRIDE + 1]
        return torch.sigmoid(logits[0] / 2 + logits[1].flip(-1) / 2)


def build_irn(arch: str, pretrained: str | Path | None = None) -> IRN:
    """IRN on ``arch`` ("resnet50" or the demo's "tiny"). ``pretrained``, the frozen backbone's
    weights: "imagenet" (torchvision's ResNet50 weights, as IRN), a torchvision-format state
    dict, a WSSS net of this project (its ``head`` and ``tail``), or None (random)."""
    if arch not in LAYOUTS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(LAYOUTS)}")
    backbone = ARCHS[arch]()
    model = IRN(arch, backbone)
    if pretrained is None:
        return model
    ours = {}
    if Path(pretrained).is_file():
        state = read_checkpoint(pretrained)["model"]
        ours = {k.removeprefix("module."): v for k, v in state.items()}
        ours = {k: v for k, v in ours.items() if k.startswith(("head.", "tail."))}
    if ours:
        parts = nn.ModuleDict({"head": model.head, "tail": model.tail})
        load_state_dict_checked(parts, ours, str(pretrained), f"the {arch} backbone")
        log.info("the frozen backbone: %d tensors from %s", len(ours), pretrained)
    else:
        log.info("%s", load_imagenet_weights(IMAGENET_ARCH[arch], backbone, str(pretrained)))
    return model


# ------------------------------------------------------------------ IRN's own file layout
# IRN's relation net (``AffinityDisplacementLoss``, saved bare by its train_irn: the authors'
# res50_irn.pth) names each of our tensors two or three times, as its modules are shared:
# the ResNet50 as ``resnet50.*``, as ``stage1..5.*`` (stage1 = conv1, bn1; stage2..5 wrap
# layer1..4) and as ``backbone.0..4.*`` (the stages again); the branches as ``fc_edge1..6.*``
# / ``fc_dp1..7.*`` and again as ``edge_layers.*`` / ``dp_layers.*``; the displacement mean
# as ``mean_shift.running_mean`` (also ``fc_dp7.4``, ``dp_layers.6.4``). Beside them, its
# training pairs: ``path_indices<k>`` (PathIndex.paths) and ``disp_target``
# (PathIndex.offset_target), which inference never reads.
IRN_STAGES = {"conv1": "stage1.0", "bn1": "stage1.1", **{f"layer{k}": f"stage{k + 1}.0" for k in range(1, 5)}}
IRN_BRANCHES = {
    **{f"edge_taps.{i}": f"fc_edge{i + 1}" for i in range(5)},
    "edge_out": "fc_edge6",
    **{f"displacement_taps.{i}": f"fc_dp{i + 1}" for i in range(5)},
    "displacement_merge": "fc_dp6",
    "displacement_out": "fc_dp7",
}
IRN_LISTS = {"stage": "backbone", "fc_edge": "edge_layers", "fc_dp": "dp_layers"}  # <list>.i = <module>i+1
IRN_MEAN = "mean_shift.running_mean"
IRN_TRAINING = {"crop_size": 512, "radius": 10}  # IRN's run_sample: what its files are trained with


def _listed(module: str) -> str:
    """IRN's ModuleList name of a numbered module: ``stage3`` -> ``backbone.2``."""
    stem = module.rstrip("0123456789")
    return f"{IRN_LISTS[stem]}.{int(module[len(stem):]) - 1}"


def irn_names(key: str) -> list[str]:
    """The names IRN's file gives the tensor of our ResNet50 IRN's ``key``, its own first."""
    if key == "displacement_mean":
        return [IRN_MEAN, "fc_dp7.4.running_mean", "dp_layers.6.4.running_mean"]
    part, _, name = key.partition(".")
    if part in ("head", "tail"):
        module, _, rest = name.partition(".")
        stage, _, index = IRN_STAGES[module].partition(".")
        return [f"resnet50.{name}", f"{stage}.{index}.{rest}", f"{_listed(stage)}.{index}.{rest}"]
    module = next(module for module in IRN_BRANCHES if key.startswith(f"{module}."))
    theirs, rest = IRN_BRANCHES[module], key.removeprefix(f"{module}.")
    return [f"{theirs}.{rest}", f"{_listed(theirs)}.{rest}"]


def irn_pair_buffers(crop_size: int, radius: int) -> dict[str, torch.Tensor]:
    """IRN's training pairs of a square crop, as its files store them."""
    pairs = PathIndex(radius, (crop_size // OUTPUT_STRIDE, crop_size // OUTPUT_STRIDE), irn_order=True)
    buffers = {f"path_indices{k}": paths for k, paths in enumerate(pairs.paths)}
    return {**buffers, "disp_target": pairs.offset_target()}


def to_irn_layout(model: IRN, crop_size: int, radius: int) -> dict[str, torch.Tensor]:
    """Our ResNet50 IRN as IRN's train_irn saves its relation net, so that IRN-based code
    loads it; every name of a tensor holds that one tensor (a file stores it once). The
    pairs are those of ``crop_size`` and ``radius``, the IRN's training: load_irn reads them
    back off the buffers' shapes, and IRN itself resumes training from them."""
    if model.arch != "resnet50":
        raise ValueError(f"a {model.arch} IRN; IRN's layout holds a ResNet50 one")
    ours = model.state_dict()
    named = {key: irn_names(key) for key in ours}
    state = irn_pair_buffers(crop_size, radius)
    for position in range(3):  # IRN's order: every tensor's own name, then the aliases
        state.update({names[position]: ours[key] for key, names in named.items() if position < len(names)})
    return state


def _irn_training(state: dict[str, torch.Tensor], source: str) -> dict:
    """The square crop and the radius an IRN file's pairs were made for, read off the shapes
    of its buffers (D directions, N sources per direction); IRN's defaults without them."""
    if "disp_target" not in state or "path_indices0" not in state:
        return dict(IRN_TRAINING)
    directions, sources = state["disp_target"].shape[2], state["path_indices0"].shape[-1]
    radius = 2
    while (len(offsets(radius)) - 1) // 2 < directions:  # half the offsets of |d| < radius
        radius += 1
    cells = 2 * radius - 1  # the smallest map with a pair inside: then one source more per row and column
    while (cells - radius + 1) * (cells - 2 * radius + 2) < sources:
        cells += 1
    if (len(offsets(radius)) - 1) // 2 != directions or (cells - radius + 1) * (cells - 2 * radius + 2) != sources:
        shapes = f"{directions} directions, {sources} sources per direction"
        raise CheckpointError(f"{source}: IRN's training pairs, {shapes}, fit no square crop")
    return {"crop_size": cells * OUTPUT_STRIDE, "radius": radius}


def _from_irn_layout(state: dict[str, torch.Tensor], source: str) -> tuple[IRN, dict]:
    """The IRN of a state dict in IRN's layout, and its training crop and radius."""
    model = build_irn("resnet50")
    ours = {alias: key for key in model.state_dict() for alias in irn_names(key)}
    missing = [names[0] for names in map(irn_names, model.state_dict()) if not any(name in state for name in names)]
    if missing:
        count = f"{len(missing)} tensor{'s' if len(missing) > 1 else ''}"
        raise CheckpointError(f"{source}: not IRN's relation net: {count} missing ({missing[0]})")
    training = _irn_training(state, source)
    weights = {k: v for k, v in state.items() if not k.startswith("path_indices") and k != "disp_target"}
    merged = merge_aliases(weights, lambda key: ours.get(key, key), source)
    what = "IRN's ResNet50 relation net (resnet50.*, fc_edge1..6, fc_dp1..7, mean_shift)"
    load_state_dict_checked(model, merged, source, what)
    return model, {"arch": "resnet50", **training}


def load_irn(path: str | Path) -> tuple[IRN, dict]:
    """The IRN of a weights file, and the file's other entries (``arch``, ``crop_size``,
    ``radius``, ...): one written by train_irn, or IRN's own (the authors' res50_irn.pth, a
    bare state dict, ``module.`` keys or not), read without a second copy of its training
    buffers. A file that does not fit raises ``CheckpointError`` naming it."""
    contents = load_torch_file(path, "an IRN weights file", mmap=True)
    if not isinstance(contents.get("model"), dict):
        state = {k.removeprefix("module."): v for k, v in contents.items()}
        if any(k.startswith(("fc_edge", "edge_layers")) for k in state):
            return _from_irn_layout(state, str(path))
        raise CheckpointError(
            f"{path}: not an IRN: neither this project's (a dict with 'model' and 'arch') nor IRN's res50_irn.pth "
            "(resnet50.*, fc_edge1..6, fc_dp1..7)"
        )
    arch = contents.get("arch")
    if arch not in LAYOUTS:
        raise CheckpointError(f"{path}: not an IRN of this project (arch {arch!r})")
    model = build_irn(arch)
    load_state_dict_checked(model, contents["model"], str(path), f"the {arch} IRN")
    return model, {k: v for k, v in contents.items() if k != "model"}
