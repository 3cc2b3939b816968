"""The masks stage end to end (innout.masks.run_masks): a tiny procedural scene imported
with two annotated views, a small whole-scene NeRF, carving, outputs, resume, SAM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pretrain import TINY

from innout.errors import InputError
from innout.frames import read_scene

pytestmark = pytest.mark.usefixtures("one_thread")

# pretrain's tiny-scene NeRF settings, with this stage's own step counts
TINY_NERF = [*(s for s in TINY if not s.startswith("pretrain.log_every_steps=")),
             "pretrain.iterations=200", "pretrain.steps_per_checkpoint=100"]


def _cfg(*extra: str):
    from innout.config import load_method_config

    return load_method_config("smoke", [*TINY_NERF, *extra], "tiny")


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    from innout.masks import run_masks
    from innout.procedural import write_spinnerf_scene
    from innout.scene import import_scene
    from innout.view_suggest import suggest_from_transforms

    root = tmp_path_factory.mktemp("masks")
    write_spinnerf_scene(root / "src", "forward", 0, 20, 2, 128, 96, (2,), progress=False)
    # all masks first, to learn which views to annotate (as a user would: innout suggest-views)
    import_scene(root / "src", "spinnerf", root / "full", downscale=2, mask_dilation_iterations=1)
    annotated = suggest_from_transforms(root / "full" / "transforms.json", [2])["2"]["views"]
    import_scene(root / "src", "spinnerf", root / "scene", downscale=2, mask_dilation_iterations=1, masks=annotated)
    transforms = root / "scene" / "transforms.json"
    summary = run_masks(transforms, transforms, root / "out", root / "work", _cfg())
    return root, annotated, summary


def test_two_annotated_views_mask_the_others(stage_run):
    root, annotated, summary = stage_run
    assert summary["annotated_views"] == sorted(annotated)
    assert summary["iou_mean"] >= 0.75, summary["per_view"]
    assert len([v for v in summary["per_view"].values() if "iou" in v]) == 18
    assert summary["empty_views"] == []
    assert summary["suggested_views"] == sorted(annotated) or set(summary["suggested_views"]) == set(annotated)
    out = root / "out"
    for sub in ("masks", "nerf_masks", "raw"):
        assert len(list((out / sub).iterdir())) == 20
    assert (out / "overview.png").is_file()
    # the annotated views' masks are their annotations, dilated as the import dilates
    from innout.mask_cleanup import dilate_mask

    ann = np.asarray(Image.open(root / "scene" / "annotations" / f"{annotated[0]}.png")) > 127
    mask = np.asarray(Image.open(out / "masks" / f"{annotated[0]}.png")) > 127
    assert np.array_equal(mask, dilate_mask(ann, 5, 1))
    nerf_mask = np.asarray(Image.open(out / "nerf_masks" / f"{annotated[0]}.png")) > 127
    assert np.array_equal(nerf_mask, ~mask)


def test_later_stages_read_the_masks_as_given(stage_run):
    root, _, _ = stage_run
    meta, frames, train, test = read_scene(root / "out" / "transforms.json")  # no missing masks any more
    assert len(train) == 20 and len(test) == 2
    for f in train:
        assert f.nerf_mask.parent == root / "out" / "nerf_masks" and f.nerf_mask.is_file()
    for f in test:  # test views keep their evaluation regions from the scene
        assert f.object_mask.parent == root / "scene" / "masks"
    assert meta["innout"]["masks"]["made_by"] == "masks stage"


def test_a_rerun_reuses_the_trained_nerf(stage_run, caplog):
    from innout.masks import run_masks

    root, _, first = stage_run
    transforms = root / "scene" / "transforms.json"
    with caplog.at_level("INFO"):
        again = run_masks(transforms, transforms, root / "out", root / "work", _cfg())
    assert any("already complete" in r.getMessage() for r in caplog.records)
    assert again["per_view"] == first["per_view"]  # same seed, same masks
    # no SAM: the masks come from the scene's geometry, no learnt weights, no label or warning
    assert first["weights"] == "pretrained" and first["weights_label"] is None and first["warning"] is None


def test_sam_refinement_runs_and_says_its_weights_are_random(stage_run):
    from innout.masks import run_masks

    root, annotated, _ = stage_run
    transforms = root / "scene" / "transforms.json"
    summary = run_masks(transforms, transforms, root / "out_sam", root / "work", _cfg("masks.sam=random"))
    assert summary["sam"]["random_weights"] is True
    # the pair every stage made with models carries (innout.provenance), not a stage-own key
    assert summary["weights"] == "random" and "RANDOM" in summary["warning"] and "random_weights" not in summary
    records = [v["sam"] for n, v in summary["per_view"].items() if n not in annotated]
    assert len(records) == 18 and all("iou_with_propagated" in r for r in records)


def test_sam_on_a_missing_gpu_is_the_stages_one_line():
    """SAM resolves its device as every stage does: ``cuda`` without a GPU is one line."""
    import torch

    from innout.errors import StageError
    from innout.sam_refine import load_sam

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(StageError, match="'cuda' requested, but torch"):
        load_sam("random", device="cuda")


def test_a_scene_with_every_mask_has_nothing_to_do(stage_run):
    from innout.masks import run_masks

    root, _, _ = stage_run
    transforms = root / "full" / "transforms.json"
    with pytest.raises(InputError, match="nothing to do") as err:
        run_masks(transforms, transforms, root / "out_full", root / "work_full", _cfg())
    assert str(err.value).startswith(str(transforms)) and not (root / "out_full").exists()


def test_the_stage_runs_on_a_virtual_gpu(stage_run, tmp_path, monkeypatch):
    """Its GPU path (the whole-scene NeRF trained and rendered on ``cuda``, SAM there too)
    keeps every tensor on one device: on a virtual GPU (tests/virtual_gpu.py), from a fresh
    work folder (the module's NeRF would be reused)."""
    from virtual_gpu import pretend_cuda, virtual_gpu

    from innout.masks import run_masks

    root, _, _ = stage_run
    transforms = root / "scene" / "transforms.json"
    pretend_cuda(monkeypatch)
    with virtual_gpu():
        summary = run_masks(transforms, transforms, tmp_path / "out", tmp_path / "work",
                            _cfg("device=cuda", "masks.sam=random"))
    assert summary["iou_mean"] >= 0.75 and summary["empty_views"] == []
    assert summary["sam"]["random_weights"] and len([v for v in summary["per_view"].values() if "sam" in v]) == 18
