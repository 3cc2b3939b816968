"""Depth prior: robust scale/offset alignment of a monocular map to the NeRF's depth."""

from __future__ import annotations

import numpy as np
import pytest

from innout.cameras import Camera, Intrinsics, look_at
from innout.depth_prior import align_depth, check_plausible, ray_cosines, robust_affine_fit

H, W = 60, 80


def _scene_depth() -> np.ndarray:
    """A smooth positive depth field (1.2 .. ~5 scene units) with a step."""
    yy, xx = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    d = 1.5 + 2.5 * yy + 0.6 * np.sin(6 * xx)
    d[:, 50:] += 0.8
    return d


def _with_outliers(x: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    out = rng.random(x.shape) < frac
    bad = x.copy()
    lo, hi = np.percentile(x, [1, 99])
    bad[out] = rng.uniform(lo - (hi - lo), hi + (hi - lo), int(out.sum()))
    return bad, out


@pytest.mark.parametrize("method", ["ransac", "irls"])
def test_recovers_scale_and_offset_of_relative_depth_with_30_percent_outliers(method):
    rng = np.random.default_rng(0)
    ref = _scene_depth()
    s_true, t_true = 2.5, -0.7
    mono = (ref - t_true) / s_true + rng.normal(0, 0.002, ref.shape)
    mono, outliers = _with_outliers(mono, 0.3, rng)
    mask = np.zeros_like(ref, bool)
    mask[20:40, 25:55] = True  # the inpainted region: not used for the fit
    aligned, stats = align_depth(mono, ref, ~mask, kind="depth", method=method)
    assert stats["scale"] == pytest.approx(s_true, rel=0.01)
    assert stats["offset"] == pytest.approx(t_true, abs=0.02)
    assert 0.65 < stats["inlier_fraction"] < 0.78  # 70 % inliers, plus outliers that fell in the band
    assert stats["residual_rmse"] < 0.02
    good = ~outliers
    assert np.abs(aligned[good] - ref[good]).max() < 0.05
    # inside the mask too (the prior is used there)
    assert np.median(np.abs(aligned[mask & good] - ref[mask & good])) < 0.01


@pytest.mark.parametrize("method", ["ransac", "irls"])
def test_disparity_input(method):
    """Depth Anything style output: affine in inverse depth."""
    rng = np.random.default_rng(1)
    ref = _scene_depth()
    s_true, t_true = 0.004, 0.05  # 1/ref = s * mono + t, mono in 0..~200 like a network output
    mono = (1.0 / ref - t_true) / s_true + rng.normal(0, 0.05, ref.shape)
    mono, outliers = _with_outliers(mono, 0.3, rng)
    aligned, stats = align_depth(mono, ref, kind="disparity", method=method)
    assert stats["space"] == "disparity"
    assert stats["scale"] == pytest.approx(s_true, rel=0.01)
    assert stats["offset"] == pytest.approx(t_true, abs=2e-3)
    good = ~outliers
    assert np.median(np.abs(aligned[good] - ref[good]) / ref[good]) < 0.005
    assert stats["depth_abs_rel"] < 0.005
    # outliers may produce non-positive disparities: capped, counted, never inf/negative
    assert np.isfinite(aligned).all() and (aligned > 0).all()
    assert aligned.max() <= stats["max_depth"] * 1.0001
    assert 0.0 <= stats["clamped_fraction"] < 0.3
    # fitting disparity data as if it were depth is clearly worse
    _, wrong = align_depth(mono, ref, kind="depth", method=method)
    assert wrong["depth_abs_rel"] > 5 * stats["depth_abs_rel"]


def test_distance_reference_with_ray_cosines():
    """The NeRF renders distances along rays; the monocular map is z-depth-like."""
    cam = Camera(look_at(np.array([0.0, -3.0, 1.0]), np.zeros(3)), Intrinsics(40.0, 40.0, W / 2, H / 2, W, H))
    cos = ray_cosines(cam)
    assert cos.shape == (H, W) and cos.max() <= 1.0 and cos.min() > 0.5
    z = _scene_depth()
    distance = z / cos
    mono = 1.0 / z  # affine-invariant disparity of the z-depth
    aligned, stats = align_depth(mono, distance, kind="disparity", ray_cos=cos)
    assert np.allclose(aligned, distance, rtol=1e-4)
    assert stats["scale"] == pytest.approx(1.0, rel=1e-4) and abs(stats["offset"]) < 1e-5


def test_exact_fit_and_errors():
    x = np.linspace(0, 1, 50)
    s, t, inl, _ = robust_affine_fit(x, 3 * x + 1)
    assert s == pytest.approx(3) and t == pytest.approx(1) and inl.all()
    with pytest.raises(ValueError):
        align_depth(np.ones((4, 4)), np.ones((4, 4)), np.zeros((4, 4), bool))
    with pytest.raises(ValueError):
        align_depth(np.ones((4, 4)), np.ones((4, 4)), kind="inverse")


# ----------------------------------------------------------------------- plausibility

def _disparity_of(ref: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    """What a working depth model gives: affine disparity, a little noise."""
    return 50.0 / ref + 3.0 + rng.normal(0, noise, ref.shape)


def test_a_good_prior_is_plausible():
    rng = np.random.default_rng(3)
    ref = _scene_depth()
    mask = np.zeros_like(ref, bool)
    mask[20:40, 25:55] = True
    _, stats = align_depth(_disparity_of(ref, rng), ref, ~mask, kind="disparity")
    assert stats["scale"] > 0 and stats["rel_error"] < 0.01
    assert check_plausible(stats, 0.3) == (True, None)


def test_an_anti_correlated_prior_is_implausible_by_its_negative_scale():
    """What a random depth model did on a real scene: the fit found a line through
    disparities that fall where the NeRF's rise (scale -79,517 there)."""
    rng = np.random.default_rng(4)
    ref = _scene_depth()
    mono = 1e-4 * ref + 0.3 + rng.normal(0, 1e-6, ref.shape)  # grows with depth: reversed "disparity"
    _, stats = align_depth(mono, ref, kind="disparity")
    assert stats["scale"] < 0
    plausible, reason = check_plausible(stats, 0.3)
    assert not plausible and "not positive" in reason and "reversed" in reason


def test_a_prior_unrelated_to_the_scene_is_implausible():
    rng = np.random.default_rng(5)
    ref = _scene_depth()
    mono = np.abs(rng.normal(10, 1, ref.shape))  # noise: any line through it is wrong almost everywhere
    _, stats = align_depth(mono, ref, kind="disparity")
    plausible, reason = check_plausible(stats, 0.3)
    assert not plausible, (stats, reason)
    # on this scene (1.5-5 units) noise aligns to a nearly flat map: no better than a constant
    assert stats["rel_error"] > 0.7 * stats["rel_error_constant"]
    # the inlier-only error can look fine: the check reads the error over every pixel
    assert stats["rel_error"] > stats["depth_abs_rel"]


def test_a_prior_no_better_than_a_constant_depth_is_implausible_under_the_threshold():
    """A scene of little depth range: an uninformative prior stays under the absolute
    threshold, and the comparison with a constant map catches it."""
    stats = {"scale": 0.5, "rel_error": 0.2, "rel_error_constant": 0.22, "space": "disparity"}
    plausible, reason = check_plausible(stats, 0.3)
    assert not plausible and "no better than a constant depth" in reason, reason
    assert check_plausible({**stats, "rel_error": 0.05}, 0.3) == (True, None)
    assert "is above 0.1" in check_plausible({**stats, "rel_error": 0.15}, 0.1)[1]
