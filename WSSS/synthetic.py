"""The embedded WSSS demo set: small multi-label images written in the VOCdevkit layout.

The set goes through the real VOC loader (``WSSS.datasets``): ``<root>/VOC2012/`` holds
``JPEGImages/*.jpg``, ``Annotations/*.xml`` (VOC's XML), ``SegmentationClass/*.png`` (palette
PNGs with VOC's palette, 255 void), ``SegmentationClassAug/*.png`` (grayscale, as SBD's release
that DeepLab ships), ``ImageSets/Segmentation/{train,val,trainval,train_aug}.txt`` and
``classes.txt`` (the class names, since they are not VOC's). As in VOC, ``train_aug`` is the
training set of the classifiers, ``train`` its first images (the ones seeds are scored on,
masks in SegmentationClass), ``val`` apart. Ids look like VOC's (``2000_000001``), so even
the original's integer id lists read them.

Why it looks the way it does: the set must let a CAM under-cover objects and leave room for
BAS, as on real images where a bird's head names the species and its body does not.

- Every object is a large elliptic body (26-48 px long before any shrinking to fit: about the
  receptive field of the small demo net's last layer, ~34 px, or more, so no single location
  sees a whole object) carrying a stripe texture whose orientation is shared by a pair of
  classes: the body is evidence, but weak (it cannot tell the two classes of its pair apart).
- On the body, away from its centre (0.3-0.75 of the way to the rim), sits one small part, a
  disc of radius 3 px (about 5 % of the body) whose colour alone names the class. The part is
  the cheapest evidence, so a classifier's CAM peaks on it and stays weak on most of the body.
- An image holds at most one class of each pair, so a body's stripes and the image's labels
  name the class too; a second object of a class mostly (70 %) shows no part, as a turned-away
  bird shows no head: only its body says what it is, and a CAM that learned the parts misses it.
- Background distractors (small discs) come in colours no class uses, and grey clutter lines
  cross the background: nothing but a part carries a class colour, so the part is enough
  (with class-coloured distractors, as in the WSOL demo, CAM must learn the body too and
  BAS has nothing to add).
- BAS's background term sees the gap: erasing the part alone leaves the body's stripes in the
  background, which still score for the class, so its map has to spread over the body.
- 2-3 objects an image (classes may repeat), sizes that vary, little overlap (an object may
  hide at most a fifth of another's body and never a part), images of 64-96 px a side.
- Masks mark each object's body (part included) with class + 1 and, as VOC, a void band (255)
  on the objects' outlines: the 1-px inner boundary.
"""

from __future__ import annotations

import inspect
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bas.outputs import build_folder, read_marker
from WSSS.datasets import IGNORE, voc_palette

log = logging.getLogger(__name__)

KIND = "wsss-synthetic"
GENERATOR_VERSION = 2  # recorded in the marker: a change in the drawing rebuilds the sets written before it
CLASS_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")  # named by their part's colour
CLASS_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 90, 250), (245, 205, 30), (200, 60, 220), (40, 210, 220))
DISTRACTOR_COLOURS = ((250, 250, 250), (20, 20, 20), (140, 80, 30), (255, 150, 190))  # no class uses these
STRIPE_ANGLES = (0.0, 90.0, 45.0)  # degrees, one per pair of classes (0-1, 2-3, 4-5)
STRIPE_PERIOD = 6.0  # px
STRIPE_COLOURS = ((225.0, 214.0, 191.0), (70.0, 66.0, 60.0))  # light, dark: the same for every class
SEMI_AXIS = (13.0, 24.0)  # px, the long semi-axis of a body (26-48 px long), before any shrinking
PART_RADIUS = 3.0  # px
PART_REACH = (0.3, 0.75)  # where the part sits: this share of the semi-axes from the body's centre
HIDE_PART = 0.7  # the chance that a second object of a class shows no part
MAX_HIDDEN = 0.2  # the share of a body a later object may cover


