"""Clean-up of propagated object masks: specks, holes, thin bridges, and the dilation
SPIn-NeRF's loader applies to train masks.

A propagated mask is a per-pixel decision and has the errors of one: isolated pixels
where the depth is wrong, pinholes in the object, one-pixel bridges to a surface that
touches the object. Sizes are relative to the mask's own area so the same settings work
at any resolution and for objects of any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class CleanupSettings:
    open_radius: int = 1  # morphological opening (px): cuts one-pixel bridges and spurs; 0 = off
    speck_fraction: float = 0.05  # components smaller than this share of the largest one are removed
    hole_fraction: float = 0.05  # enclosed holes smaller than this share of the mask's area are filled


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def remove_specks(mask: np.ndarray, fraction: float) -> np.ndarray:
    """``mask`` without the connected components (8-connected) smaller than ``fraction`` of
    the largest one."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= fraction * areas.max()])
    return keep[labels]


def fill_holes(mask: np.ndarray, fraction: float) -> np.ndarray:
    """``mask`` with its enclosed holes (background components, 4-connected, not touching the
    image border) smaller than ``fraction`` of the mask's area filled."""
    mask = mask.astype(bool)
    area = int(mask.sum())
    if area == 0:
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    h, w = mask.shape
    out = mask.copy()
    for i in range(1, n):
        x, y, bw, bh, size = stats[i]
        touches_border = x == 0 or y == 0 or x + bw == w or y + bh == h
        if not touches_border and size < fraction * area:
            out[labels == i] = True
    return out


def clean_mask(mask: np.ndarray, settings: CleanupSettings | None = None) -> np.ndarray:
    """Opening, speck removal, hole filling (in that order)."""
    settings = settings or CleanupSettings()
    out = mask.astype(bool)
    if settings.open_radius > 0 and out.any():
        opened = cv2.morphologyEx(out.astype(np.uint8), cv2.MORPH_OPEN, _disk(settings.open_radius)).astype(bool)
        # an object thinner than the opening everywhere would vanish: keep it as it was then
        out = opened if opened.any() else out
    out = remove_specks(out, settings.speck_fraction)
    return fill_holes(out, settings.hole_fraction)


def dilate_mask(mask: np.ndarray, kernel: int, iterations: int) -> np.ndarray:
    """SPIn-NeRF's train-mask dilation (a ``kernel`` x ``kernel`` square of ones, ``iterations``
    times), as the scene import applies it (``innout.scene``)."""
    out = mask.astype(np.uint8)
    if iterations > 0 and kernel > 1:
        out = cv2.dilate(out, np.ones((kernel, kernel), np.uint8), iterations=iterations)
    return out.astype(bool)
