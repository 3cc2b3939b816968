"""Where the refine stage's patches and rays come from: patches around the masks, rays
through unmasked pixels (the base stage's prior fit samples those too).

Patches (:class:`PatchSampler`)
    A patch is ``size = min(patch_size, H, W)`` pixels square. Its centre pixel is drawn
    uniformly from the pixels of the bounding box of the view's mask, the patch is
    placed at ``y0 = cy - size // 2`` (likewise x) and clamped into the image, so it
    always lies fully inside the image and always contains the drawn centre, hence
    intersects the bounding box. Pixel coordinates are integer ``(row, col)`` =
    ``(y, x)``; the ray of pixel ``(y, x)`` passes through its centre ``(x + .5, y + .5)``
    as in :meth:`innout.cameras.Camera.rays` (:func:`pixel_rays`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from innout.cameras import Camera


def _as_bool_mask(mask: Any) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"a mask is H x W, got shape {m.shape}")
    return m.astype(bool)


def mask_bbox(mask: Any) -> Optional[tuple[int, int, int, int]]:
    """Inclusive bounding box ``(y_min, y_max, x_min, x_max)`` of a mask's True pixels;
    None for an empty mask."""
    m = _as_bool_mask(mask)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@dataclass(frozen=True)
class Patch:
    """A square patch ``[y0, y0 + size) x [x0, x0 + size)`` of view ``name``."""

    name: str
    y0: int
    x0: int
    size: int

    def pixels(self) -> np.ndarray:
        """``(size * size, 2)`` int64 ``(y, x)`` pixel coordinates, row-major."""
        yy, xx = np.meshgrid(np.arange(self.y0, self.y0 + self.size), np.arange(self.x0, self.x0 + self.size), indexing="ij")
        return np.stack([yy.reshape(-1), xx.reshape(-1)], axis=1).astype(np.int64)

    def crop(self, image: Any) -> Any:
        """The patch of an ``H x W (x C)`` image (numpy or torch)."""
        return image[self.y0 : self.y0 + self.size, self.x0 : self.x0 + self.size]

    def ray_indices(self, view_index: int) -> torch.Tensor:
        """``(size * size, 3)`` long ``(camera, y, x)``: nerfstudio's ray-index layout."""
        pix = torch.from_numpy(self.pixels())
        return torch.cat([torch.full((pix.shape[0], 1), int(view_index), dtype=torch.long), pix], dim=1)


