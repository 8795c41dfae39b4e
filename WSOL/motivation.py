"""The observation BAS rests on (the paper's motivation experiment): for a trained classifier,
as a foreground mask grows over the object, the cross-entropy of the masked prediction falls
to about zero while the mask still covers only part of the object, whereas the class's
activation keeps rising until the mask reaches the object's boundary. Minimizing CE leaves
the rest of the object unlearnt; suppressing background activation does not.

    python motivation.py                                               # the demo's BAS checkpoint
    python motivation.py --compare logs/Synthetic/tiny_cam/best_loc.pth   # and a CAM run, same images
    python motivation.py --root CUB --data-dir /data/CUB_200_2011 --arch resnet --checkpoint resnet_cub.pth.tar
    python motivation.py --combine seed0/curves seed1/curves --output-dir seeds   # finished runs, one figure

For each image and its ground-truth class, two sequences of foreground masks at the tap's
resolution: "threshold", the network's map of the class (the one the evaluator scores),
min-max normalized and kept where >= t for t from 1 down to 0; and "square", squares
centred on the map's peak growing to the whole map, a control that ignores the map's
shape. Each mask multiplies the tap features F, as the AMC erases them, the tail and
classifier_cls run on the masked F, and the global average of the class map is the masked
prediction: its cross-entropy and the class's activation, against the share of the object
(the GT mask where there is one, else the union of the GT boxes) and of the background
inside the mask, in the center-crop frame.

Writes to --output-dir (default: motivation_<split> beside the checkpoint): curves.jsonl,
one line per image; motivation.png; summary.json and summary.txt. An interrupted run
continues where it stopped when run again; under torchrun each process measures its share.
--combine draws finished runs of the same methods (e.g. trained at several seeds) in one
figure, each run's mean as a thin line, with one summary over all their images.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from bas.amc import global_average
from bas.devices import autocast
from bas.distributed import finish_distributed, first_on_rank_zero, gather_objects, init_distributed
from bas.errors import ArgumentError, DatasetError, OutputError, run_main
from bas.outputs import (
    check_writable,
    claim,
    differing_record,
    input_stamp,
    read_marker,
    replace_atomic,
    write_text_atomic,
)
from WSOL import metrics
from WSOL.cli import check_evaluation_args, evaluation_parser, load_samples, model_for_evaluation
from WSOL.datasets import Sample, test_transform
from WSOL.inference import evaluation_loader, image_size
from WSOL.models import Generator

log = logging.getLogger("motivation")

MOTIVATION_KIND = "WSOL motivation"
COMBINED_KIND = "WSOL motivation, runs combined"
CURVES = "curves.jsonl"
# A share of the images in flight, one file per process, merged into CURVES at the end.
PART = "curves-rank{}.jsonl"
# Where CE has fallen, read two ways: below this share of its value at the first mask, and
# within this share of its range (first to lowest) above its lowest value.
CE_SHARE = 0.05


# ------------------------------------------------------------------------------ masks
def threshold_masks(score_map: np.ndarray, steps: int) -> np.ndarray:
    """h x w -> steps x h x w bool: the min-max normalized map kept where >= t, t = 1 .. 0 in
    equal steps; the first mask is the map's peak, the last the whole map (as is every mask
    of a flat map). Compared as (m - min) x (steps - 1) >= (max - min) x k, so that a pixel
    exactly at a level is kept whatever the rounding of a division."""
    score_map = score_map.astype(np.float64)
    low, high = score_map.min(), score_map.max()
    levels = np.arange(steps - 1, -1, -1)[:, None, None]  # t x (steps - 1)
    return (score_map - low)[None] * (steps - 1) >= (high - low) * levels


def square_masks(score_map: np.ndarray, steps: int) -> np.ndarray:
    """h x w -> steps x h x w bool: squares centred on the map's peak (its first maximum in
    row-major order) whose half-side grows from 0 to the farthest pixel in equal steps
    (rounded), so that only the peak, not the map's shape, decides what they cover."""
    height, width = score_map.shape
    row, col = np.unravel_index(np.argmax(score_map), score_map.shape)
    rows, cols = np.ogrid[:height, :width]
    distance = np.maximum(abs(rows - row), abs(cols - col))  # Chebyshev: squares
    return distance[None] <= np.rint(np.linspace(0, distance.max(), steps))[:, None, None]


