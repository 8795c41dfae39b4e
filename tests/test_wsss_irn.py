"""IRN (WSSS.irn, the train_irn stage): the pixel pairs against a brute-force enumeration,
the affinity labels and losses against plain loops and a hand computation, where gradients
go, the inference edge map, and the stage end to end on a tiny synthetic VOCdevkit."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bas import training
from bas.checkpoints import save_atomic
from bas.errors import CheckpointError, DatasetError
from bas.outputs import read_marker
from WSSS import run_sample
from WSSS.datasets import voc_palette
from WSSS.irn import EPS, PathIndex, build_irn, irn_loss, load_irn
from WSSS.models import build_model
from WSSS.synthetic import make_synthetic_voc
from WSSS.training import RUN_KIND

UNSURE = 255


# ------------------------------------------------------------------------------ plain loops
def brute_force_pairs(radius, height, width):
    """Every (source, partner) of IRN's pairs, by definition: partner = source + d with
    0 < |d| < radius in the lower half-plane, sources far enough from the border that every
    direction stays inside (rows < h - r + 1, r - 1 <= column < w - r + 1)."""
    floor = radius - 1
    pairs = set()
    for sy in range(height - floor):
        for sx in range(floor, width - floor):
            for dy in range(0, radius):
                for dx in range(-floor, radius):
                    if 0 < dy * dy + dx * dx < radius**2 and (dy > 0 or dx > 0):
                        assert 0 <= sy + dy < height and 0 <= sx + dx < width
                        pairs.add(((sy, sx), (sy + dy, sx + dx)))
    return pairs


def brute_force_path(dy, dx):
    """The lattice points of the box between 0 and (dy, dx) closer than 1 to the line through them."""
    norm = math.hypot(dy, dx)
    return {
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if abs(dy * x - dx * y) / norm < 1 - 1e-9
    }


def index_pairs(pairs: PathIndex):
    """The (source, partner) coordinates of each pair of a PathIndex, in its D x N order."""
    width = pairs.size[1]
    return [[(divmod(int(s), width), divmod(int(q), width)) for s, q in zip(pairs.src, row)] for row in pairs.dst]


def loop_loss(edge_logits, displacement, ir_label, pairs: PathIndex):
    """IRN's loss one pair at a time: affinity 1 - max edge on the path, labels by rule."""
    sums = dict.fromkeys(("bg_pos", "fg_pos", "neg", "dp_fg", "dp_bg", "n_bg", "n_fg", "n_neg"), 0.0)
    edge = torch.sigmoid(edge_logits.double())
    for b in range(edge.shape[0]):
        for row in index_pairs(pairs):
            for (sy, sx), (qy, qx) in row:
                dy, dx = qy - sy, qx - sx
                a = 1 - max(float(edge[b, 0, sy + y, sx + x]) for y, x in brute_force_path(dy, dx))
                ls, lq = int(ir_label[b, sy, sx]), int(ir_label[b, qy, qx])
                if UNSURE in (ls, lq):
                    continue
                d = displacement[b, :, sy, sx].double() - displacement[b, :, qy, qx].double()
                if ls != lq:
                    sums["neg"] += -math.log(1 + EPS - a)
                    sums["n_neg"] += 1
                elif ls == 0:
                    sums["bg_pos"] += -math.log(a + EPS)
                    sums["dp_bg"] += float(d.abs().sum())
                    sums["n_bg"] += 1
                else:
                    sums["fg_pos"] += -math.log(a + EPS)
                    sums["dp_fg"] += float((d - torch.tensor([dy, dx])).abs().sum())
                    sums["n_fg"] += 1
    parts = {
        "bg_pos": sums["bg_pos"] / (sums["n_bg"] + EPS),
        "fg_pos": sums["fg_pos"] / (sums["n_fg"] + EPS),
        "neg": sums["neg"] / (sums["n_neg"] + EPS),
        "dp_fg": sums["dp_fg"] / (2 * sums["n_fg"] + EPS),
        "dp_bg": sums["dp_bg"] / (2 * sums["n_bg"] + EPS),
    }
    total = (parts["bg_pos"] / 2 + parts["fg_pos"] / 2 + parts["neg"]) / 2 + (parts["dp_fg"] + parts["dp_bg"]) / 2
    return total, parts


