"""The embedded demo set: synthetic images written in the CUB-200-2011 release format.

Why it looks the way it does: the demo must show what BAS is for, as on real images where
a bird's head names the species and its body does not. A CAM fires on the small
discriminative part; BAS, whose background term sees the evidence the part leaves behind,
covers the whole object. (Sizes below are those of the demo's 96 px images; the drawing
scales with ``size``.)

- One object an image: a large elliptic body, 39-72 px long, larger than what the class
  map's receptive field (about 54 px, a blob of some 40 px around a point) sees at once and
  larger than such a blob, so a CAM that fires on one spot cannot box the whole object. (In
  the earlier 64 px images a blob around any spot of the body covered most of it, and CAM
  boxed the objects as well as BAS.)
- Its stripe texture has an orientation shared by a pair of classes: the body is evidence,
  but weak (it cannot tell the two classes of its pair apart).
- On the body, away from its centre (0.45-0.8 of the way to the rim), sits one small part,
  a disc of radius 4.5 px (2-10 % of the body) whose colour alone names the class. The
  part is the cheapest evidence, so a classifier's CAM peaks on it and stays weak on most of
  the body: its box lands around one end of the object.
- Background distractors (small discs) come in colours no class uses, and grey clutter lines
  cross the background: nothing but a part carries a class colour, so the part is enough.
  (With distractors in the class colours, as an earlier version drew them, the classifier
  must learn the body, CAM covers it, and BAS has nothing to add.)
- BAS's background term sees the gap: erasing the part alone leaves the body's stripes in
  the background, which still score for the class, so its map has to spread over the body.

Boxes follow CUB: an object covering columns a..b and rows c..d (inclusive) is written
as ``x=a y=c width=b-a+1 height=d-c+1``, i.e. x + width is one past the last pixel.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bas.outputs import build_folder, read_marker

log = logging.getLogger(__name__)

KIND = "WSOL synthetic set"
GENERATOR_VERSION = 2  # recorded in the marker: a change in the drawing rebuilds the sets written before it
# Class colours (RGB) of the discriminative part; classes beyond these reuse them darker.
COLOURS = ((230, 40, 40), (40, 200, 60), (50, 90, 250), (245, 205, 30), (200, 60, 220), (40, 210, 220))
DISTRACTOR_COLOURS = ((250, 250, 250), (20, 20, 20), (140, 80, 30), (255, 150, 190))  # no class uses these
STRIPE_ANGLES = (0.0, 90.0, 45.0, 135.0)  # degrees, one per pair of classes
# Sizes in px at 64 px; a size x size image draws them size / 64 times larger.
STRIPE_PERIOD = 6.0
STRIPE_COLOURS = ((225.0, 214.0, 191.0), (70.0, 66.0, 60.0))  # light, dark: the same for every class
SEMI_AXIS = (13.0, 24.0)  # the long semi-axis of a body (26-48 px long, 39-72 at 96 px)
ASPECT = (0.55, 0.9)  # short / long semi-axis
PART_RADIUS = 3.0
PART_REACH = (0.45, 0.8)  # where the part sits: this share of the semi-axes from the body's centre
DISTRACTORS = (2, 5)  # distractor discs an image: from .. to (exclusive)


def class_colour(label: int) -> np.ndarray:
    base = np.array(COLOURS[label % len(COLOURS)], dtype=np.float32)
    return base * 0.6 ** (label // len(COLOURS))


def draw(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (size x size x 3 uint8) and its object mask (size x size bool)."""
    scale = size / 64
    # Background: smoothed noise plus a few grey bars of clutter.
    image = cv2.GaussianBlur(rng.normal(110, 40, (size, size, 3)).astype(np.float32), (0, 0), 1.5 * scale)
    for _ in range(3):
        x0, y0 = rng.integers(0, size, 2)
        x1, y1 = np.clip(np.array([x0, y0]) + rng.integers(-size // 3, size // 3, 2), 0, size - 1)
        grey = float(rng.uniform(60, 170))
        cv2.line(image, (int(x0), int(y0)), (int(x1), int(y1)), (grey, grey, grey), max(1, round(scale)))

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(*DISTRACTORS))):  # distractor discs, in colours no class uses
        cx, cy, radius = *rng.uniform(0, size, 2), rng.uniform(2.0, 4.0) * scale
        colour = DISTRACTOR_COLOURS[int(rng.integers(len(DISTRACTOR_COLOURS)))]
        image[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2] = colour

    # The object: a rotated ellipse, anywhere it fits.
    a = rng.uniform(*SEMI_AXIS) * scale
    b = a * rng.uniform(*ASPECT)
    theta = rng.uniform(0, np.pi)
    reach = a + 1
    cx, cy = rng.uniform(reach, size - reach, 2)
    u = (xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)
    v = -(xs - cx) * np.sin(theta) + (ys - cy) * np.cos(theta)
    body = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    phi = np.deg2rad(STRIPE_ANGLES[(label // 2) % len(STRIPE_ANGLES)])
    phase = rng.uniform(0, STRIPE_PERIOD)
    stripes = np.sin(2 * np.pi * ((xs * np.cos(phi) + ys * np.sin(phi)) / scale + phase) / STRIPE_PERIOD) > 0
    image[body & stripes], image[body & ~stripes] = STRIPE_COLOURS

    # The class part, off the body's centre.
    r, angle = rng.uniform(*PART_REACH), rng.uniform(0, 2 * np.pi)
    du, dv = r * a * np.cos(angle), r * b * np.sin(angle)
    dx, dy = du * np.cos(theta) - dv * np.sin(theta), du * np.sin(theta) + dv * np.cos(theta)
    part = ((xs - cx - dx) ** 2 + (ys - cy - dy) ** 2 <= (PART_RADIUS * scale) ** 2) & body
    image[part] = class_colour(label)

    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, body


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """CUB's x, y, width, height of a mask's extent (x + width is one past the last pixel)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def make_synthetic(
    root: Path,
    num_classes: int = 4,
    num_train: int = 2000,
    num_test: int = 400,
    size: int = 96,
    seed: int = 0,
    hint: str = "",
) -> Path:
    """Write the set under ``root`` (into a temporary sibling, renamed when complete).

    ``root`` must be absent, empty, or this project's own synthetic set holding only the
    files it wrote: any other folder stops with ``bas.errors.OutputError`` (``hint`` ends
    its message when the folder is not ours) and is left as it is.
    """
    params = dict(
        num_classes=num_classes, num_train=num_train, num_test=num_test, size=size, seed=seed,
        version=GENERATOR_VERSION,
    )  # fmt: skip

    def write(folder: Path) -> None:
        log.info("writing the demo set (%d images) to %s ...", num_train + num_test, root)
        class_dirs = [f"{c + 1:03d}.Class_{c + 1}" for c in range(num_classes)]
        for class_dir in class_dirs:
            (folder / "images" / class_dir).mkdir(parents=True)
            (folder / "segmentations" / class_dir).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        lists = {name: [] for name in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
        for i in range(num_train + num_test):
            image_id, label = i + 1, i % num_classes
            image, mask = draw(rng, label, size)
            name = f"{class_dirs[label]}/img_{image_id:05d}"
            Image.fromarray(image).save(folder / "images" / f"{name}.jpg", quality=95)
            Image.fromarray(np.uint8(mask) * 255).save(folder / "segmentations" / f"{name}.png")
            x, y, w, h = tight_box(mask)
            lists["images"].append(f"{image_id} {name}.jpg")
            lists["image_class_labels"].append(f"{image_id} {label + 1}")
            lists["train_test_split"].append(f"{image_id} {int(i < num_train)}")
            lists["bounding_boxes"].append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
        for name, lines in lists.items():
            (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
        (folder / "classes.txt").write_text("".join(f"{c + 1} {d}\n" for c, d in enumerate(class_dirs)))

    return build_folder(root, KIND, write, hint, params=params)


def ensure_synthetic(root: Path, hint: str = "") -> Path:
    """``root`` holding a synthetic set of this generator's version (used as it is, whatever
    its size), else the default set written there: on first use, or over a set an earlier
    version drew; any other folder stops as ``make_synthetic`` says."""
    marker = read_marker(root)
    current = marker is not None and marker["kind"] == KIND
    if current and (marker.get("params") or {}).get("version") == GENERATOR_VERSION:
        return Path(root)
    return make_synthetic(root, hint=hint)
