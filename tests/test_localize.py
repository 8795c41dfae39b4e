"""localize.py: images in, classes, boxes in image pixels, overlays, JSON and CSV out; from our
checkpoints and the original release's. And saved maps scored with no image folder at all."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bas.errors import ArgumentError, CheckpointError, DatasetError, OutputError
from bas.outputs import read_marker
from WSOL import evaluator, localize
from WSOL.models import build_model

WSOL = Path(__file__).resolve().parents[1] / "WSOL"
FAST = ["--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", 4).eval()


@pytest.fixture(scope="module")
def checkpoints(model, tmp_path_factory) -> dict[str, Path]:
    """The same weights in our format (which records what to build) and in the release's."""
    folder = tmp_path_factory.mktemp("checkpoints")
    ours = {"model": model.state_dict(), "arch": "tiny", "method": "bas", "num_classes": 4, "root": "Synthetic"}
    torch.save({**ours, "best_thr": 0.3, "epoch": 3}, folder / "ours.pth")
    torch.save({"model": model.state_dict(), "best_thr": 0.3, "epoch": 3}, folder / "release.pth.tar")
    return {"ours": folder / "ours.pth", "release": folder / "release.pth.tar"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A JPEG and a PNG in a folder, one more JPEG below it, and a text file to be ignored."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(folder / "wide.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 50, 3), dtype=np.uint8)).save(folder / "tall.png")
    (folder / "more").mkdir()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / "more" / "square.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(*argv: str) -> Path:
    args = localize.get_args_parser().parse_args([*argv, *FAST])
    return localize.localize(args)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------- boxes
def test_boxes_map_back_to_image_pixels_exactly(model, tmp_path, monkeypatch):
    """A map we control, given in the 224 crop frame: its components' boxes scale to the image."""
    Image.new("RGB", (448, 112)).save(tmp_path / "a.png")  # 2x wide, half as high as the crop
    score_map = torch.zeros(1, 1, 224, 224)
    score_map[..., 50:100, 56:112] = 1.0  # the largest component: rows 50..99, columns 56..111
    score_map[..., 200:210, 0:4] = 0.8  # a smaller one

    def localize_stub(images, labels=None, topk=1):
        return torch.tensor([[0.0, 3.0, 1.0, 2.0]]).expand(len(images), 4), score_map.expand(len(images), 1, 224, 224)

    monkeypatch.setattr(model, "localize", localize_stub)
    (result,) = localize.localize_images(
        model, [tmp_path / "a.png"], threshold=0.5, topk=4, crop=224, names="abcd", top_classes=2, all_components=True
    )
    assert result.size == (448, 112)
    np.testing.assert_array_equal(result.box, [112, 25, 224, 50])  # (56, 50, 112, 100) x (2, 0.5, 2, 0.5)
    np.testing.assert_array_equal(result.components, [[112, 25, 224, 50], [0, 100, 8, 105]])
    np.testing.assert_allclose(result.areas, [50 * 56 / 224**2, 10 * 4 / 224**2])
    assert [(c, n) for c, n, _ in result.classes] == [(1, "b"), (3, "d")]
    assert result.classes[0][2] == pytest.approx(torch.tensor([0.0, 3, 1, 2]).softmax(0)[1].item())
    assert result.score_map.shape == (224, 224)

    (nothing,) = localize.localize_images(model, [tmp_path / "a.png"], threshold=1.0, topk=4, crop=224)
    np.testing.assert_array_equal(nothing.box, [0, 0, 448, 112])  # nothing above: the whole image
    assert nothing.components.shape == (0, 4)

    sideways = Image.new("RGB", (112, 448))  # a camera's photo: stored turned, with a tag to turn it upright
    exif = sideways.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    sideways.save(tmp_path / "b.jpg", exif=exif)
    (upright,) = localize.localize_images(model, [tmp_path / "b.jpg"], threshold=0.5, topk=4, crop=224)
    assert upright.size == (448, 112)  # boxes are in the image as it is shown
    np.testing.assert_array_equal(upright.box, [112, 25, 224, 50])
    picture = localize.overlay_image(upright)
    assert picture.shape[1] > 2 * picture.shape[0]  # drawn on the upright (wide) image


