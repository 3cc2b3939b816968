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


@pytest.fixture(scope="session")
def procedural_like(tmp_path_factory) -> list[str]:
    """Hydra overrides (on top of ``model=tiny``) that make a stand-in of a trained model
    set: the tiny models saved as local folders (loaded with from_pretrained like shipped
    weights) and ``provenance: procedural``; LPIPS and FID keep their random backbones.
    Its outputs must carry the procedural label and never the random-weights warning."""
    from innout.model_presets import save_tiny_depth, save_tiny_inpainter

    root = tmp_path_factory.mktemp("procedural-like")
    inpainter = save_tiny_inpainter(root / "inpainter")
    depth = save_tiny_depth(root / "depth")
    return ["models.name=procedural-like", f"models.inpainter={inpainter}", f"models.depth={depth}",
            "models.provenance=procedural"]
