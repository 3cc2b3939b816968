"""Depth prior of the base view (In-N-Out, stage 3): align a monocular depth map to the NeRF.

A monocular estimate of the inpainted base view is only defined up to an affine map:
relative depth (MiDaS-style ``kind="depth"``) or relative *inverse* depth, i.e. affine
disparity (Depth Anything's output, ``kind="disparity"``). Its scale and offset are fit
to the NeRF's rendered depth on the unmasked pixels, where the NeRF is reliable, and the
fitted map is used inside the mask as the DS-NeRF-style depth target:

* ``kind="depth"``:      ``ref      ~ s * mono + t``, aligned = ``s * mono + t``
* ``kind="disparity"``:  ``1 / ref  ~ s * mono + t``, aligned = ``1 / (s * mono + t)``
  (fitted disparities below ``1 / max_depth`` are clamped there and counted).

The fit is robust, because the NeRF's depth has floaters and the monocular map errs at
depth edges: ``method="ransac"`` draws random 2-point models and keeps the one with
the least median of squared residuals (LMedS, threshold-free, breakdown point 50 %),
then alternates "inliers = |r| <= 2.5 sigma" (sigma the robust residual scale) with least
squares on the inliers; ``method="irls"`` runs iteratively reweighted least squares
with Tukey's biweight (which gives gross outliers zero weight) started from Siegel's
repeated-median line (robust to outliers in the monocular values too, which an
M-estimator started from least squares is not), then the same inlier least squares.

The NeRF renders the *distance along the unit ray*, while monocular models predict
something close to camera z-depth; the two differ by the per-pixel factor ``cos`` of
the ray's angle to the optical axis. Pass ``ray_cos`` (:func:`ray_cosines`) to fit in
z-depth and get the aligned map back as a distance along the ray.

Plausibility (:func:`check_plausible`): a robust fit always returns *some* line, also
for a monocular map that has nothing to do with the scene (random weights, a failed
model). Two signs say the prior must not be used: a non-positive scale (the map's
near-far order is reversed against the NeRF's: a depth model's disparity, or depth,
must grow with the NeRF's) and a large median relative error of the aligned map
against the NeRF's depth over *all* the pixels it was fitted on (``rel_error``; the
inlier-only ``depth_abs_rel`` looks good whenever a few pixels happen to fit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .cameras import Camera

KINDS = ("depth", "disparity")
METHODS = ("ransac", "irls")
_MAD_TO_SIGMA = 1.4826


def ray_cosines(camera: Camera) -> np.ndarray:
    """(H, W) cosine between every pixel-centre ray and the optical axis: z = distance * cos."""
    _, dirs = camera.rays()
    return -(dirs @ np.asarray(camera.c2w[:3, 2], float))


def _lstsq(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    if w is None:
        w = np.ones_like(x)
    sw = w.sum()
    if sw <= 0:
        return 1.0, 0.0
    mx, my = (w * x).sum() / sw, (w * y).sum() / sw
    vx = (w * (x - mx) ** 2).sum()
    if vx <= 1e-300:
        return 0.0, float(my)
    s = (w * (x - mx) * (y - my)).sum() / vx
    return float(s), float(my - s * mx)


def _robust_sigma(r: np.ndarray) -> float:
    return float(_MAD_TO_SIGMA * np.median(np.abs(r - np.median(r)))) if r.size else 0.0


def _lmeds(x: np.ndarray, y: np.ndarray, iterations: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Best 2-point model by least median of squares; (s, t, median squared residual)."""
    n = x.size
    eval_idx = rng.choice(n, size=min(n, 4000), replace=False) if n > 4000 else np.arange(n)
    xe, ye = x[eval_idx], y[eval_idx]
    i = rng.integers(0, n, iterations)
    j = rng.integers(0, n, iterations)
    dx = x[j] - x[i]
    ok = np.abs(dx) > 1e-12 * (np.abs(x).max() + 1e-300)
    i, j, dx = i[ok], j[ok], dx[ok]
    if i.size == 0:
        s, t = _lstsq(x, y)
        return s, t, float(np.median((y - s * x - t) ** 2))
    s = (y[j] - y[i]) / dx
    t = y[i] - s * x[i]
    best = (np.inf, 1.0, 0.0)
    for k0 in range(0, s.size, 256):  # bounded memory: 256 models x 4000 points at a time
        sk, tk = s[k0:k0 + 256], t[k0:k0 + 256]
        med = np.median((ye[None, :] - sk[:, None] * xe[None, :] - tk[:, None]) ** 2, axis=1)
        m = int(np.argmin(med))
        if med[m] < best[0]:
            best = (float(med[m]), float(sk[m]), float(tk[m]))
    return best[1], best[2], best[0]


