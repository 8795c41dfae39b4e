"""The motivation experiment: masks, masked predictions and shares on hand-made features whose
curves are known exactly, and the command's files, whole or resumed after an interruption."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bas.errors import ArgumentError, OutputError
from WSOL import motivation
from WSOL.datasets import cub_release
from WSOL.models import build_model
from WSOL.synthetic import make_synthetic


# ------------------------------------------------------------------------------ masks
def test_threshold_masks_grow_from_the_peak_to_the_whole_map():
    score_map = np.array([[0.0, 1.0], [3.0, 2.0]])  # normalized: 0, 1/3, 1, 2/3
    masks = motivation.threshold_masks(score_map, 4)  # t = 1, 2/3, 1/3, 0
    assert masks.tolist() == [
        [[False, False], [True, False]],
        [[False, False], [True, True]],
        [[False, True], [True, True]],
        [[True, True], [True, True]],
    ]


def test_a_flat_map_is_at_every_level_its_threshold_masks_are_the_whole_map():
    masks = motivation.threshold_masks(np.full((2, 3), 0.4), 3)
    assert masks.sum((1, 2)).tolist() == [6, 6, 6]


def test_square_masks_are_centred_on_the_first_peak_and_end_on_the_whole_map():
    score_map = np.zeros((5, 5))
    score_map[1, 1] = score_map[3, 3] = 1.0  # two peaks: the first in row-major order is (1, 1)
    masks = motivation.square_masks(score_map, 4)  # half-sides 0, 1, 2, 3 (the farthest pixel: 3)
    assert masks.sum((1, 2)).tolist() == [1, 9, 16, 25]
    assert masks[0, 1, 1] and masks[1, :3, :3].all()


# ---------------------------------------------------------------- masked predictions
def one_by_one(weight: list[list[float]], bias: list[float]) -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(len(weight[0]), len(weight), 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight)[:, :, None, None])
        conv.bias.copy_(torch.tensor(bias))
    return conv


def test_a_uniform_object_feature_gives_an_activation_linear_in_coverage():
    """One channel, 1 on a 4 x 4 object in an 8 x 8 map, 0 around it; the class map is
    2 x feature - 1 for class 0: its mean over the masked map is -1 + 2 x 16 / 64 x coverage."""
    features = torch.zeros(1, 8, 8)
    features[0, 2:6, 2:6] = 1.0
    object_region = np.zeros((8, 8), dtype=bool)
    object_region[2:6, 2:6] = True
    classifier = one_by_one([[2.0], [0.0]], [-1.0, 0.0])
    masks = motivation.square_masks(object_region.astype(float), 6)  # half-sides 0..5 from pixel (2, 2)
    ce, activation = motivation.masked_predictions(classifier, features, torch.from_numpy(masks), 0)
    covered, background = motivation.region_shares(masks, object_region, np.zeros_like(object_region))
    assert covered.tolist() == [1 / 16, 4 / 16, 9 / 16, 1.0, 1.0, 1.0]
    assert background.tolist() == [0.0, 5 / 48, 16 / 48, 20 / 48, 33 / 48, 1.0]
    assert activation.tolist() == pytest.approx((-1 + 0.5 * covered).tolist(), abs=1e-6)
    logits = torch.stack([activation, torch.zeros(6)], 1)  # class 1's map is 0
    expected_ce = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long), reduction="none")
    assert ce.tolist() == pytest.approx(expected_ce.tolist(), abs=1e-6)


def test_a_one_pixel_discriminative_peak_saturates_the_ce_at_the_first_step():
    """All the evidence in one pixel: the first threshold mask is that pixel, and every
    larger mask adds only zeros, so CE and activation are flat from the first step."""
    features = torch.zeros(2, 6, 6)
    features[0, 4, 1] = 36.0 * 5  # mean 5 for class 0 over the map
    masks = motivation.threshold_masks(features[0].numpy(), 5)
    ce, activation = motivation.masked_predictions(lambda f: f, features, torch.from_numpy(masks), 0)
    assert masks[0].sum() == 1 and masks[0, 4, 1]
    assert activation.tolist() == [5.0] * 5
    assert ce.tolist() == pytest.approx([float(np.log1p(np.exp(-5.0)))] * 5)
    curves = {"ce": ce.numpy()[None].astype(float), "activation": activation.numpy()[None].astype(float)}
    points = motivation.turning_points(curves)
    assert points["ce_fallen"].tolist() == [0]
    assert points["ce_below_start"].tolist() == [-1]  # at its floor from the start: never below 5 % of it


def test_turning_points_are_where_ce_is_below_5_percent_of_its_start_or_of_its_fall_and_where_activation_peaks():
    ce = np.array([[4.0, 2.0, 0.3, 0.1, 0.0, 0.0], [4.0, 2.0, 1.5, 1.2, 1.0, 1.0]])
    curves = {"ce": ce, "activation": np.array([[0.0, 1, 2, 3, 4, 3.5], [0.0, 1, 2, 2, 1, 0]])}
    points = motivation.turning_points(curves)
    assert points["ce_below_start"].tolist() == [3, -1]  # 0.1 <= 0.05 x 4 < 0.3; never below 0.2
    assert points["ce_fallen"].tolist() == [3, 4]  # (1.2 - 1) / 3 > 0.05 >= (1 - 1) / 3
    assert points["activation_peak"].tolist() == [4, 2]


def test_the_summary_gives_medians_of_the_shares_where_ce_that_never_falls_below_5_percent_counts_as_beyond():
    def record(ce: list[float]) -> dict:
        curves = {"object": [0.25, 0.5, 1.0], "background": [0.0, 0.5, 1.0], "ce": ce, "activation": [1.0, 3, 2]}
        return {"image": "x", "label": 0, "curves": [{protocol: curves for protocol in motivation.PROTOCOLS}]}

    records = [record([4.0, 0.1, 0.0]), record([4.0, 3.0, 0.1]), record([4.0, 3.0, 1.0])]
    entry = motivation.summarize(records, ["BAS"])["networks"]["BAS"]["threshold"]
    assert entry["ce_below_start_images"] == 2
    assert entry["ce_below_start_object"] == 1.0  # shares 0.5, 1.0 and never
    assert entry["ce_fallen_object"] == 1.0  # steps 1, 2, 2
    assert entry["activation_peak_object"] == 0.5 and entry["activation_peak_background"] == 0.5
    many_never = motivation.summarize(records[2:], ["BAS"])
    assert many_never["networks"]["BAS"]["threshold"]["ce_below_start_object"] is None
    line = motivation.summary_lines(many_never)[0]
    assert "CE first <= 5 % of its value at the first mask: never (never), in 0 of 1 images" in line


def test_shares_leave_ignored_pixels_out_of_the_background():
    region = np.zeros((4, 4), dtype=bool)
    region[0, 0] = True
    ignore = np.zeros_like(region)
    ignore[3] = True  # a row ignored: 11 background pixels remain
    masks = np.ones((1, 2, 2), dtype=bool)  # enlarged to 4 x 4: everything
    covered, background = motivation.region_shares(masks, region, ignore)
    assert covered.tolist() == [1.0] and background.tolist() == [1.0]
    masks[0, 1] = False  # the top half: the object and 7 of the 11 background pixels
    assert motivation.region_shares(masks, region, ignore)[1].tolist() == [7 / 11]


# --------------------------------------------------------------------------- command
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=4, num_test=3, seed=1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """An untrained 4-class BAS and CAM demo generator in our format."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for seed, method in enumerate(("bas", "cam")):
        torch.manual_seed(seed)
        model = build_model("tiny", 4, method=method)
        entries = {"model": model.state_dict(), "arch": "tiny", "method": method, "num_classes": 4}
        paths[method] = folder / f"{method}.pth"
        torch.save({**entries, "root": "Synthetic", "epoch": 1}, paths[method])
    return paths


