"""Base-view selection: centroid candidates and the pHash vote."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from innout.base import candidate_views, masked_phash, phash_vote, white_outside_mask
from innout.cameras import Camera, Intrinsics, look_at

K = Intrinsics(100.0, 100.0, 64.0, 48.0, 128, 96)


def _grid_cameras(shift=np.zeros(3)) -> dict[str, Camera]:
    """A 5 x 5 grid of cameras in the plane y = -3 looking at the origin, shuffled names."""
    cams = {}
    for i in range(5):
        for j in range(5):
            eye = np.array([i - 2.0, -3.0, j - 2.0]) + shift
            cams[f"v{(7 * (5 * i + j)) % 25:02d}_{i}{j}"] = Camera(look_at(eye, shift), K)
    return cams


def test_candidates_nearest_the_centroid_ties_by_name():
    cams = _grid_cameras(np.array([10.0, 5.0, -2.0]))
    names = {n[-2:]: n for n in cams}
    got = candidate_views(cams, n=5)
    # the centre camera, then its four neighbours at distance 1, ordered by name
    ring = sorted(names[k] for k in ("12", "21", "23", "32"))
    assert got == [names["22"], *ring]
    assert candidate_views(cams, n=1) == [names["22"]]
    # the next ring (distance sqrt 2) follows, again by name
    diag = sorted(names[k] for k in ("11", "13", "31", "33"))
    assert candidate_views(cams, n=9)[5:] == diag
    # c2w matrices work too; asking for more than there are gives them all
    assert candidate_views({k: c.c2w for k, c in cams.items()}, n=5) == got
    assert len(candidate_views(cams, n=100)) == 25
    with pytest.raises(ValueError):
        candidate_views({}, n=5)


def _fill(rng: np.random.Generator, kind: int) -> np.ndarray:
    """A 96 x 128 image whose masked region holds one of two structured fills."""
    yy, xx = np.mgrid[0:96, 0:128]
    if kind == 0:
        base = 127 + 100 * np.sin(xx / 6.0) * np.cos(yy / 9.0)
    else:
        base = 127 + 100 * np.sign(np.sin(yy / 4.0 + xx / 15.0))
    img = np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 6, (96, 128, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _mask() -> np.ndarray:
    m = np.zeros((96, 128), bool)
    m[20:76, 30:100] = True
    return m


def test_vote_picks_one_of_the_agreeing_four():
    rng = np.random.default_rng(0)
    names = ["c0", "c1", "c2", "c3", "c4"]
    images = {n: _fill(rng, 0) for n in names}
    images["c2"] = _fill(rng, 1)  # the odd one out
    masks = {n: _mask() for n in names}
    out = phash_vote(images, masks)
    assert out["candidates"] == names
    assert out["winner"] in {"c0", "c1", "c3", "c4"}
    assert out["distances"]["c2"] == max(out["distances"].values())
    assert out["distances"][out["winner"]] == min(out["distances"].values())
    assert sum(out["votes"].values()) == 5 and out["votes"]["c2"] == 0
    assert all(len(h) == 16 for h in out["hashes"].values())  # 64-bit pHash in hex
    assert out["pairwise"]["c0"]["c2"] == out["pairwise"]["c2"]["c0"]


def test_vote_ties_go_to_the_smallest_name():
    img = _fill(np.random.default_rng(1), 0)
    out = phash_vote({"b": img, "a": img, "c": img}, {k: _mask() for k in "abc"})
    assert out["winner"] == "a" and set(out["distances"].values()) == {0}


def test_what_is_hashed_is_the_fill_on_white():
    rng = np.random.default_rng(2)
    img, mask = _fill(rng, 0), _mask()
    white = white_outside_mask(img, mask)
    assert (white[~mask] == 255).all() and (white[mask] == img[mask]).all()
    expected = str(imagehash.phash(Image.fromarray(white)))
    assert phash_vote({"a": img}, {"a": mask})["hashes"]["a"] == expected
    # changing anything outside the mask does not change the hash; inside it does
    other = img.copy()
    other[~mask] = rng.integers(0, 256, (int((~mask).sum()), 3))
    assert str(masked_phash(other, mask)) == expected
    flipped = img.copy()
    flipped[mask] = 255 - flipped[mask]
    assert str(masked_phash(flipped, mask)) != expected
    with pytest.raises(ValueError):
        phash_vote({"a": img}, {})


# ======================================================================================
# the stage: run_base on the tiny NeRF of tests/test_pretrain.py (64x48, 40 train views)
# ======================================================================================

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from test_pretrain import SCENE, offline, scene, trained  # noqa: E402,F401  (session fixtures)

from innout.errors import InputError  # noqa: E402

FIT_STEPS = 40
INTERRUPT_AT = 20  # a checkpoint is written there (every 10 steps)
TINY_BASE = [
    "device=cpu",
    "base.n_candidates=3",
    f"base.prior_iterations={FIT_STEPS}",
    "base.rays_per_batch=512",
    "base.prior_rays_per_batch=128",
    "base.learning_rate=5e-3",
    "base.lr_final=1e-3",
    "base.warmup_steps=5",
    "base.steps_per_checkpoint=10",
    "base.log_every_steps=10",
    "inpaint.resolution=48",  # the 64x48 views at their own size: latents 6x8
    "inpaint.steps=2",
]


class Interrupted(Exception):
    pass


def base_cfg(*extra: str):
    """What the rule's script gets: base_stage_params of the composed config."""
    from innout.config import config_from_params, load_method_config
    from innout.rule_params import base_stage_params

    return config_from_params(base_stage_params(load_method_config("smoke", [*TINY_BASE, *extra], "tiny")))


