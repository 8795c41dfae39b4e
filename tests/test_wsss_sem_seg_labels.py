"""Stage make_sem_seg_labels: the pseudo mask of hand-made boundaries and seeds, against the
original's procedure on the plain dense walk; the stage on a small synthetic VOC set."""

import argparse
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_wsss_randomwalk import dense_random_walk

from bas.errors import DatasetError, OutputError
from WSSS import datasets
from WSSS.irn import build_irn
from WSSS.seeds import write_seed
from WSSS.steps.make_sem_seg_labels import make_pseudo_masks, pseudo_mask, run
from WSSS.synthetic import make_synthetic_voc


def original_pseudo_mask(edge, cams, keys, size, bg_thres, power, beta, exp_times):
    """IRN's make_sem_seg_labels for one image with BAS's power, on the dense walk."""
    walked = dense_random_walk(cams.double() ** power, edge.double(), 5, beta, exp_times)  # K x h x w
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, : size[0], : size[1]]
    up = up / torch.max(up)
    with_bg = F.pad(up, (0, 0, 0, 0, 1, 0), value=bg_thres)
    return np.pad(keys + 1, (1, 0))[torch.argmax(with_bg, 0).numpy()]


def ring_edge(h, w):
    """Boundaries (1) on a closed ring around the middle of an h x w map, 0 elsewhere."""
    edge = torch.zeros(h, w)
    edge[2:-2, 2:-2] = 1
    edge[3:-3, 3:-3] = 0
    return edge


def test_a_closed_boundary_keeps_the_class_inside():
    edge = ring_edge(12, 14)
    cams = torch.zeros(1, 12, 14)
    cams[0, 6, 7] = 1.0  # sure at the centre only
    mask = pseudo_mask(edge, cams, np.array([3]), (46, 54), bg_thres=0.22, exp_times=4)
    assert mask.dtype == np.uint8 and mask.shape == (46, 54)
    assert set(np.unique(mask)) == {0, 4}
    assert (mask[16:30, 16:38] == 4).all()  # inside the ring: the walk fills it
    assert (mask[:6] == 0).all() and (mask[:, :6] == 0).all()  # outside: nothing crossed the ring


def test_without_boundaries_the_class_spreads_everywhere():
    cams = torch.zeros(2, 8, 8)
    cams[0, 1, 1] = 1.0
    cams[1, 6, 6] = 0.2
    mask = pseudo_mask(torch.zeros(8, 8), cams, np.array([0, 5]), (30, 31), bg_thres=0.22)
    assert (mask == 1).all()  # the stronger class wins wherever the walk has flattened both


@pytest.mark.parametrize("power, bg_thres", [(1.5, 0.22), (1.0, 0.25)])
def test_equals_the_original_on_the_dense_walk(power, bg_thres):
    generator = torch.Generator().manual_seed(0)
    edge = (torch.rand(10, 13, generator=generator) ** 3) * (1 - ring_edge(10, 13)) + ring_edge(10, 13) * 0.9
    cams = torch.rand(3, 10, 13, generator=generator) ** 4
    keys = np.array([0, 4, 7])
    ours = pseudo_mask(edge, cams, keys, (38, 50), bg_thres, power, beta=10, exp_times=3)
    theirs = original_pseudo_mask(edge, cams, keys, (38, 50), bg_thres, power, beta=10, exp_times=3)
    assert (ours == theirs).mean() >= 0.999
    assert set(np.unique(ours)) <= {0, 1, 5, 8}


def test_no_class_is_background():
    assert (pseudo_mask(torch.rand(5, 6), torch.zeros(0, 5, 6), np.zeros(0, np.int64), (20, 21), 0.22) == 0).all()


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sem_seg")
    return make_synthetic_voc(folder / "Synthetic", num_train_aug=6, num_train=3, num_val=1, seed=2) / "VOC2012"


def write_seeds(voc, folder, ids):
    """Seeds of the images' own masks at stride 4 (1 on each class's pixels), in make_cam's format."""
    folder.mkdir()
    for image_id in ids:
        mask = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        keys = np.array(sorted(set(np.unique(mask)) - {0, 255})) - 1
        strided = mask[::4, ::4]
        cam = np.stack([(strided == key + 1).astype(np.float32) for key in keys])
        write_seed(folder, image_id, {"keys": keys, "cam": cam, "high_res": np.zeros(0)})