def test_unreadable_files_take_their_place_among_the_results(model, images, tmp_path):
    """Batches of two: a readable image after an unreadable one, and a batch with none readable."""
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    broken, empty = tmp_path / "broken.jpg", tmp_path / "empty.png"
    paths = [images / "tall.png", broken, broken, images / "wide.jpg", empty]
    results = list(localize.localize_images(model, paths, threshold=0.5, crop=64, batch_size=2))
    assert [result.path for result in results] == paths
    found, unread = localize.Localization, localize.Unreadable
    assert [type(result) for result in results] == [found, unread, unread, found, unread]
    assert results[1].message == f"{broken}: cannot read the image (cannot identify image file '{broken}')"
    assert (results[0].size, results[3].size) == ((50, 70), (80, 48))


def test_component_boxes_put_the_protocols_box_first():
    from WSOL.metrics import largest_component_box

    binary = np.zeros((20, 20), bool)
    binary[1:4, 1:4] = binary[10:13, 10:13] = True  # equal sizes: the first in row-major order wins
    binary[15:17, 0:2] = True
    boxes, areas = localize.component_boxes(binary)
    np.testing.assert_array_equal(boxes, [[1, 1, 4, 4], [10, 10, 13, 13], [0, 15, 2, 17]])
    assert areas.tolist() == [9, 9, 4]
    np.testing.assert_array_equal(boxes[0], largest_component_box(binary))


def test_top1_map_is_the_predicted_class(model):
    images = torch.randn(3, 3, 64, 64)
    score, maps = localize.scores_and_maps(model, images, 1)
    expected_score, expected = model.localize(images, score.argmax(1), 1)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(score, expected_score)
    torch.testing.assert_close(localize.scores_and_maps(model, images, 4)[1], model.localize(images, None, 4)[1])


# ------------------------------------------------------------------------ the script
def test_our_checkpoint_on_a_folder(checkpoints, images, tmp_path):
    output = run("--checkpoint", str(checkpoints["ours"]), str(images), "--output-dir", str(tmp_path / "out"))
    report = json.loads((output / "results.json").read_text())
    assert (report["arch"], report["root"], report["threshold"], report["topk"]) == ("tiny", "Synthetic", 0.3, 1)
    names = [Path(entry["image"]).relative_to(images).as_posix() for entry in report["images"]]
    assert names == ["more/square.jpg", "tall.png", "wide.jpg"]  # recursive, sorted, no text file
    for entry in report["images"]:
        x0, y0, x1, y1 = entry["box"]
        assert 0 <= x0 < x1 <= entry["width"] and 0 <= y0 < y1 <= entry["height"]
        assert len(entry["classes"]) == 4 and sum(c["probability"] for c in entry["classes"]) == pytest.approx(1, 1e-4)
        assert (output / entry["overlay"]).is_file()
    assert (report["images"][1]["width"], report["images"][1]["height"]) == (50, 70)
    assert {p.relative_to(output).as_posix() for p in (output / "overlays").rglob("*.png")} == {
        "overlays/more/square.jpg.png",
        "overlays/tall.png.png",
        "overlays/wide.jpg.png",
    }
    with open(output / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["image"] for row in rows] == [entry["image"] for entry in report["images"]]
    assert [float(rows[2][k]) for k in ("x0", "y0", "x1", "y1")] == report["images"][2]["box"]
    assert rows[0]["class_1"] == str(report["images"][0]["classes"][0]["class"]) and "probability_4" in rows[0]
    assert read_marker(output)["kind"] == localize.LOCALIZE_KIND
    assert not (output / "components.csv").exists()