PROTOCOLS = {"threshold": threshold_masks, "square": square_masks}


# --------------------------------------------------------------------- measurements
def gt_regions(sample: Sample, resize: int, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """The object and the ignored pixels (OpenImages' ignore masks), crop x crop bool, in the
    center-crop frame the model sees: the GT mask where the dataset has one, else the union
    of the GT boxes (inclusive pixel coordinates, as the box protocol scores them)."""
    if sample.mask_paths:
        shift = (resize - crop) // 2
        window = (slice(shift, shift + crop),) * 2
        foreground, ignore = metrics.load_mask(sample.mask_paths, sample.ignore_path, resize)
        return foreground[window], ignore[window]
    region = np.zeros((crop, crop), dtype=bool)
    for x0, y0, x1, y1 in metrics.boxes_in_crop(sample.boxes, image_size(sample), resize, crop):
        region[y0 : y1 + 1, x0 : x1 + 1] = True
    return region, np.zeros_like(region)


def region_shares(masks: np.ndarray, region: np.ndarray, ignore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of the object and of the background (neither object nor ignored) inside each
    mask, the masks enlarged (nearest) to the regions' size: K x h x w -> K, K. NaN where a
    region has no pixel."""
    height, width = region.shape
    enlarged = metrics.resize_maps(masks.astype(np.float32), (width, height), cv2.INTER_NEAREST) > 0.5

    def share(inside: np.ndarray) -> np.ndarray:
        total = inside.sum()
        return (enlarged & inside).sum((1, 2)) / total if total else np.full(len(masks), np.nan)

    return share(region), share(~region & ~ignore)


def masked_predictions(
    class_map_of, features: torch.Tensor, masks: torch.Tensor, label: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and the class's activation of the prediction from masked features.

    class_map_of: tap features -> class map (``Generator.class_map``). features: Ct x H x W.
    masks: K x H x W. Returns K, K: each mask multiplies the features, and the class map's
    global average is the prediction, as the AMC scores erased features."""
    scores = global_average(class_map_of(features[None] * masks[:, None].to(features.dtype))).float()  # K x C
    labels = torch.full((len(masks),), label, device=scores.device)
    return F.cross_entropy(scores, labels, reduction="none"), scores[:, label]


def _rounded(values) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values, dtype=np.float64)]


@torch.inference_mode()
def batch_records(
    networks: list[Generator], images: torch.Tensor, samples: list[Sample], values, steps: int, amp: str | None
) -> list[dict]:
    """One record per image: for each network and mask protocol, the object and background
    shares and the CE and activation of each step's masked prediction."""
    labels = torch.tensor([s.label for s in samples], device=images.device)
    regions = [gt_regions(s, values.resize, values.crop) for s in samples]
    records = [{"image": s.image_id, "label": s.label, "curves": []} for s in samples]
    for model in networks:
        model.eval()
        with autocast(images.device, amp):
            _, maps = model.localize(images, labels, 1)
            features = model.head(images)
        size = features.shape[-1], features.shape[-2]  # the maps at the tap's size (the CAM's are half of it)
        maps = metrics.resize_maps(maps[:, 0].float().cpu().numpy(), size)
        for record, feature, score_map, (region, ignore) in zip(records, features, maps, regions):
            curves = {}
            for protocol, make_masks in PROTOCOLS.items():
                masks = make_masks(score_map, steps)
                with autocast(images.device, amp):
                    ce, activation = masked_predictions(
                        model.class_map, feature, torch.from_numpy(masks).to(images.device), record["label"]
                    )
                obj, background = region_shares(masks, region, ignore)
                curves[protocol] = {
                    "object": _rounded(obj),
                    "background": _rounded(background),
                    "ce": _rounded(ce.cpu()),
                    "activation": _rounded(activation.cpu()),
                }
            record["curves"].append(curves)
    return records


