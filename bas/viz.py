"""Pictures for looking at what a net does: heat-map overlays with boxes (WSOL), strips of
label maps side by side (WSSS)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from bas.outputs import replace_atomic

GREEN, RED, WHITE = (0, 255, 0), (255, 0, 0), (255, 255, 255)  # RGB: predicted box, ground-truth boxes, text
DISPLAY_SIZE = 256  # smaller images are enlarged to at least this (whole multiples), so that they can be read


def overlay(
    image: np.ndarray,
    score_map: np.ndarray,
    predicted: np.ndarray | None = None,
    ground_truth: np.ndarray = (),
    caption: str = "",
) -> np.ndarray:
    """Blend a jet-coloured map over an image, draw the boxes, and write ``caption`` and the
    boxes' legend in a band below.

    image: H x W x 3 uint8 RGB; score_map: H x W in [0, 1]; boxes (x0, y0, x1, y1) in
    the image's pixels. An image smaller than DISPLAY_SIZE is enlarged by a whole factor
    (pixels repeated, boxes scaled). Returns H' x W' x 3 uint8 RGB.
    """
    factor = max(1, -(-DISPLAY_SIZE // min(image.shape[:2])))  # ceil
    height, width = image.shape[0] * factor, image.shape[1] * factor
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
    score_map = cv2.resize(np.float32(score_map), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(score_map, 0, 1)), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(image, 0.5, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.5, 0)
    thickness = max(1, round(min(height, width) / 112))

    def draw(box, colour) -> None:
        x0, y0, x1, y1 = (int(v * factor) for v in box)
        cv2.rectangle(blended, (x0, y0), (x1, y1), colour, thickness)

    for box in ground_truth:
        draw(box, RED)
    if predicted is not None:
        draw(predicted, GREEN)
    return np.concatenate([blended, _legend(width, caption, len(ground_truth) > 0)])


def _legend(width: int, caption: str, with_ground_truth: bool) -> np.ndarray:
    """A black band: the caption, then "predicted" in green (and "ground truth" in red)."""
    font, scale, line = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 18
    band = np.zeros((2 * line + 6, width, 3), np.uint8)
    cv2.putText(band, caption, (4, line - 4), font, scale, WHITE, 1, cv2.LINE_AA)
    cv2.putText(band, "predicted", (4, 2 * line), font, scale, GREEN, 1, cv2.LINE_AA)
    if with_ground_truth:
        offset = 8 + cv2.getTextSize("predicted", font, scale, 1)[0][0]
        cv2.putText(band, "ground truth", (offset, 2 * line), font, scale, RED, 1, cv2.LINE_AA)
    return band


def strip(panels: list[tuple[str, np.ndarray]], gap: int = 4) -> np.ndarray:
    """Pictures of one image side by side, each captioned below: (caption, H x W x 3 uint8
    RGB) pairs of one size -> one H' x W' x 3 uint8 RGB picture, enlarged as ``overlay``."""
    height, width = panels[0][1].shape[:2]
    factor = max(1, -(-DISPLAY_SIZE // min(height, width)))  # ceil
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    columns = []
    for caption, picture in panels:
        enlarged = cv2.resize(picture, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
        band = np.zeros((24, width * factor, 3), np.uint8)
        cv2.putText(band, caption, (4, 16), font, scale, WHITE, 1, cv2.LINE_AA)
        columns += [np.concatenate([enlarged, band]), np.zeros((height * factor + 24, gap, 3), np.uint8)]
    return np.concatenate(columns[:-1], axis=1)


def save_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write a PNG (or any format cv2 knows by the suffix), atomically."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")

    def write(fd: int) -> None:
        with open(fd, "wb") as f:
            f.write(encoded.tobytes())

    replace_atomic(write, path)
