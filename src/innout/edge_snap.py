"""Snapping a propagated mask's outline to the image's edges (OpenCV GrabCut in a band).

A propagated mask follows the NeRF's depth, whose outline is off by a pixel or so: at the
working resolution of a CPU run (160 x 120) that pixel is 5-10 % of a mask's IoU. GrabCut
fits colour models of the object and the background from the mask itself and re-decides
only a narrow band of ``band`` pixels on either side of the outline (everything deeper
inside stays object, everything farther out background), so it can move the outline to
where the colours change but cannot invent or lose a part. The result replaces the mask
only when it still overlaps it by ``min_iou`` (object and background of one colour make
GrabCut wander). Deterministic (OpenCV's RNG is seeded).
"""

from __future__ import annotations

import cv2
import numpy as np


def snap_to_edges(rgb: np.ndarray, mask: np.ndarray, band: int = 2, iterations: int = 5,
                  min_iou: float = 0.8) -> tuple[np.ndarray, dict]:
    """(mask, record) for an RGB uint8 image (H, W, 3) and a bool mask (H, W)."""
    mask = mask.astype(bool)
    if band <= 0 or not mask.any() or mask.all():
        return mask, {"used": False, "why": "nothing to snap"}
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    sure_object = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
    near = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    if not sure_object.any():  # thinner than the band everywhere: no colour model to trust
        return mask, {"used": False, "why": "mask thinner than the band"}
    labels = np.full(mask.shape, cv2.GC_BGD, np.uint8)
    labels[near] = cv2.GC_PR_BGD
    labels[mask] = cv2.GC_PR_FGD
    labels[sure_object] = cv2.GC_FGD
    cv2.setRNGSeed(0)
    background_model, object_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(rgb[..., ::-1], dtype=np.uint8)
    cv2.grabCut(bgr, labels, None, background_model, object_model, int(iterations), cv2.GC_INIT_WITH_MASK)
    snapped = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    union = np.logical_or(snapped, mask).sum()
    overlap = float(np.logical_and(snapped, mask).sum() / union) if union else 1.0
    if overlap < min_iou:
        return mask, {"used": False, "why": f"snapped outline overlaps the mask by {overlap:.2f} < {min_iou}"}
    return snapped, {"used": True, "iou_with_propagated": round(overlap, 4)}
