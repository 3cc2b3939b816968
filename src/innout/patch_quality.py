"""How well a trained NeRF reproduces what it saw, estimated from random patches instead
of whole renders (the pretrain stage's PSNR/SSIM figures)."""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np

from innout.frames import Frame, load_keep_mask
from innout.image_metrics import ssim_map
from innout.images import load_rgb
from innout.progress import Progress


def sample_patches(width: int, height: int, count: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """``count`` boxes ``(y0, y1, x0, x1)`` of ``size`` x ``size`` px (clipped to the image)
    at uniformly random places inside a ``width`` x ``height`` image."""
    pw, ph = min(size, width), min(size, height)
    return [(int(y), int(y) + ph, int(x), int(x) + pw)
            for y, x in zip(rng.integers(0, height - ph + 1, count), rng.integers(0, width - pw + 1, count))]


def patch_quality(renderer: Any, train: list[Frame], test: list[Frame], per_view: int, size: int, seed: int,
                  log: logging.Logger) -> dict:
    """How well the NeRF reproduces what it was allowed to see, estimated from
    ``per_view`` random ``size`` px patches of every view instead of whole renders:

    * ``psnr_train_unmasked``: per train view the PSNR over its patches' unmasked pixels,
      mean over the views;
    * ``psnr_test_outside_mask`` / ``ssim_test_outside_mask`` (scenes with ground-truth
      test views): the same outside the test views' masks, and SSIM (11x11 Gaussian,
      sigma 1.5) of the patch pixels whose window lies inside the patch.

    Patches fall uniformly over each view, so these are unbiased estimates of the
    full-view values (SSIM: of its value away from the image border) at a fraction of the
    cost; same seed, same patches."""

    rng = np.random.default_rng(seed)
    margin = 5  # half of SSIM's 11 px window
    jobs = [(f, sample_patches(f.camera.intrinsics.width, f.camera.intrinsics.height, per_view, size, rng))
            for f in [*train, *test]]
    rays = sum((b[1] - b[0]) * (b[3] - b[2]) for _, boxes in jobs for b in boxes)
    psnr_train, psnr_test, ssim_test = [], [], []
    with Progress("pretrain quality patches", len(jobs), rays, log=log) as progress:
        for f, boxes in jobs:
            gt = load_rgb(f.image)
            keep = load_keep_mask(f, gt.shape[:2])
            errors, ssims = [], []
            for y0, y1, x0, x1 in boxes:
                cam = f.camera.with_intrinsics(f.camera.intrinsics.cropped(y0, y1, x0, x1))
                rgb = renderer.render_camera(cam, return_samples=False, progress=progress.advance)["rgb"].cpu().numpy()
                gt_patch, keep_patch = gt[y0:y1, x0:x1], keep[y0:y1, x0:x1]
                errors.append(((rgb - gt_patch) ** 2)[keep_patch])
                if f.split == "test" and min(y1 - y0, x1 - x0) > 2 * margin:
                    inner = (slice(margin, -margin), slice(margin, -margin))
                    ssims.append(ssim_map(rgb, gt_patch)[inner][keep_patch[inner]])
            progress.item_done()
            squared = np.concatenate(errors) if errors else np.zeros((0, 3))
            if squared.size:
                value = float(10.0 * math.log10(1.0 / max(float(squared.mean()), 1e-12)))
                (psnr_test if f.split == "test" else psnr_train).append(value)
            kept = np.concatenate(ssims) if ssims else np.zeros(0)
            if kept.size:
                ssim_test.append(float(kept.mean()))
    return {
        "psnr_train_unmasked": _mean(psnr_train),
        "psnr_test_outside_mask": _mean(psnr_test) if test else None,
        "ssim_test_outside_mask": _mean(ssim_test) if test else None,
        "quality_patches": {"per_view": per_view, "size": size, "rays": int(rays)},
        "psnr_definition": f"mean over views of the PSNR over the unmasked pixels (test: outside the object mask) of "
                           f"{per_view} random {size} px patches per view (an estimate of the full-view value)",
        "ssim_definition": "SSIM (11x11 Gaussian, sigma 1.5) of the same test patches at the pixels whose window lies "
                           "inside the patch and outside the mask, mean over pixels, then over views",
    }


def _mean(values: list) -> Optional[float]:
    return float(np.mean(values)) if values else None
