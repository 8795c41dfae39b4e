"""Heat-map overlays with boxes, for looking at what a generator localizes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

GREEN, RED = (0, 255, 0), (255, 0, 0)  # RGB: predicted box, ground-truth boxes


def overlay(
    image: np.ndarray,
    score_map: np.ndarray,
    predicted: np.ndarray | None = None,
    ground_truth: np.ndarray = (),
) -> np.ndarray:
    """Blend a jet-coloured map over an image and draw the boxes.

    image: H x W x 3 uint8 RGB; score_map: H x W in [0, 1]; boxes (x0, y0, x1, y1) in
    the image's pixels. Returns H x W x 3 uint8 RGB.
    """
    heat = cv2.applyColorMap(np.uint8(255 * np.clip(score_map, 0, 1)), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(image, 0.5, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.5, 0)
    thickness = max(1, round(min(image.shape[:2]) / 112))
    for box in ground_truth:
        x0, y0, x1, y1 = (int(v) for v in box)
        cv2.rectangle(blended, (x0, y0), (x1, y1), RED, thickness)
    if predicted is not None:
        x0, y0, x1, y1 = (int(v) for v in predicted)
        cv2.rectangle(blended, (x0, y0), (x1, y1), GREEN, thickness)
    return blended


def save_rgb(path: str | Path, image: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