@pytest.fixture(scope="module")
def models_cache(tmp_path_factory, offline):  # noqa: F811
    from innout.config import load_method_config
    from innout.models import fetch_models

    cache = tmp_path_factory.mktemp("models")
    fetch_models(load_method_config("smoke", model="tiny").models, cache)
    return cache


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained, models_cache):  # noqa: F811
    """The stage run twice: straight through, and killed after INTERRUPT_AT fit steps then rerun."""
    from innout.base import run_base

    root = tmp_path_factory.mktemp("base")
    nerf = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    manifest = models_cache / "manifest.json"
    cfg = base_cfg()
    straight = run_base(trained["scene"], nerf, manifest, root / "a" / "out", root / "a" / "work", cfg, prompt="a wall")

    def kill(step: int) -> None:
        if step + 1 == INTERRUPT_AT:
            raise Interrupted(step)

    with pytest.raises(Interrupted):
        run_base(trained["scene"], nerf, manifest, root / "b" / "out", root / "b" / "work", cfg, prompt="a wall", on_step=kill)
    assert not (root / "b" / "out").exists(), "an interrupted run must leave no output"
    resumed = run_base(trained["scene"], nerf, manifest, root / "b" / "out", root / "b" / "work", cfg, prompt="a wall")
    return {"a": root / "a" / "out", "b": root / "b" / "out", "straight": straight, "resumed": resumed, "cfg": cfg,
            "cache": models_cache, "scene": trained["scene"], "nerf": nerf}


def _nerf_state(out_dir: Path) -> dict:
    from innout.renderer import latest_checkpoint

    ckpt = latest_checkpoint(out_dir / "nerf" / "innout-nerfacto" / "nerfstudio_models")
    return torch.load(ckpt, map_location="cpu", weights_only=False)["pipeline"]


def test_outputs_and_summary(runs):
    out, summary = runs["a"], runs["straight"]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["weights"] == "random" and summary["warning"]
    assert summary["prompt"] == "a wall" and summary["seed"] == 0
    assert len(summary["candidates"]) == 3 and set(summary["votes"]) == set(summary["candidates"])
    assert summary["resolution"] == [64, 48]
    for name in summary["candidates"]:
        assert np.asarray(Image.open(out / "candidates" / f"{name}.png")).shape == (48, 64, 3)
    assert np.asarray(Image.open(out / "base.png")).shape == (48, 64, 3)
    assert set(np.unique(np.asarray(Image.open(out / "mask.png")))) <= {0, 255}
    prior = np.load(out / "depth_prior.npy")
    assert prior.shape == (48, 64) and prior.dtype == np.float32 and (prior > 0).all()
    assert summary["depth_alignment"]["n_points"] > 100
    assert summary["prior_fit"]["iterations"] == FIT_STEPS and summary["prior_fit"]["steps_this_run"] == FIT_STEPS
    # the exported NeRF opens with the renderer and is the fitted one (renders/after.png)
    from innout.frames import read_scene
    from innout.renderer import NerfRenderer

    renderer = NerfRenderer.from_config(out / "nerf", device="cpu")
    camera = next(f.camera for f in read_scene(runs["scene"])[2] if f.name == summary["winner"])
    rgb = renderer.render_camera(camera, return_samples=False)["rgb"].numpy()
    after = np.asarray(Image.open(out / "renders" / "after.png")).astype(np.float32) / 255
    assert np.abs(rgb - after).max() <= 1.5 / 255
    config_text = (out / "nerf" / "innout-nerfacto" / "config.yml").read_text()
    assert ".tmp-" not in config_text, "nerfstudio's config names the temporary folder"


