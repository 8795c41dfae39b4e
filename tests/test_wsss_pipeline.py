"""The WSSS part-1 pipeline end to end on a small synthetic VOCdevkit: both nets trained,
seeds made from BAS, CAM and both, scored; a re-run does nothing; two processes write the
same seed files as one."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bas.errors import OutputError
from WSSS import run_sample, training
from WSSS.irn import build_irn
from WSSS.pictures import DEFAULT_THRESHOLD, scored_threshold
from WSSS.reports import report_path
from WSSS.synthetic import make_synthetic_voc

WSSS = Path(__file__).resolve().parents[1] / "WSSS"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small synthetic set (read as any VOCdevkit) and one epoch of each tiny net on it."""
    folder = tmp_path_factory.mktemp("pipeline")
    voc = make_synthetic_voc(folder / "Synthetic", num_train_aug=24, num_train=12, num_val=8, seed=3) / "VOC2012"
    weights = {}
    for method in ("bas", "cam"):
        argv = ["--method", method, "--dataset", "voc", "--voc12-root", str(voc), "--arch", "tiny", "--epochs", "1"]
        argv += ["--pretrained", "none", "--crop-size", "64", "--resize-square", "72", "--batch-size", "8"]
        argv += ["--workers", "0", "--no-progress", "--output-dir", str(folder / "sess")]
        weights[method] = training.train(training.get_args_parser().parse_args(argv))["weights"]
    return voc, weights, folder


def pipeline_argv(voc, weights, cam_out_dir, *extra):
    argv = ["--voc12_root", str(voc), "--bas_weights_name", str(weights["bas"])]
    argv += ["--cam_weights_name", str(weights["cam"]), "--cam_out_dir", str(cam_out_dir), "--num_workers", "0"]
    return [*argv, "--cam_scales", "1.0", "0.5", "--train_list", "train", "--no_progress", *extra]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_seeds_of_every_net_are_made_scored_and_not_made_twice(trained, capsys):
    voc, weights, folder = trained
    argv = pipeline_argv(voc, weights, folder / "result" / "cam", "--stages", "train_cam", "train_bas")
    run_sample.main([*argv, "make_cam", "eval_cam", "--seed_nets", "bas", "cam", "bas+cam"])
    summary = capsys.readouterr().out.split("\nvariant")[-1].splitlines()
    assert [line.split()[0] for line in summary[1:]] == ["bas", "cam", "bas+cam"]
    for nets, seeds in (("bas", "cam_bas_only"), ("cam", "cam_cam_only"), ("bas+cam", "cam")):
        assert len(list((folder / "result" / seeds).glob("*.npz"))) == 12, nets
        report = json.loads((folder / "result" / f"{seeds}_eval" / "eval_cam_train.json").read_text())
        assert report["images"] == 12 and 0 <= report["best_miou"] <= 100
    before = {name: snapshot(folder / name) for name in ("result", "sess")}
    run_sample.main([*argv, "make_cam", "--seed_nets", "bas", "cam", "bas+cam"])  # everything exists: a no-op
    assert {name: snapshot(folder / name) for name in ("result", "sess")} == before
    with pytest.raises(OutputError, match=r"cam_bas_only holds files made with .*'scales'.*another --cam_out_dir"):
        run_sample.main([*argv, "make_cam", "--seed_nets", "bas", "--cam_scales", "0.75"])  # would mix two kinds
    assert {name: snapshot(folder / name) for name in ("result", "sess")} == before