# ---------------------------------------------------------------------------- the pairs
@pytest.mark.parametrize("radius, size", [(2, (3, 4)), (3, (7, 9)), (5, (10, 12))])
def test_path_index_pairs_and_paths_match_brute_force(radius, size):
    pairs = PathIndex(radius, size)
    listed = [pair for row in index_pairs(pairs) for pair in row]
    assert len(listed) == len(set(listed))  # no pair twice
    assert set(listed) == brute_force_pairs(radius, *size)
    # Each path group's rows follow the order of dst, and hold the pair's path pixels.
    width, rows = size[1], iter(pairs.dst)
    for group in pairs.paths:  # n_dirs x L x N
        for path_pixels in group:
            dst = next(rows)
            for n in range(len(pairs.src)):
                sy, sx = divmod(int(pairs.src[n]), width)
                qy, qx = divmod(int(dst[n]), width)
                got = {(int(i) // width - sy, int(i) % width - sx) for i in path_pixels[:, n]}
                assert got == brute_force_path(qy - sy, qx - sx)
    assert next(rows, None) is None


def test_radius_10_has_irn_directions():
    """IRN's training radius: 152 directions, the shortest first, ending at the farthest."""
    pairs = PathIndex(10, (128, 128))
    assert len(pairs.directions) == 152 and pairs.directions[0] == (0, 1)
    assert pairs.src.shape == (119 * 110,) and pairs.dst.shape == (152, 119 * 110)


def test_path_index_too_small_a_map():
    with pytest.raises(ValueError, match="no pixel pair"):
        PathIndex(5, (4, 20))


# ---------------------------------------------------------------------------- the labels
def test_affinity_labels_match_a_loop():
    """Two regions (background left, class 2 right) split by an unsure band, a class-1 blob."""
    label = torch.zeros(8, 10, dtype=torch.uint8)
    label[:, 6:] = 3
    label[:, 5] = UNSURE
    label[2:4, 1:3] = 1
    pairs = PathIndex(3, (8, 10))
    bg_pos, fg_pos, neg = pairs.labels(label[None])  # 1 x D x N each
    for k, row in enumerate(index_pairs(pairs)):
        for n, ((sy, sx), (qy, qx)) in enumerate(row):
            a, b = int(label[sy, sx]), int(label[qy, qx])
            sure = UNSURE not in (a, b)
            assert bg_pos[0, k, n] == float(sure and a == b == 0)
            assert fg_pos[0, k, n] == float(sure and a == b and a > 0)
            assert neg[0, k, n] == float(sure and a != b)
    assert bg_pos.sum() > 0 and fg_pos.sum() > 0 and neg.sum() > 0
    # Only the ends count: a pair with an end on the band is not labelled; one that jumps it
    # (both ends sure, background and class 2) is a negative.
    listed = [(k, n, s, q) for k, row in enumerate(index_pairs(pairs)) for n, (s, q) in enumerate(row)]
    on_band = [(k, n) for k, n, s, q in listed if 5 in (s[1], q[1])]
    across = [(k, n) for k, n, s, q in listed if min(s[1], q[1]) < 5 < max(s[1], q[1]) and label[s] != 1]
    assert on_band and all(bg_pos[0, k, n] + fg_pos[0, k, n] + neg[0, k, n] == 0 for k, n in on_band)
    assert across and all(neg[0, k, n] == 1 for k, n in across)


# ---------------------------------------------------------------------------- the losses
def test_loss_by_hand():
    """Radius 2 on a 2 x 3 map: one source, (0, 1), and its four partners, whose paths are
    {p, q} for (0, 1) and (1, 0) and the whole 2 x 2 box for the diagonals."""
    edge = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    logits = torch.logit(edge.double()).float().expand(2, 1, 2, 3)
    # Affinities (1 - max edge on the path): to (0,2) 0.7, (1,0) 0.5, (1,1) 0.5, (1,2) 0.4.
    label = torch.tensor([[[0, 0, 1], [UNSURE, 0, 2]], [[1, 1, 1], [1, 1, UNSURE]]], dtype=torch.uint8)
    # Image 0: (1,1) background positive; (0,2), (1,2) negative; (1,0) unsure.
    # Image 1: (0,2), (1,0), (1,1) foreground positive; (1,2) unsure.
    disp = torch.zeros(2, 2, 2, 3)
    disp[0, :, 0, 1], disp[0, :, 1, 1] = torch.tensor([0.2, -0.1]), torch.tensor([0.0, 0.3])  # |.|: 0.2 + 0.4
    disp[1, :, 0, 1] = torch.tensor([1.0, 1.0])
    disp[1, :, 0, 2] = torch.tensor([1.0, 0.0])  # D(p) - D(q) = (0, 1): the offset, 0
    disp[1, :, 1, 0] = torch.tensor([0.0, 2.0])  # (1, -1): the offset, 0
    disp[1, :, 1, 1] = torch.tensor([0.5, 0.0])  # (0.5, 1) against (1, 0): 0.5 + 1
    total, parts = irn_loss(logits, disp, label, PathIndex(2, (2, 3)))
    expected = {
        "bg_pos": -math.log(0.5 + EPS) / (1 + EPS),
        "fg_pos": -(math.log(0.7 + EPS) + 2 * math.log(0.5 + EPS)) / (3 + EPS),
        "neg": -(math.log(1 + EPS - 0.7) + math.log(1 + EPS - 0.4)) / (2 + EPS),
        "dp_fg": 1.5 / (2 * 3 + EPS),
        "dp_bg": 0.6 / (2 * 1 + EPS),
    }
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-5), name
    affinity = (expected["bg_pos"] / 2 + expected["fg_pos"] / 2 + expected["neg"]) / 2
    assert total.item() == pytest.approx(affinity + (expected["dp_fg"] + expected["dp_bg"]) / 2, rel=1e-5)


def test_loss_matches_a_loop_on_random_maps():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 7, 9, generator=generator) * 2
    disp = torch.randn(2, 2, 7, 9, generator=generator)
    label = torch.randint(0, 3, (2, 7, 9), generator=generator, dtype=torch.uint8)
    label[torch.rand(2, 7, 9, generator=generator) < 0.2] = UNSURE
    total, parts = irn_loss(logits, disp, label, PathIndex(3, (7, 9)))
    expected_total, expected = loop_loss(logits, disp, label, PathIndex(3, (7, 9)))
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-5), name
    assert total.item() == pytest.approx(expected_total, rel=1e-5)