def test_prior_fit_moves_the_masked_pixels_towards_the_prior(runs):
    fit = runs["straight"]["prior_fit"]
    assert fit["psnr_mask_after"] > fit["psnr_mask_before"] + 1.0
    assert fit["depth_abs_rel_mask_after"] < fit["depth_abs_rel_mask_before"]
    assert fit["last_loss"]["prior_colour"] < fit["first_loss"]["prior_colour"]


def test_resume_after_an_interruption_gives_the_same_result(runs):
    resumed = runs["resumed"]["prior_fit"]
    assert resumed["resumed_from_step"] == INTERRUPT_AT and resumed["steps_this_run"] == FIT_STEPS - INTERRUPT_AT
    assert runs["resumed"]["inpainting"]["candidates_from_cache"] == 3  # the rerun reused the cached candidates
    a, b = _nerf_state(runs["a"]), _nerf_state(runs["b"])
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed fit differs from the uninterrupted one"
    assert resumed["last_loss"] == runs["straight"]["prior_fit"]["last_loss"]
    for name in ("base.png", "mask.png", "noise.pt", "depth_prior.npy", "overview.png"):
        assert (runs["a"] / name).read_bytes() == (runs["b"] / name).read_bytes(), name


def test_a_gpu_rerun_redoes_what_the_cpu_left_in_the_work_dir(runs, tmp_path, monkeypatch):
    """The CPU's cached candidates and its prior-fit checkpoint are not taken up by a run on a
    GPU (other kernels: other last bits): it inpaints and fits afresh. On a virtual GPU
    (tests/virtual_gpu.py), from a copy of the finished CPU run's work dir; in float32, whose
    pictures there equal the CPU's, so only the device tells the keys apart."""
    from virtual_gpu import pretend_cuda, virtual_gpu

    from innout.base import run_base

    work = tmp_path / "work"
    shutil.copytree(runs["a"].parent / "work", work)
    pretend_cuda(monkeypatch)
    with virtual_gpu():
        on_gpu = run_base(runs["scene"], runs["nerf"], runs["cache"] / "manifest.json", tmp_path / "out", work,
                          base_cfg("device=cuda", "models.dtype=fp32"), prompt="a wall")
    assert on_gpu["inpainting"]["candidates_from_cache"] == 0
    assert on_gpu["prior_fit"]["resumed_from_step"] is None and on_gpu["prior_fit"]["steps_this_run"] == FIT_STEPS


def test_winner_has_the_smallest_summed_hamming_distance(runs):
    out, summary = runs["a"], runs["straight"]
    votes = summary["votes"]
    assert summary["winner"] == min(votes, key=lambda n: (votes[n], n))
    # the votes are those of the candidate images written to disk
    from innout.frames import read_scene

    frames = {f.name: f for f in read_scene(runs["scene"])[2]}
    images = {n: np.asarray(Image.open(out / "candidates" / f"{n}.png").convert("RGB")) for n in summary["candidates"]}
    masks = {n: np.asarray(Image.open(frames[n].object_mask)) > 0 for n in summary["candidates"]}
    assert phash_vote(images, masks)["distances"] == votes
    assert (np.asarray(Image.open(out / "mask.png")) > 0).tolist() == masks[summary["winner"]].tolist()


