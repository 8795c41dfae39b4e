"""The two demo sets (WSOL's CUB-format set, WSSS's VOCdevkit): a rebuild replaces only the
files the set's writer wrote, folders get the usual permissions, each build says where it
writes, and a mistyped WSSS --voc12_root is reported instead of becoming the demo set."""

import functools
import json
import logging
import os
import shutil

import pytest

from bas import outputs
from bas.errors import DatasetError, OutputError
from bas.outputs import MARKER, build_folder, claim
from WSOL import synthetic as wsol_synthetic
from WSOL.datasets import cub_release
from WSSS import synthetic as wsss_synthetic
from WSSS import training
from WSSS.datasets import voc_samples

# Each set: a small build, the same set with two training images (a rebuild), where a user's
# note would go, the images of the small build, and how many training images a set has.
SETS = {
    "WSOL": (
        functools.partial(wsol_synthetic.make_synthetic, num_train=3, num_test=2),
        functools.partial(wsol_synthetic.make_synthetic, num_train=2, num_test=2),
        "notes.txt",
        5,
        lambda root: len(cub_release(root, "train")),
    ),
    "WSSS": (
        functools.partial(wsss_synthetic.make_synthetic_voc, num_train_aug=3, num_train=1, num_val=1),
        functools.partial(wsss_synthetic.make_synthetic_voc, num_train_aug=2, num_train=1, num_val=1),
        "VOC2012/notes.txt",
        4,
        lambda root: len(voc_samples(root / "VOC2012", "train_aug")),
    ),
}


def snapshot(folder):
    """Every entry under ``folder`` with its bytes: equal snapshots, untouched folder."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", SETS)
def test_a_rebuild_leaves_the_users_files_and_folders_alone(name, tmp_path):
    make, rebuild, note, _, _ = SETS[name]
    root = make(tmp_path / "Synthetic")
    (root / note).write_text("my notes\n")
    claim(root / "run", "WSOL training run")  # an output folder the user made inside the set
    (root / "run" / "last.pth").write_bytes(b"weights")
    before = snapshot(root)
    with pytest.raises(OutputError) as caught:
        rebuild(root)
    message = str(caught.value)
    assert message == (
        f"{root} holds files this project did not write (2 entries: {note}, run): "
        "move them out of the folder to have it written again; nothing was changed"
    )
    assert snapshot(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Synthetic"]  # no temporary folder left behind


def test_a_rebuild_is_refused_where_the_generator_changed(tmp_path, monkeypatch):
    """ensure_* rebuild a set an earlier generator drew: not over a user's file."""
    root = SETS["WSOL"][0](tmp_path / "Synthetic")
    (root / "run").mkdir()
    monkeypatch.setattr(wsol_synthetic, "GENERATOR_VERSION", wsol_synthetic.GENERATOR_VERSION + 1)
    with pytest.raises(OutputError, match=r"\(1 entry: run\)"):
        wsol_synthetic.ensure_synthetic(root)
    voc = SETS["WSSS"][0](tmp_path / "SyntheticVOC")
    (voc / "VOC2012" / "JPEGImages" / "mine.jpg").write_bytes(b"my photo")
    with pytest.raises(OutputError, match=r"\(1 entry: VOC2012/JPEGImages/mine.jpg\)"):
        wsss_synthetic.ensure_synthetic_voc(voc, num_train_aug=2, num_train=1, num_val=1)
    assert (voc / "VOC2012" / "JPEGImages" / "mine.jpg").read_bytes() == b"my photo"


@pytest.mark.parametrize("name", SETS)
def test_an_untouched_set_is_rebuilt_in_place(name, tmp_path):
    make, rebuild, _, _, training_images = SETS[name]
    root = make(tmp_path / "Synthetic")
    assert training_images(root) == 3
    rebuild(root)
    assert training_images(root) == 2
    marker = json.loads((root / MARKER).read_text())
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MARKER)
    assert marker["files"] == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Synthetic"]


