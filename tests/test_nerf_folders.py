"""Every NeRF folder the workflow writes (pretrain, base/nerf, refine/nerf) is a nerfstudio
run folder that nerfstudio's own loader opens, also after results/ was copied elsewhere.

A miniature results/ tree is made the way the stages make it, run from a workflow folder
(the working directory, as under Snakemake): the pretrain stage (a few steps on the tiny
procedural scene of tests/test_pretrain.py), the base stage's export of a fine-tuned NeRF
through a temporary sibling folder, the refine stage (two steps on stand-in inpaintings)
and the render stage. The tree is then copied to another folder, the original deleted,
and ``nerfstudio.utils.eval_utils.eval_setup`` (what ns-viewer and ns-render call) loads
each folder from the copy; the refined NeRF rendered through nerfstudio's own cameras
equals the render stage's render of the same view.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pretrain import offline, scene, tiny_cfg, train_renders, trained  # noqa: F401  (session fixtures)
from test_refine import STAGE_OVERRIDES

STAGE_FOLDERS = ("pretrain", "base/nerf", "refine/nerf")


def _make_results(work: Path, trained: dict, renders: Path) -> dict:  # noqa: F811
    from PIL import Image

    from innout.config import load_method_config
    from innout.finetune import NerfTuner
    from innout.frames import read_scene
    from innout.pretrain import run_pretrain
    from innout.refine import run_refine
    from innout.render import run_render
    from innout.stage import atomic_dir

    results = work / "results" / "s"
    shutil.copytree(trained["scene"].parent, results / "scene")
    transforms = results / "scene" / "transforms.json"
    run_pretrain(transforms, results / "pretrain", results / ".work" / "pretrain",
                 tiny_cfg("pretrain.iterations=12", "pretrain.eval_patches_per_view=1"))
    _, _, train, _ = read_scene(transforms)
    base = train[len(train) // 2]
    tuner = NerfTuner(results / "pretrain", device="cpu", decay_steps=2)
    with atomic_dir(results / "base") as tmp:  # the base stage's way: a sibling renamed into place
        tuner.export(tmp / "nerf", extra_meta={"stage": "base"}, final_dir=results / "base" / "nerf")
        shutil.copy2(renders / "rgb" / f"{base.name}.png", tmp / "base.png")
        shutil.copy2(base.object_mask, tmp / "mask.png")
        np.save(tmp / "depth_prior.npy", np.load(renders / "depth" / f"{base.name}.npy"))
        (tmp / "summary.json").write_text(json.dumps({"winner": base.name, "random_weights": True}))
    (results / "inpaint" / "images").mkdir(parents=True)
    for f in train:
        Image.open(renders / "rgb" / f"{f.name}.png").save(results / "inpaint" / "images" / f"{f.name}.png")
    (results / "inpaint" / "summary.json").write_text(json.dumps({"random_weights": True, "base_view": base.name}))
    cfg = load_method_config("smoke", ["device=cpu", *STAGE_OVERRIDES, "refine.iterations=2", "render.train_scale=1.0",
                                       "render.train_views=2", "render.video_frames=2", "render.video_scale=0.5"], model="tiny")
    run_refine(transforms, results / "base", results / "inpaint", results / "refine", results / ".work" / "refine", cfg)
    summary = run_render(transforms, results / "refine" / "nerf", results / "render", cfg,
                         base_summary=results / "base" / "summary.json", inpaint_images=results / "inpaint" / "images")
    return {"base": base.name, "render": summary}


@pytest.fixture(scope="module")
def moved(tmp_path_factory, trained, train_renders, offline):  # noqa: F811
    """A results/ tree made in one workflow folder, then copied to another (and the
    original deleted): the copy's parent is returned, with what the stages reported."""
    import os

    root = tmp_path_factory.mktemp("nerf_folders")
    work, elsewhere = root / "workflow", root / "elsewhere"
    work.mkdir()
    cwd = os.getcwd()
    os.chdir(work)  # the stages run in the workflow folder, as under Snakemake
    try:
        made = _make_results(work, trained, train_renders)
    finally:
        os.chdir(cwd)
    shutil.copytree(work / "results", elsewhere / "results")
    shutil.rmtree(work)
    return {"root": elsewhere, **made}


@pytest.mark.parametrize("folder", STAGE_FOLDERS)
def test_config_paths_are_relative(moved, folder):
    import yaml

    ns_dir = moved["root"] / "results" / "s" / folder / "innout-nerfacto"
    config = yaml.load((ns_dir / "config.yml").read_text(), Loader=yaml.Loader)
    assert not config.output_dir.is_absolute() and not config.data.is_absolute()
    assert config.get_base_dir() == Path("results/s") / folder / "innout-nerfacto"
    data = json.loads((ns_dir / "transforms.json").read_text())
    assert all(not Path(f["file_path"]).is_absolute() and (ns_dir / f["file_path"]).is_file() for f in data["frames"])


def test_eval_setup_opens_every_folder_of_a_copied_results(moved, monkeypatch):
    """nerfstudio's eval_setup loads each NeRF folder of the copy; the refined NeRF,
    rendered through nerfstudio's own model and cameras, equals the render stage's
    render of the same train view."""
    from nerfstudio.utils.eval_utils import eval_setup
    from PIL import Image

    monkeypatch.chdir(moved["root"])
    for folder in STAGE_FOLDERS:
        config_path = Path("results/s") / folder / "innout-nerfacto" / "config.yml"
        _, pipeline, checkpoint, _ = eval_setup(config_path, test_mode="test")
        assert checkpoint.resolve().is_relative_to(moved["root"].resolve()), checkpoint
    # the last one loaded is the refined NeRF
    view = moved["render"]["train_views"][0]
    dataset = pipeline.datamanager.train_dataset
    index = [Path(p).stem for p in dataset.image_filenames].index(view)
    with torch.no_grad():
        ours = pipeline.model.get_outputs_for_camera(dataset.cameras[index : index + 1].to(pipeline.device))["rgb"]
    ours = (np.clip(ours.cpu().numpy(), 0, 1) * 255 + 0.5).astype(np.int16)
    stage = np.asarray(Image.open(moved["root"] / "results" / "s" / "render" / "train" / "rgb" / f"{view}.png"), dtype=np.int16)
    assert ours.shape == stage.shape
    assert np.abs(ours - stage).max() <= 2 and np.abs(ours - stage).mean() < 0.5
