"""Shared fixtures: the real annotation files and checkpoint key lists live outside the repo."""

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("BAS_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture
def shared_dir() -> Path:
    """The folder with the real datasets' annotation files (``shared/``), beside the checkout."""
    if not SHARED.is_dir():
        pytest.skip(f"the shared annotation folder is absent ({SHARED}); set BAS_SHARED_DIR to point at it")
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
