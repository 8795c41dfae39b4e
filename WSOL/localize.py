"""Localize objects in your own images with a trained generator: per image the top classes,
the box at a CAM threshold, and a heat-map overlay; results.json and results.csv.

    python localize.py --checkpoint logs/Synthetic/tiny_bas/best_loc.pth photos/
    python localize.py --checkpoint resnet50_cub.pth.tar --root CUB --arch resnet 'photos/*.jpg' --output-dir out/

Inputs are image files, folders (their images, recursively) and glob patterns (quoted, so that
the pattern reaches the script); an image that cannot be read is skipped with a warning, the
others' results are written, and the script then fails, saying how many were skipped.
Checkpoints are ours (they record arch, method, classes and dataset) or the original release's
({'model', 'best_thr', 'epoch'}: pass --root and --arch). A second run into the same
--output-dir replaces the first one's results as a whole.

The box is the original protocol's: the map is min-max normalized, resized (bilinear) to the
crop size, kept where > threshold, and the largest 8-connected component's bounding box is
taken; --all-components lists every component. Each image is resized as a whole to the crop
size (224 x 224 on the real datasets), not resized to 256 and center-cropped as in the
evaluation: nothing of the image is cut off, and a box maps back to the image by scaling alone,
x * width / 224 and y * height / 224. Boxes are pixel edges (x0, y0, x1, y1): the box covers
the pixels x0 <= x < x1, y0 <= y < y1 (the original's one-past-the-last max); an image where
nothing lies above the threshold gets the whole image. Images are taken as a viewer shows them,
upright by their EXIF orientation (the evaluation on datasets ignores it, as the original).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from bas.amc import global_average
from bas.checkpoints import read_checkpoint
from bas.cli import add_speed_arguments
from bas.data import load_rgb
from bas.devices import autocast, memory_format, pick_device
from bas.errors import (
    ArgumentError,
    CheckpointError,
    DatasetError,
    OutputError,
    require_positive,
    require_unit_interval,
    run_main,
)
from bas.outputs import MARKER, build_folder, check_writable, read_marker, write_text_atomic
from bas.sampling import loader_options
from bas.viz import overlay, save_rgb
from WSOL import metrics
from WSOL.cli import add_model_arguments, class_names, model_for_evaluation
from WSOL.datasets import test_transform
from WSOL.inference import map_topk
from WSOL.models import Generator
from WSOL.presets import PRESETS

log = logging.getLogger("localize")

LOCALIZE_KIND = "WSOL localization"  # what the output folder's marker says it holds (bas.outputs)
OVERLAY_SIDE = 448  # overlays are drawn on the image shrunk to at most this many pixels a side


@dataclass
class Localization:
    """What ``localize_images`` finds in one image; boxes are pixel edges in the image's pixels."""

    path: Path
    size: tuple[int, int]  # (width, height) of the image
    classes: list[tuple[int, str | None, float]]  # top classes, best first: (index, name or None, probability)
    box: np.ndarray  # 4 floats (x0, y0, x1, y1): the largest component's box; the whole image if none
    components: np.ndarray  # k x 4 boxes of every component, largest first; (0, 4) unless asked
    areas: np.ndarray  # k, each component's share of the image's area
    score_map: np.ndarray  # crop x crop float32 in [0, 1]: the normalized map the boxes come from


@dataclass
class Unreadable:
    """An image ``localize_images`` could not read, in its place among the results."""

    path: Path
    message: str  # why, naming the file


# ---------------------------------------------------------------------------- inputs
def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files, folders (searched recursively for image extensions) and glob
    patterns, in the given order, each folder's and pattern's matches sorted, duplicates once."""
    found: dict[Path, None] = {}
    for item in map(str, inputs):
        path = Path(item)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS))
            if not matches:
                raise ArgumentError(f"{path}: the folder holds no image ({', '.join(IMG_EXTENSIONS)})")
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise ArgumentError(f"{item}: the pattern matches no file")
        else:
            raise ArgumentError(f"{path}: no such file or folder")
        found.update(dict.fromkeys(matches))
    return list(found)


def read_image(path: Path) -> Image.Image:
    """The image as a viewer shows it: RGB, turned upright by its EXIF orientation (cameras store
    photos sideways with a tag saying so), so that boxes land where the user sees the object."""
    return ImageOps.exif_transpose(load_rgb(path))  # an unreadable file stops with its path named


class ImageFiles(torch.utils.data.Dataset):
    """Paths -> (image resized to crop x crop, (width, height) of the original, index, None), or
    (None, None, index, why) for a file that cannot be read, so that one such file stops no run."""

    def __init__(self, paths: Sequence[Path], crop: int) -> None:
        self.paths = list(paths)
        self.transform = test_transform(crop, crop)  # the whole image squashed to the crop size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int, str | None]:
        try:
            image = read_image(self.paths[index])
        except DatasetError as error:
            return None, None, index, str(error)
        return self.transform(image), torch.tensor(image.size), index, None


def readable_batch(items: list[tuple]) -> tuple[list | None, list[tuple[int, str]]]:
    """The loader's batches: the readable images collated (None if there are none), and the
    (index, why) of the others."""
    readable = [item[:3] for item in items if item[3] is None]
    unreadable = [(index, why) for _, _, index, why in items if why is not None]
    return (default_collate(readable) if readable else None), unreadable


# ---------------------------------------------------------------------------- the maps
def scores_and_maps(model: Generator, images: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores (B x C) and localization maps (B x 1 x h x w) without labels: the mean map
    of the top-k predicted classes (class-agnostic when k = C, as the original's top-k
    evaluation), or for k = 1 the map of the predicted class. ``Generator.localize`` takes
    the class of a top-1 map as a label, so k = 1 runs the network twice: once to predict it."""
    if topk > 1:
        return model.localize(images, None, topk)
    predicted = global_average(model.features_and_class_map(images)[1]).argmax(1)  # B
    return model.localize(images, predicted, 1)


