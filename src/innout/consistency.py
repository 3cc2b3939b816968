"""Multi-view consistency of the inpainted views (the inpaint stage's summary score).

Each target view's inpainted masked pixels are carried into the base view through the
NeRF's geometry: a pixel centre is unprojected with the target's rendered depth,
projected into the base camera, and the base's inpainted image is sampled there
bilinearly. The score is the mean absolute RGB difference between a target pixel and
the base colour at its reprojection, in **8-bit grey levels** (0..255, averaged over
the three channels and over the pixels), computed over the target's masked pixels that
land inside the base image (and inside the base's mask when one is given: that is where
the base was inpainted, so where the comparison says something about the fills) and,
when the base's depth is given, are not occluded in the base view. Lower is more
consistent; identical fills on exact geometry give 0, independent fills of a textured
region give tens of grey levels.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import Camera

UNIT = "mean absolute RGB error, 8-bit grey levels (0-255)"


def _to_float_image(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = np.asarray(a, np.float32)
    if a.ndim == 2:
        a = a[..., None].repeat(3, axis=2)
    return a[..., :3]


def _bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at continuous pixel coordinates uv (N, 2), border-clamped."""
    h, w = img.shape[:2]
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float()
    grid = torch.from_numpy(np.stack([2 * uv[:, 0] / w - 1, 2 * uv[:, 1] / h - 1], -1).astype(np.float32))
    out = F.grid_sample(t, grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.numpy()


def reproject_pixels(
    camera: Camera, depth: np.ndarray, pixels: np.ndarray, target_camera: Camera, depth_kind: str = "distance"
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) in ``target_camera`` and depth there of the pixels
    ``pixels`` (N, 2) integer (row, col) of ``camera`` unprojected with ``depth`` (H, W):
    the distance along the unit ray (``depth_kind="distance"``, what the NeRF renders) or
    the z-depth (``"z"``)."""
    rows, cols = pixels[:, 0], pixels[:, 1]
    origins, dirs = camera.rays()
    d = np.asarray(depth, np.float64)[rows, cols]
    ray = dirs[rows, cols]
    if depth_kind == "z":
        d = d / np.maximum(-(ray @ np.asarray(camera.c2w[:3, 2], float)), 1e-12)
    elif depth_kind != "distance":
        raise ValueError(f"depth_kind is 'distance' or 'z', got {depth_kind!r}")
    pts = camera.center + ray * d[:, None]
    return target_camera.project(pts)


def consistency_error(
    base_image: np.ndarray,
    base_camera: Camera,
    targets: Sequence[tuple],
    *,
    base_mask: np.ndarray | None = None,
    base_depth: np.ndarray | None = None,
    depth_kind: str = "distance",
    occlusion_tolerance: float = 0.05,
) -> dict[str, Any]:
    """Consistency of inpainted targets with the base view.

    ``targets``: ``(image, mask, camera, depth)`` or ``(image, mask, camera, depth, name)``
    tuples: the inpainted target (uint8, or float in [0, 1]), its mask (True = inpainted),
    its camera and its NeRF depth (H, W) (``depth_kind``). ``base_mask``: restrict the
    comparison to reprojections landing inside the base's mask. ``base_depth`` (same
    kind): drop reprojections farther than ``(1 + occlusion_tolerance)`` x the base's depth
    there (occluded in the base view).

    Returns ``mean`` (over views with at least one compared pixel; NaN if none),
    ``pixel_mean`` (over all compared pixels), ``per_view`` (name -> error; a view
    without compared pixels has NaN), ``pixels`` (name -> number compared),
    ``landed_fraction`` (name -> compared / masked pixels) and ``unit``.
    """
    base = _to_float_image(base_image)
    bh, bw = base.shape[:2]
    bk = base_camera.intrinsics
    if (bk.width, bk.height) != (bw, bh):
        base_camera = base_camera.with_intrinsics(bk.scaled_to(bw, bh))
    bmask = None if base_mask is None else np.asarray(base_mask, bool)
    bdepth = None if base_depth is None else np.asarray(base_depth, np.float64)
    if bdepth is not None and depth_kind == "distance":
        # compare z-depths: the base's distance map to z with its rays' cosines
        _, bdirs = base_camera.rays()
        bdepth = bdepth * -(bdirs @ np.asarray(base_camera.c2w[:3, 2], float))
    per_view, pixels, landed = {}, {}, {}
    total_err, total_n = 0.0, 0
    for i, item in enumerate(targets):
        if len(item) not in (4, 5):
            raise ValueError("a target is (image, mask, camera, depth) or (image, mask, camera, depth, name)")
        image, mask, camera, depth = item[:4]
        name = str(item[4]) if len(item) == 5 else str(i)
        img = _to_float_image(image)
        h, w = img.shape[:2]
        k = camera.intrinsics
        if (k.width, k.height) != (w, h):
            camera = camera.with_intrinsics(k.scaled_to(w, h))
        m = np.asarray(mask, bool)
        dep = np.asarray(depth, np.float64)
        sel = m & np.isfinite(dep) & (dep > 0)
        pix = np.argwhere(sel)
        n_masked = int(m.sum())
        if pix.size == 0:
            per_view[name], pixels[name], landed[name] = float("nan"), 0, 0.0
            continue
        uv, z = reproject_pixels(camera, dep, pix, base_camera, depth_kind)
        ok = (z > 1e-9) & np.isfinite(uv).all(1) & (uv[:, 0] >= 0) & (uv[:, 0] < bw) & (uv[:, 1] >= 0) & (uv[:, 1] < bh)
        iu = np.clip(np.floor(np.nan_to_num(uv[:, 0])).astype(np.int64), 0, bw - 1)
        iv = np.clip(np.floor(np.nan_to_num(uv[:, 1])).astype(np.int64), 0, bh - 1)
        if bmask is not None:
            ok &= bmask[iv, iu]
        if bdepth is not None:
            ok &= z <= (1 + occlusion_tolerance) * bdepth[iv, iu]
        n = int(ok.sum())
        pixels[name] = n
        landed[name] = n / max(n_masked, 1)
        if n == 0:
            per_view[name] = float("nan")
            continue
        sampled = _bilinear(base, uv[ok])
        own = img[pix[ok, 0], pix[ok, 1]]
        err = np.abs(sampled - own).mean(1) * 255.0
        per_view[name] = float(err.mean())
        total_err += float(err.sum())
        total_n += n
    vals = [v for v in per_view.values() if np.isfinite(v)]
    return {
        "mean": float(np.mean(vals)) if vals else float("nan"),
        "pixel_mean": total_err / total_n if total_n else float("nan"),
        "per_view": per_view,
        "pixels": pixels,
        "landed_fraction": landed,
        "unit": UNIT,
    }