def test_a_file_that_appears_during_a_rebuild_stops_it(tmp_path):
    """The check runs again right before the old set is replaced."""
    root = build_folder(tmp_path / "set", "demo", lambda folder: (folder / "a.txt").write_text("1"))
    before = snapshot(root)

    def write(folder):
        (folder / "a.txt").write_text("2")
        (root / "late.txt").write_text("mine")

    with pytest.raises(OutputError, match=r"\(1 entry: late.txt\)"):
        build_folder(root, "demo", write)
    assert snapshot(root) == {**before, "late.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_a_file_made_after_the_last_check_is_kept_aside(tmp_path, monkeypatch, caplog):
    """Between the check right before the swap and the swap itself: the earlier build loses
    only its listed files, the rest stays in the folder it was moved to, named in a warning."""
    root = build_folder(tmp_path / "set", "demo", lambda folder: (folder / "sub").mkdir() or (folder / "sub/a").touch())
    check, calls = outputs._own_files, []

    def check_then_write(folder, kind):
        files = check(folder, kind)
        calls.append(folder)
        if len(calls) == 2:  # the check right before the swap
            (folder / "sub" / "late.txt").write_text("mine")
        return files

    monkeypatch.setattr(outputs, "_own_files", check_then_write)
    with caplog.at_level(logging.WARNING):
        build_folder(root, "demo", lambda folder: (folder / "b").touch())
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [MARKER, "b"]
    (aside,) = [p / "set" for p in tmp_path.iterdir() if p.name != "set"]
    assert snapshot(aside) == {"sub": None, "sub/late.txt": b"mine"}
    assert caplog.messages == [f"kept {aside}: it holds files that appeared during the rebuild"]


def test_a_symbolic_link_in_a_set_is_never_followed(tmp_path):
    """A listed folder replaced by a link to the user's folder: the link is named, not entered."""
    root = build_folder(tmp_path / "set", "demo", lambda folder: (folder / "sub").mkdir() or (folder / "sub/a").touch())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a").write_text("my file")
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(mine)
    with pytest.raises(OutputError, match=r"\(1 entry: sub\)"):
        build_folder(root, "demo", lambda folder: (folder / "b").touch())
    assert (mine / "a").read_text() == "my file" and (root / "sub").is_symlink()


def test_a_set_whose_marker_lists_no_files_is_not_rebuilt(tmp_path):
    """A set written before the marker listed its files: what is ours in it is unknown."""
    root = SETS["WSOL"][0](tmp_path / "Synthetic")
    marker = json.loads((root / MARKER).read_text())
    del marker["files"]
    (root / MARKER).write_text(json.dumps(marker))
    before = snapshot(root)
    with pytest.raises(OutputError) as caught:
        SETS["WSOL"][1](root)
    assert str(caught.value) == (
        f"{root} holds a WSOL synthetic set written before this project listed the files it writes: remove it "
        f"(rm -r {root}), once anything of yours is moved out of it, to have it written again; nothing was changed"
    )
    assert snapshot(root) == before


@pytest.mark.parametrize("name", SETS)
def test_folders_and_files_get_the_usual_permissions(name, tmp_path):
    make, _, _, _, _ = SETS[name]
    mask = os.umask(0o022)
    try:
        root = make(tmp_path / "Synthetic")
    finally:
        os.umask(mask)
    modes = {p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")] if p.is_dir()}
    assert modes == {0o755}
    assert {p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()} == {0o644}


@pytest.mark.parametrize("name", SETS)
def test_each_build_says_where_it_writes(name, tmp_path, caplog):
    make, _, _, images, _ = SETS[name]
    with caplog.at_level(logging.INFO):
        make(tmp_path / "Synthetic")
    assert caplog.messages == [f"writing the demo set ({images} images) to {tmp_path / 'Synthetic'} ..."]


# --------------------------------------------------------- WSSS: where the set is written
def train_bas_args(*argv):
    args = training.get_args_parser().parse_args(list(argv))
    training.fill_defaults(args)
    return args


def test_a_mistyped_voc12_root_is_reported_not_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default set and the outputs would go
    with pytest.raises(DatasetError) as caught:
        train_bas_args("--voc12_root", "nope")
    assert str(caught.value) == (
        "--voc12_root nope: no such folder; the demo set is written only to data/SyntheticVOC, "
        "or elsewhere with --make-synthetic"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_wsss_demo_set_is_written_at_its_place_or_with_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = functools.partial(wsss_synthetic.ensure_synthetic_voc, num_train_aug=3, num_train=1, num_val=1)
    monkeypatch.setattr(training, "ensure_synthetic_voc", small)
    samples, _ = training.training_samples(train_bas_args())  # the default place, data/SyntheticVOC
    assert len(samples) == 3 and (tmp_path / "data" / "SyntheticVOC" / "VOC2012").is_dir()
    samples, _ = training.training_samples(train_bas_args("--voc12_root", "elsewhere", "--make_synthetic"))
    assert len(samples) == 3 and (tmp_path / "elsewhere" / "VOC2012").is_dir()
    samples, _ = training.training_samples(train_bas_args("--voc12_root", "elsewhere"))  # a set: used where it is
    assert len(samples) == 3