def place_patch(center_y: int, center_x: int, size: int, height: int, width: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` patch around a centre pixel, clamped into the image."""
    if size > height or size > width:
        raise ValueError(f"a {size} px patch does not fit a {width} x {height} image")
    y0 = min(max(int(center_y) - size // 2, 0), height - size)
    x0 = min(max(int(center_x) - size // 2, 0), width - size)
    return y0, x0


class PatchSampler:
    """Square patches around the masks of some views (module docstring: placement).

    ``masks``: {name: bool H x W} (True = object / inpainted); ``views``: the names to
    sample from (default: all), views with an empty mask are dropped (``skipped``).
    Each :meth:`sample` picks a view uniformly. The sampler's RNG state is in
    :meth:`state_dict` for resumable training."""

    def __init__(self, masks: Mapping[str, Any], patch_size: int = 256, seed: int = 0, views: Optional[Sequence[str]] = None):
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        names = list(masks) if views is None else list(views)
        missing = [n for n in names if n not in masks]
        if missing:
            raise KeyError(f"no mask for views {missing}")
        self.patch_size = int(patch_size)
        self.shapes: dict[str, tuple[int, int]] = {}
        self.bboxes: dict[str, tuple[int, int, int, int]] = {}
        self.skipped: list[str] = []
        for name in names:
            m = _as_bool_mask(masks[name])
            box = mask_bbox(m)
            if box is None:
                self.skipped.append(name)
                continue
            self.shapes[name] = m.shape
            self.bboxes[name] = box
        self.views = list(self.bboxes)
        if not self.views:
            raise ValueError("no view with a non-empty mask to sample patches from")
        self.rng = np.random.default_rng(seed)

    def size_for(self, name: str) -> int:
        h, w = self.shapes[name]
        return min(self.patch_size, h, w)

    def sample(self, name: Optional[str] = None) -> Patch:
        """One patch, of view ``name`` or of a uniformly drawn view."""
        if name is None:
            name = self.views[int(self.rng.integers(len(self.views)))]
        elif name not in self.bboxes:
            raise KeyError(f"{name!r} is not a view of this sampler")
        h, w = self.shapes[name]
        ya, yb, xa, xb = self.bboxes[name]
        cy = int(self.rng.integers(ya, yb + 1))
        cx = int(self.rng.integers(xa, xb + 1))
        size = self.size_for(name)
        y0, x0 = place_patch(cy, cx, size, h, w)
        return Patch(name, y0, x0, size)

    def sample_many(self, n: int) -> list[Patch]:
        return [self.sample() for _ in range(n)]

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def _np_rng(generator: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


class UnmaskedPixelSampler:
    """Pixels drawn uniformly from the pooled UNMASKED pixels (mask False) of all views,
    for L_rec. Views are indexed in the order of ``masks``; they may differ in size.

    Rejection sampling over the concatenated masks (a uniform pixel of all views, kept
    if unmasked) is exactly uniform over the unmasked ones; when fewer than a quarter
    of all pixels are free it samples from an index list of the free pixels instead."""

    _REJECTION_MIN_FREE = 0.25

    def __init__(self, masks: Mapping[str, Any]):
        self.names = list(masks)
        flat = [_as_bool_mask(masks[n]) for n in self.names]
        self.shapes = [m.shape for m in flat]
        self.widths = np.array([s[1] for s in self.shapes], dtype=np.int64)
        sizes = np.array([s[0] * s[1] for s in self.shapes], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.pooled = np.concatenate([m.reshape(-1) for m in flat]) if flat else np.zeros(0, bool)
        self.free = np.array([int((~m).sum()) for m in flat], dtype=np.int64)
        self.total_free = int(self.free.sum())
        if self.total_free == 0:
            raise ValueError("every pixel of every view is masked: nothing for L_rec")
        self.free_fraction = self.total_free / self.pooled.size
        self._free_index: Optional[np.ndarray] = None
        if self.free_fraction < self._REJECTION_MIN_FREE:
            self._free_index = np.flatnonzero(~self.pooled)

    def sample(self, n: int, generator: np.random.Generator | int | None = None) -> torch.Tensor:
        """``(n, 3)`` long ``(view, y, x)`` of unmasked pixels."""
        rng = _np_rng(generator)
        if self._free_index is not None:
            idx = self._free_index[rng.integers(0, self._free_index.size, size=n)]
        else:
            picked: list[np.ndarray] = []
            have = 0
            while have < n:
                cand = rng.integers(0, self.pooled.size, size=int((n - have) / self.free_fraction * 1.2) + 16)
                cand = cand[~self.pooled[cand]]
                picked.append(cand)
                have += cand.size
            idx = np.concatenate(picked)[:n] if picked else np.zeros(0, np.int64)
        view = np.searchsorted(self.starts, idx, side="right") - 1
        y, x = np.divmod(idx - self.starts[view], self.widths[view])
        return torch.from_numpy(np.stack([view, y, x], axis=1).astype(np.int64))


def sample_unmasked_pixels(masks: Mapping[str, Any], n: int, generator: np.random.Generator | int | None = None) -> torch.Tensor:
    """``(n, 3)`` long ``(view, y, x)``: pixels uniform over all UNMASKED pixels of the
    views in ``masks`` (view = position in ``masks``). Training loops keep an
    :class:`UnmaskedPixelSampler` instead of calling this every step."""
    return UnmaskedPixelSampler(masks).sample(n, generator)


def pixel_rays(camera: Camera, ys: Any, xs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Origins and unit directions ``(N, 3)`` through the centres of pixels ``(ys, xs)``
    (the same rays as :meth:`Camera.rays` there)."""
    k = camera.intrinsics
    u = np.asarray(xs, dtype=float).reshape(-1) + 0.5
    v = np.asarray(ys, dtype=float).reshape(-1) + 0.5
    d_cam = np.stack([(u - k.cx) / k.fx, -(v - k.cy) / k.fy, -np.ones_like(u)], axis=-1)
    dirs = d_cam @ np.asarray(camera.c2w, float)[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = np.broadcast_to(np.asarray(camera.c2w, float)[:3, 3], dirs.shape).copy()
    return origins, dirs
