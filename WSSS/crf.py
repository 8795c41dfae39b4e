"""Dense CRFs on an image's colours (pydensecrf): IRN's on hard labels, which makes the IR
labels (stage cam_to_ir_label), and DeepLab's on a segmentation net's probabilities (stage
eval_seg). One mean-field inference serves both. Their kernel widths are in pixels of VOC's
photos (about 500 x 375); ``scale`` multiplies them, so that a kernel reaches as far across
a smaller image.
"""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

# IRN's dense CRF (misc/imutils.crf_inference_label), as BAS keeps it: the argmax labels
# are trusted with probability 0.7 (the rest spread over the other labels), a smoothness
# kernel (3 px, weight 3) and an appearance kernel (50 px, colour 5, weight 10) pull
# neighbours of like colour to one label, 10 mean-field iterations.
IRN_GT_PROB = 0.7
IRN_SMOOTH = {"sxy": 3, "compat": 3}
IRN_APPEARANCE = {"sxy": 50, "srgb": 5, "compat": 10}
IRN_ITERATIONS = 10
# DeepLab's dense CRF on VOC (DeepLab v2's cross-validated values, as kazuto1011/deeplab-pytorch
# ships them): a smoothness kernel (1 px, weight 3), an appearance kernel (67 px, colour 3,
# weight 4), 10 mean-field iterations, on the net's probabilities.
DEEPLAB_SMOOTH = {"sxy": 1, "compat": 3}
DEEPLAB_APPEARANCE = {"sxy": 67, "srgb": 3, "compat": 4}
DEEPLAB_ITERATIONS = 10


def dense_crf(
    image: np.ndarray, unary: np.ndarray, smooth: dict, appearance: dict, iterations: int, scale: float = 1.0
) -> np.ndarray:
    """Mean-field marginals of a dense CRF on an image (pydensecrf): H x W x 3 uint8 (RGB),
    L x (H * W) float32 unary energies, the two kernels' parameters -> L x H x W float32.
    ``scale`` multiplies both kernels' widths in pixels (``sxy``)."""
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, len(unary))
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(**{**smooth, "sxy": smooth["sxy"] * scale})
    rgb = np.array(image, dtype=np.uint8, order="C")  # a writable copy: pydensecrf takes no read-only buffer
    crf.addPairwiseBilateral(rgbim=rgb, **{**appearance, "sxy": appearance["sxy"] * scale})
    return np.asarray(crf.inference(iterations)).reshape(len(unary), height, width)


def crf_labels(image: np.ndarray, labels: np.ndarray, num_labels: int, scale: float = 1.0) -> np.ndarray:
    """IRN's CRF of hard labels on an image: H x W x 3 uint8 (RGB), H x W labels in
    [0, num_labels) -> H x W int64 refined labels (the first of equal marginals)."""
    unary = unary_from_labels(labels, num_labels, gt_prob=IRN_GT_PROB, zero_unsure=False)
    return dense_crf(image, unary, IRN_SMOOTH, IRN_APPEARANCE, IRN_ITERATIONS, scale).argmax(axis=0)


def crf_refine(image: np.ndarray, probs: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """DeepLab's dense CRF of class probabilities on the image: H x W x 3 uint8 (RGB),
    C x H x W -> C x H x W float32 marginals; ``scale`` times its kernels' widths."""
    unary = unary_from_softmax(probs.astype(np.float32))  # C x (H * W) energies
    return dense_crf(image, unary, DEEPLAB_SMOOTH, DEEPLAB_APPEARANCE, DEEPLAB_ITERATIONS, scale)