def test_noise_reproduces_the_winners_inpainting(runs):
    from innout.diffusion import inpaint_single, latent_size
    from innout.frames import read_scene
    from innout.models import load_inpainter

    out, summary, cfg = runs["a"], runs["straight"], runs["cfg"]
    noise = torch.load(out / "noise.pt")
    assert tuple(noise.shape) == (4, *latent_size(64, 48, 48)) and noise.dtype == torch.float32
    frame = next(f for f in read_scene(runs["scene"])[2] if f.name == summary["winner"])
    image = np.asarray(Image.open(frame.image).convert("RGB"))
    mask = np.asarray(Image.open(frame.object_mask)) > 0
    pipe = load_inpainter("tiny", device="cpu", cache_dir=runs["cache"])
    again = inpaint_single(pipe, image, mask, latents=noise, prompt=summary["prompt"], seed=summary["seed"],
                           steps=cfg.inpaint.steps, guidance_scale=cfg.inpaint.guidance_scale,
                           resolution=cfg.inpaint.resolution, scheduler=cfg.inpaint.scheduler)
    assert np.array_equal(again, np.asarray(Image.open(out / "base.png")))
    # and other noise gives another fill: the test can fail
    other = inpaint_single(pipe, image, mask, latents=torch.randn_like(noise), prompt=summary["prompt"],
                           steps=cfg.inpaint.steps, resolution=cfg.inpaint.resolution)
    assert not np.array_equal(other, again)


def test_fit_with_a_consistent_prior_keeps_the_rest_of_the_scene(trained):  # noqa: F811
    """With the true object-free colour and distance as the prior (what a perfect
    inpainter and depth model would give), the fit pulls the masked pixels towards it
    and keeps the unmasked ones."""
    from omegaconf import OmegaConf

    from innout.base import base_view_errors, fit_prior, load_train_views
    from innout.finetune import NerfTuner
    from innout.procedural import ProceduralScene

    views = load_train_views(trained["scene"])
    base = max(views, key=lambda v: v.mask.sum())
    truth = ProceduralScene(SCENE["variant"], SCENE["seed"]).render(base.camera, with_object=False, supersample=1)
    colour = (truth["rgb"] * 255 + 0.5).astype(np.uint8)
    distance = truth["distance"].astype(np.float32)
    fit = OmegaConf.create({"prior_iterations": 100, "rays_per_batch": 512, "prior_rays_per_batch": 128, "prior_weight": 1.0,
                            "depth_weight": 0.1, "depth_sigma": 0.05, "steps_per_checkpoint": 1000, "log_every_steps": 20})
    tuner = NerfTuner(trained["out_dir"], device="cpu", learning_rate=5e-3, lr_final=1e-3, decay_steps=100, warmup_steps=5)
    before = base_view_errors(tuner.renderer.render_camera(base.camera, return_samples=False), base, colour, distance)
    fit_prior(tuner, views, base, colour, distance, fit, trained["out_dir"].parent / "consistent-fit", "x", 0)
    after = base_view_errors(tuner.renderer.render_camera(base.camera, return_samples=False), base, colour, distance)
    print(f"\nconsistent prior: masked PSNR {before['psnr_mask']:.2f} -> {after['psnr_mask']:.2f} dB, depth error "
          f"{before['depth_abs_rel_mask']:.3f} -> {after['depth_abs_rel_mask']:.3f}, unmasked PSNR "
          f"{before['psnr_unmasked']:.2f} -> {after['psnr_unmasked']:.2f} dB")
    assert after["psnr_mask"] > before["psnr_mask"] + 1.0
    assert after["depth_abs_rel_mask"] < before["depth_abs_rel_mask"]
    assert after["psnr_unmasked"] > before["psnr_unmasked"] - 1.0


def test_missing_nerf_fails_in_one_line_and_leaves_nothing(runs, tmp_path):
    from innout.base import run_base

    with pytest.raises(InputError) as err:
        run_base(runs["scene"], tmp_path / "no-nerf", runs["cache"] / "manifest.json", tmp_path / "out", tmp_path / "work", runs["cfg"])
    assert "no-nerf" in str(err.value) and "pretrain" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_manifest_of_another_model_set_fails_in_one_line(runs, tmp_path):
    from innout.base import run_base
    from innout.config import load_method_config
    from innout.models import fetch_models

    other = fetch_models(load_method_config("smoke", model="sd2-random").models, tmp_path / "models")
    assert other["model_set"] == "sd2-random"
    with pytest.raises(InputError) as err:
        run_base(runs["scene"], runs["nerf"], tmp_path / "models" / "manifest.json", tmp_path / "out", tmp_path / "work", runs["cfg"])
    message = str(err.value)
    assert "manifest.json" in message and "sd2-random" in message and "models" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