def arguments(data_dir: Path, checkpoints: dict, output: Path) -> list[str]:
    return [
        "--data-dir", str(data_dir), "--checkpoint", str(checkpoints["bas"]), "--compare", str(checkpoints["cam"]),
        "--output-dir", str(output), "--workers", "0", "--no-progress", "--batch-size", "2", "--steps", "4",
    ]  # fmt: skip


def run(data_dir: Path, checkpoints: dict, output: Path) -> None:
    motivation.main(arguments(data_dir, checkpoints, output))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(data_dir, checkpoints, tmp_path_factory) -> Path:
    """The folder of an uninterrupted run."""
    output = tmp_path_factory.mktemp("runs") / "whole"
    run(data_dir, checkpoints, output)
    return output


def test_the_command_writes_curves_figure_and_summary_and_a_resumed_run_equals_a_whole_one(
    data_dir, checkpoints, whole, tmp_path, monkeypatch
):
    records = lines(whole / motivation.CURVES)
    assert [r["image"] for r in records] == [s.image_id for s in cub_release(data_dir, "test")]
    for record in records:
        assert len(record["curves"]) == 2  # BAS, then CAM
        for curves in record["curves"]:
            for protocol in ("threshold", "square"):
                assert {len(values) for values in curves[protocol].values()} == {4}
                assert curves[protocol]["object"][-1] == 1.0 and curves[protocol]["background"][-1] == 1.0
    assert (whole / "motivation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((whole / "summary.json").read_text())
    assert list(summary["networks"]) == ["BAS (bas.pth)", "CAM (cam.pth)"] and summary["images"] == 3
    assert len((whole / "summary.txt").read_text().splitlines()) == 4
    assert not list(whole.glob("curves-rank*"))

    # Interrupted after the first batch (two images), with a third line half written.
    resumed, real = tmp_path / "resumed", motivation.batch_records
    calls = []

    def stop_at_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(motivation, "batch_records", stop_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(data_dir, checkpoints, resumed)
    monkeypatch.setattr(motivation, "batch_records", real)
    part = resumed / motivation.PART.format(0)
    assert len(lines(part)) == 2
    with open(part, "a") as f:
        f.write('{"image": "half')
    measured = []
    monkeypatch.setattr(motivation, "batch_records", lambda *a, **k: measured.extend(a[2]) or real(*a, **k))
    run(data_dir, checkpoints, resumed)
    assert len(measured) == 1  # only the images not yet recorded
    assert lines(resumed / motivation.CURVES) == records
    assert (resumed / "summary.txt").read_text() == (whole / "summary.txt").read_text()


def test_curves_of_other_weights_are_never_added_to_a_folder(data_dir, checkpoints, whole):
    before = (whole / motivation.CURVES).read_bytes()
    swapped = {"bas": checkpoints["cam"], "cam": checkpoints["bas"]}
    with pytest.raises(OutputError, match="holds curves made from other inputs or settings"):
        run(data_dir, swapped, whole)
    assert (whole / motivation.CURVES).read_bytes() == before


def test_two_processes_under_torchrun_each_measure_their_share_and_rank_0_merges_them(
    data_dir, checkpoints, whole, tmp_path
):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    script = Path(motivation.__file__)
    result = subprocess.run(
        [*torchrun, str(script), *arguments(data_dir, checkpoints, tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    two, one = lines(tmp_path / "two" / motivation.CURVES), lines(whole / motivation.CURVES)
    assert [r["image"] for r in two] == [r["image"] for r in one]  # every image once, in the dataset's order
    for shared, single in zip(two, one):
        for networks in zip(shared["curves"], single["curves"]):
            for protocol in motivation.PROTOCOLS:
                for key, values in networks[0][protocol].items():
                    assert values == pytest.approx(networks[1][protocol][key], abs=1e-5)  # thread counts differ
    assert not list((tmp_path / "two").glob("curves-rank*"))


def test_runs_combine_into_one_figure_and_summary_over_all_their_images(data_dir, checkpoints, whole, tmp_path):
    again = shutil.copytree(whole, tmp_path / "again")
    combined = tmp_path / "combined"
    motivation.main(["--combine", str(whole), str(again), "--output-dir", str(combined)])
    summary = json.loads((combined / "summary.json").read_text())
    assert summary["images"] == 6 and summary["runs"] == [str(whole), str(again)]
    one_run = json.loads((whole / "summary.json").read_text())["networks"]
    assert list(summary["networks"]) == ["BAS", "CAM"]
    assert list(summary["networks"].values()) == list(one_run.values())  # the same curves twice: the same medians
    assert (combined / "motivation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((combined / "summary.txt").read_text().splitlines()) == 4

    swapped = tmp_path / "swapped"  # CAM first: its curves would be drawn as BAS's
    run(data_dir, {"bas": checkpoints["cam"], "cam": checkpoints["bas"]}, swapped)
    with pytest.raises(ArgumentError, match=f"{swapped} measured CAM, BAS; {whole} measured BAS, CAM"):
        motivation.main(["--combine", str(whole), str(swapped), "--output-dir", str(tmp_path / "mixed")])
    with pytest.raises(ArgumentError, match=f"{tmp_path} holds no finished motivation run"):
        motivation.main(["--combine", str(whole), str(tmp_path), "--output-dir", str(tmp_path / "mixed")])
    assert not (tmp_path / "mixed").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint", "bas.pth"], "--combine draws runs already measured: it takes no --checkpoint"),
        ([], "--combine needs --output-dir"),
    ],
)
def test_combine_takes_finished_runs_and_an_output_folder_only(extra, message, tmp_path):
    with pytest.raises(ArgumentError, match=message):
        motivation.main(["--combine", str(tmp_path), *extra])