# --------------------------------------------------------------------------------- the net
@pytest.mark.parametrize("arch", ["tiny", "resnet50"])
def test_gradients_reach_the_branches_only(arch):
    model = build_irn(arch).train()
    assert not model.head.training and not model.tail.training  # BatchNorm keeps its statistics
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    images = torch.randn(2, 3, 32, 32)
    edge_logits, disp = model(images)
    assert edge_logits.shape == (2, 1, 8, 8) and disp.shape == (2, 2, 8, 8)
    loss, _ = irn_loss(edge_logits, disp, torch.randint(0, 3, (2, 8, 8)), PathIndex(3, (8, 8)))
    loss.backward()
    edge, displacement = model.branch_parameters()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in edge + displacement)
    assert all(p.grad is None and not p.requires_grad for p in [*model.head.parameters(), *model.tail.parameters()])
    assert len(edge) + len(displacement) == sum(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in statistics.items())


def test_backbone_from_a_wsss_net(tmp_path):
    """--irn_pretrained takes a checkpoint of this project's nets: their head and tail."""
    cam = build_model("cam", 4, arch="tiny")
    torch.nn.init.normal_(cam.tail[0].weight)
    save_atomic({"model": cam.state_dict()}, tmp_path / "cam.pth")
    model = build_irn("tiny", tmp_path / "cam.pth")
    assert all(torch.equal(v, cam.state_dict()[k]) for k, v in model.state_dict().items() if k.startswith("tail."))


def test_displacement_mean_is_subtracted_in_eval_mode():
    model = build_irn("tiny")
    images = torch.randn(1, 3, 32, 32)
    model.displacement_mean.copy_(torch.tensor([0.5, -2.0]))
    raw = model.train()(images)[1]
    shifted = model.eval()(images)[1]
    assert torch.allclose(raw - shifted, torch.tensor([0.5, -2.0]).view(1, 2, 1, 1).expand_as(raw))


def test_edge_map_averages_the_mirror_logits():
    """At stride 4, of the size IRN gives; with no horizontal padding the map of the mirror
    image is the mirror of the map (the two logit maps are averaged, then the sigmoid)."""
    model = build_irn("tiny").eval()
    image = torch.randn(3, 37, 48)
    pair = torch.stack([image, image.flip(-1)])
    edge = model.edge_map(pair, pad_to=48)
    assert edge.shape == (10, 12) and bool(((edge > 0) & (edge < 1)).all())
    logits = model(torch.nn.functional.pad(pair, (0, 0, 0, 11)))[0][:, 0, :10, :12]
    assert torch.allclose(edge, torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2))
    mirrored = model.edge_map(pair.flip(0), pad_to=48)
    assert torch.allclose(mirrored, edge.flip(-1), atol=1e-6)


