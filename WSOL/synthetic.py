"""The embedded demo set: small synthetic images written in the CUB-200-2011 release format.

Each image holds one elliptic object on a cluttered background. Its body carries a
stripe texture whose orientation is shared by pairs of classes (weakly
discriminative); a small disc on the body has the class colour (highly
discriminative). Small distractor discs in the class colours sit in the background,
so the disc counts only on a striped body: CAM learns to cover the body too, and the
set checks the pipeline end to end rather than showing BAS's gain over CAM.

Boxes follow CUB: an object covering columns a..b and rows c..d (inclusive) is written
as ``x=a y=c width=b-a+1 height=d-c+1``, i.e. x + width is one past the last pixel.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bas.outputs import build_folder, read_marker

# Class colours (RGB) of the discriminative disc; classes beyond these reuse them darker.
COLOURS = ((230, 40, 40), (40, 200, 60), (50, 90, 250), (245, 205, 30), (200, 60, 220), (40, 210, 220))
STRIPE_ANGLES = (0.0, 90.0, 45.0, 135.0)  # degrees, one per pair of classes


def class_colour(label: int) -> np.ndarray:
    base = np.array(COLOURS[label % len(COLOURS)], dtype=np.float32)
    return base * 0.6 ** (label // len(COLOURS))


def draw(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (size x size x 3 uint8) and its object mask (size x size bool)."""
    scale = size / 64
    # Background: smoothed noise plus a few grey bars of clutter.
    background = cv2.GaussianBlur(rng.normal(110, 40, (size, size, 3)).astype(np.float32), (0, 0), 1.5 * scale)
    for _ in range(3):
        x0, y0 = rng.integers(0, size, 2)
        x1, y1 = np.clip(np.array([x0, y0]) + rng.integers(-size // 3, size // 3, 2), 0, size - 1)
        grey = float(rng.uniform(60, 170))
        cv2.line(background, (int(x0), int(y0)), (int(x1), int(y1)), (grey, grey, grey), max(1, round(scale)))
    image = background

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(3):  # distractor discs in random class colours
        cx, cy = rng.uniform(0, size, 2)
        disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= (2.5 * scale) ** 2
        image[disc] = class_colour(int(rng.integers(0, len(COLOURS))))

    # The object: an ellipse 18-34 px long (at 64 px), rotated, anywhere it fits.
    a, b = rng.uniform(9, 17, 2) * scale
    theta = rng.uniform(0, np.pi)
    reach = max(a, b) + 1
    cx, cy = rng.uniform(reach, size - reach, 2)
    u = (xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)
    v = -(xs - cx) * np.sin(theta) + (ys - cy) * np.cos(theta)
    body = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    phi = np.deg2rad(STRIPE_ANGLES[(label // 2) % len(STRIPE_ANGLES)])
    stripes = np.sin(2 * np.pi * (xs * np.cos(phi) + ys * np.sin(phi)) / (5 * scale)) > 0
    texture = np.where(stripes, 225.0, 70.0)[..., None] * np.array([1.0, 0.95, 0.85], dtype=np.float32)
    image[body] = texture[body]

    # The class disc, somewhere inside the body.
    r, angle = rng.uniform(0, 0.5), rng.uniform(0, 2 * np.pi)
    du, dv = r * a * np.cos(angle), r * b * np.sin(angle)
    dx, dy = du * np.cos(theta) - dv * np.sin(theta), du * np.sin(theta) + dv * np.cos(theta)
    disc = ((xs - cx - dx) ** 2 + (ys - cy - dy) ** 2 <= (3 * scale) ** 2) & body
    image[disc] = class_colour(label)

    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, body


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """CUB's x, y, width, height of a mask's extent (x + width is one past the last pixel)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


KIND = "WSOL synthetic set"


def make_synthetic(
    root: Path,
    num_classes: int = 4,
    num_train: int = 3000,
    num_test: int = 400,
    size: int = 64,
    seed: int = 0,
    hint: str = "",
) -> Path:
    """Write the set under ``root`` (into a temporary sibling, renamed when complete).

    ``root`` must be absent, empty, or this project's own synthetic set: any other folder
    stops with ``bas.errors.OutputError`` (``hint`` ends its message) and is left as it is.
    """
    params = dict(num_classes=num_classes, num_train=num_train, num_test=num_test, size=size, seed=seed)

    def write(folder: Path) -> None:
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
    """``root`` holding a synthetic set of ours (used as it is), else the default set written
    there on first use; any other folder stops as ``make_synthetic`` says."""
    marker = read_marker(root)
    if marker is not None and marker["kind"] == KIND:
        return Path(root)
    return make_synthetic(root, hint=hint)
