"""PSNR and SSIM of images in [0, 1] (definitions in :mod:`innout.evaluate`), per-pixel
SSIM and masked PSNR for training-time estimates, and images as the metric networks take
them (:mod:`innout.lpips_metric`, :mod:`innout.fid_metric`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from scipy import ndimage

from innout.errors import StageError
from innout.models import torch_home

SSIM_WINDOW = 11


SSIM_SIGMA = 1.5


SSIM_K1 = 0.01


SSIM_K2 = 0.03


def as_image(img: Any, name: str = "image") -> np.ndarray:
    """float64 ``HxWxC`` (C = 1 or 3) in [0, 1] from a float array in [0, 1] (1e-6 of
    round-off is tolerated and clipped) or ``uint8``."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"{name}: expected HxW or HxWx3, got shape {np.asarray(img).shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == bool or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected float in [0, 1] or uint8, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: has NaN or inf values")
    if a.size and (a.min() < -1e-6 or a.max() > 1.0 + 1e-6):
        raise ValueError(f"{name}: values outside [0, 1] (min {a.min():.4g}, max {a.max():.4g})")
    return np.clip(a, 0.0, 1.0)  # round-off of at most 1e-6 is clipped


def image_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_image(pred, "pred"), as_image(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"empty image of shape {p.shape}")
    return p, g


def rgb3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, peak 1.0, over all pixels and channels;
    ``inf`` for identical images."""
    p, g = image_pair(pred, gt)
    mse = float(np.mean((p - g) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim_window(height: int, width: int) -> int:
    """The averaging window ``s`` of SSIM for an image of this size: 11, or the largest odd
    size that fits (>= 3)."""
    win = min(SSIM_WINDOW, height, width)
    win -= 1 - win % 2  # largest odd number <= win
    if win < 3:
        raise ValueError(f"image of {height}x{width} px is too small for SSIM (needs >= 3 px on each side)")
    return win


def _gaussian(win: int, sigma: float) -> np.ndarray:
    x = np.arange(win, dtype=np.float64) - (win - 1) / 2
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Structural similarity (module docstring: Gaussian window 11, sigma 1.5, K1 0.01,
    K2 0.03, L 1, mean over the valid positions and the channels). Identical images give 1."""
    p, g = image_pair(pred, gt)
    h, w = p.shape[:2]
    r = ssim_window(h, w) // 2
    kernel = _gaussian(SSIM_WINDOW, SSIM_SIGMA)
    c1, c2 = (SSIM_K1 * 1.0) ** 2, (SSIM_K2 * 1.0) ** 2

    def smooth(a: np.ndarray) -> np.ndarray:
        out = ndimage.correlate1d(a, kernel, axis=0, mode="reflect")
        out = ndimage.correlate1d(out, kernel, axis=1, mode="reflect")
        return out[r:h - r, r:w - r]  # positions whose window lies inside the image

    values = []
    for c in range(p.shape[2]):
        x, y = p[:, :, c], g[:, :, c]
        mx, my = smooth(x), smooth(y)
        vx, vy, vxy = smooth(x * x) - mx * mx, smooth(y * y) - my * my, smooth(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(float(s.mean()))
    return float(np.mean(values))


def checkpoint_path(cache_dir: str | Path | None, filename: str, what: str) -> Path:
    """``<cache_dir>/torch/hub/checkpoints/<filename>`` (where the ``models`` rule puts the
    torch.hub checkpoints); a one-line ``StageError`` naming the file when it is absent."""
    if cache_dir is None:
        raise StageError("evaluate", f"{what}: no models cache_dir given (it holds torch/hub/checkpoints/{filename})")
    path = torch_home(cache_dir) / "hub" / "checkpoints" / filename
    if not path.is_file():
        raise StageError("evaluate", f"{what} weights missing: {path} (run the `models` rule first; nothing is downloaded here)")
    return path


def to_tensor(a: np.ndarray, device: Any):

    return torch.from_numpy(np.ascontiguousarray(rgb3(a).transpose(2, 0, 1))).float()[None].to(device)


def ssim_map(pred: np.ndarray, gt: np.ndarray, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel SSIM (H, W), averaged over channels: Gaussian window, reflect padding,
    the usual constants for images in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float64)).permute(2, 0, 1)[None]
    y = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float64)).permute(2, 0, 1)[None]
    c = x.shape[1]
    half = window // 2
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - half) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    pad = min(half, x.shape[2] - 1, x.shape[3] - 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = torch.nn.functional.pad(t, (pad, pad, pad, pad), mode="reflect") if pad > 0 else t
        if pad < half:  # tiny images: pad the rest with edge values
            extra = half - pad
            t = torch.nn.functional.pad(t, (extra, extra, extra, extra), mode="replicate")
        return torch.nn.functional.conv2d(t, kernel, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s[0].mean(0).numpy()


def psnr_masked(pred: np.ndarray, gt: np.ndarray, keep: np.ndarray) -> Optional[float]:
    """PSNR (peak 1.0) over the pixels where ``keep`` is True; None when there are none."""
    if not keep.any():
        return None
    mse = float(np.mean((pred[keep] - gt[keep]) ** 2))
    return float(10.0 * math.log10(1.0 / max(mse, 1e-12)))
