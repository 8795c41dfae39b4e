"""WSSS training (train_bas.py, train_cam.py, the train_* stages) on a tiny synthetic VOCdevkit:
one epoch of each net, resume, the original's optimizer and schedule, flags, two processes."""

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from bas import training
from bas.errors import ArgumentError, CheckpointError
from bas.optim import param_groups, poly_max_step, set_poly_lr, sgd
from bas.outputs import read_marker
from WSSS import training
from WSSS.models import build_model, load_checkpoint
from WSSS.steps import train_bas as train_bas_stage
from WSSS.steps import train_cam as train_cam_stage
from WSSS.synthetic import make_synthetic_voc

WSSS = Path(__file__).resolve().parents[1] / "WSSS"
# Small crops of the 64-96 px images: the tiny net's maps are 8 x 8, an epoch is two steps of 4.
SMALL = {
    "bas": ["--crop-size", "32", "--resize-square", "36"],
    "cam": ["--crop-size", "40", "--resize-long", "32", "48"],
}


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "VOCdevkit"
    return make_synthetic_voc(root, num_train_aug=8, num_train=2, num_val=1, seed=1) / "VOC2012"


def argv(voc: Path, output_dir: Path, method: str = "bas", *extra: str) -> list[str]:
    common = ["--dataset", "voc", "--voc12_root", str(voc), "--arch", "tiny", "--output-dir", str(output_dir)]
    common += ["--method", method, "--batch-size", "4", "--workers", "0", "--no-progress", *SMALL[method]]
    return [*common, *extra]


def train(voc: Path, output_dir: Path, method: str = "bas", *extra: str) -> dict:
    return training.train(training.get_args_parser().parse_args(argv(voc, output_dir, method, *extra)))


def log_records(output_dir: Path, method: str) -> list[dict]:
    return [json.loads(line) for line in (output_dir / f"{method}_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "method, parts", [("bas", {"ce", "ce_fg", "bas", "area"}), ("cam", {"soft_margin"})], ids=["bas", "cam"]
)
def test_one_epoch_gives_weights_that_load(voc, tmp_path, method, parts):
    result = train(voc, tmp_path / "sess", method, "--epochs", "1")
    name = "epoch_1.pth.tar" if method == "bas" else "tiny_cam.pth"
    assert result["weights"] == tmp_path / "sess" / name
    (record,) = log_records(tmp_path / "sess", method)
    assert record["epoch"] == 1 and set(record["train"]) == parts
    assert read_marker(tmp_path / "sess")["kind"] == training.RUN_KIND

    checkpoint = torch.load(result["weights"], weights_only=True)
    assert {k: checkpoint[k] for k in ("epoch", "method", "arch", "num_classes")} == {
        "epoch": 1,
        "method": method,
        "arch": "tiny",
        "num_classes": 4,
    }
    assert checkpoint["classes"] == ["red", "green", "blue", "yellow"]
    model = build_model(method, 4, arch="tiny")
    untrained = {k: v.clone() for k, v in model.state_dict().items()}
    load_checkpoint(model, result["weights"])
    trained = model.state_dict()
    assert any(not torch.equal(untrained[k], trained[k]) for k in trained if k.startswith("tail."))


def test_coco_root(voc, tmp_path):
    """--dataset coco reads train2014 through its instances file: 80 classes, in category id order."""
    root = tmp_path / "coco"
    (root / "train2014").mkdir(parents=True)
    images, annotations = [], []
    for index, path in enumerate(sorted((voc / "JPEGImages").glob("*.jpg"))[:4]):
        name = f"COCO_train2014_{index:012d}.jpg"
        (root / "train2014" / name).write_bytes(path.read_bytes())
        width, height = Image.open(path).size
        images.append({"id": index, "file_name": name, "height": height, "width": width})
        polygon = [[4, 4, 30, 4, 30, 30, 4, 30]]
        annotations.append({"id": index, "image_id": index, "category_id": 90 - index, "segmentation": polygon})
    categories = [
        {"id": i, "name": f"category {i}"} for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
    ]
    (root / "annotations").mkdir()
    content = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(content))
    flags = ["--dataset", "coco", "--coco-root", str(root), "--arch", "tiny", "--output-dir", str(tmp_path / "run")]
    flags += ["--batch-size", "4", "--epochs", "1", "--workers", "0", "--no-progress", *SMALL["bas"]]
    result = training.train(training.get_args_parser().parse_args(flags))
    checkpoint = torch.load(result["weights"], weights_only=True)
    assert checkpoint["num_classes"] == 80 and checkpoint["classes"][-1] == "category 90"
    assert checkpoint["dataset"] == "coco" and checkpoint["model"]["classifier_cls.weight"].shape[0] == 80


