"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Real data shared beside the repository (never copied into it; licences vary).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def fox_dir() -> Path:
    """instant-ngp's fox (50 photos 270x480 with transforms.json; non-commercial: tests only)."""
    path = SHARED_DATA / "fox"
    if not (path / "transforms.json").is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on shared cores: one torch thread avoids OpenMP oversubscription
    stalls (two contending threads were 10-30x slower here). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
