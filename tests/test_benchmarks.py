"""The GPU benchmark's dry run: every row runs on the CPU at tiny sizes, its output check
within tolerance (the same device on both sides: the differences are the dtypes' only)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_dry_run_runs_every_row_and_passes_its_checks():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    titles = [row.split("|")[1].strip() for row in rows]
    assert titles[:3] == [
        "random walk 6 x 8, ours, CPU",
        "random walk 6 x 8, ours, cpu",
        "random walk 6 x 8, dense original, cpu",
    ]
    assert titles[3:5] == ["make_cam 32 x 24 fp32", "make_cam 32 x 24 bf16"]
    nets = ["WSSS bas ResNet50", "WSSS cam ResNet50", "WSOL vgg", "WSOL resnet", "WSOL inception", "WSOL mobilenet"]
    assert titles[5:] == [f"train {net} {dtype}" for net in nets for dtype in ("fp32", "bf16")]
    checks = [row.split("|")[4].strip() for row in rows[1:]]
    assert all(re.fullmatch(r"\S+ <= \S+", check) for check in checks), checks
    assert "torchrun over several GPUs: not measured" in run.stdout
