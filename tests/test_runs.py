"""A run's folder is its own: a finished run is final, an unfinished one continues only with
--resume, one writer at a time, and a run that cannot write stops before any work."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bas import outputs
from bas.errors import ArgumentError, OutputError, UserError, run_main, set_interrupt_note
from bas.outputs import LOCK, check_writable, claim, hold, read_marker, release
from bas.training import TrainingRun
from WSOL import train as train_script
from WSOL.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--workers", "0", "--no-progress", "--batch-size", "16", "--threshold", "0.3"]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data") / "Synthetic", num_train=16, num_test=4, seed=1)


def train(data_dir, output_dir, *extra):
    argv = ["--data-dir", str(data_dir), "--output-dir", str(output_dir), *FAST, *extra]
    return train_script.train(train_script.get_args_parser().parse_args(argv))


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished one-epoch BAS run."""
    folder = tmp_path_factory.mktemp("runs") / "bas"
    train(data_dir, folder, "--epochs", "1")
    return folder


# ------------------------------------------------------------------ earlier runs
def test_a_finished_run_is_final(data_dir, finished):
    before = snapshot(finished)
    with pytest.raises(OutputError, match=r"holds a finished run \(1 epochs, log\.jsonl\); a finished run is final"):
        train(data_dir, finished, "--epochs", "1")
    with pytest.raises(OutputError, match="finished run"):  # another method never shares the folder
        train(data_dir, finished, "--epochs", "1", "--method", "cam")
    with pytest.raises(UserError, match="trained with method bas, not cam"):
        train(data_dir, finished, "--epochs", "1", "--method", "cam", "--resume")
    release(finished)  # held until the process ends, as a script's folder is
    assert snapshot(finished) == before


def test_an_unfinished_run_continues_only_with_resume(data_dir, finished, tmp_path):
    folder = tmp_path / "run"
    train(data_dir, folder, "--epochs", "1")
    before = snapshot(folder)
    with pytest.raises(OutputError, match=r"holds an unfinished run \(1 of 2 epochs in last\.pth\): add --resume"):
        train(data_dir, folder, "--epochs", "2")
    assert snapshot(folder) == before
    train(data_dir, folder, "--epochs", "2", "--resume")
    assert torch.load(folder / "last.pth", weights_only=True)["epoch"] == 2


def test_files_of_an_earlier_run_are_never_mixed_with_a_new_one(tmp_path):
    folder = claim(tmp_path / "run", "test-run")
    (folder / "summary.txt").write_text("an earlier run's summary\n")
    release(folder)
    with pytest.raises(OutputError, match=r"holds files of an earlier run \(summary\.txt\)"):
        TrainingRun(folder, "test-run", 1, 0, "cpu")
    # Runs of several nets share a folder under their prefixes: another net's files do not count.
    TrainingRun(folder, "test-run", 1, 0, "cpu", prefix="irn_").close()