def test_resumed_run_equals_uninterrupted(voc, tmp_path, monkeypatch):
    """An interrupted BAS run resumed (with loader workers, the whole run without) ends with
    the very parameters and log of the uninterrupted run: the positive classes, the
    augmentation and the poly lr depend on (seed, epoch, rank, step) only."""
    train(voc, tmp_path / "whole", "bas", "--epochs", "3")

    run_epoch = training.TrainingRun.train_one_epoch

    def crash_at_the_third_epoch(self, *args, **kwargs):
        if args[5] == 2:  # the epoch
            raise KeyboardInterrupt
        return run_epoch(self, *args, **kwargs)

    monkeypatch.setattr(training.TrainingRun, "train_one_epoch", crash_at_the_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(voc, tmp_path / "parts", "bas", "--epochs", "3")
    monkeypatch.undo()
    assert torch.load(tmp_path / "parts" / "bas_last.pth", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "parts" / "epoch_3.pth.tar").exists()
    train(voc, tmp_path / "parts", "bas", "--epochs", "3", "--resume", "--workers", "2")

    whole = torch.load(tmp_path / "whole" / "epoch_3.pth.tar", weights_only=True)["model"]
    parts = torch.load(tmp_path / "parts" / "epoch_3.pth.tar", weights_only=True)["model"]
    assert whole.keys() == parts.keys()
    for name, value in whole.items():
        assert torch.equal(value, parts[name]), name
    records = log_records(tmp_path / "whole", "bas")
    assert records == log_records(tmp_path / "parts", "bas")
    # 8 images, batch 4, 3 epochs: 6 steps; the schedule spans 4x: 24. Each epoch logs its last step's lr.
    assert [r["lr"] for r in records] == pytest.approx([0.005 * (1 - step / 24) ** 0.9 for step in (1, 3, 5)])


def test_resume_refuses_another_schedule(voc, tmp_path):
    train(voc, tmp_path / "run", "bas", "--epochs", "1")
    with pytest.raises(CheckpointError, match=r"bas_last\.pth was trained with epochs 1, not 2"):
        train(voc, tmp_path / "run", "bas", "--epochs", "2", "--resume")


def test_optimizer_and_schedule_are_the_originals():
    """The original's poly optimizer: SGD(groups, lr, weight_decay) puts the weight decay in
    the momentum slot, each group carries the weight decay itself, the lr is set from the
    step before each update and frozen after max_step - 1. Ours, with its flags' defaults,
    follows that optimizer step for step."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)))
    model.add_module("classifier", nn.Conv2d(3, 2, 1, bias=False))
    twin = copy.deepcopy(model)
    biases = [model.features[0].bias.detach().clone(), model.features[1].bias.detach().clone()]
    lr, wd, max_step, power = 0.1, 1e-4, 3, 0.9

    ours = sgd(model, lr, wd, momentum=1e-4, nesterov=False, multipliers=training.WEIGHTS_ONLY)
    groups = {g["lr_multiplier"]: g["params"] for g in ours.param_groups}
    assert groups[1] == [model.features[0].weight, model.features[1].weight]  # BatchNorm's weight, no bias
    assert groups[10] == [model.classifier.weight]
    the_original = torch.optim.SGD(
        [
            {"params": [twin.features[0].weight, twin.features[1].weight], "lr": lr, "weight_decay": wd},
            {"params": [twin.classifier.weight], "lr": 10 * lr, "weight_decay": wd},
        ],
        lr,
        wd,  # SGD's third positional argument is the momentum
    )
    initial = [group["lr"] for group in the_original.param_groups]
    x = torch.randn(4, 2, 6, 6)
    for step in range(5):  # past max_step: the lr stays at step max_step - 1's
        set_poly_lr(ours, lr, step, max_step, power)
        for group, start in zip(the_original.param_groups, initial):
            group["lr"] = start * (1 - min(step, max_step - 1) / max_step) ** power
        for net in (model, twin):
            net(x).square().mean().backward()
        ours.step()
        the_original.step()
        for (name, param), same in zip(model.named_parameters(), twin.parameters()):
            assert torch.equal(param, same), (step, name)
        ours.zero_grad()
        the_original.zero_grad()
    assert torch.equal(model.features[0].bias, biases[0]) and torch.equal(model.features[1].bias, biases[1])
    assert [g["lr"] for g in ours.param_groups] == pytest.approx([lr * (1 / 3) ** power, 10 * lr * (1 / 3) ** power])


def test_the_schedule_spans_four_times_the_steps_on_voc():
    """The original BAS run: train_aug (10,582 images), global batch 16 on 4 GPUs, 10
    epochs: max_step from the per-process batch of 4, 26,450; 661 steps an epoch are
    taken, and the lr ends at about 0.77 of its start."""
    max_step = poly_max_step(10582, 16, 10, steps_factor=4)
    assert max_step == 10582 // 4 * 10 == 26450
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr_multiplier": 1}], lr=0.005)
    last = set_poly_lr(optimizer, 0.005, 10 * 661 - 1, max_step)
    assert last == pytest.approx(0.005 * (1 - 6609 / 26450) ** 0.9) and 0.77 < last / 0.005 < 0.775
    assert poly_max_step(10582, 16, 5) == 661 * 5  # IRN's CAM net: one process, the steps taken


def test_the_nets_give_the_originals_parameters_to_the_optimizer():
    """BAS: parameters named "weight" only, classifier_* 10x; IRN's CAM net: every trainable
    parameter (BatchNorm biases too), but not the frozen stem, layer1 and layer2."""
    bas = build_model("bas", 4, arch="tiny")
    groups = {g["lr_multiplier"]: g["params"] for g in param_groups(bas, 1.0, training.WEIGHTS_ONLY)}
    names = {id(p): name for name, p in bas.named_parameters()}
    assert sorted(names[id(p)] for p in groups[10]) == ["classifier_cls.weight", "classifier_loc.0.weight"]
    assert all(names[id(p)].endswith("weight") for p in groups[1])
    given = {id(p) for params in groups.values() for p in params}
    assert {name for name, p in bas.named_parameters() if id(p) not in given} == {
        name for name in names.values() if name.endswith("bias")
    }
    cam = build_model("cam", 4)
    groups = param_groups(cam, 1.0, training.WITH_BIASES)
    given = {id(p) for group in groups for p in group["params"]}
    left_out = {name for name, p in cam.named_parameters() if id(p) not in given}
    assert left_out == {name for name, p in cam.named_parameters() if not p.requires_grad} != set()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs 0: must be positive"),
        (["--lr", "-0.1"], "--lr -0.1: must be positive"),
        (["--batch_size", "0"], "--batch-size 0: must be positive"),
        (["--momentum", "-1"], "--momentum -1: must be 0 or more"),
        (["--resize-long", "640", "320"], r"--resize-long 640 320: need 0 < MIN <= MAX"),
        (["--resize-square", "512", "--resize-long", "320", "640"], "exclude each other"),
        (["--dataset", "voc"], "--dataset voc: give --voc12_root"),
        (["--dataset", "coco"], "--dataset coco: give --coco_root"),
        (["--weights-name", "a/b.pth"], "a file name, without folders"),
    ],
)
def test_flags_are_checked_before_any_work(flags, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the demo set and the outputs would go by default
    with pytest.raises(ArgumentError, match=message):
        training.train(training.get_args_parser().parse_args(flags))
    assert list(tmp_path.iterdir()) == []


def test_a_bad_flag_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(WSSS / "train_cam.py"), "--epochs", "0"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2 and result.stderr == "error: --epochs 0: must be positive\n"
    assert list(tmp_path.iterdir()) == []
    assert training.get_args_parser().parse_args(["--local_rank=1"]).local_rank == 1  # the legacy launcher


def test_stages_train_once_then_use_the_weights(voc, tmp_path):
    """run_sample.py's train_bas / train_cam: trained into the weights' folder when absent
    (IRN's --cam_* flags apply), used as they are when present."""
    args = argparse.Namespace(
        voc12_root=str(voc), train_list="train_aug", num_workers=0, no_progress=True, arch="tiny", device=None,
        local_rank=None, bas_weights_name=str(tmp_path / "sess" / "bas.pth"),
        cam_weights_name=str(tmp_path / "sess" / "res50_cam.pth"), bas_num_epoches=1, bas_batch_size=4,
        bas_crop_size=32, cam_num_epoches=1, cam_batch_size=4, cam_crop_size=40,
    )  # fmt: skip
    for stage, method in ((train_bas_stage, "bas"), (train_cam_stage, "cam")):
        weights = stage.run(args)
        assert weights == Path(getattr(args, f"{method}_weights_name"))
        assert torch.load(weights, weights_only=True)["method"] == method
        before = weights.stat().st_mtime_ns
        assert stage.run(args) == weights and weights.stat().st_mtime_ns == before
    assert [r["epoch"] for r in log_records(tmp_path / "sess", "cam")] == [1]

    irn = tmp_path / "irn" / "res50_cam.pth"  # IRN's train_cam writes <name>.pth
    irn.parent.mkdir()
    torch.save(build_model("cam", 4, arch="tiny").state_dict(), f"{irn}.pth")
    assert train_cam_stage.run(argparse.Namespace(cam_weights_name=str(irn))) == Path(f"{irn}.pth")


def test_a_stage_trains_with_the_pipelines_flags_as_the_command_line_gives_them(tmp_path, monkeypatch):
    """run_sample.py's flags (and IRN's --cam_* ones) reach the trainer as train_bas.py's
    parser gives them, the rest at its defaults; on the synthetic set, --voc12_root is the
    folder the set was written into."""
    seen = {}
    monkeypatch.setattr(training, "train", lambda flags: seen.update(vars(flags)) or {"weights": Path("w")})
    args = argparse.Namespace(
        dataset="synthetic", voc12_root=str(tmp_path / "SyntheticVOC" / "VOC2012"), coco_root=None, train_list="train",
        arch="tiny", device=torch.device("cpu"), seed=3, local_rank=None, num_workers=0, no_progress=True,
        cam_weights_name=str(tmp_path / "sess" / "cam.pth"), cam_num_epoches=2, cam_learning_rate=0.5,
    )  # fmt: skip
    assert training.run_stage(args, "cam") == Path("w")
    command_line = ["--method", "cam", "--output-dir", str(tmp_path / "sess"), "--weights-name", "cam.pth", "--resume"]
    command_line += ["--dataset", "synthetic", "--voc12_root", str(tmp_path / "SyntheticVOC"), "--train_list", "train"]
    command_line += ["--workers", "0", "--arch", "tiny", "--seed", "3", "--epochs", "2", "--lr", "0.5", "--no-progress"]
    expected = vars(training.get_args_parser().parse_args(command_line))
    assert {**seen, "device": str(seen["device"])} == {**expected, "device": "cpu"}


def _torchrun(script: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    return subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=600)


def test_two_processes_train_and_resume(voc, tmp_path):
    """torchrun, 2 processes (gloo): an interrupted run resumed ends where the
    uninterrupted one does."""
    result = _torchrun(WSSS / "train_bas.py", *argv(voc, tmp_path / "whole", "bas", "--epochs", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    crashing = tmp_path / "crash_after_one_epoch.py"
    crashing.write_text(
        "import sys\n"
        "from bas import training\n"
        "from WSSS.train_bas import main\n"
        "run_epoch = training.TrainingRun.train_one_epoch\n"
        "def crash(self, *args, **kwargs):\n"
        "    if args[5] == 1:\n"
        "        sys.exit(3)\n"
        "    return run_epoch(self, *args, **kwargs)\n"
        "training.TrainingRun.train_one_epoch = crash\n"
        "main(sys.argv[1:])\n"
    )
    assert _torchrun(crashing, *argv(voc, tmp_path / "parts", "bas", "--epochs", "2")).returncode != 0
    assert torch.load(tmp_path / "parts" / "bas_last.pth", weights_only=True)["epoch"] == 1
    result = _torchrun(WSSS / "train_bas.py", *argv(voc, tmp_path / "parts", "bas", "--epochs", "2", "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]
    whole = torch.load(tmp_path / "whole" / "epoch_2.pth.tar", weights_only=True)["model"]
    parts = torch.load(tmp_path / "parts" / "epoch_2.pth.tar", weights_only=True)["model"]
    for name, value in whole.items():
        assert torch.equal(value, parts[name]), name
    assert log_records(tmp_path / "whole", "bas") == log_records(tmp_path / "parts", "bas")