# ------------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A tiny synthetic VOCdevkit and IR labels from its masks (their outline band is 255),
    half of them palette PNGs as cam_to_ir_label writes, half grayscale."""
    root = make_synthetic_voc(tmp_path_factory.mktemp("data") / "VOCdevkit", num_train_aug=8, num_train=2, num_val=1)
    voc = root / "VOC2012"
    labels = tmp_path_factory.mktemp("ir_label")
    for k, path in enumerate(sorted((voc / "SegmentationClassAug").glob("*.png"))):
        mask = Image.open(path)
        if k % 2:
            mask = Image.fromarray(np.array(mask))
            mask.putpalette(voc_palette())
        mask.save(labels / path.name)
    return voc, labels


def stage(voc, tmp_path, *extra, name="irn.pth"):
    """run_sample.py --stages train_irn with small crops: the tiny net's maps are 8 x 8, an
    epoch is two steps of 4 images."""
    root, labels = voc
    argv = ["--stages", "train_irn", "--voc12_root", str(root), "--ir_label_out_dir", str(labels)]
    argv += ["--irn_weights_name", str(tmp_path / "sess" / name), "--arch", "tiny", "--train_list", "train_aug"]
    argv += ["--irn_crop_size", "32", "--irn_batch_size", "4", "--irn_radius", "3", "--num_workers", "0"]
    run_sample.main([*argv, "--no_progress", "--device", "cpu", *extra])
    return tmp_path / "sess"


def test_stage_trains_writes_and_skips(voc, tmp_path):
    sess = stage(voc, tmp_path, "--irn_num_epoches", "1")
    model, info = load_irn(sess / "irn.pth")
    assert info["arch"] == "tiny" and info["crop_size"] == 32 and info["radius"] == 3 and info["epoch"] == 1
    assert model.displacement_mean.abs().sum() > 0  # the mean shift was measured
    records = training.JsonLines(sess / "irn_log.jsonl").records()
    assert [r["epoch"] for r in records] == [1]
    assert set(records[0]["train"]) == {"bg_pos", "fg_pos", "neg", "dp_fg", "dp_bg"}
    assert (sess / "irn_last.pth").is_file() and read_marker(sess)["kind"] == RUN_KIND

    written = (sess / "irn.pth").stat().st_mtime_ns
    stage(voc, tmp_path, "--irn_num_epoches", "1")  # the weights exist: nothing to do
    assert (sess / "irn.pth").stat().st_mtime_ns == written

    # Another IRN in the folder (run_sample trains one per seed variant) has files of its own.
    stage(voc, tmp_path, "--irn_num_epoches", "1", name="irn_bas_only.pth")
    assert (sess / "irn_bas_only.pth").is_file() and (sess / "irn_bas_only_last.pth").is_file()
    assert len(training.JsonLines(sess / "irn_bas_only_log.jsonl").records()) == 1


def test_resumed_stage_equals_uninterrupted(voc, tmp_path, monkeypatch):
    whole = stage(voc, tmp_path / "whole", "--irn_num_epoches", "2")
    run_epoch = training.TrainingRun.train_one_epoch

    def crash_in_the_second_epoch(self, *args, **kwargs):
        if args[5] == 1:  # the epoch
            raise KeyboardInterrupt
        return run_epoch(self, *args, **kwargs)

    monkeypatch.setattr(training.TrainingRun, "train_one_epoch", crash_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        stage(voc, tmp_path / "resumed", "--irn_num_epoches", "2")
    monkeypatch.undo()
    resumed = stage(voc, tmp_path / "resumed", "--irn_num_epoches", "2")
    expected, got = torch.load(whole / "irn.pth")["model"], torch.load(resumed / "irn.pth")["model"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    logs = [training.JsonLines(sess / "irn_log.jsonl").records() for sess in (whole, resumed)]
    assert logs[0] == logs[1]


def test_the_seed_decides_the_training(voc, tmp_path):
    """run_sample's --seed seeds IRN's training, and a run resumes only under its own seed."""
    sessions = {}
    for name, seed in (("first", "1"), ("again", "1"), ("other", "2")):
        sessions[name] = stage(voc, tmp_path / name, "--irn_num_epoches", "1", "--seed", seed)
    first, again, other = (torch.load(sess / "irn.pth")["model"] for sess in sessions.values())
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    (sessions["first"] / "irn.pth").unlink()  # as if stopped after its last epoch: irn_last.pth remains
    with pytest.raises(CheckpointError, match=r"irn_last\.pth was trained with seed 1, not 2"):
        stage(voc, tmp_path / "first", "--irn_num_epoches", "1", "--seed", "2")


def test_a_checkpoint_of_other_settings_is_not_resumed(voc, tmp_path):
    sess = stage(voc, tmp_path, "--irn_num_epoches", "1")
    (sess / "irn.pth").unlink()  # as if stopped after its last epoch: irn_last.pth remains
    with pytest.raises(CheckpointError, match=r"irn_last\.pth was trained with learning_rate 0\.1, not 0\.2"):
        stage(voc, tmp_path, "--irn_num_epoches", "1", "--irn_learning_rate", "0.2")


def test_stage_errors_name_the_file(voc, tmp_path):
    root, labels = voc
    missing = tmp_path / "labels"
    missing.mkdir()
    message = (
        r"labels/2000_000001\.png: no labels for this id \(and 7 more\); make them first \(stage cam_to_ir_label\)"
    )
    with pytest.raises(DatasetError, match=message):
        stage((root, missing), tmp_path, "--irn_num_epoches", "1")