def component_boxes(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every 8-connected component of a H x W bool map: boxes (k x 4 pixel edges, max one past
    the last pixel) and pixel counts (k), largest first; equal sizes keep the row-major order of
    the components' first pixels, so the first box is ``metrics.largest_component_box``'s."""
    _, _, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(binary.astype(np.uint8), 8, cv2.CV_32S, cv2.CCL_WU)
    stats = stats[1:]  # row 0 is the background
    x, y, w, h, area = stats[np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")].T
    return np.stack([x, y, x + w, y + h], axis=1), area


@torch.inference_mode()
def localize_images(
    model: Generator,
    paths: Sequence[str | Path],
    threshold: float,
    topk: int = 1,
    crop: int = 224,
    names: Sequence[str] | None = None,
    top_classes: int = 5,
    all_components: bool = False,
    batch_size: int = 32,
    workers: int = 0,
    device: torch.device | str | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> Iterator[Localization | Unreadable]:
    """Localize ``paths`` with ``model`` (on ``device``, default: the model's), batch by batch;
    yields one ``Localization`` per image, in order, or an ``Unreadable`` for a file that cannot
    be read.

    threshold: the CAM threshold in [0, 1] (the checkpoint's best_thr, or the preset's);
    topk: classes whose maps are averaged (1: the predicted class); crop: the network's input
    size (the preset's: 224 on the real datasets); names: class names by index, if known.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    layout = memory_format(channels_last)
    dataset = ImageFiles([Path(p) for p in paths], crop)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, collate_fn=readable_batch, **loader_options(workers, device)
    )
    # disable=None: no bar where stderr is no terminal (a log file), even when ``progress``.
    for batch, unreadable in tqdm(loader, desc="localize", leave=False, disable=None if progress else True):
        found = {index: Unreadable(dataset.paths[index], why) for index, why in unreadable}
        if batch is None:
            yield from found.values()
            continue
        images, sizes, indices = batch
        with autocast(device, amp):
            score, maps = scores_and_maps(model, images.to(device, non_blocking=True, memory_format=layout), topk)
        probs = score.float().softmax(1)  # B x C
        best = probs.topk(min(top_classes, probs.shape[1]), dim=1)
        raw = maps[:, 0].float().cpu().numpy()  # B x h x w (28 x 28 at 224)
        normalized = metrics.resize_maps(metrics.normalize_minmax(raw), crop)  # B x crop x crop, the original's
        for row, (index, (width, height)) in enumerate(zip(indices.tolist(), sizes.tolist())):
            scale = np.array([width / crop, height / crop] * 2)  # crop frame -> image pixels
            binary = normalized[row] > threshold
            components, areas = component_boxes(binary) if all_components else (np.zeros((0, 4)), np.zeros(0))
            classes = [
                (c, names[c] if names else None, p)
                for c, p in zip(best.indices[row].tolist(), best.values[row].tolist())
            ]
            found[index] = Localization(
                path=dataset.paths[index],
                size=(width, height),
                classes=classes,
                box=metrics.largest_component_box(binary) * scale,
                components=components * scale,
                areas=areas / crop**2,
                score_map=normalized[row],
            )
        yield from (found[index] for index in sorted(found))


def overlay_image(result: Localization, side: int = OVERLAY_SIDE) -> np.ndarray:
    """The image (shrunk to at most ``side`` pixels a side, aspect kept) with the map blended
    over it, the box in green and the top class with its probability below: H x W x 3 uint8 RGB."""
    width, height = result.size
    factor = min(1.0, side / max(width, height))
    shown = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = np.asarray(read_image(result.path).resize(shown, Image.Resampling.BILINEAR))
    score_map = cv2.resize(result.score_map, shown, interpolation=cv2.INTER_LINEAR)
    box = result.box * np.array([shown[0] / width, shown[1] / height] * 2)
    index, name, probability = result.classes[0]
    return overlay(image, score_map, box, caption=f"{name or f'class {index}'}  {probability:.2f}")


# ---------------------------------------------------------------------------- outputs
def _rounded(box: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in box]


def _record(result: Localization, overlay_path: str | None) -> dict:
    record = {"image": str(result.path), "width": result.size[0], "height": result.size[1]}
    record["classes"] = [
        {"class": index, "name": name, "probability": round(probability, 6)}
        for index, name, probability in result.classes
    ]
    record["box"] = _rounded(result.box)
    if len(result.components):
        record["components"] = [
            {"box": _rounded(box), "area": round(float(area), 6)} for box, area in zip(result.components, result.areas)
        ]
    if overlay_path is not None:
        record["overlay"] = overlay_path
    return record


def _csv(header: list[str], rows: list[list]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


def write_results(output: Path, records: list[dict], unreadable: list[dict], settings: dict, top_classes: int) -> None:
    """results.json (the settings, one entry per image, then the images that could not be read),
    results.csv (one row per image: its box and top classes) and, where components were asked
    for, components.csv (one row each)."""
    report = {**settings, "images": records, "unreadable": unreadable}
    write_text_atomic(output / "results.json", json.dumps(report, indent=2) + "\n")
    header = ["image", "width", "height", "x0", "y0", "x1", "y1"]
    for rank in range(1, top_classes + 1):
        header += [f"class_{rank}", f"name_{rank}", f"probability_{rank}"]
    rows = []
    for record in records:
        row = [record["image"], record["width"], record["height"], *record["box"]]
        for entry in record["classes"]:
            row += [entry["class"], entry["name"] or "", entry["probability"]]
        rows.append(row)
    write_text_atomic(output / "results.csv", _csv(header, rows))
    if settings["all_components"]:
        rows = [
            [record["image"], number, *component["box"], component["area"]]
            for record in records
            for number, component in enumerate(record.get("components", []))
        ]
        write_text_atomic(output / "components.csv", _csv(["image", "component", "x0", "y0", "x1", "y1", "area"], rows))


def written_files(folder: Path) -> set[str]:
    """The files an earlier localization wrote into ``folder``, as its results.json lists them
    (paths relative to the folder); none where that list cannot be read."""
    try:
        report = json.loads((folder / "results.json").read_text())
        overlays = {entry["overlay"] for entry in report["images"] if "overlay" in entry}
        components = {"components.csv"} if report["all_components"] else set()
    except (OSError, ValueError, TypeError, KeyError):
        return set()
    return {MARKER, "results.json", "results.csv", *components, *overlays}


def check_output(folder: Path) -> Path:
    """The output folder, checked before any work: absent, empty, or an earlier localization
    that holds nothing but the files its results.json lists. The run replaces it as a whole
    (``bas.outputs.build_folder``), so that no earlier result stays beside the new ones, and
    no file put there since is deleted."""
    folder = check_writable(folder, LOCALIZE_KIND, "Choose another --output-dir.")
    if read_marker(folder) is None:  # absent or empty
        return folder
    present = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir()}
    others = sorted(present - written_files(folder))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise OutputError(
            f"{folder} holds files the earlier localization did not write ({shown}); nothing was written there. "
            "Move them away or choose another --output-dir."
        )
    return folder


def _overlay_names(paths: list[Path]) -> dict[Path, Path]:
    """Overlay paths under overlays/ that mirror the inputs' folders below their common folder,
    the image's whole name kept (a.jpg -> a.jpg.png) so that a.jpg and a.png stay apart."""
    resolved = [path.resolve() for path in paths]
    base = Path(os.path.commonpath([path.parent for path in resolved]))
    return {
        path: Path("overlays") / real.relative_to(base).with_name(real.name + ".png")
        for path, real in zip(paths, resolved)
    }


# ---------------------------------------------------------------------------- the script
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, glob patterns (quoted)")
    group = parser.add_argument_group("checkpoint and dataset")
    group.add_argument("--checkpoint", type=Path, required=True, help="ours, or the original release's")
    group.add_argument(
        "--root",
        choices=list(PRESETS),
        help="the dataset the checkpoint was trained on: its preset gives the input size, the threshold and top-k; "
        "our checkpoints record it, the original release's need it",
    )
    group.add_argument("--data-dir", type=Path, help="the dataset's folder, for class names (default: data/<root>)")
    group.add_argument(
        "--class-names",
        type=Path,
        metavar="FILE",
        help="class names, one per line in class order (overrides the dataset's)",
    )
    group.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image loading processes")
    add_model_arguments(parser)
    group = parser.add_argument_group("localization")
    group.add_argument(
        "--threshold", type=float, help="CAM threshold in [0, 1] (default: the checkpoint's best, else the preset's)"
    )
    group.add_argument(
        "--topk",
        type=int,
        help="maps averaged over the top-k predicted classes; 1: the predicted class's map (default: the preset's; "
        "k = the number of classes is the class-agnostic map)",
    )
    group.add_argument("--top-classes", type=int, default=5, help="predicted classes listed per image")
    group.add_argument("--all-components", action="store_true", help="also list every component's box (components.csv)")
    group.add_argument("--no-overlays", action="store_true", help="write no overlay pictures")
    group.add_argument(
        "--output-dir",
        type=Path,
        default=Path("localized"),
        help="new, empty, or one this script wrote (default: localized)",
    )
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    add_speed_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
    return parser


def read_names(path: Path, count: int) -> list[str]:
    """--class-names: one name per non-blank line, ``count`` of them."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (--class-names: one class name per line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != count:
        raise DatasetError(f"{path}: {len(names)} class names for a model of {count} classes")
    return names


def resolve_root(args: argparse.Namespace, checkpoint: dict) -> None:
    """The dataset: --root, else the one the checkpoint records; the two must agree."""
    recorded = checkpoint.get("root")
    if args.root is not None and recorded is not None and args.root != recorded:
        raise CheckpointError(
            f"{args.checkpoint} holds a root {recorded!r} model; --root {args.root} contradicts it (drop --root)"
        )
    args.root = args.root or recorded
    if args.root is None:
        raise ArgumentError(
            f"{args.checkpoint} does not record its dataset: pass --root ({', '.join(PRESETS)}), and --arch"
        )


def localize(args: argparse.Namespace) -> Path:
    """The script's work: every check first, then the model, then the images; returns the
    output folder."""
    for flag in ("batch_size", "top_classes", "topk", "num_classes"):
        require_positive("--" + flag.replace("_", "-"), getattr(args, flag))
    require_unit_interval("--threshold", args.threshold)
    if args.workers < 0:
        raise ArgumentError(f"--workers {args.workers}: must be 0 or more")
    paths = find_images(args.inputs)
    output = check_output(args.output_dir)
    checkpoint = read_checkpoint(args.checkpoint)
    resolve_root(args, checkpoint)
    device = pick_device(args.device)
    model, extra, values = model_for_evaluation(args, device, checkpoint)
    threshold = float(args.threshold if args.threshold is not None else extra.get("best_thr") or values.threshold)
    topk = map_topk(args.topk, values.topk, args.num_classes)
    names = read_names(args.class_names, args.num_classes) if args.class_names else class_names(args)
    if names is not None and len(names) != args.num_classes:
        log.warning(
            "%s names %d classes, the model has %d: no names shown", args.data_dir, len(names), args.num_classes
        )
        names = None
    log.info(
        "%d images; threshold %g, top-%d map, input %d x %d", len(paths), threshold, topk, values.crop, values.crop
    )

    settings = {
        "checkpoint": str(args.checkpoint),
        "arch": args.arch,
        "method": args.method or "bas",
        "root": args.root,
        "threshold": threshold,
        "topk": topk,
        "input_size": values.crop,
        "all_components": args.all_components,
        "boxes": "x0, y0, x1, y1 in image pixels, pixel edges: the box covers x0 <= x < x1, y0 <= y < y1",
    }
    overlays = None if args.no_overlays else _overlay_names(paths)
    results = localize_images(
        model, paths, threshold, topk, values.crop, names, args.top_classes, args.all_components, args.batch_size,
        args.workers, device, args.amp, args.channels_last, progress=not args.no_progress,
    )  # fmt: skip
    unreadable = []

    def write(folder: Path) -> None:
        records = []
        for result in results:
            if isinstance(result, Unreadable):
                log.warning("skipped %s", result.message)
                unreadable.append({"image": str(result.path), "error": result.message})
                continue
            if overlays is not None:
                save_rgb(folder / overlays[result.path], overlay_image(result))
            records.append(_record(result, None if overlays is None else overlays[result.path].as_posix()))
        write_results(folder, records, unreadable, settings, min(args.top_classes, args.num_classes))

    build_folder(output, LOCALIZE_KIND, write, "Choose another --output-dir.")
    if unreadable:
        raise DatasetError(
            f"{len(unreadable)} of {len(paths)} images could not be read (skipped above); "
            f"the results of the other {len(paths) - len(unreadable)} are in {output / 'results.json'}"
        )
    return output


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = localize(get_args_parser().parse_args(argv))
    print(f"results written to {folder / 'results.json'} and {folder / 'results.csv'}")


if __name__ == "__main__":
    run_main(main)