def stage_args(voc, tmp_path, **changes):
    irn = tmp_path / "irn.pth"
    if not irn.exists():
        torch.save({"model": build_irn("tiny").state_dict(), "arch": "tiny", "crop_size": 96, "radius": 10}, irn)
    args = dict(
        voc12_root=str(voc), infer_list="train", cam_out_dir=str(tmp_path / "seeds"), irn_weights_name=str(irn),
        sem_seg_out_dir=str(tmp_path / "masks"), sem_seg_bg_thres=0.22, sem_seg_power=1.5, beta=10, exp_times=3,
        device=torch.device("cpu"), rank=0, world=1, num_workers=0, no_progress=True, amp=None,
        channels_last=False,
    )  # fmt: skip
    return argparse.Namespace(**{**args, **changes})


def test_stage_writes_a_mask_per_image_and_skips_existing(voc, tmp_path):
    ids = [line.strip() for line in (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()]
    write_seeds(voc, tmp_path / "seeds", ids)
    assert run(stage_args(voc, tmp_path)) == 3
    masks = tmp_path / "masks"
    # No temporary file; the lock says this process still holds the folder.
    assert sorted(os.listdir(masks)) == sorted([".bas-lock", ".bas-output.json"] + [f"{i}.png" for i in ids])
    for image_id in ids:
        mask = np.asarray(Image.open(masks / f"{image_id}.png"))
        truth = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        assert mask.shape == truth.shape and set(np.unique(mask)) <= set(np.unique(truth)) - {255}
    kept = (masks / f"{ids[0]}.png").read_bytes()
    (masks / f"{ids[1]}.png").unlink()
    assert run(stage_args(voc, tmp_path)) == 1
    assert (masks / f"{ids[0]}.png").read_bytes() == kept
    # Another walk, or an IRN trained again, would mix two kinds of masks in one folder.
    with pytest.raises(OutputError, match=r"masks holds files made with .*'exp_times': 3.*another --sem_seg_out_dir"):
        run(stage_args(voc, tmp_path, exp_times=4))
    irn = tmp_path / "irn.pth"
    os.utime(irn, ns=(irn.stat().st_atime_ns, irn.stat().st_mtime_ns + 10**9))
    with pytest.raises(OutputError, match=r"'irn': \{'bytes': \d+, 'name': 'irn.pth', 'written'"):
        run(stage_args(voc, tmp_path))
    assert sorted(os.listdir(masks)) == sorted([".bas-lock", ".bas-output.json"] + [f"{i}.png" for i in ids])


def test_irn_in_bf16_makes_masks_into_a_folder_that_records_it(voc, tmp_path):
    ids = [line.strip() for line in (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()]
    write_seeds(voc, tmp_path / "seeds", ids)
    assert run(stage_args(voc, tmp_path, amp="bf16", channels_last=True)) == 3
    marker = json.loads((tmp_path / "masks" / ".bas-output.json").read_text())
    assert marker["settings"]["amp"] == "bf16"
    with pytest.raises(OutputError, match=r"masks holds files made with .*'amp': 'bf16'"):
        run(stage_args(voc, tmp_path))  # fp32 masks would mix with them


def test_a_seed_of_another_size_is_named(voc, tmp_path):
    (tmp_path / "seeds").mkdir()
    image_id = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    np.save(tmp_path / "seeds" / f"{image_id}.npy", {"keys": np.array([0]), "cam": np.zeros((1, 3, 3))})
    args = stage_args(voc, tmp_path)
    dataset = datasets.MultiScaleSet(datasets.voc_samples(voc, "train")[:1], [1.0])
    irn = build_irn("tiny")
    options = dict(bg_thres=0.22, power=1.5, beta=10, exp_times=1)
    with pytest.raises(DatasetError, match=f"{image_id}.npy: stride-4 maps"):
        make_pseudo_masks(irn, 96, dataset, tmp_path / "seeds", tmp_path / "masks", options, args.device)
