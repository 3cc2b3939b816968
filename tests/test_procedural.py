"""Tests of the procedural scene generator (innout.procedural): small sizes, a few seconds each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from innout.cameras import Camera, Intrinsics, camera_to_llff_row, llff_row_to_camera
from innout.images import to_u8
from innout.procedural import ProceduralScene, generate_main, write_spinnerf_scene

VARIANTS = ("forward", "360")
_SCENES: dict[tuple[str, int], ProceduralScene] = {}


def scene(variant: str, seed: int = 0) -> ProceduralScene:
    """Scenes are shared between tests: building the textures is the slow part."""
    key = (variant, seed)
    if key not in _SCENES:
        _SCENES[key] = ProceduralScene(variant, seed)
    return _SCENES[key]


def pixel_camera(cam: Camera, u: float, v: float) -> Camera:
    """A 1x1 camera whose single pixel centre looks exactly at continuous pixel (u, v) of ``cam``."""
    k = cam.intrinsics
    return cam.with_intrinsics(Intrinsics(k.fx, k.fy, k.cx - u + 0.5, k.cy - v + 0.5, 1, 1))


# ------------------------------------------------------------------ determinism


def test_same_seed_same_arrays_and_different_seed_differs():
    a, b = ProceduralScene("forward", 5), scene("forward", 5)
    cam_a = a.cameras(3, 64, 48, "train")[1]
    cam_b = b.cameras(3, 64, 48, "train")[1]
    assert np.array_equal(cam_a.c2w, cam_b.c2w) and cam_a.intrinsics == cam_b.intrinsics
    ra, rb = a.render(cam_a), b.render(cam_b)
    for key in ("rgb", "distance", "depth", "object_mask", "object_coverage"):
        assert np.array_equal(ra[key], rb[key]), key
    assert np.array_equal(a.object_points(50), b.object_points(50))
    assert np.array_equal(a.background_points(50), b.background_points(50))
    c = scene("forward", 6)
    cam_c = c.cameras(3, 64, 48, "train")[1]
    assert not np.allclose(cam_c.c2w, cam_a.c2w)
    # the same pose in the other scene still sees other textures
    assert np.abs(c.render(cam_a)["rgb"] - ra["rgb"]).mean() > 0.05


def test_splits_differ_and_bad_arguments_raise():
    sc = scene("360")
    train = sc.cameras(12, 64, 48, "train")
    test = sc.cameras(6, 64, 48, "test")
    centres_train = np.array([c.center for c in train])
    centres_test = np.array([c.center for c in test])
    gaps = np.linalg.norm(centres_test[:, None] - centres_train[None], axis=-1).min(1)
    assert gaps.min() > 1e-3  # no test pose repeats a train pose
    assert len({tuple(c.center) for c in train}) == 12
    with pytest.raises(ValueError):
        sc.cameras(3, 64, 48, "val")
    with pytest.raises(ValueError):
        ProceduralScene("sideways", 0)
    with pytest.raises(ValueError):
        ProceduralScene("forward", -1)


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize("variant", VARIANTS)
def test_render_agrees_with_camera_projection(variant):
    sc = scene(variant)
    cams = sc.cameras(4, 160, 120, "train")
    rng = np.random.default_rng(0)
    for kind, pts in (("object", sc.object_points(300)), ("background", sc.background_points(3000))):
        n_visible = n_checked = 0
        for cam in cams[:2]:
            uv, z = cam.project(pts)
            k = cam.intrinsics
            inside = (z > 0) & (uv[:, 0] > 0) & (uv[:, 0] < k.width) & (uv[:, 1] > 0) & (uv[:, 1] < k.height)
            idx = np.flatnonzero(inside)
            idx = rng.permutation(idx)[:40]
            true_dist = np.linalg.norm(pts[idx] - cam.center, axis=1)
            for i, d_true in zip(idx, true_dist):
                out = sc.render(pixel_camera(cam, *uv[i]), supersample=1)
                d = float(out["distance"][0, 0])
                n_checked += 1
                # nothing is ever seen through a surface
                assert d <= d_true * (1 + 1e-4) + 1e-5, (kind, d, d_true)
                if abs(d - d_true) <= 1e-4 * d_true:
                    n_visible += 1
                    assert abs(float(out["depth"][0, 0]) - z[i]) <= 1e-4 * z[i]
                    assert bool(out["object_mask"][0, 0]) == (kind == "object")
        assert n_checked >= 20
        assert n_visible >= 0.3 * n_checked, (kind, n_visible, n_checked)


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_render_matches_single_pixel_renders(variant):
    """Row chunks, supersampling and the pixel-centre convention agree with Camera.project."""
    sc = scene(variant)
    cam = sc.cameras(3, 96, 72, "train")[2]
    full = sc.render(cam, supersample=2)
    rng = np.random.default_rng(1)
    for u, v in zip(rng.integers(0, 96, 25), rng.integers(0, 72, 25)):
        one = sc.render(pixel_camera(cam, u + 0.5, v + 0.5), supersample=1)
        assert one["distance"][0, 0] == pytest.approx(full["distance"][v, u], rel=1e-5)
        assert one["depth"][0, 0] == pytest.approx(full["depth"][v, u], rel=1e-5)
        assert one["object_mask"][0, 0] == full["object_mask"][v, u]
    # the point at the rendered distance along a pixel-centre ray projects back to that pixel centre
    _, dirs = cam.rays()
    pts = cam.center + dirs * full["distance"][..., None].astype(np.float64)
    uv, z = cam.project(pts.reshape(-1, 3))
    grid = np.stack(np.meshgrid(np.arange(96) + 0.5, np.arange(72) + 0.5), -1).reshape(-1, 2)
    assert np.abs(uv - grid).max() < 1e-3
    assert np.allclose(z, full["depth"].reshape(-1), rtol=1e-5)
    assert full["rgb"].dtype == np.float32 and full["rgb"].shape == (72, 96, 3)
    assert 0.0 <= full["rgb"].min() and full["rgb"].max() <= 1.0
    assert full["object_mask"].dtype == bool


def test_uncached_ray_directions_render_the_same(monkeypatch):
    import innout.procedural as procedural

    sc = scene("forward")
    cam = sc.cameras(2, 48, 36, "test")[0]
    cached = sc.render(cam)
    monkeypatch.setattr(procedural, "_DIR_CACHE_RAYS", 0)
    monkeypatch.setattr(procedural, "_CHUNK_RAYS", 1000)  # many small row chunks
    fresh = sc.render(cam)
    for key in cached:
        assert np.allclose(cached[key], fresh[key], rtol=1e-6, atol=1e-6), key


@pytest.mark.parametrize("variant", VARIANTS)
def test_llff_round_trip(variant):
    for split in ("train", "test"):
        for cam in scene(variant).cameras(8, 160, 120, split):
            back, (near, far) = llff_row_to_camera(camera_to_llff_row(cam, 0.5, 9.0))
            assert np.allclose(back.c2w, cam.c2w, atol=1e-12)
            assert back.intrinsics == cam.intrinsics
            assert (near, far) == (0.5, 9.0)


# ------------------------------------------------------------------ object coverage / GT views


@pytest.mark.parametrize("variant", VARIANTS)
def test_object_coverage_and_ground_truth_views(variant):
    sc = scene(variant)
    cams = sc.cameras(6, 80, 60, "train")
    fully_visible = 0
    for cam in cams:
        with_obj = sc.render(cam)
        without = sc.render(cam, with_object=False)
        mask = with_obj["object_mask"]
        assert 0.03 <= mask.mean() <= 0.30, mask.mean()
        assert np.array_equal(mask, without["object_mask"])
        assert np.array_equal(with_obj["object_coverage"], without["object_coverage"])
        if not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()):
            fully_visible += 1
        touched = with_obj["object_coverage"] > 0
        diff = np.abs(with_obj["rgb"] - without["rgb"]).max(-1)
        assert diff[~touched].max() == 0.0  # the object changes nothing outside its footprint
        assert diff[mask].mean() > 0.05  # ...and is visible where it is
        assert np.array_equal(with_obj["distance"][~touched], without["distance"][~touched])
        assert (without["distance"][mask] > with_obj["distance"][mask]).all()
    assert fully_visible >= 5


# ------------------------------------------------------------------ SPIn-NeRF layout


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_write_spinnerf_layout_and_byte_identical(tmp_path):
    out = tmp_path / "scene"
    summary = write_spinnerf_scene(out, variant="forward", seed=2, n_train=5, n_test=3, width=80, height=60,
                                   downscales=(2, 4), progress=False)
    assert summary["n_train"] == 5 and summary["n_test"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no temporary folder left behind
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"img_{i:03d}.png" for i in range(8)]
    meta = json.loads((out / "innout_generator.json").read_text())
    assert meta["names"]["test"] == names[:3] and meta["names"]["train"] == names[3:]
    assert meta["variant"] == "forward" and meta["seed"] == 2 and meta["downscales"] == [2, 4]
    for name in names:
        assert _read(out / "images" / name).shape == (60, 80, 3)
    for n in (2, 4):
        d = out / f"images_{n}"
        assert sorted(p.name for p in d.glob("*.png")) == names
        assert sorted(p.name for p in (d / "test_label").iterdir()) == names[:3]
        assert sorted(p.name for p in (d / "label").iterdir()) == names[3:]
        for name in names:
            img = _read(d / name)
            mask = _read(d / ("test_label" if name in names[:3] else "label") / name)
            assert img.shape == (60 // n, 80 // n, 3) and mask.shape == img.shape[:2]
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            assert 0.02 < mask.mean() < 0.4
    poses = np.load(out / "poses_bounds.npy")
    assert poses.shape == (8, 17)
    assert (poses[:, 15] > 0).all() and (poses[:, 16] > poses[:, 15]).all()
    # the poses regenerate from the json: test views first, then train views
    sc = ProceduralScene(meta["variant"], meta["seed"])
    cams = sc.cameras(meta["n_test"], meta["width"], meta["height"], "test", meta["focal"]) + \
        sc.cameras(meta["n_train"], meta["width"], meta["height"], "train", meta["focal"])
    for row, cam in zip(poses, cams):
        back, _ = llff_row_to_camera(row)
        assert np.allclose(back.c2w, cam.c2w, atol=1e-12) and back.intrinsics == cam.intrinsics
    # test views are the ground truth without the object; train views contain it
    test_img = _read(out / "images" / names[0]).astype(float) / 255
    gt = sc.render(cams[0], with_object=False)["rgb"]
    assert np.abs(test_img - gt).max() <= 0.51 / 255 + 1e-6
    train_img = _read(out / "images" / names[3]).astype(float) / 255
    assert np.abs(train_img - sc.render(cams[3])["rgb"]).max() <= 0.51 / 255 + 1e-6
    # masks agree with the images: the label at 1/2 is the object footprint of the full-res render
    cov = sc.render(cams[3])["object_coverage"]
    expect = cov.reshape(30, 2, 40, 2).mean((1, 3)) >= 0.5
    assert np.array_equal(_read(out / "images_2" / "label" / names[3]).astype(bool), expect)

    # same arguments (through the CLI) => byte-identical files
    out2 = tmp_path / "again"
    assert generate_main([str(out2), "--variant", "forward", "--seed", "2", "--n-train", "5", "--n-test", "3",
                          "--width", "80", "--height", "60", "--downscales", "2", "4"]) == 0
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (out2 / rel).read_bytes(), rel


def test_write_spinnerf_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_spinnerf_scene(tmp_path / "a", n_train=2, n_test=1, width=90, height=60, downscales=(4,), progress=False)
    assert not (tmp_path / "a").exists()
    assert generate_main([str(tmp_path / "b"), "--width", "90", "--height", "60", "--downscales", "4"]) == 2
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_spinnerf_scene(tmp_path / "c", n_train=1, n_test=0, width=16, height=12, downscales=(2,), progress=False)
    assert (tmp_path / "c" / "keep.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_eight_bit_colours_round_to_nearest_clip_and_leave_uint8_alone():
    # every PNG here goes through to_u8: truncation would darken each image by half a
    # grey level on average, and a copy that forgot the clip would wrap 1.2 round to 50
    colours = np.array([0.0, 0.6 / 255, 0.4 / 255, 254.5 / 255, 1.2, -0.3], np.float32)
    assert to_u8(colours).tolist() == [0, 1, 0, 255, 255, 0]
    assert to_u8(colours).dtype == np.uint8
    stored = np.array([[3, 250]], np.uint8)
    assert np.array_equal(to_u8(stored), stored)  # not rescaled as if it were [0, 1]
    assert to_u8(stored).dtype == np.uint8
