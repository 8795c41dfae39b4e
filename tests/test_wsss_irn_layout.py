"""IRN's own file layout (``res50_irn.pth``, the state dict of its relation net as its
train_irn saves it): read by load_irn, written by to_irn_layout / ``python -m
WSSS.export_irn``, and the authors' three WSSS files in their own formats running the
pipeline from the seeds to the scored pseudo masks without any training."""

import json
import os
from pathlib import Path

import pytest
import torch

from bas.errors import ArgumentError, CheckpointError, OutputError
from WSSS import export_irn, run_sample
from WSSS.irn import build_irn, irn_pair_buffers, load_irn, to_irn_layout
from WSSS.models import build_model, convert_original_state_dict
from WSSS.synthetic import make_synthetic_voc

CLASSES = 4  # of the synthetic VOCdevkit the pipeline runs on


def keys_dir(shared_dir: Path) -> Path:
    return shared_dir / "design" / "checkpoint_keys"


@pytest.fixture(scope="module")
def irn():
    """A ResNet50 IRN whose every tensor differs from its initial value (GroupNorm weights,
    BatchNorm statistics, the displacement mean included)."""
    model = build_irn("resnet50")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                positive = "running_var" in name
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.5 if positive else torch.randn_like(tensor) * 0.1)
    return model.eval()


def test_the_training_pairs_as_irn_stores_them_by_hand():
    # A 4 x 4 map at radius 2: sources rows 0..2, columns 1..2; directions (0, 1), (1, 0) (paths
    # of 2 pixels), then (1, -1), (1, 1) (4 pixels); each path's farthest pixel first.
    buffers = irn_pair_buffers(16, 2)
    src = [1, 2, 5, 6, 9, 10]

    def shifted(dy, dx):
        return [s + 4 * dy + dx for s in src]

    assert sorted(buffers) == ["disp_target", "path_indices0", "path_indices1"]
    assert buffers["path_indices0"].tolist() == [[shifted(0, 1), src], [shifted(1, 0), src]]
    assert buffers["path_indices1"].tolist() == [
        [shifted(1, -1), shifted(0, -1), shifted(1, 0), src],
        [shifted(1, 1), shifted(0, 1), shifted(1, 0), src],
    ]
    assert buffers["path_indices0"].dtype == torch.int64
    assert buffers["disp_target"].tolist() == [[[[0.0], [1.0], [1.0], [1.0]], [[1.0], [0.0], [-1.0], [1.0]]]]


def test_export_gives_every_key_of_irns_file_with_its_shape_and_aliases_share_a_tensor(irn, shared_dir):
    shapes = json.loads((keys_dir(shared_dir) / "wsss_irn_res50.json").read_text())
    aliases = json.loads((keys_dir(shared_dir) / "wsss_irn_res50_aliases.json").read_text())
    state = to_irn_layout(irn, crop_size=512, radius=10)  # IRN's training pairs
    assert {key: list(value.shape) for key, value in state.items()} == shapes
    for key, dtype in aliases["nondet_buffers"].items():
        assert str(state[key].dtype) == dtype, key
    for alias, key in aliases["aliases"].items():
        assert state[alias] is state[key], alias  # saved once, as IRN's shared modules are
    assert torch.equal(state["mean_shift.running_mean"], irn.displacement_mean)
    assert torch.equal(state["fc_edge6.weight"], irn.edge_out.weight)


def test_round_trip_through_irns_layout_gives_the_same_maps(irn, tmp_path):
    torch.save(to_irn_layout(irn, crop_size=64, radius=3), tmp_path / "res50_irn.pth")
    loaded, info = load_irn(tmp_path / "res50_irn.pth")
    assert info == {"arch": "resnet50", "crop_size": 64, "radius": 3}
    own = irn.state_dict()
    assert all(torch.equal(value, own[key]) for key, value in loaded.state_dict().items())
    image = torch.randn(1, 3, 37, 50)
    pair = torch.cat([image, image.flip(-1)])
    assert torch.equal(loaded.eval().edge_map(pair, 64), irn.edge_map(pair, 64))
    with torch.no_grad():
        for ours, back in zip(irn(pair), loaded(pair)):
            assert torch.equal(ours, back)


def test_a_legacy_file_with_module_prefixes_and_without_the_training_buffers_loads(irn, tmp_path):
    # Without the pair buffers the crop and radius are IRN's: 512 and 10.
    state = {f"module.{k}": v for k, v in to_irn_layout(irn, 64, 3).items() if not k.startswith(("path", "disp"))}
    torch.save(state, tmp_path / "res50_irn.pth", _use_new_zipfile_serialization=False)
    loaded, info = load_irn(tmp_path / "res50_irn.pth")
    assert info == {"arch": "resnet50", "crop_size": 512, "radius": 10}
    assert torch.equal(loaded.displacement_out[3].weight, irn.displacement_out[3].weight)


