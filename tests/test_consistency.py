"""Multi-view consistency: target fills reprojected into the base view through the depth."""

from __future__ import annotations

import numpy as np
import pytest

from innout.cameras import Camera, Intrinsics, look_at
from innout.consistency import UNIT, consistency_error

K = Intrinsics(110.0, 110.0, 64.0, 48.0, 128, 96)


def _texture(pts: np.ndarray) -> np.ndarray:
    x, y = pts[..., 0], pts[..., 1]
    return np.stack([0.5 + 0.4 * np.sin(3 * x + p) * np.cos(2 * y - p) for p in (0.0, 1.0, 2.0)], -1)


def _render_plane(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Image (uint8) and distance map of the textured ground plane z = 0."""
    o, d = cam.rays()
    t = -o[..., 2] / d[..., 2]
    pts = o + d * t[..., None]
    img = (np.clip(_texture(pts), 0, 1) * 255 + 0.5).astype(np.uint8)
    return img, t


def _cams() -> list[Camera]:
    eyes = [np.array([0.0, -3.0, 2.5]), np.array([0.6, -2.8, 2.4]), np.array([-0.5, -3.2, 2.7])]
    return [Camera(look_at(e, np.zeros(3)), K) for e in eyes]


def _mask() -> np.ndarray:
    m = np.zeros((96, 128), bool)
    m[30:70, 40:90] = True
    return m


def test_identical_fills_are_consistent():
    base, *targets = _cams()
    base_img, base_depth = _render_plane(base)
    items = []
    for i, cam in enumerate(targets):
        img, depth = _render_plane(cam)
        items.append((img, _mask(), cam, depth, f"t{i}"))
    out = consistency_error(base_img, base, items)
    assert out["unit"] == UNIT and "8-bit" in out["unit"]
    assert set(out["per_view"]) == {"t0", "t1"}
    assert out["mean"] < 1.0, out  # rounding to 8 bits and bilinear sampling only
    assert all(n > 1000 for n in out["pixels"].values())
    assert all(f > 0.9 for f in out["landed_fraction"].values())
    # z-depth input gives the same answer
    items_z = []
    for img, mask, cam, dist, name in items:
        _, d = cam.rays()
        items_z.append((img, mask, cam, dist * -(d @ cam.c2w[:3, 2]), name))
    assert consistency_error(base_img, base, items_z, depth_kind="z")["mean"] == pytest.approx(out["mean"], abs=1e-3)
    # the base against itself, float images in [0, 1]
    self_err = consistency_error(base_img / 255.0, base, [(base_img / 255.0, _mask(), base, base_depth)])
    assert self_err["per_view"]["0"] < 1e-3


def test_shifted_fill_is_less_consistent():
    base, *targets = _cams()
    base_img, _ = _render_plane(base)
    good, shifted = [], []
    for cam in targets:
        img, depth = _render_plane(cam)
        moved = img.copy()
        m = _mask()
        moved[m] = np.roll(img, 8, axis=1)[m]  # the fill drawn 8 pixels to the right
        good.append((img, m, cam, depth))
        shifted.append((moved, m, cam, depth))
    e_good = consistency_error(base_img, base, good)["mean"]
    e_shift = consistency_error(base_img, base, shifted)["mean"]
    assert e_shift > 10 * max(e_good, 0.5) and e_shift > 10.0, (e_good, e_shift)


def test_base_mask_occlusion_and_empty_views():
    base, target, _ = _cams()
    base_img, base_depth = _render_plane(base)
    img, depth = _render_plane(target)
    m = _mask()
    full = consistency_error(base_img, base, [(img, m, target, depth)])
    inside = consistency_error(base_img, base, [(img, m, target, depth)], base_mask=m)
    assert 0 < inside["pixels"]["0"] < full["pixels"]["0"]
    # a base depth twice too near marks everything as occluded
    occl = consistency_error(base_img, base, [(img, m, target, depth)], base_depth=base_depth * 0.5)
    assert occl["pixels"]["0"] == 0 and np.isnan(occl["per_view"]["0"]) and np.isnan(occl["mean"])
    same = consistency_error(base_img, base, [(img, m, target, depth)], base_depth=base_depth)
    assert same["pixels"]["0"] == full["pixels"]["0"]
    empty = consistency_error(base_img, base, [(img, np.zeros_like(m), target, depth)])
    assert empty["pixels"]["0"] == 0 and np.isnan(empty["mean"])