def _repeated_median(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, m: int = 400) -> tuple[float, float]:
    """Siegel's repeated-median line on a random subset of ``m`` points: 50 % breakdown,
    robust to outliers in x (leverage points) as well as in y."""
    if x.size > m:
        sel = rng.choice(x.size, m, replace=False)
        x, y = x[sel], y[sel]
    dx = x[None, :] - x[:, None]
    dy = y[None, :] - y[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.where(np.abs(dx) > 0, dy / dx, np.nan)
    per_point = np.nanmedian(slopes, axis=1)
    s = float(np.nanmedian(per_point)) if np.isfinite(per_point).any() else 0.0
    return s, float(np.median(y - s * x))


def _irls(x: np.ndarray, y: np.ndarray, iterations: int, rng: np.random.Generator) -> tuple[float, float]:
    """MM-style iteratively reweighted least squares: Tukey's biweight (redescending, so
    gross outliers get zero weight) started from the repeated-median line, with the
    residual scale fixed by the start's median absolute deviation. (Huber weights are
    not used: with outliers in x their bounded but non-zero pull adds up and drags the
    line away.)"""
    s, t = _repeated_median(x, y, rng)
    sigma = max(_robust_sigma(y - s * x - t), 1e-12 * (np.abs(y).mean() + 1e-300))
    for _ in range(iterations):
        u = np.abs(y - s * x - t) / sigma
        w = np.where(u < 4.685, (1 - (u / 4.685) ** 2) ** 2, 0.0)
        s_new, t_new = _lstsq(x, y, w)
        done = abs(s_new - s) + abs(t_new - t) <= 1e-12 * (abs(s) + abs(t) + 1e-300)
        s, t = s_new, t_new
        if done:
            break
    return s, t


def robust_affine_fit(
    x: np.ndarray,
    y: np.ndarray,
    *,
    method: str = "ransac",
    iterations: int = 500,
    inlier_sigmas: float = 2.5,
    refine_steps: int = 5,
    seed: int = 0,
) -> tuple[float, float, np.ndarray, float]:
    """Robust ``y ~ s x + t``; returns ``(s, t, inliers (bool, like x), sigma)``."""
    if method not in METHODS:
        raise ValueError(f"depth fit method must be one of {METHODS}, got {method!r}")
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.size < 3:
        raise ValueError(f"need at least 3 points to fit a scale and offset, got {x.size}")
    rng = np.random.default_rng(seed)
    if method == "ransac":
        s, t, med2 = _lmeds(x, y, iterations, rng)
        # Rousseeuw & Leroy's LMedS scale estimate with its small-sample correction
        sigma = _MAD_TO_SIGMA * (1 + 5.0 / max(x.size - 2, 1)) * np.sqrt(med2)
    else:
        s, t = _irls(x, y, max(iterations // 10, 20), rng)
        sigma = _robust_sigma(y - s * x - t)
    spread = _robust_sigma(y) + np.abs(y).mean() + 1e-300
    inl = np.ones_like(x, dtype=bool)
    for _ in range(refine_steps):
        r = y - s * x - t
        sigma = max(float(sigma), 1e-9 * spread)
        new = np.abs(r) <= inlier_sigmas * sigma
        if new.sum() < 3:
            break
        s, t = _lstsq(x[new], y[new])
        r_in = (y - s * x - t)[new]
        sigma = _robust_sigma(r_in) if r_in.size > 3 else sigma
        if np.array_equal(new, inl):
            inl = new
            break
        inl = new
    return s, t, inl, float(sigma)


def align_depth(
    mono: np.ndarray,
    reference: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    kind: str = "disparity",
    method: str = "ransac",
    ray_cos: np.ndarray | None = None,
    max_depth: float | None = None,
    iterations: int = 500,
    inlier_sigmas: float = 2.5,
    max_points: int = 200_000,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Align a monocular map to a reference depth; returns ``(aligned (H, W), stats)``.

    ``mono`` (H, W): relative depth (``kind="depth"``) or relative inverse depth
    (``kind="disparity"``). ``reference`` (H, W): the NeRF's depth, in scene units
    (distance along the ray when ``ray_cos`` is given, else whatever depth the result
    should be expressed in). ``valid`` (H, W) bool: the pixels to fit on (the unmasked
    ones: pass ``~mask``); non-finite or non-positive reference values are excluded too.
    ``max_depth``: aligned depths are capped there (default: 4 x the largest valid
    reference depth) so a near-zero or negative fitted disparity cannot explode.

    ``stats``: scale, offset (of the map in the fitting space), space (depth or
    disparity), inlier_fraction, residual_rmse and residual_sigma (inliers, fitting
    space), depth_abs_rel (median |aligned - ref| / ref over the inliers), rel_error
    (the same over every valid pixel: what :func:`check_plausible` judges),
    rel_error_constant (that error for a constant map at the median depth: what a prior
    that knows nothing about the scene scores),
    clamped_fraction, n_points.
    """
    if kind not in KINDS:
        raise ValueError(f"monocular kind must be one of {KINDS}, got {kind!r}")
    mono = np.asarray(mono, np.float64)
    ref = np.asarray(reference, np.float64)
    if mono.shape != ref.shape:
        raise ValueError(f"monocular map {mono.shape} and reference {ref.shape} differ in shape")
    cos = np.ones_like(ref) if ray_cos is None else np.asarray(ray_cos, np.float64)
    ref_z = ref * cos
    ok = np.isfinite(mono) & np.isfinite(ref_z) & (ref_z > 0)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    idx = np.flatnonzero(ok)
    if idx.size < 10:
        raise ValueError(f"only {idx.size} valid pixels to align the depth prior on")
    far = float(max_depth) if max_depth is not None else 4.0 * float(ref_z.ravel()[idx].max())
    x_all = mono.ravel()[idx]
    y_all = ref_z.ravel()[idx] if kind == "depth" else 1.0 / ref_z.ravel()[idx]
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(idx.size, max_points, replace=False)) if idx.size > max_points else np.arange(idx.size)
    s, t, _, sigma = robust_affine_fit(x_all[fit_idx], y_all[fit_idx], method=method, iterations=iterations,
                                       inlier_sigmas=inlier_sigmas, seed=seed)
    r_all = y_all - s * x_all - t
    inl = np.abs(r_all) <= inlier_sigmas * sigma
    fitted = s * mono + t
    if kind == "depth":
        clamped = ~(fitted > 0) | (fitted > far)
        aligned_z = np.clip(np.nan_to_num(fitted, nan=far), 1.0 / far if far > 0 else 0.0, far)
    else:
        clamped = ~(fitted >= 1.0 / far)
        aligned_z = 1.0 / np.maximum(np.nan_to_num(fitted, nan=1.0 / far), 1.0 / far)
    aligned = aligned_z / np.where(cos > 1e-12, cos, 1.0)
    finite_mono = np.isfinite(mono)
    ref_valid = ref_z.ravel()[idx]
    rel_all = np.abs(aligned_z.ravel()[idx] - ref_valid) / ref_valid
    # the same error of a prior that knows nothing: one constant depth (the median)
    rel_constant = np.abs(np.median(ref_valid) - ref_valid) / ref_valid
    rel = rel_all[inl]
    stats = {
        "kind": kind,
        "space": kind,
        "method": method,
        "scale": float(s),
        "offset": float(t),
        "inlier_fraction": float(inl.mean()),
        "residual_rmse": float(np.sqrt(np.mean(r_all[inl] ** 2))) if inl.any() else float("nan"),
        "residual_sigma": float(sigma),
        "depth_abs_rel": float(np.median(rel)) if rel.size else float("nan"),
        "rel_error": float(np.median(rel_all)),
        "rel_error_constant": float(np.median(rel_constant)),
        "clamped_fraction": float((clamped & finite_mono).mean()),
        "n_points": int(idx.size),
        "n_fit_points": int(fit_idx.size),
        "max_depth": far,
    }
    return aligned.astype(np.float32), stats


MAX_ERROR_VS_CONSTANT = 0.7
"""A plausible prior's ``rel_error`` is at most this fraction of ``rel_error_constant`` (the
error of one constant depth at the median): a prior that knows nothing about the scene
aligns to a nearly flat map and scores about 1.0 x; a working one scores far below (0.05 x
on the unit tests' scene)."""


def check_plausible(stats: dict[str, Any], max_rel_error: float) -> tuple[bool, str | None]:
    """``(plausible, reason)`` of an :func:`align_depth` fit: implausible when its scale is
    not positive (or not finite), when its ``rel_error`` exceeds ``max_rel_error``, or when
    it does not beat a constant map by :data:`MAX_ERROR_VS_CONSTANT` (on a scene of little
    depth range a prior unrelated to it can stay under ``max_rel_error``); the reason says
    which, with the numbers (None when plausible)."""
    scale, rel_error = float(stats["scale"]), float(stats["rel_error"])
    constant = float(stats.get("rel_error_constant", np.inf))
    space = stats.get("space", "depth")
    if not np.isfinite(scale) or scale <= 0:
        return False, (f"scale {scale:.6g} in {space} is not positive: the prior's near-far order is reversed "
                       "against the NeRF's depth")
    if not np.isfinite(rel_error) or rel_error > max_rel_error:
        return False, (f"median relative error {rel_error:.3g} of the aligned prior against the NeRF's depth outside the "
                       f"mask is above {max_rel_error:.3g}")
    if np.isfinite(constant) and rel_error > MAX_ERROR_VS_CONSTANT * constant:
        return False, (f"median relative error {rel_error:.3g} of the aligned prior against the NeRF's depth outside the "
                       f"mask is no better than a constant depth's {constant:.3g} (more than {MAX_ERROR_VS_CONSTANT:g} x): "
                       "the prior does not know the scene")
    return True, None


def monocular_depth(model: Any, processor: Any, image: np.ndarray) -> np.ndarray:
    """The raw output of a transformers depth-estimation model for one RGB image
    ``(H, W, 3) uint8``, resized (bicubic, as transformers' own post-processing) to
    ``(H, W)`` float64: relative disparity for Depth Anything, relative depth for
    MiDaS-style models (``base.depth_kind`` says which), to be aligned with
    :func:`align_depth`."""

    h, w = image.shape[:2]
    inputs = processor(images=Image.fromarray(np.asarray(image, np.uint8)), return_tensors="pt")
    device = next(model.parameters()).device
    with torch.no_grad():
        pred = model(pixel_values=inputs["pixel_values"].to(device)).predicted_depth
    pred = pred.reshape(1, 1, *pred.shape[-2:]).float()
    return F.interpolate(pred, size=(h, w), mode="bicubic", align_corners=False)[0, 0].cpu().double().numpy()