# ------------------------------------------------------------------- one writer
HOLDER = """
import sys, time
from bas.outputs import hold
hold(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def start_holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_two_writers_never_share_a_folder(data_dir, tmp_path):
    folder = tmp_path / "run"
    holder = start_holder(folder)
    try:
        with pytest.raises(OutputError, match=rf"{folder} is being written by process {holder.pid} on "):
            train(data_dir, folder, "--epochs", "1")
        with pytest.raises(OutputError, match="is being written by process"):
            claim(folder, "WSOL evaluation")
        assert sorted(p.name for p in folder.iterdir()) == [LOCK]
    finally:
        holder.kill()  # kill -9: the lock stays behind, naming a process that is gone
        holder.wait()
    assert (folder / LOCK).is_file()
    train(data_dir, folder, "--epochs", "1")  # the stale lock is taken over
    assert (folder / "last.pth").is_file() and not (folder / LOCK).exists()  # released at close


def test_a_hold_ends_with_its_process_and_leaves_no_empty_folder(tmp_path):
    folder = tmp_path / "made" / "here"
    hold(folder)
    assert (folder / LOCK).is_file()
    assert check_writable(folder, "any kind") == folder  # its own lock alone leaves a folder empty
    (folder / f".{outputs.MARKER}.x1y2.tmp").write_text("{}")  # a marker being written by another rank
    assert check_writable(folder, "any kind") == folder
    (folder / f".{outputs.MARKER}.x1y2.tmp").unlink()
    release(folder)
    assert not (tmp_path / "made").exists()
    kept = claim(tmp_path / "kept", "k")
    release(kept)
    assert sorted(p.name for p in kept.iterdir()) == [outputs.MARKER]


def test_the_processes_of_one_distributed_job_share_their_folders(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    job = {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400"}
    for name, value in job.items():
        monkeypatch.setenv(name, value)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env={**os.environ, **job}
    )
    try:
        assert holder.stdout.readline() == "held\n"
        assert hold(folder) == folder  # rank 1 beside rank 0: the same job
        monkeypatch.setenv("MASTER_PORT", "29401")  # another job
        outputs._held.clear()
        with pytest.raises(OutputError, match="is being written by process"):
            hold(folder)
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------- before any work
def test_an_output_folder_that_cannot_be_written_stops_before_any_work(tmp_path, monkeypatch):
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")
    argv = ["--data-dir", str(tmp_path / "never"), "--output-dir", str(dangling)]
    with pytest.raises(OutputError, match=r"link is a symbolic link to .*gone, which does not exist"):
        train_script.train(train_script.get_args_parser().parse_args(argv))
    with pytest.raises(OutputError, match=r"cannot be made: .*link is a symbolic link to a missing folder"):
        check_writable(dangling / "inside", "k")
    # A read-only folder (as a user other than root sees one: root may write anywhere).
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only)
    argv = ["--data-dir", str(tmp_path / "never"), "--output-dir", str(read_only / "run")]
    with pytest.raises(OutputError, match=r"run cannot be made: .*read-only is read-only for you"):
        train_script.train(train_script.get_args_parser().parse_args(argv))
    with pytest.raises(OutputError, match=r"read-only cannot be written"):
        check_writable(read_only, "k")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "read-only"]  # nothing made, no demo set


def test_a_loader_without_a_full_batch_stops_naming_the_batch_flag(tmp_path):
    run = TrainingRun(tmp_path / "run", "test-run", 4, 0, "cpu", prefix="irn_")
    with pytest.raises(ArgumentError, match=r"^--irn_batch_size 4: no full batch in 3 images$"):
        run.loader(list(range(3)), 0, drop_last=True, batch_flag="--irn_batch_size")
    TrainingRun(tmp_path / "run", "test-run", 4, 0, "cpu", prefix="irn_").close()  # the folder was let go
    run = TrainingRun(tmp_path / "run", "test-run", 4, 0, "cpu", prefix="irn_")
    assert len(run.loader(list(range(3)), 0)) == 1  # the last incomplete batch, kept
    run.close()


# ------------------------------------------------------------------- the end
def test_finish_writes_the_net_and_the_flags_and_claims_the_folder(tmp_path):
    """Rank 0 writes the finished net and <prefix>args.json (values JSON cannot hold as
    their text) even when the run trained nothing, and lets the folder go."""
    folder = tmp_path / "run"
    run = TrainingRun(folder, "test-run", 1, 0, "cpu", prefix="irn_", resume=True)
    run.finish({"list": Path("a/b.txt"), "epochs": 3}, folder / "irn.pth", {"model": {}, "epoch": 3})
    assert torch.load(folder / "irn.pth", weights_only=True) == {"model": {}, "epoch": 3}
    assert (folder / "irn_args.json").read_text() == '{\n  "list": "a/b.txt",\n  "epochs": 3\n}\n'
    assert read_marker(folder)["kind"] == "test-run"
    assert not list(folder.glob(LOCK + "*"))
    run = TrainingRun(folder, "test-run", 1, 0, "cpu", prefix="bas_")
    run.finish({"seed": 0})  # the flags only: a run whose nets were saved as they came
    assert sorted(p.name for p in folder.iterdir() if p.name != outputs.MARKER) == [
        "bas_args.json", "irn.pth", "irn_args.json"
    ]  # fmt: skip


# ------------------------------------------------------------------- interrupts
def test_ctrl_c_says_where_the_run_stopped_in_one_line(capsys):
    def main(argv):
        set_interrupt_note("at epoch 3 of 6 (logs/run/last.pth holds epoch 2): rerun with --resume to continue")
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_main(main, [])
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert err == "interrupted at epoch 3 of 6 (logs/run/last.pth holds epoch 2): rerun with --resume to continue\n"
    set_interrupt_note("")


def test_a_training_run_notes_its_epoch_for_an_interrupt(tmp_path, capsys):
    run = TrainingRun(tmp_path / "run", "test-run", 1, 0, "cpu")
    for epoch in run.epochs(0, 3):
        if epoch == 1:
            break

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit):
        run_main(interrupted, [])
    last = tmp_path / "run" / "last.pth"
    assert capsys.readouterr().err == f"interrupted at epoch 2 of 3 ({last} holds epoch 1): rerun with --resume to continue\n"
    run.close()
    with pytest.raises(SystemExit):
        run_main(interrupted, [])
    assert capsys.readouterr().err == "interrupted\n"  # after the run: nothing to continue


def test_train_interrupted_by_ctrl_c_exits_130_with_one_line(data_dir, tmp_path):
    command = [sys.executable, str(ROOT / "WSOL" / "train.py"), "--data-dir", str(data_dir), *FAST]
    command += ["--output-dir", str(tmp_path / "run"), "--epochs", "50"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines = []
    for line in process.stderr:  # the first epoch's line: training is under way
        lines.append(line)
        if line.startswith("epoch   1"):
            break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130, "".join(lines) + rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].startswith("interrupted at epoch ")
    assert rest.strip().splitlines()[-1].endswith("rerun with --resume to continue")
    assert not (tmp_path / "run" / LOCK).exists()


# ----------------------------------------------------------------- distributed
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_rank_is_named_instead_of_waited_for(data_dir, tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.pop("TORCHELASTIC_RUN_ID", None)
    command = [sys.executable, str(ROOT / "WSOL" / "train.py"), "--data-dir", str(data_dir), *FAST]
    command += ["--output-dir", str(tmp_path / "run"), "--dist-timeout", "2", "--device", "cpu"]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: rank 0 of 2: rank 1 did not join within 2 s (--dist-timeout); start every process "
                      "with the same MASTER_ADDR:MASTER_PORT"]  # fmt: skip
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


def test_no_progress_bars_when_stderr_is_not_a_terminal(data_dir, tmp_path, capsys):
    argv = ["--data-dir", str(data_dir), "--output-dir", str(tmp_path / "run"), "--workers", "0", "--epochs", "1"]
    train_script.train(train_script.get_args_parser().parse_args([*argv, "--batch-size", "16", "--threshold", "0.3"]))
    err = capsys.readouterr().err  # a file, as a log would be
    assert "\r" not in err and "it/s" not in err
