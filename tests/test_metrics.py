"""Metrics: hand-made cases with known answers, and the vectorized code against plain
per-image, per-threshold versions written here."""

from collections import deque

import cv2
import numpy as np
import pytest

from WSOL import metrics


# ----------------------------------------------------------- plain reference versions
def plain_iou(a, b):
    """The original IoU.py formula, one pair at a time."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / union if union > 0 else 0.0


def plain_largest_component_box(binary):
    """Flood fill (8-connectivity) in row-major order; the largest component, ties to the
    first met; its box with the max one past the last pixel; none -> the whole map."""
    h, w = binary.shape
    labels = np.zeros((h, w), dtype=int)
    sizes = []
    for r in range(h):
        for c in range(w):
            if binary[r, c] and not labels[r, c]:
                sizes.append(0)
                labels[r, c] = len(sizes)
                queue = deque([(r, c)])
                while queue:
                    y, x = queue.popleft()
                    sizes[-1] += 1
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = y + dy, x + dx
                            if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not labels[ny, nx]:
                                labels[ny, nx] = len(sizes)
                                queue.append((ny, nx))
    if not sizes:
        return [0, 0, w, h]
    best = 1 + max(range(len(sizes)), key=lambda i: (sizes[i], -i))
    rows, cols = np.nonzero(labels == best)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def plain_maxboxacc_correct(raw, gt_boxes, iou_threshold):
    """wsolevaluation's steps for one map, one CAM threshold at a time."""
    resized = cv2.resize(raw.astype(np.float32), (224, 224), interpolation=cv2.INTER_CUBIC)
    score_map = metrics.normalize_scoremap(resized)
    image = (score_map * 255).astype(np.uint8)
    out = []
    for t in metrics.CAM_THRESHOLDS:
        _, binary = cv2.threshold(image, int(t * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append([x, y, min(x + w, 223), min(y + h, 223)])
        boxes = boxes or [[0, 0, 0, 0]]
        out.append(max(plain_iou(b, g) for b in boxes for g in gt_boxes) >= iou_threshold / 100)
    return np.array(out)


def smooth_maps(n, seed, size=28):
    """Random blobs: low-resolution noise upsampled, the kind of map a generator gives."""
    rng = np.random.default_rng(seed)
    return metrics.resize_maps(rng.random((n, 7, 7)).astype(np.float32), size) ** 3


# ------------------------------------------------------------------- hand-made cases
def test_iou_plus_one_convention():
    assert metrics.box_iou(np.array([0, 0, 9, 9]), np.array([[0, 0, 9, 9]]))[0] == 1.0
    # 10x10 boxes overlapping in a 5x10 strip: 50 / (100 + 100 - 50)
    assert metrics.box_iou(np.array([0, 0, 9, 9]), np.array([[5, 0, 14, 9]]))[0] == pytest.approx(1 / 3)
    assert metrics.box_iou(np.array([0, 0, 9, 9]), np.array([[20, 20, 29, 29]]))[0] == 0.0


def test_best_of_several_gt_boxes_counts():
    score_map = np.zeros((1, 28, 28), dtype=np.float32)
    score_map[0, 2:12, 2:12] = 1.0
    gt = [np.array([[100, 100, 200, 200], [16, 16, 95, 95]])]
    best, boxes = metrics.original_protocol_ious(score_map, gt, [0.5])
    expected = max(plain_iou(boxes[0, 0], g) for g in gt[0])
    assert best[0, 0] == expected and expected > 0.8


def test_flat_map_gives_the_whole_crop():
    best, boxes = metrics.original_protocol_ious(np.ones((1, 28, 28)), [np.array([[0, 0, 223, 223]])], [0.1])
    assert boxes[0, 0].tolist() == [0, 0, 224, 224]
    assert best[0, 0] == pytest.approx(224 * 224 / 225**2)  # the exclusive max scored with +1


def test_threshold_is_strict_and_box_max_is_exclusive():
    score_map = np.zeros((6, 6))
    score_map[1:3, 2:5] = 0.5
    score_map[4, 0] = 0.2
    assert metrics.largest_component_boxes(score_map[None], [0.5])[0, 0].tolist() == [0, 0, 6, 6]  # none > 0.5
    assert metrics.largest_component_boxes(score_map[None], [0.4])[0, 0].tolist() == [2, 1, 5, 3]
    assert metrics.largest_component_boxes(score_map[None], [0.4], inclusive=True)[0, 0].tolist() == [2, 1, 4, 2]


def test_tie_goes_to_the_component_met_first_in_row_major_order():
    binary = np.zeros((6, 8), dtype=bool)
    binary[1, 6:8] = True  # met first (row 1), two pixels
    binary[2, 0:2] = True  # same size, met later
    assert metrics.largest_component_box(binary).tolist() == [6, 1, 8, 2]
    assert plain_largest_component_box(binary) == [6, 1, 8, 2]


def test_runs_touching_at_a_corner_are_one_component():
    binary = np.zeros((4, 7), dtype=bool)
    binary[0, 0:2] = True  # two pixels
    binary[1, 2] = True  # touches (0, 1) at a corner only: the same component, three pixels
    binary[3, 4:7] = True  # three pixels too, met later
    assert metrics.largest_component_box(binary).tolist() == [0, 0, 3, 2]
    binary[1, 2], binary[1, 3] = False, True  # a column further: no contact, the later run wins
    assert metrics.largest_component_box(binary).tolist() == [4, 3, 7, 4]


def test_best_iou_over_gt_boxes_of_each_image():
    boxes = np.array([[[0, 0, 9, 9], [0, 0, 4, 9]], [[5, 0, 14, 9], [0, 0, 0, 0]]])  # N=2 x T=2
    gt = [np.array([[0, 0, 9, 9], [20, 20, 29, 29]]), np.zeros((0, 4)), np.array([[0, 0, 9, 9]])]
    best = metrics.best_gt_iou(np.concatenate([boxes, boxes[:1]]), gt)
    assert best[0].tolist() == [1.0, 0.5] and best[2].tolist() == [1.0, 0.5]
    assert best[1].tolist() == [0.0, 0.0]  # no GT box: never localized


def test_boxes_in_crop_hand_made():
    # 512 x 256 image: scale 0.5 x 1 to 256 x 256, shift 16, clip to [0, 223], truncate.
    boxes = metrics.boxes_in_crop(np.array([[10.0, 20.0, 500.0, 250.0]]), (512, 256))
    assert boxes.tolist() == [[0, 4, 223, 223]]
    assert metrics.boxes_resized(np.array([[10.0, 20.0, 500.0, 250.0]]), (512, 256)).tolist() == [[4, 17, 218, 218]]


def test_maxboxacc_flat_map_and_counts():
    correct = metrics.maxboxacc_correct(np.ones((1, 28, 28)), [np.array([[0, 0, 223, 223]])])
    assert not correct.any()  # a flat map becomes zeros: no contour, box [0, 0, 0, 0]
    counts = np.zeros((1000, 3))
    counts[10] = [4, 2, 1]
    report = metrics.maxboxacc_from_counts(counts, 4)
    assert report["IoU30"] == 100 and report["IoU50"] == 50 and report["IoU70"] == 25
    assert report["MaxBoxAccV2"] == pytest.approx(175 / 3)


def test_pxap_and_piou_hand_made():
    fg = np.zeros((1, 4, 4), dtype=bool)
    fg[0, :2] = True
    perfect = fg.astype(np.float32)
    assert metrics.pxap(*metrics.pixel_histograms(perfect, fg)) == pytest.approx(100)
    assert metrics.piou(*metrics.pixel_histograms(perfect, fg)) == pytest.approx(100)
    # scores: fg pixels 0.9 and 0.3 (4 each), bg 0.6 (8): thresholds give
    # recall 0.5 at precision 1, then recall 0.5 at 1/3, then recall 1 at 1/2.
    scores = np.where(fg, 0.3, 0.6).astype(np.float32)
    scores[0, 0] = 0.9
    fg_hist, bg_hist = metrics.pixel_histograms(scores, fg)
    assert metrics.pxap(fg_hist, bg_hist) == pytest.approx(100 * (0.5 * 1 + 0.5 * 0.5))
    assert metrics.piou(fg_hist, bg_hist) == pytest.approx(100 * 0.5)  # 4 / 8 at 0.9, 4 / 12 at 0.6, 8 / 16


def test_ignored_pixels_are_left_out():
    fg = np.zeros((1, 4, 4), dtype=bool)
    fg[0, 0] = True
    ignore = np.zeros_like(fg)
    ignore[0, 1] = True
    fg_hist, bg_hist = metrics.pixel_histograms(np.full((1, 4, 4), 0.5, np.float32), fg, ignore)
    assert fg_hist.sum() == 4 and bg_hist.sum() == 8


# --------------------------------------------------------- vectorized == plain loops
def test_largest_component_boxes_equal_flood_fill():
    maps = metrics.resize_maps(metrics.normalize_minmax(smooth_maps(12, seed=3)), 56)
    thresholds = [0.05, 0.2, 0.35, 0.5, 0.8]
    boxes = metrics.largest_component_boxes(maps, thresholds)
    for n, m in enumerate(maps):
        for i, t in enumerate(thresholds):
            assert boxes[n, i].tolist() == plain_largest_component_box(m > t)


def test_largest_component_boxes_equal_flood_fill_on_pixel_noise():
    """Many components, equal sizes, contacts at a corner only, on the borders, a map with no
    foreground; the maps taken one, four and all at a time."""
    maps = np.random.default_rng(8).random((11, 9, 13))
    maps[4] = 0
    thresholds = [0.3, 0.6, 0.9]
    for chunk in (1, 4, 16):
        for inclusive in (False, True):
            boxes = metrics.largest_component_boxes(maps, thresholds, inclusive, chunk=chunk)
            for n, m in enumerate(maps):
                for i, t in enumerate(thresholds):
                    expected = plain_largest_component_box(m > t)
                    if inclusive and m.max() > t:
                        expected = expected[:2] + [expected[2] - 1, expected[3] - 1]
                    assert boxes[n, i].tolist() == expected, (chunk, n, t)


def test_original_protocol_equals_plain_loop():
    maps = smooth_maps(8, seed=4)
    rng = np.random.default_rng(4)
    gt = [
        np.sort(rng.integers(0, 224, (k, 4)).reshape(k, 2, 2), axis=1).transpose(0, 2, 1).reshape(k, 4)
        for k in (1, 2, 3) * 3
    ][:8]
    thresholds = [0.1, 0.3, 0.6]
    best, boxes = metrics.original_protocol_ious(maps, gt, thresholds)
    for n in range(8):
        for i in range(3):
            assert best[n, i] == max(plain_iou(boxes[n, i], g) for g in gt[n])


def test_maxboxacc_equals_plain_loop_over_1000_thresholds():
    noisy = np.random.default_rng(6).random((2, 28, 28)).astype(np.float32)  # many blobs and holes, on the borders
    maps = np.concatenate([smooth_maps(4, seed=5), noisy])
    gt = [np.array([[20, 30, 120, 150]]), np.array([[0, 0, 223, 223]]), np.array([[100, 10, 200, 90], [5, 5, 60, 60]])]
    gt += [np.array([[50, 50, 170, 170]]), np.array([[0, 100, 40, 223]]), np.array([[180, 0, 223, 30]])]
    correct = metrics.maxboxacc_correct(maps, gt)
    for n in range(len(maps)):
        for i, iou in enumerate(metrics.IOU_THRESHOLDS):
            assert np.array_equal(correct[n, :, i], plain_maxboxacc_correct(maps[n], gt[n], iou))


def test_contours_traced_in_the_level_rectangle_equal_whole_map_contours():
    rng = np.random.default_rng(7)
    quantized = (metrics.resize_maps(rng.random((1, 14, 14)).astype(np.float32), 224)[0] * 255).astype(np.uint8)
    quantized[:, :3] = 0  # foreground away from one border, on the others
    levels = np.unique(quantized)[:-1]
    contours, counts = metrics.contours_by_level(quantized, levels)
    boxes = np.split(metrics.contour_boxes(contours, 224, 224), np.cumsum(counts)[:-1])
    for level, level_boxes in zip(levels, boxes):
        whole = cv2.findContours(np.uint8(quantized > level) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        expected = metrics.contour_boxes(whole, 224, 224)
        assert sorted(map(tuple, level_boxes)) == sorted(map(tuple, expected)), level


def test_level_extents_hand_made():
    quantized = np.zeros((5, 6), dtype=np.uint8)
    quantized[1, 2], quantized[3, 4] = 9, 5
    extents = metrics.level_extents(quantized, np.array([0, 4, 5, 8, 9]))
    assert extents[:2].tolist() == [[2, 1, 4, 3]] * 2  # pixels > 0 and > 4: both
    assert extents[2:4].tolist() == [[2, 1, 2, 1]] * 2  # > 5 and > 8: the 9 only
    assert extents[4, 0] > extents[4, 2]  # nothing above 9


def test_histograms_add_over_images():
    maps = metrics.resize_maps(metrics.normalize_minmax(smooth_maps(3, seed=6)), 32)
    fg = maps > 0.5
    whole = metrics.pixel_histograms(maps, fg)
    parts = [metrics.pixel_histograms(maps[i : i + 1], fg[i : i + 1]) for i in range(3)]
    assert np.array_equal(whole[0], sum(p[0] for p in parts)) and np.array_equal(whole[1], sum(p[1] for p in parts))


def test_real_openimages_masks(shared_dir):
    folder = shared_dir / "data" / "wsolevaluation" / "test_data" / "test_masks" / "val" / "0by6g"
    masks = sorted(folder.glob("b4d953e7105da1d8_m*.png"))
    fg, ignore = metrics.load_mask(masks, folder / "b4d953e7105da1d8_ignore.png")
    assert fg.shape == (224, 224) and fg.any() and not (fg & ignore).any()
    fg_hist, bg_hist = metrics.pixel_histograms(fg[None].astype(np.float32), fg[None], ignore[None])
    assert metrics.pxap(fg_hist, bg_hist) == pytest.approx(100)