def test_two_processes_write_the_same_seeds_labels_and_masks_as_one(trained, tmp_path):
    """Seeds, IR labels and pseudo masks (an untrained tiny IRN's boundaries) from one
    process and from two under torchrun: the same files. One thread per process in both
    runs (torchrun's default): a convolution's float rounding depends on the thread count,
    the files must not depend on the sharding."""
    voc, weights, _ = trained
    irn = tmp_path / "irn.pth"
    torch.save({"model": build_irn("tiny").state_dict(), "arch": "tiny", "crop_size": 96, "radius": 5}, irn)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for launcher, out in (
        ([], "one"),
        (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "two"),
    ):
        command = [sys.executable, *launcher, str(WSSS / "run_sample.py")]
        command += pipeline_argv(
            voc, weights, tmp_path / out / "cam", "--exp_times", "3", "--irn_weights_name", str(irn)
        )
        command += [
            "--ir_label_out_dir",
            str(tmp_path / out / "ir"),
            "--sem_seg_out_dir",
            str(tmp_path / out / "masks"),
        ]
        command += ["--stages", "make_cam", "cam_to_ir_label", "make_sem_seg_labels"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = snapshot(tmp_path / "one"), snapshot(tmp_path / "two")
    assert len(one) == 3 * 13 and one == two  # 12 seeds, IR labels, masks, and each folder's marker


# Part 2 at the smallest sizes: the tiny IRN on 32 px crops, a small segmentation net.
REFINE = ["--irn_crop_size", "32", "--irn_batch_size", "4", "--irn_radius", "3", "--irn_num_epoches", "1"]
REFINE += ["--seg_arch", "lraspp_mobilenet_v3_large", "--seg_pretrained", "none", "--seg_crop_size", "32"]
REFINE += ["--seg_batch_size", "4", "--seg_num_epoches", "1", "--seg_scales", "1", "--exp_times", "3"]


def test_every_stage_for_two_seed_variants_then_nothing_twice(trained, tmp_path, capsys):
    """--all: seeds -> IR labels -> IRN -> pseudo masks -> segmentation net -> val mIoU, for
    the seeds of BAS and of CAM, each in its own folders, summed up in one table; the strips;
    a second run changes nothing."""
    voc, weights, _ = trained
    out = tmp_path / "result"
    argv = pipeline_argv(voc, weights, out / "cam", "--all", "--arch", "tiny", *REFINE)
    argv += ["--seed_nets", "bas", "cam", "--refine_nets", "bas", "cam", "--ir_label_out_dir", str(out / "ir")]
    argv += ["--irn_weights_name", str(tmp_path / "sess" / "irn.pth"), "--sem_seg_out_dir", str(out / "masks")]
    argv += ["--seg_weights_name", str(tmp_path / "sess" / "seg.pth"), "--seg_out_dir", str(out / "seg")]
    argv += ["--save_images", "2", "--images_out_dir", str(out / "images")]
    run_sample.main(argv)
    summary = capsys.readouterr().out.split("\nvariant")[-1].splitlines()
    assert summary[0].split() == ["seeds", "IR", "labels", "masks", "seg", "val"]
    assert [line.split()[0] for line in summary[1:]] == ["bas", "cam"]
    for line in summary[
        1:
    ]:  # seeds (thr x), IR labels (x %), masks, seg: e.g. "bas 15.55 (thr 0.20) 20.82 (100 %) ..."
        assert len(line.split()) == 9 and line.split()[2] == "(thr" and line.split()[6] == "%)"
    train = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    val = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for nets in ("bas", "cam"):
        for folder, ids in ((f"ir_{nets}_only", train), (f"masks_{nets}_only", train), (f"seg_{nets}_only", val)):
            assert sorted(p.stem for p in (out / folder).glob("*.png")) == sorted(ids), folder
        for net in ("irn", "seg"):  # each variant's own training run, not a resumed copy of the other's
            assert (tmp_path / "sess" / f"{net}_{nets}_only.pth").is_file()
            assert len((tmp_path / "sess" / f"{net}_{nets}_only_log.jsonl").read_text().splitlines()) == 1
        report = json.loads((out / f"seg_{nets}_only_eval" / "eval_sem_seg_val.json").read_text())
        assert report["images"] == len(val) and 0 <= report["miou"] <= 100
    assert sorted(p.name for p in (out / "images").glob("*.png")) == sorted(
        f"{image_id}_{nets}.png" for image_id in train[:2] for nets in ("bas", "cam")
    )
    before = snapshot(tmp_path)
    run_sample.main([arg for arg in argv if arg not in ("--save_images", "2")])
    assert snapshot(tmp_path) == before


def test_strips_show_the_seeds_at_the_threshold_eval_cam_reported(tmp_path):
    """A strips-only run (eval_cam not among its stages) reads the best threshold from the
    report an earlier run left beside the seeds."""
    flags = argparse.Namespace(cam_out_dir=str(tmp_path / "cam"), cam_eval_out_dir=None, chainer_eval_set="train")
    assert scored_threshold(flags) == DEFAULT_THRESHOLD  # never scored
    path = report_path(flags)
    assert path == tmp_path / "cam_eval" / "eval_cam_train.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"cam_out_dir": str(tmp_path / "other"), "best_threshold": 0.41}))
    assert scored_threshold(flags) == DEFAULT_THRESHOLD  # a report on another folder's seeds
    path.write_text(json.dumps({"cam_out_dir": str(tmp_path / "cam"), "best_threshold": 0.31}))
    assert scored_threshold(flags) == 0.31