# ------------------------------------------------------------------ per-image files
def read_lines(path: Path) -> list[dict]:
    """The complete lines of a curves file; a last line without its newline (the process was
    stopped while writing it) is left out."""
    if not path.is_file():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def recorded_images(folder: Path) -> dict[str, dict]:
    """Every image's record in ``folder``: the merged curves and the shares of an
    interrupted run."""
    records = {}
    for path in [folder / CURVES, *sorted(folder.glob(PART.format("*")))]:
        for record in read_lines(path):
            records.setdefault(record["image"], record)
    return records


def open_part(path: Path):
    """This process's share file, opened for appending after cutting off a line left half
    written."""
    if path.is_file():
        text = path.read_bytes()
        keep = text.rfind(b"\n") + 1
        if keep != len(text):
            os.truncate(path, keep)
    return open(path, "a")


def merge(folder: Path, samples: list[Sample]) -> list[dict]:
    """Every process's share into one file in the dataset's order; the share files go."""
    records = recorded_images(folder)
    ordered = [records[s.image_id] for s in samples if s.image_id in records]
    write_text_atomic(folder / CURVES, "".join(json.dumps(r) + "\n" for r in ordered))
    for part in folder.glob(PART.format("*")):
        part.unlink()
    return ordered


# --------------------------------------------------------------------------- summary
def minmax(curve: np.ndarray) -> np.ndarray:
    """``curve`` (..., K) scaled to [0, 1] along its steps; a flat curve gives zeros."""
    low, high = curve.min(-1, keepdims=True), curve.max(-1, keepdims=True)
    span = high - low
    return np.divide(curve - low, span, out=np.zeros_like(curve), where=span > 0)


def stacked(records: list[dict], network: int, protocol: str) -> dict[str, np.ndarray]:
    """N x K arrays of one network's curves under one protocol."""
    keys = ("object", "background", "ce", "activation")
    return {key: np.array([r["curves"][network][protocol][key] for r in records], dtype=np.float64) for key in keys}


def first_step(condition: np.ndarray) -> np.ndarray:
    """N x K bool -> N: the first step where ``condition`` holds, -1 where it never does."""
    return np.where(condition.any(1), condition.argmax(1), -1)


