"""Shared fixtures: the real annotation files and checkpoint key lists live outside the repo;
the models' tests copy a module-wide model per test and look at where gradients went."""

import copy
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


@pytest.fixture
def fresh():
    """Copies a model, in training mode, so that tests do not see each other's gradients or statistics."""

    def copy_of(model: torch.nn.Module) -> torch.nn.Module:
        return copy.deepcopy(model).train()

    return copy_of


@pytest.fixture
def grads():
    """Maps a module's parameter names to whether each received a non-zero gradient."""

    def received(module: torch.nn.Module) -> dict[str, bool]:
        return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in module.named_parameters()}

    return received
