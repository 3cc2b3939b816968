"""tools/measure_fills.py: the colour table's two sources (mask means and the VAE round
trip) are on the fills' scale, and only finished runs are read."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import measure_fills  # noqa: E402

SHIPPED = REPO / "src" / "innout" / "weights" / "procedural"


def test_mean_colour_reads_only_the_masked_pixels_of_each_candidate():
    left = np.zeros((4, 4, 3))
    left[:, :2] = (1.0, 0.5, 0.0)
    right = np.full((4, 4, 3), 0.2)
    left_mask = np.zeros((4, 4), np.uint8)
    left_mask[:, :2] = 1
    right_mask = np.ones((4, 4), np.uint8)
    scene = {"names": ["a", "b"], "views": {"a": SimpleNamespace(mask=left_mask), "b": SimpleNamespace(mask=right_mask)}}
    # the mean of the two candidates' in-mask means, not of their pixels pooled
    assert np.allclose(measure_fills.mean_colour({"a": left, "b": right}, scene), (0.6, 0.35, 0.1))


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def test_a_scene_is_read_only_when_its_base_stage_and_generator_metadata_exist(tmp_path):
    results = tmp_path / "results"
    _touch(results / "demo" / "base" / "summary.json")
    _touch(results / "generated" / "demo" / "innout_generator.json")
    _touch(results / "heldout-forward" / "base" / "summary.json")  # no generator metadata
    _touch(results / "generated" / "heldout-360" / "innout_generator.json")  # base stage not finished
    assert measure_fills.scenes_of(tmp_path) == ["demo"]


def test_the_truth_through_the_shipped_vae_keeps_its_colour_in_0_1():
    """The "truth through the VAE" column is compared with fills in 0-1: a round trip
    returned in [-1, 1] or 0-255, or with another geometry, would make every colour
    verdict of the table wrong."""
    from innout.config import load_method_config
    from innout.models import load_inpainter
    from innout.procedural import ProceduralScene

    if not (SHIPPED / "inpainter" / "model_index.json").is_file():
        pytest.skip("no shipped procedural set in this checkout")
    generator = ProceduralScene("forward", 5)
    camera = generator.cameras(1, 64, 48, "train")[0]
    truth = np.round(generator.render(camera, with_object=False, supersample=1)["rgb"] * 255).astype(np.uint8)
    pipe = load_inpainter(str(SHIPPED / "inpainter"), device="cpu", dtype="float32",
                          options=load_method_config("smoke", [], model="procedural").models)
    through = measure_fills.through_vae(pipe, truth)
    assert through.shape == truth.shape and through.dtype == np.float32
    assert 0.0 <= through.min() and through.max() <= 1.0
    error = np.abs(through.reshape(-1, 3).mean(0) - truth.reshape(-1, 3).mean(0) / 255.0)
    assert error.max() < 0.05, error