def turning_points(curves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per image (N), the first step where CE is <= CE_SHARE x its value at the first mask
    (-1 where it never is: a CE already at its floor from the first mask never falls), where
    its min-max normalized value is <= CE_SHARE (CE has made 95 % of its fall), and where the
    activation peaks (its first maximum)."""
    ce = curves["ce"]
    return {
        "ce_below_start": first_step(ce <= CE_SHARE * ce[:, :1]),
        "ce_fallen": first_step(minmax(ce) <= CE_SHARE),
        "activation_peak": curves["activation"].argmax(1),
    }


def median_share(shares: np.ndarray, steps: np.ndarray) -> float | None:
    """Median over images of each image's share at its step; an image whose step is never
    reached (-1) counts as beyond every share, so that the median is None ("never") once
    half the images never reach it."""
    values = np.where(steps >= 0, shares[np.arange(len(steps)), steps], np.inf)
    median = float(np.nanmedian(values))
    return None if np.isinf(median) else median


def summarize(records: list[dict], names: list[str]) -> dict:
    """Medians over images of the object and background shares at each turning point, the
    number of images whose CE falls below CE_SHARE of its start, and the median CE at the
    first and last steps."""
    summary = {"images": len(records), "ce_share": CE_SHARE, "networks": {}}
    for network, name in enumerate(names):
        per_protocol = {}
        for protocol in PROTOCOLS:
            curves = stacked(records, network, protocol)
            points = turning_points(curves)
            entry = {"ce_below_start_images": int((points["ce_below_start"] >= 0).sum())}
            for point, steps in points.items():
                for region in ("object", "background"):
                    entry[f"{point}_{region}"] = median_share(curves[region], steps)
            entry["ce_first"] = float(np.median(curves["ce"][:, 0]))
            entry["ce_last"] = float(np.median(curves["ce"][:, -1]))
            per_protocol[protocol] = entry
        summary["networks"][name] = per_protocol
    return summary


def summary_lines(summary: dict) -> list[str]:
    """One line per network and protocol."""

    def at(s: dict, point: str) -> str:
        shares = [s[f"{point}_{region}"] for region in ("object", "background")]
        return "{} ({})".format(*("never" if v is None else f"{v:.2f}" for v in shares))

    percent = f"{100 * summary['ce_share']:g} %"
    images = f"{summary['images']} images" + (f" of {len(summary['runs'])} runs" if "runs" in summary else "")
    lines = []
    for name, per_protocol in summary["networks"].items():
        for protocol, s in per_protocol.items():
            lines.append(
                f"{name}, {protocol} masks, {images}: median share of the object (of the "
                f"background) inside the mask where CE first <= {percent} of its value at the first mask: "
                f"{at(s, 'ce_below_start')}, in {s['ce_below_start_images']} of {summary['images']} images; "
                f"where CE has first made {100 - 100 * summary['ce_share']:g} % of its fall: {at(s, 'ce_fallen')}; "
                f"where the activation peaks: {at(s, 'activation_peak')}; median CE {s['ce_first']:.3g} at the "
                f"first mask, {s['ce_last']:.3g} at the last"
            )
    return lines


def draw(runs: list[list[dict]], names: list[str], path: Path) -> None:
    """Mean +- one standard deviation over the images of all ``runs``, at each step of each
    protocol, of the min-max normalized CE (solid) and activation (dashed), against the mean
    object share (left) and background share (right) at that step; with several runs (the
    same methods trained at several seeds), each run's mean as a thin line too."""
    records = [record for run_records in runs for record in run_records]
    figure = Figure(figsize=(10, 7), dpi=80, layout="constrained")  # 800 x 560: a PNG of about 200 KB
    axes = figure.subplots(len(PROTOCOLS), 2, sharey=True)
    colors = ("tab:blue", "tab:orange", "tab:green")
    for row, protocol in zip(axes, PROTOCOLS):
        for network, name in enumerate(names):
            color = colors[network % len(colors)]
            curves = stacked(records, network, protocol)
            per_run = [stacked(run_records, network, protocol) for run_records in runs] if len(runs) > 1 else []
            for ax, region in zip(row, ("object", "background")):
                x = np.nanmean(curves[region], 0)
                for quantity, style in (("ce", "-"), ("activation", "--")):
                    for run_curves in per_run:
                        run_x, run_y = np.nanmean(run_curves[region], 0), minmax(run_curves[quantity]).mean(0)
                        ax.plot(run_x, run_y, style, color=color, linewidth=0.7, alpha=0.7)
                    y = minmax(curves[quantity])
                    mean, spread = y.mean(0), y.std(0)
                    ax.plot(x, mean, style, color=color, marker=".", label=f"{name}: {quantity}")
                    ax.fill_between(x, mean - spread, mean + spread, color=color, alpha=0.12, linewidth=0)
        for ax, region in zip(row, ("object", "background")):
            ax.set_xlabel(f"share of the {region} inside the mask")
            ax.set_title(f"{protocol} masks", fontsize="medium")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
        row[0].set_ylabel("normalized value (min-max per image)")
    axes[0, 1].legend(fontsize="small", loc="center right")
    title = f"{len(records)} images: mean ± 1 s.d. at each mask step"
    if len(runs) > 1:
        title = f"{len(records)} images of {len(runs)} runs: mean ± 1 s.d. at each mask step; thin: each run's mean"
    figure.suptitle(title)

    def write(fd: int) -> None:
        with os.fdopen(fd, "wb") as f:
            FigureCanvasAgg(figure).print_png(f, metadata={"Software": None})

    replace_atomic(write, path)


# --------------------------------------------------------------------------- command
def get_args_parser() -> argparse.ArgumentParser:
    parser, group = evaluation_parser(__doc__)
    group.add_argument(
        "--compare",
        type=Path,
        metavar="CHECKPOINT",
        help="a second network measured on the same images and drawn in the same figure (e.g. a CAM run)",
    )
    group.add_argument("--steps", type=int, default=21, help="masks per protocol (default: 21, t = 1, 0.95, .., 0)")
    group.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="instead of measuring, draw finished runs' output folders (the same methods, e.g. trained at several "
        "seeds) in one figure, with one summary over all their images, into --output-dir",
    )
    for action in parser._actions:
        if action.dest == "output_dir":
            action.help = "default: motivation_<split> beside the checkpoint"
    return parser


