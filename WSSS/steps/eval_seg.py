"""Stage eval_seg: the segmentation net of train_seg on ``--val_list``, its predictions as
label PNGs, scored as eval_sem_seg scores any folder of labels.

Each image of the list is predicted at ``--seg_scales`` with its mirror image (softmax
averaged: ``WSSS.segmentation.predict``), refined by DeepLab's dense CRF with ``--seg_crf``,
and its argmax written. A DeepLabv2 is scored as deeplab-pytorch tests it: one pass over the
image as it is (the net fuses its 1, 0.75 and 0.5 rescales itself), no mirror image.
and its argmax written to ``<seg_out_dir>/<id>.png``: index PNGs (0 background, c + 1 class
c), grayscale by default (IRN-style readers, imageio, read only those as indices) or with
VOC's colours (``--seg_palette voc``). Then eval_sem_seg scores the folder against the masks
and writes its JSON report to ``--seg_eval_out_dir`` (default ``<seg_out_dir>_eval``).

VOC's test set has no masks: with ``--seg_test``, or a list named ``test``, the predictions
go where the VOC evaluation server wants them, ``<seg_out_dir>/results/VOC2012/Segmentation/
comp6_test_cls/<id>.png`` (palette PNGs; comp6: trained with data beyond VOC's, here the
ImageNet backbone and SBD's images), and nothing is scored: archive ``results/`` and upload.

Ids whose PNG exists are skipped and each PNG is written under a temporary name then renamed,
so a crashed run is finished by running it again. The folder's marker records the weights
(path and time written), scales and CRF the PNGs came from: other settings stop with a
message, never a mix of predictions. Under torchrun every process predicts every world-th image.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from bas.data import load_rgb
from bas.errors import CheckpointError, require_positive
from WSSS import datasets, deeplabv2
from WSSS.crf import crf_refine
from WSSS.labels import PALETTES, save_label_png
from WSSS.reports import label_report
from WSSS.segmentation import load_segmentation_model, predict
from WSSS.sharding import claim_output, each_item, my_share, total

log = logging.getLogger(__name__)

OUTPUT_KIND = "wsss-seg-predictions"
SERVER_FOLDER = Path("results/VOC2012/Segmentation/comp6_test_cls")  # the VOC server's layout
# The demo: 83.6 mIoU, 81.4 at 1 alone. DeepLabv2's: one pass (its MSC is inside the net).
SCALES = {"voc": (0.5, 0.75, 1.0, 1.25, 1.5), "synthetic": (0.75, 1.0, 1.25), deeplabv2.ARCH: (1.0,)}


def add_arguments(parser: argparse.ArgumentParser, add) -> None:
    group = parser.add_argument_group("segmentation net predictions (eval_seg)")
    add(
        group,
        "seg_out_dir",
        help="the predictions of --val_list, one <id>.png per image (default result/seg; result_synthetic/seg "
        "on the synthetic set)",
    )
    add(group, "seg_eval_out_dir", help="where the JSON report goes (default: <seg_out_dir>_eval)")
    add(
        group,
        "seg_scales",
        type=float,
        nargs="+",
        help=f"the scales each image is predicted at (VOC: {' '.join(map(str, SCALES['voc']))}; "
        f"the synthetic set: {' '.join(map(str, SCALES['synthetic']))}; DeepLabv2: 1, as deeplab-pytorch tests it)",
    )
    add(
        group,
        "seg_flip",
        action=argparse.BooleanOptionalAction,
        help="add each scale's mirror image (default: yes, except for DeepLabv2, which deeplab-pytorch tests without)",
    )
    add(
        group,
        "seg_crf",
        action="store_true",
        help="refine the probabilities with DeepLab's dense CRF (CPU, ~1 s an image)",
    )
    add(
        group,
        "seg_palette",
        choices=PALETTES,
        default="gray",
        help="gray: index PNGs (read as indices by every reader); voc: palette PNGs in VOC's colours, for viewing",
    )
    add(
        group,
        "seg_test",
        action="store_true",
        help="--val_list has no masks (VOC's test set; implied by a list named test): write the VOC server's "
        f"layout, <seg_out_dir>/{SERVER_FOLDER}/<id>.png, and score nothing",
    )


def predict_folder(
    model: torch.nn.Module,
    images: datasets.MultiScaleSet,
    out_dir: Path,
    palette: str,
    crf_scale: float | None,
    flip: bool = True,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    progress: bool = False,
) -> int:
    """Writes ``<out_dir>/<id>.png`` of this process's share of ``images`` (every world-th)
    whose PNG is missing; returns how many PNGs all processes wrote (and waits for all).
    ``crf_scale``: refined by DeepLab's CRF with its widths times this; None: no CRF.
    ``flip``: each scale with its mirror image."""
    mine = my_share(len(images), rank, world, lambda i: not (out_dir / f"{images.ids[i]}.png").exists())
    cuda = next(model.parameters()).device.type == "cuda"
    for index, item in each_item(images, mine, workers, "eval_seg", progress, pin_memory=cuda):
        probs = predict(model, item.images, item.size, flip)  # C x H x W
        if crf_scale is not None:
            image = np.asarray(load_rgb(images.samples[index].path))  # H x W x 3
            labels = crf_refine(image, probs.cpu().numpy(), crf_scale).argmax(0)
        else:
            labels = probs.argmax(0).cpu().numpy()
        save_label_png(labels.astype(np.uint8), out_dir / f"{item.image_id}.png", palette)
    return total(len(mine))


def run(args: argparse.Namespace) -> dict:
    """Predictions of ``args.val_list`` into ``args.seg_out_dir``, then their scores
    (eval_sem_seg's report), or on a test list the server's layout only ({"written": n})."""
    model, info = load_segmentation_model(args.seg_weights_name, args.device)
    is_v2 = info["arch"] == deeplabv2.ARCH
    kind = deeplabv2.ARCH if is_v2 else "synthetic" if getattr(args, "dataset", "voc") == "synthetic" else "voc"
    scales = args.seg_scales or SCALES[kind]
    for scale in scales:
        require_positive("--seg_scales", scale)
    flip = not is_v2 if args.seg_flip is None else args.seg_flip
    crf_scale = args.crf_scale if args.seg_crf else None  # None: no CRF
    if crf_scale is not None:
        require_positive("--crf_scale", crf_scale)
    test = args.seg_test or Path(args.val_list).stem == "test"
    out_dir = Path(args.seg_out_dir)
    folder = out_dir / SERVER_FOLDER if test else out_dir
    palette = "voc" if test else args.seg_palette

    data = datasets.pipeline_data(args)
    samples = data.images(args.val_list)
    if info["num_classes"] != len(data.classes) + 1:
        root = getattr(args, "coco_root", None) or args.voc12_root
        raise CheckpointError(
            f"{args.seg_weights_name}: a net of {info['num_classes']} outputs, but {root} has {len(data.classes)} "
            "classes and the background"
        )
    weights = Path(args.seg_weights_name).resolve()  # and when it was written: a net trained again is another net
    settings = {"weights": str(weights), "written": weights.stat().st_mtime_ns, "scales": list(scales), "flip": flip}
    settings["crf"] = args.seg_crf
    if crf_scale is not None:
        settings["crf_scale"] = crf_scale
    claim_output(out_dir, OUTPUT_KIND, args.rank, "choose another --seg_out_dir", settings)
    written = predict_folder(
        model,
        datasets.MultiScaleSet(samples, scales),
        folder,
        palette,
        crf_scale,
        flip,
        args.rank,
        args.world,
        args.num_workers,
        progress=args.rank == 0 and not args.no_progress,
    )
    log.info("eval_seg: %d predictions written to %s (%d were there)", written, folder, len(samples) - written)
    if test:
        log.info("eval_seg: no masks for %s; archive %s for the VOC server", args.val_list, out_dir / "results")
        return {"written": written}
    return label_report(args, out_dir, args.val_list, args.seg_eval_out_dir)
