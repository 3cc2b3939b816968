"""Inpainting masks like the ones the trained inpainter meets: object silhouettes dilated
as the scene import dilates them, boxes, and free-form blobs (strokes and ellipses).

Every mask is ``(H, W) bool`` (True = to inpaint) drawn from a numpy ``Generator``, so a
seeded generator gives the same masks. Sizes are fractions of the image, so the same
distribution holds at any resolution; the fractions cover the demo's dilated object
masks (20-45 % of a 160x120 view after the 10-pixel dilation) and smaller holes.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# innout.scene.import_scene dilates train masks with a 5x5 square of ones, 5 times, at the
# working size (config.yaml scene.mask_dilation_*, SPIn-NeRF's loader uses the same).
SILHOUETTE_KERNEL = 5
SILHOUETTE_ITERATIONS = 5

MIN_FRACTION = 0.03  # a drawn box/blob mask covers at least this much of the image ...
MAX_FRACTION = 0.45  # ... and at most this much


def silhouette_mask(coverage: np.ndarray, kernel: int = SILHOUETTE_KERNEL, iterations: int = SILHOUETTE_ITERATIONS) -> np.ndarray:
    """The object's mask as the workflow makes it: pixels at least half covered by the
    object (the generator's ``object_coverage``; SPIn-NeRF labels are thresholded so),
    dilated by a ``kernel`` square of ones ``iterations`` times."""
    mask = (np.asarray(coverage) >= 0.5).astype(np.uint8)
    if iterations > 0 and kernel > 1:
        mask = cv2.dilate(mask, np.ones((kernel, kernel), np.uint8), iterations=iterations)
    return mask.astype(bool)


def box_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One or two axis-aligned rectangles, each 15-60 % of the image along each side."""
    return _bounded(lambda: _boxes(rng, height, width))


def blob_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Free-form: 1-4 thick random-walk strokes and 0-2 filled ellipses (the irregular
    masks of free-form inpainting work), blurred and re-thresholded so that their outline
    is smooth like a dilated silhouette's."""
    return _bounded(lambda: _blobs(rng, height, width))


def _boxes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    for _ in range(1 if rng.random() < 0.7 else 2):
        bh = max(2, int(round(height * rng.uniform(0.15, 0.6))))
        bw = max(2, int(round(width * rng.uniform(0.15, 0.6))))
        y0 = int(rng.integers(0, height - bh + 1))
        x0 = int(rng.integers(0, width - bw + 1))
        mask[y0:y0 + bh, x0:x0 + bw] = True
    return mask


def _blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    short = min(height, width)
    for _ in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        thickness = max(2, int(round(short * rng.uniform(0.06, 0.2))))
        angle = rng.uniform(0, 2 * math.pi)
        points = [(x, y)]
        for _ in range(int(rng.integers(2, 6))):
            angle += rng.uniform(-1.2, 1.2)
            length = short * rng.uniform(0.1, 0.35)
            x = float(np.clip(x + length * math.cos(angle), 0, width - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, height - 1))
            points.append((x, y))
        cv2.polylines(canvas, [np.round(np.array(points)).astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 3))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (max(2, int(short * rng.uniform(0.08, 0.3))), max(2, int(short * rng.uniform(0.08, 0.3))))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    sigma = short * 0.02
    if sigma > 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    return canvas >= 128


def _bounded(draw, attempts: int = 8) -> np.ndarray:
    """A mask from ``draw()`` covering MIN_FRACTION..MAX_FRACTION of the image: redrawn
    up to ``attempts`` times (the same generator, so still deterministic), then the last
    draw eroded or dilated into the range."""
    for _ in range(attempts):
        mask = draw()
        if MIN_FRACTION <= mask.mean() <= MAX_FRACTION:
            return mask
    m = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(max(m.shape)):
        if m.mean() > MAX_FRACTION:
            m = cv2.erode(m, kernel)
        elif m.mean() < MIN_FRACTION:
            m = cv2.dilate(m, kernel) if m.any() else _centre_square(m.shape)
        else:
            break
    return m.astype(bool)


def _centre_square(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    m = np.zeros(shape, np.uint8)
    m[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = 1
    return m