def check_args(args: argparse.Namespace) -> None:
    check_evaluation_args(args)
    if args.maps is not None:
        raise ArgumentError("--maps: the experiment masks a network's features; it needs --checkpoint, not saved maps")
    if args.topk not in (None, 1):
        raise ArgumentError(f"--topk {args.topk}: the experiment uses the map of the ground-truth class (top-1)")
    if args.steps < 2:
        raise ArgumentError(f"--steps {args.steps}: a curve needs at least 2 masks")
    if args.combine and (args.checkpoint or args.compare):
        raise ArgumentError("--combine draws runs already measured: it takes no --checkpoint or --compare")
    if args.combine and args.output_dir is None:
        raise ArgumentError("--combine needs --output-dir, the folder for the figure and summary")


def distinct(names: list[str]) -> list[str]:
    """The networks' names in a figure, numbered where two are the same."""
    return [f"{name} #{i + 1}" for i, name in enumerate(names)] if len(set(names)) < len(names) else names


def networks_for(args: argparse.Namespace, device: torch.device):
    """The networks measured, their names in the figure, and what the output folder's
    marker records of them."""
    model, _, values = model_for_evaluation(args, device)
    networks, made_of = [model], [{"weights": input_stamp(args.checkpoint), "method": args.method or "bas"}]
    if args.compare is not None:
        # What the second checkpoint records decides its model, not the first one's flags.
        recorded = {"checkpoint": args.compare, "arch": None, "method": None, "num_classes": None}
        other = argparse.Namespace(**{**vars(args), **recorded})
        networks.append(model_for_evaluation(other, device)[0])
        made_of.append({"weights": input_stamp(args.compare), "method": other.method or "bas"})
    names = distinct([f"{m['method'].upper()} ({m['weights']['name']})" for m in made_of])
    return networks, names, values, made_of


def check_folder(folder: Path, kind: str, made_of: dict) -> None:
    """Curves are added only to a folder of curves made the same way: a resumed run of other
    weights or settings would mix two experiments in one figure."""
    check_writable(folder, kind, "Choose another --output-dir.")
    recorded = differing_record(folder, made_of)
    if recorded is not None:
        raise OutputError(
            f"{folder} holds curves made from other inputs or settings ({', '.join(map(str, recorded.values()))}); "
            "choose another --output-dir or remove it"
        )


def write_results(folder: Path, measured: list[list[dict]], names: list[str], **recorded) -> dict:
    """The figure and the summary (with ``recorded`` added) of one or more runs' curves;
    returns the summary."""
    draw(measured, names, folder / "motivation.png")
    summary = {**summarize([record for records in measured for record in records], names), **recorded}
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(folder / "summary.txt", "\n".join(summary_lines(summary)) + "\n")
    return summary


