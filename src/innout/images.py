"""Image files and pictures of arrays: reading RGB photos, writing PNGs (one way, atomic),
colourising depth maps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image


def load_rgb(path: Path) -> np.ndarray:
    """An image file as float32 RGB in [0, 1] (H, W, 3); alpha dropped, grey expanded."""
    img = Image.open(path)
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32)[..., :3] / 255.0
    return arr


def to_u8(image: np.ndarray) -> np.ndarray:
    """Colours in [0, 1] as every PNG here stores them: clipped, 8 bits, rounded to nearest
    (not truncated: truncation darkens every image by half a grey level). uint8 input is
    returned as it is."""
    a = np.asarray(image)
    return a if a.dtype == np.uint8 else (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colourise_depth(depth: np.ndarray, accumulation: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 RGB of a depth map (turbo colormap, 1st-99th percentile range)."""
    from nerfstudio.utils import colormaps  # heavy (seconds to import): only when a depth map is drawn

    finite = np.isfinite(depth)
    if not finite.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo, hi = np.percentile(depth[finite], [1, 99])
    d = np.clip((np.nan_to_num(depth, nan=hi) - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = colormaps.apply_colormap(torch.from_numpy(d[..., None].astype(np.float32)), colormaps.ColormapOptions("turbo")).numpy()
    if accumulation is not None:
        a = np.clip(accumulation, 0, 1)[..., None]
        rgb = rgb * a + (1 - a)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_png(path: Path, image: np.ndarray, compress_level: int = 6) -> None:
    """An image (uint8, or float in [0, 1]; RGB, RGBA or grey) as a PNG, its folder made,
    written to a temporary sibling and renamed (a cached file is never seen half-written).
    ``compress_level``: zlib's 0-9 (PIL's default 6; the procedural writer uses less)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG", compress_level=compress_level)
    os.replace(tmp, path)