def test_irn_files_that_do_not_fit_are_named(irn, tmp_path):
    path = tmp_path / "res50_irn.pth"
    state = to_irn_layout(irn, 64, 3)
    torch.save({**state, "stage2.0.0.conv1.weight": state["stage2.0.0.conv1.weight"] + 1}, path)
    with pytest.raises(CheckpointError, match=r"res50_irn.pth: stage2.0.0.conv1.weight differs from another copy"):
        load_irn(path)
    missing = [k for k in state if k.endswith(("fc_edge6.bias", "edge_layers.5.bias"))]
    torch.save({k: v for k, v in state.items() if k not in missing}, path)
    with pytest.raises(CheckpointError, match=r"res50_irn.pth: not IRN's relation net: 1 tensor missing \(fc_edge6"):
        load_irn(path)
    torch.save({**state, "fc_edge7.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"res50_irn.pth does not fit .*1 unexpected \(e.g. fc_edge7.weight\)"):
        load_irn(path)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"res50_irn.pth: not an IRN: neither this project's .* nor IRN's"):
        load_irn(path)


def test_export_command(irn, tmp_path):
    ours = tmp_path / "irn.pth"
    torch.save({"model": irn.state_dict(), "arch": "resnet50", "crop_size": 64, "radius": 3, "epoch": 3}, ours)
    export_irn.main([str(ours), str(tmp_path / "res50_irn.pth")])
    loaded, info = load_irn(tmp_path / "res50_irn.pth")
    assert info == {"arch": "resnet50", "crop_size": 64, "radius": 3}
    assert torch.equal(loaded.displacement_mean, irn.displacement_mean)
    with pytest.raises(OutputError, match=r"res50_irn.pth exists"):
        export_irn.main([str(ours), str(tmp_path / "res50_irn.pth")])
    torch.save({"model": build_irn("tiny").state_dict(), "arch": "tiny", "crop_size": 96, "radius": 5}, ours)
    with pytest.raises(ArgumentError, match=r"irn.pth: a tiny IRN; IRN's layout holds a ResNet50 one"):
        export_irn.main([str(ours), str(tmp_path / "tiny_irn.pth")])


# ------------------------------------------------------------------ the authors' files, end to end
def original_file(model, shapes: dict, prefix: str = "") -> dict:
    """``model``'s weights under the original's keys (``shapes``), each alias the same tensor."""
    own = model.state_dict()
    ours = {key: next(iter(convert_original_state_dict(model, {key: torch.empty(0)}))) for key in shapes}
    return {prefix + key: own[ours[key]] for key in shapes}


def test_the_authors_three_files_run_from_seeds_to_scored_masks(irn, shared_dir, tmp_path, monkeypatch):
    voc = make_synthetic_voc(tmp_path / "Synthetic", CLASSES, num_train_aug=3, num_train=2, num_val=1, seed=4)
    voc = voc / "VOC2012"
    monkeypatch.chdir(tmp_path)  # the original's places: sess/epoch_10.pth.tar, sess/res50_cam.pth, ...
    os.mkdir("sess")
    bas_shapes = json.loads((keys_dir(shared_dir) / "wsss_bas_c20.json").read_text())
    cam_shapes = json.loads((keys_dir(shared_dir) / "wsss_cam_c20.json").read_text())
    # The nets have the synthetic set's classes. The BAS release: torch's legacy format, DDP's
    # module. prefix; IRN's files: zip, bare.
    bas_file = original_file(build_model("bas", CLASSES).eval(), bas_shapes, "module.")
    torch.save(bas_file, "sess/epoch_10.pth.tar", _use_new_zipfile_serialization=False)
    torch.save(original_file(build_model("cam", CLASSES).eval(), cam_shapes), "sess/res50_cam.pth")
    torch.save(to_irn_layout(irn, crop_size=96, radius=5), "sess/res50_irn.pth")
    # The original's command line with its default stages: make_cam, eval_cam, make_sem_seg_labels,
    # eval_sem_seg (its list train_aug made short, its scales one, for the test's time).
    argv = ["--voc12_root", str(voc), "--train_list", "train", "--cam_scales", "1.0"]
    run_sample.main([*argv, "--num_workers", "0", "--no_progress"])
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    assert sorted(p.name for p in Path("result/sem_seg").glob("*.png")) == sorted(f"{i}.png" for i in ids)
    assert not Path("result/ir_label").exists()  # IRN's file is there: no IR labels to train it on
    assert sorted(os.listdir("sess")) == ["epoch_10.pth.tar", "res50_cam.pth", "res50_irn.pth"]  # nothing trained
    for name in ("eval_cam_train.json", "eval_sem_seg_train.json"):  # the seeds' and the masks' scores
        (report,) = [json.loads(p.read_text()) for p in Path("result").rglob(name)]
        assert 0 <= report["miou" if "sem_seg" in name else "best_miou"] <= 100, name