def run(args: argparse.Namespace, device: torch.device, rank: int = 0, world: int = 1) -> dict | None:
    """Measures this process's share of the images not yet recorded; rank 0 then merges the
    shares, draws the figure and returns the summary (None on the other processes)."""
    networks, names, values, stamps = networks_for(args, device)
    args.output_dir = args.output_dir or args.checkpoint.parent / f"motivation_{args.split}"
    settings = {"split": args.split, "steps": args.steps, "size": values.crop, "precision": args.amp or "fp32"}
    made_of = {"networks": stamps, "settings": settings}
    check_folder(args.output_dir, MOTIVATION_KIND, made_of)
    samples = [s for s in load_samples(args, args.split) if len(s.boxes) or s.mask_paths]
    if not samples:
        raise DatasetError(f"no {args.split} image of {args.root} has a box or a mask: the shares need them")
    folder = first_on_rank_zero(lambda: claim(args.output_dir, MOTIVATION_KIND, **made_of))
    done = gather_objects(set(recorded_images(folder)) if rank == 0 else None)[0]
    remaining = [s for s in samples if s.image_id not in done]
    loader = evaluation_loader(
        remaining, test_transform(values.resize, values.crop), args.batch_size, args.workers, device, rank, world
    )
    progress = not args.no_progress and rank == 0
    with open_part(folder / PART.format(rank)) as part:
        for images, _, indices in tqdm(loader, desc="motivation", disable=None if progress else True):
            chunk = [remaining[i] for i in indices.tolist()]
            for record in batch_records(networks, images.to(device), chunk, values, args.steps, args.amp):
                part.write(json.dumps(record) + "\n")
            part.flush()
    gather_objects(None)  # every share is written
    if rank > 0:
        return None
    return write_results(folder, [merge(folder, samples)], names)


def finished_run(folder: Path) -> tuple[list[dict], dict]:
    """A finished run's curves and what its marker records of them."""
    marker = read_marker(folder) or {}
    if marker.get("kind") != MOTIVATION_KIND or not (folder / CURVES).is_file() or list(folder.glob(PART.format("*"))):
        raise ArgumentError(
            f"--combine: {folder} holds no finished motivation run (its {CURVES}, with no {PART.format('*')} left "
            "to merge); run motivation.py into it to the end first"
        )
    return read_lines(folder / CURVES), marker


def combine(folders: list[Path], output_dir: Path) -> dict:
    """Finished runs of the same methods and settings (e.g. trained at several seeds) in one
    figure, each run's mean drawn too, and one summary over all their images."""
    runs = [finished_run(folder) for folder in folders]
    first = runs[0][1]

    def methods(marker: dict) -> str:
        return ", ".join(network["method"].upper() for network in marker["networks"])

    for folder, (_, marker) in zip(folders[1:], runs[1:]):
        if methods(marker) != methods(first):
            raise ArgumentError(
                f"--combine: {folder} measured {methods(marker)}; {folders[0]} measured {methods(first)}: "
                "only runs of the same methods, in the same order, are drawn as one"
            )
        if marker["settings"] != first["settings"]:
            raise ArgumentError(
                f"--combine: {folder} was measured with {marker['settings']}; {folders[0]} with {first['settings']}"
            )
    made_of = {
        "runs": [{"folder": str(folder), "curves": input_stamp(folder / CURVES)} for folder in folders],
        "settings": first["settings"],
    }
    check_folder(output_dir, COMBINED_KIND, made_of)
    folder = claim(output_dir, COMBINED_KIND, **made_of)
    names = distinct([network["method"].upper() for network in first["networks"]])
    return write_results(folder, [records for records, _ in runs], names, runs=[str(f) for f in folders])


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args_parser().parse_args(argv)
    check_args(args)
    if args.combine:
        print("\n".join(summary_lines(combine(args.combine, args.output_dir))))
        print(f"figure and summary written to {args.output_dir}")
        return
    device, rank, world = init_distributed(args.device, args.local_rank, args.dist_timeout)
    summary = run(args, device, rank, world)
    if summary is not None:
        print("\n".join(summary_lines(summary)))
        print(f"curves, figure and summary written to {args.output_dir}")
    finish_distributed()


if __name__ == "__main__":
    run_main(main)
