"""Rendering API: cameras and rays in the scene frame, depth in scene units, per-sample
positions and weights (what ELA composites), against the procedural generator's truth.

Uses the tiny NeRF trained once per session by ``tests/test_pretrain.py``'s fixture.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_pretrain import SCENE, offline, scene, trained  # noqa: F401  (session fixtures shared with the pretrain tests)

from innout.cameras import Camera, look_at
from innout.renderer import NerfRenderer, SceneFrame


def _random_similarity(seed: int) -> SceneFrame:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return SceneFrame(np.hstack([q, rng.normal(size=(3, 1))]), float(rng.uniform(0.1, 3.0)))


def test_scene_frame_roundtrip():
    frame = _random_similarity(0)
    rng = np.random.default_rng(1)
    p = rng.normal(size=(100, 3)) * 5
    d = rng.normal(size=(100, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(frame.points_to_scene(frame.points_to_nerf(p)), p, atol=1e-12)
    np.testing.assert_allclose(frame.directions_to_scene(frame.directions_to_nerf(d)), d, atol=1e-12)
    # distances scale with the similarity: |T(p) - T(q)| = scale * |p - q|
    q = p + 2.5 * d
    dist = np.linalg.norm(frame.points_to_nerf(q) - frame.points_to_nerf(p), axis=1)
    np.testing.assert_allclose(frame.distances_to_scene(dist), 2.5, rtol=1e-12)
    c2w = look_at(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    np.testing.assert_allclose(frame.c2w_to_scene(frame.c2w_to_nerf(c2w)), c2w, atol=1e-12)
    # torch in, torch out (same dtype)
    pt = torch.from_numpy(p).float()
    assert frame.points_to_nerf(pt).dtype == torch.float32
    np.testing.assert_allclose(frame.points_to_nerf(pt).numpy(), frame.points_to_nerf(p), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def renderer(trained) -> NerfRenderer:  # noqa: F811
    return NerfRenderer.from_config(trained["out_dir"] / "innout-nerfacto" / "config.yml", device="cpu")


@pytest.fixture(scope="module")
def views(trained):  # noqa: F811
    from innout.frames import read_scene

    _, _, train, test = read_scene(trained["scene"])
    return train, test


def test_outputs_are_consistent(renderer, views):
    """Shapes; weights sum to the accumulation; depth is the weighted mean distance;
    the samples lie on the scene-frame rays at their distances."""
    cam = views[0][0].camera
    lat = cam.with_intrinsics(cam.intrinsics.scaled_to(cam.intrinsics.width // 8, cam.intrinsics.height // 8))
    out = renderer.render_camera(lat)
    h, w = lat.intrinsics.height, lat.intrinsics.width
    s = out["weights"].shape[-1]
    assert out["rgb"].shape == (h, w, 3) and out["depth"].shape == (h, w) and out["accumulation"].shape == (h, w)
    assert out["positions"].shape == (h, w, s, 3) and out["distances"].shape == (h, w, s)
    torch.testing.assert_close(out["weights"].sum(-1), out["accumulation"], atol=1e-5, rtol=1e-5)
    mean_dist = (out["weights"] * out["distances"]).sum(-1) / out["accumulation"]
    ok = out["accumulation"] > 0.5
    torch.testing.assert_close(out["depth"][ok], mean_dist[ok], rtol=1e-4, atol=1e-5)
    o64, d64 = lat.rays()
    o, d = torch.from_numpy(o64).float(), torch.from_numpy(d64).float()
    on_ray = o[:, :, None, :] + out["distances"][..., None] * d[:, :, None, :]
    torch.testing.assert_close(out["positions"], on_ray, atol=1e-4 * float(out["distances"].max()), rtol=0)
    # arbitrary rays (and chunking) give the same answer
    rays = renderer.render_rays(o64.reshape(-1, 3), d64.reshape(-1, 3), chunk=7)
    torch.testing.assert_close(rays["depth"], out["depth"].reshape(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rays["positions"], out["positions"].reshape(-1, s, 3), atol=1e-5, rtol=1e-5)


def test_latent_depth_matches_generator(renderer, views):
    """Expected depth (distance along the unit ray, scene units) at LATENT resolution
    (H/8 x W/8, what ELA renders) against the generator's true distance, where the NeRF
    saw the scene: train views outside their object, and the ground-truth test views
    outside the object's footprint (nobody saw behind it)."""
    from scipy.ndimage import binary_dilation

    from innout.procedural import ProceduralScene

    gen = ProceduralScene(SCENE["variant"], SCENE["seed"])
    train, test = views
    errors = {}
    for split, frames in (("test", test), ("train", train[::4])):
        errs = []
        for f in frames:
            k = f.camera.intrinsics
            lat = Camera(f.camera.c2w, k.scaled_to(k.width // 8, k.height // 8))
            truth = gen.render(lat, with_object=split == "train", supersample=1)
            out = renderer.render_camera(lat, return_samples=False)
            seen = ~binary_dilation(truth["object_mask"], iterations=1) & (out["accumulation"].numpy() > 0.5)
            errs.append((np.abs(out["depth"].numpy() - truth["distance"]) / truth["distance"])[seen])
        errors[split] = np.concatenate(errs)
    for split, e in errors.items():
        print(f"\nlatent depth vs generator ({split} views): median relative error {np.median(e):.2%}, 90th pct {np.percentile(e, 90):.2%}, {e.size} rays")
    both = np.concatenate(list(errors.values()))
    assert both.size > 200
    assert float(np.median(both)) < 0.10
    assert float(np.median(errors["test"])) < 0.15


def test_from_config_variants(renderer, trained, tmp_path, views):  # noqa: F811
    """Loads from the output folder, the config, the checkpoint, and after a move."""
    out = trained["out_dir"]
    cam = views[0][0].camera
    cam = cam.with_intrinsics(cam.intrinsics.scaled_to(16, 12))
    ref = renderer.render_camera(cam, return_samples=False)["rgb"]
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    ckpt = next((moved / "innout-nerfacto" / "nerfstudio_models").glob("*.ckpt"))
    for source in (out, moved, ckpt):
        r = NerfRenderer.from_config(source, device="cpu")
        torch.testing.assert_close(r.render_camera(cam, return_samples=False)["rgb"], ref)