def _ellipse(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, a: float, b: float, theta: float) -> np.ndarray:
    u = (xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)
    v = -(xs - cx) * np.sin(theta) + (ys - cy) * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _place(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, bodies: np.ndarray, parts: np.ndarray):
    """A body (ellipse) and its part (disc inside it), placed where it hides at most MAX_HIDDEN of
    the bodies drawn so far and none of their parts; smaller after every 50 failed tries."""
    height, width = xs.shape
    a = rng.uniform(*SEMI_AXIS)
    b = a * rng.uniform(0.55, 0.9)
    theta = rng.uniform(0, np.pi)
    for attempt in range(500):
        shrink = 0.9 ** (attempt // 50)
        sa, sb = max(a * shrink, 7.0), max(b * shrink, 5.0)
        reach = max(sa, sb) + 1
        if 2 * reach >= min(width, height):
            continue
        cx, cy = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
        body = _ellipse(xs, ys, cx, cy, sa, sb, theta)
        if (body & parts).any() or (body & bodies).sum() > MAX_HIDDEN * body.sum():
            continue
        r, angle = rng.uniform(*PART_REACH), rng.uniform(0, 2 * np.pi)
        du, dv = r * sa * np.cos(angle), r * sb * np.sin(angle)
        px, py = cx + du * np.cos(theta) - dv * np.sin(theta), cy + du * np.sin(theta) + dv * np.cos(theta)
        part = ((xs - px) ** 2 + (ys - py) ** 2 <= PART_RADIUS**2) & body
        return body, part
    return None  # no room left: the image keeps the objects it has


def draw(rng: np.random.Generator, num_classes: int, width: int, height: int):
    """One image: (H x W x 3 uint8, H x W uint8 mask, [(class, visible H x W bool), ...])."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = cv2.GaussianBlur(rng.normal(110, 40, (height, width, 3)).astype(np.float32), (0, 0), 1.5)
    for _ in range(3):  # grey clutter lines
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(-width // 3, width // 3)), y0 + int(rng.integers(-height // 3, height // 3))
        grey = float(rng.uniform(60, 170))
        cv2.line(image, (x0, y0), (x1, y1), (grey, grey, grey), 1)
    for _ in range(int(rng.integers(2, 5))):  # distractor discs
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(2.0, 4.0)
        colour = DISTRACTOR_COLOURS[int(rng.integers(len(DISTRACTOR_COLOURS)))]
        image[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2] = colour

    mask = np.zeros((height, width), np.uint8)
    bodies, parts = np.zeros((height, width), bool), np.zeros((height, width), bool)
    owner = np.full((height, width), -1)  # which object each pixel shows
    labels = []
    class_of_pair = {}  # an image holds at most one class of each pair
    for _ in range(int(rng.integers(2, 4))):
        label = int(rng.integers(num_classes))
        label = class_of_pair.setdefault(label // 2, label)
        placed = _place(rng, xs, ys, bodies, parts)
        if placed is None:
            break
        body, part = placed
        phi = np.deg2rad(STRIPE_ANGLES[(label // 2) % len(STRIPE_ANGLES)])
        phase = rng.uniform(0, STRIPE_PERIOD)
        stripes = np.sin(2 * np.pi * (xs * np.cos(phi) + ys * np.sin(phi) + phase) / STRIPE_PERIOD) > 0
        image[body & stripes], image[body & ~stripes] = STRIPE_COLOURS
        if label in labels and rng.uniform() < HIDE_PART:
            part = np.zeros_like(part)  # turned away: the class shows its part on its first object
        image[part] = CLASS_COLOURS[label]
        mask[body] = label + 1
        owner[body] = len(labels)
        bodies |= body
        parts |= part
        labels.append(label)

    # VOC's void band: object pixels with a 4-neighbour of another label.
    padded = np.pad(mask, 1, mode="edge")
    neighbours = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
    outline = (mask > 0) & np.logical_or.reduce([n != mask for n in neighbours])
    mask[outline] = IGNORE

    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, mask, [(label, owner == k) for k, label in enumerate(labels)]


def _annotation(image_id: str, width: int, height: int, objects: list, classes: tuple, segmented: bool) -> ET.Element:
    """VOC's XML: size, and per object its name and box (1-based, inclusive pixel bounds, of
    its visible pixels)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "BAS synthetic"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = str(int(segmented))
    for label, visible in objects:
        rows, cols = np.nonzero(visible)
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = classes[label]
        for tag, value in (("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(element, tag).text = value
        box = ET.SubElement(element, "bndbox")
        for tag, value in (("xmin", cols.min()), ("ymin", rows.min()), ("xmax", cols.max()), ("ymax", rows.max())):
            ET.SubElement(box, tag).text = str(int(value) + 1)
    ET.indent(root, space="\t")
    return root


def _check(num_classes: int, num_train_aug: int, num_train: int, num_val: int, min_size: int, max_size: int) -> None:
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes {num_classes}: the synthetic set has 1 to {len(CLASS_NAMES)} classes")
    if not 1 <= num_train <= num_train_aug or num_val < 1:
        raise ValueError("need 1 <= num_train <= num_train_aug and num_val >= 1")
    if not 64 <= min_size <= max_size:
        raise ValueError(f"image sizes {min_size}..{max_size}: need 64 <= min_size <= max_size (room for 3 objects)")


def make_synthetic_voc(
    root: str | Path,
    num_classes: int = 4,
    num_train_aug: int = 800,
    num_train: int = 100,
    num_val: int = 100,
    min_size: int = 64,
    max_size: int = 96,
    seed: int = 0,
    hint: str = "",
) -> Path:
    """Write the set under ``root`` (a VOCdevkit: ``root/VOC2012/...``), replacing an earlier
    build of ours that holds only the files it wrote; a folder with anything else in it stops
    with ``bas.errors.OutputError`` (``hint`` ends its message when the folder is not ours)
    and is left as it is. Returns ``root``. Images are
    ``min_size``..``max_size`` px a side (each side drawn)."""
    _check(num_classes, num_train_aug, num_train, num_val, min_size, max_size)
    params = dict(
        num_classes=num_classes, num_train_aug=num_train_aug, num_train=num_train, num_val=num_val,
        min_size=min_size, max_size=max_size, seed=seed, version=GENERATOR_VERSION,
    )  # fmt: skip
    classes = CLASS_NAMES[:num_classes]
    palette = voc_palette()

    def write(folder: Path) -> None:
        log.info("writing the demo set (%d images) to %s ...", num_train_aug + num_val, root)
        voc = folder / "VOC2012"
        folders = ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation")
        for name in folders:
            (voc / name).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        ids = [f"2000_{i + 1:06d}" for i in range(num_train_aug + num_val)]
        train_aug, val = ids[:num_train_aug], ids[num_train_aug:]
        train = train_aug[:num_train]
        segmented = set(train) | set(val)
        for image_id in ids:
            width, height = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
            image, mask, objects = draw(rng, num_classes, width, height)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            annotation = _annotation(image_id, width, height, objects, classes, image_id in segmented)
            ET.ElementTree(annotation).write(voc / "Annotations" / f"{image_id}.xml", encoding="utf-8")
            Image.fromarray(mask).save(voc / "SegmentationClassAug" / f"{image_id}.png")  # grayscale, as SBD's
            if image_id in segmented:
                indexed = Image.fromarray(mask)
                indexed.putpalette(palette)  # mode P, VOC's colours
                indexed.save(voc / "SegmentationClass" / f"{image_id}.png")
        lists = {"train_aug": train_aug, "train": train, "val": val, "trainval": train + val}
        for name, listed in lists.items():
            (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in listed))
        (voc / "classes.txt").write_text("".join(f"{name}\n" for name in classes))

    return build_folder(root, KIND, write, hint, params=params)


def ensure_synthetic_voc(root: str | Path, **params) -> Path:
    """The loaders' root (``root/VOC2012``) of the synthetic set with ``params`` (those of
    ``make_synthetic_voc``, ``hint`` included), built on first use and rebuilt only when the
    parameters (or the generator) differ from those the marker records."""
    bound = inspect.signature(make_synthetic_voc).bind(root, **params)
    bound.apply_defaults()
    wanted = {**bound.arguments, "version": GENERATOR_VERSION}
    root = Path(wanted.pop("root"))
    del wanted["hint"]
    marker = read_marker(root)
    if marker is None or marker["kind"] != KIND or marker.get("params") != wanted:
        make_synthetic_voc(root, **params)
    return root / "VOC2012"