def test_release_checkpoint_with_arch_and_globs(checkpoints, images, tmp_path):
    """A release checkpoint ({'model', 'best_thr', 'epoch'}) with --arch and --root gives our
    checkpoint's results; glob patterns and single files mix."""
    inputs = [str(images / "*.jpg"), str(images / "tall.png"), str(images / "**" / "*.jpg")]
    ours = run(
        "--checkpoint", str(checkpoints["ours"]), *inputs, "--output-dir", str(tmp_path / "a"), "--all-components"
    )
    release = ["--checkpoint", str(checkpoints["release"]), "--arch", "tiny", "--root", "Synthetic", *inputs]
    theirs = run(*release, "--output-dir", str(tmp_path / "b"), "--all-components", "--no-overlays")
    a, b = (json.loads((folder / "results.json").read_text())["images"] for folder in (ours, theirs))
    assert [Path(e["image"]).name for e in a] == ["wide.jpg", "tall.png", "square.jpg"]  # given order, once each
    for x, y in zip(a, b):
        assert (x["box"], x["classes"], x["components"]) == (y["box"], y["classes"], y["components"])
        assert x["components"][0]["box"] == x["box"] and "overlay" not in y
    with open(ours / "components.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(e["components"]) for e in a) and rows[0]["component"] == "0"
    assert not (theirs / "overlays").exists()


def test_class_names_and_class_agnostic_maps(checkpoints, images, tmp_path):
    (tmp_path / "names.txt").write_text("red\ngreen\n\nblue\nyellow\n")
    argv = [
        "--checkpoint",
        str(checkpoints["ours"]),
        str(images / "wide.jpg"),
        "--class-names",
        str(tmp_path / "names.txt"),
    ]
    output = run(*argv, "--topk", "4", "--top-classes", "2", "--threshold", "0.5", "--output-dir", str(tmp_path / "o"))
    report = json.loads((output / "results.json").read_text())
    assert (report["topk"], report["threshold"]) == (4, 0.5)
    classes = report["images"][0]["classes"]
    assert len(classes) == 2 and all(c["name"] == ["red", "green", "blue", "yellow"][c["class"]] for c in classes)
    with open(output / "results.csv", newline="") as f:
        assert next(csv.DictReader(f))["name_1"] == classes[0]["name"]
    (tmp_path / "names.txt").write_text("red\ngreen\n")
    with pytest.raises(DatasetError, match="2 class names for a model of 4 classes"):
        run(*argv, "--output-dir", str(tmp_path / "o"))


def test_bad_requests_stop_before_any_work(checkpoints, images, tmp_path):
    ours, release = str(checkpoints["ours"]), str(checkpoints["release"])
    out = ["--output-dir", str(tmp_path / "out")]
    with pytest.raises(ArgumentError, match="does not record its dataset: pass --root"):
        run("--checkpoint", release, str(images), *out)
    with pytest.raises(CheckpointError, match=r"holds a arch 'tiny' model; --arch vgg contradicts it"):
        run("--checkpoint", ours, "--arch", "vgg", str(images), *out)
    with pytest.raises(CheckpointError, match=r"holds a root 'Synthetic' model; --root CUB contradicts it"):
        run("--checkpoint", ours, "--root", "CUB", str(images), *out)
    with pytest.raises(ArgumentError, match="the pattern matches no file"):
        run("--checkpoint", ours, str(images / "*.gif"), *out)
    with pytest.raises(ArgumentError, match="missing.jpg: no such file or folder"):
        run("--checkpoint", ours, str(images / "missing.jpg"), *out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArgumentError, match="the folder holds no image"):
        run("--checkpoint", ours, str(tmp_path / "empty"), *out)
    with pytest.raises(ArgumentError, match="--topk 5: the model has 4 classes"):
        run("--checkpoint", ours, str(images), "--topk", "5", *out)
    with pytest.raises(ArgumentError, match="--threshold 2: must lie in"):
        run("--checkpoint", ours, str(images), "--threshold", "2", *out)
    assert not (tmp_path / "out").exists()


def test_a_foreign_output_folder_is_left_untouched(checkpoints, images, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.json").write_text("my own results\n")
    before = snapshot(folder)
    with pytest.raises(OutputError, match="holds files this project did not write"):
        run("--checkpoint", str(checkpoints["ours"]), str(images), "--output-dir", str(folder))
    assert snapshot(folder) == before


def test_unreadable_images_are_skipped_and_counted(checkpoints, images, tmp_path):
    """A text file named .jpg and a truncated JPEG: one warning each, the other image's results
    written, then one error line and a failing status."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.png").write_bytes((images / "tall.png").read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    jpeg = (images / "wide.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    command = [sys.executable, str(WSOL / "localize.py"), "--checkpoint", str(checkpoints["ours"]), "photos", *FAST]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    broken, truncated = Path("photos/broken.jpg"), Path("photos/truncated.jpg")
    skipped = [line for line in lines if line.startswith("skipped ")]
    assert len(skipped) == 2
    assert skipped[0] == f"skipped {broken}: cannot read the image (cannot identify image file '{broken}')"
    assert skipped[1].startswith(f"skipped {truncated}: cannot read the image (image file is truncated (")
    assert [line for line in lines if line.startswith("error: ")] == [
        "error: 2 of 3 images could not be read (skipped above); "
        f"the results of the other 1 are in {Path('localized/results.json')}"
    ]
    report = json.loads((tmp_path / "localized" / "results.json").read_text())
    assert [entry["image"] for entry in report["images"]] == [str(Path("photos/good.png"))]
    assert [entry["image"] for entry in report["unreadable"]] == [str(broken), str(truncated)]
    assert (tmp_path / "localized" / "overlays" / "good.png.png").is_file()
    with open(tmp_path / "localized" / "results.csv", newline="") as f:
        assert [row["image"] for row in csv.DictReader(f)] == [str(Path("photos/good.png"))]


def test_a_second_run_replaces_the_first_runs_files(checkpoints, images, tmp_path):
    out = ["--checkpoint", str(checkpoints["ours"]), "--output-dir", str(tmp_path / "out")]
    run(*out, str(images), "--all-components")
    output = run(*out, str(images / "tall.png"))
    written = [".bas-output.json", "overlays", "overlays/tall.png.png", "results.csv", "results.json"]
    assert sorted(snapshot(output)) == written
    assert [Path(e["image"]).name for e in json.loads((output / "results.json").read_text())["images"]] == ["tall.png"]


def test_an_interrupted_run_leaves_the_earlier_results_whole(checkpoints, images, tmp_path, monkeypatch):
    out = ["--checkpoint", str(checkpoints["ours"]), "--output-dir", str(tmp_path / "out")]
    output = run(*out, str(images), "--threshold", "0.1")
    before = snapshot(output)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(localize, "write_results", interrupted)  # once every overlay is drawn
    with pytest.raises(KeyboardInterrupt):
        run(*out, str(images), "--threshold", "0.9")
    assert snapshot(output) == before
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no partial folder beside it


def test_a_file_put_into_a_localization_folder_stops_the_next_run(checkpoints, images, tmp_path):
    out = ["--checkpoint", str(checkpoints["ours"]), "--output-dir", str(tmp_path / "out")]
    output = run(*out, str(images))
    (output / "overlays" / "mine.txt").write_text("my notes\n")
    before = snapshot(output)
    with pytest.raises(OutputError, match=r"out holds files the earlier localization did not write \(overlays/mine"):
        run(*out, str(images / "tall.png"))
    assert snapshot(output) == before


def test_no_progress_bar_where_stderr_is_no_terminal(checkpoints, images, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoints["ours"]), str(images), "--output-dir", str(tmp_path / "out")]
    localize.localize(localize.get_args_parser().parse_args([*argv, "--workers", "0"]))
    err = capsys.readouterr().err
    assert "it/s" not in err and "\r" not in err


# ---------------------------------------------------------------- saved maps, no images
def test_saved_maps_need_no_image_folder_when_the_metadata_has_sizes(tmp_path, monkeypatch):
    """evaluator.py --maps with wsolevaluation metadata whose image_sizes.txt gives every size:
    no --data-dir, and none at its default place either."""
    meta = tmp_path / "metadata" / "test"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text("birds/a.jpg\nbirds/b.jpg\n")
    (meta / "class_labels.txt").write_text("birds/a.jpg,0\nbirds/b.jpg,1\n")
    (meta / "image_sizes.txt").write_text("birds/a.jpg,448,224\nbirds/b.jpg,100,100\n")
    (meta / "localization.txt").write_text("birds/a.jpg,112,56,224,112\nbirds/b.jpg,0,0,99,99\n")
    maps = tmp_path / "maps" / "birds"
    maps.mkdir(parents=True)
    score_map = np.zeros((224, 224), np.float32)
    score_map[56:113, 56:113] = 1.0  # a's box in the 224 x 224 frame: (56, 56, 112, 112)
    np.save(maps / "a.jpg.npy", score_map)
    np.save(maps / "b.jpg.npy", np.ones((224, 224), np.float32))
    monkeypatch.chdir(tmp_path)  # data/CUB_200_2011 does not exist here
    argv = ["--root", "CUB", "--metadata", str(tmp_path / "metadata"), "--maps", str(tmp_path / "maps")]
    argv += ["--output-dir", str(tmp_path / "scores"), "--threshold", "0.5"]
    report = evaluator.evaluate_saved_maps(evaluator.get_args_parser().parse_args(argv))
    assert (report["images"], report["gt_known"]) == (2, 100.0)
    (meta / "image_sizes.txt").write_text("")  # no sizes (as OpenImages'): the images are needed
    with pytest.raises(DatasetError, match=r"image_ids\.txt:1: image 'birds/a\.jpg' has no size in image_sizes\.txt"):
        evaluator.evaluate_saved_maps(evaluator.get_args_parser().parse_args(argv))