# ---- the depth prior's plausibility, on the stage ------------------------------------

def _true_monocular(trained, kind: str):  # noqa: F811
    """A stand-in of ``innout.depth_prior.monocular_depth`` that knows the scene: for the
    view whose photo the inpainted image is, the generator's true disparity (a perfect
    depth model: ``good``) or its true z-depth given as disparity (``reversed``: near and
    far swapped, what made the fit's scale -79,517 on a real scene)."""
    from innout.base import load_train_views
    from innout.procedural import ProceduralScene

    views = load_train_views(trained["scene"])
    generator = ProceduralScene(SCENE["variant"], SCENE["seed"])

    def fake(model, processor, image):
        view = max(views, key=lambda v: (np.asarray(image)[~v.mask] == v.image[~v.mask]).mean())
        z = generator.render(view.camera, with_object=False, supersample=1)["depth"].astype(np.float64)
        return 1.0 / z if kind == "good" else z

    return fake


def _base_with_prior(trained, root: Path, monkeypatch, kind: str, *extra: str) -> dict:  # noqa: F811
    """run_base (10 fit steps) with the stand-in depth model of :func:`_true_monocular`;
    ``extra``: overrides (a model set's too; its models cache is made here)."""
    from innout import depth_prior
    from innout.base import run_base
    from innout.config import config_from_params, load_method_config
    from innout.models import fetch_models
    from innout.rule_params import base_stage_params

    monkeypatch.setattr(depth_prior, "monocular_depth", _true_monocular(trained, kind))
    method = load_method_config("smoke", [*TINY_BASE, "base.prior_iterations=10", *extra], "tiny")
    fetch_models(method.models, root / "models")
    nerf = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    return run_base(trained["scene"], nerf, root / "models" / "manifest.json", root / "out", root / "work",
                    config_from_params(base_stage_params(method)))


def test_a_reversed_depth_prior_is_a_loud_warning_and_not_used(trained, tmp_path, monkeypatch, caplog):  # noqa: F811
    with caplog.at_level("WARNING"):
        summary = _base_with_prior(trained, tmp_path, monkeypatch, "reversed")
    check = summary["depth_prior"]
    assert check["plausible"] is False and check["used"] is False and check["scale"] < 0
    assert "not positive" in check["reason"] and "colour only" in check["note"]
    assert summary["prior_fit"]["depth_weight"] == 0.0
    assert any("DEPTH PRIOR IMPLAUSIBLE" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["depth_prior"] == check
    assert summary["weights"] == "random" and "RANDOM" in summary["warning"]  # the tiny set's inpainter


def test_a_reversed_depth_prior_can_be_forced(trained, tmp_path, monkeypatch):  # noqa: F811
    summary = _base_with_prior(trained, tmp_path, monkeypatch, "reversed", "base.depth_prior_use=always")
    check = summary["depth_prior"]
    assert check["plausible"] is False and check["used"] is True and "USED" in check["note"]
    assert summary["prior_fit"]["depth_weight"] == pytest.approx(0.1)


def test_a_good_depth_prior_is_used_and_trained_weights_carry_their_label(trained, tmp_path, monkeypatch,  # noqa: F811
                                                                          procedural_like):
    """A perfect depth model, in a procedural-like model set: plausible, used; the summary
    and the overview carry the procedural label and never say "random"."""
    from provenance_check import random_mentions

    from innout.provenance import BANNER_COLOURS, PROCEDURAL_LABEL

    summary = _base_with_prior(trained, tmp_path, monkeypatch, "good", *procedural_like)
    check = summary["depth_prior"]
    assert check["plausible"] is True and check["used"] is True and check["reason"] is None and check["scale"] > 0
    assert check["rel_error"] < 0.1
    assert summary["prior_fit"]["depth_weight"] == pytest.approx(0.1)
    assert summary["weights"] == "procedural" and summary["weights_label"] == PROCEDURAL_LABEL and summary["warning"] is None
    assert random_mentions(summary) == [], random_mentions(summary)
    assert Image.open(tmp_path / "out" / "overview.png").convert("RGB").getpixel((1, 1)) == BANNER_COLOURS["procedural"]
