"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# Real data shared beside the repository (never copied into it; licences vary).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def fox_dir() -> Path:
    """instant-ngp's fox (50 photos 270x480 with transforms.json; non-commercial: tests only)."""
    path = SHARED_DATA / "fox"
    if not (path / "transforms.json").is_file():
        pytest.skip(f"{path} is absent")
    return path
