"""Base-view selection (In-N-Out, stage 3): centroid candidates and a pHash vote.

The candidates are the ``n`` training cameras whose centres are nearest the centroid of
all training camera centres. Every candidate is inpainted with the same seed; each fill
is hashed with a perceptual hash (``imagehash.phash``) of the inpainted image with
everything OUTSIDE the mask painted white, so only the fill (and the mask's shape) is
compared. The candidate whose hash has the smallest summed Hamming distance to the
other candidates' hashes (the "medoid" fill, the one the others agree with best) wins;
ties go to the smallest name.
"""

from __future__ import annotations

from typing import Any, Mapping

import imagehash
import numpy as np
from PIL import Image

from .cameras import Camera


def _centre(camera: Camera | np.ndarray) -> np.ndarray:
    if isinstance(camera, Camera):
        return np.asarray(camera.center, float)
    arr = np.asarray(camera, float)
    if arr.shape in ((4, 4), (3, 4)):
        return arr[:3, 3]
    if arr.shape == (3,):
        return arr
    raise ValueError(f"a camera is a Camera, a 4x4/3x4 c2w or a centre (3,), got shape {arr.shape}")


def candidate_views(cameras: Mapping[str, Camera | np.ndarray], n: int = 5) -> list[str]:
    """Names of the ``n`` cameras nearest the centroid of all camera centres, nearest
    first (ties, to 1e-9 of the layout's size, by name). ``cameras``: the training
    cameras by name (Camera objects, c2w matrices or centres)."""
    if n < 1:
        raise ValueError(f"need at least one candidate, got n={n}")
    if not cameras:
        raise ValueError("no cameras to choose a base view from")
    names = list(cameras)
    centres = np.stack([_centre(cameras[k]) for k in names])
    dist = np.linalg.norm(centres - centres.mean(0), axis=1)
    scale = max(float(dist.max()), 1e-12)
    # quantise so floating-point noise does not break exact ties between symmetric cameras
    key = np.round(dist / scale * 1e9).astype(np.int64)
    order = sorted(range(len(names)), key=lambda i: (key[i], names[i]))
    return [names[i] for i in order[: min(n, len(names))]]


def white_outside_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The uint8 RGB image with every pixel outside ``mask`` (True = inpainted) set to white."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(np.asarray(img, float), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].copy()
    m = np.asarray(mask).astype(bool)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask {m.shape} and image {img.shape[:2]} differ in size")
    img[~m] = 255
    return img


def masked_phash(image: np.ndarray, mask: np.ndarray, hash_size: int = 8) -> imagehash.ImageHash:
    """pHash of the image with everything outside the mask white."""
    return imagehash.phash(Image.fromarray(white_outside_mask(image, mask)), hash_size=hash_size)


def phash_vote(inpainted: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], hash_size: int = 8) -> dict[str, Any]:
    """Vote for the base view among inpainted candidates.

    Returns ``candidates`` (sorted names), ``hashes`` (name -> hex pHash), ``pairwise``
    (name -> name -> Hamming distance), ``distances`` (name -> summed Hamming distance
    to the other candidates), ``votes`` (name -> how many other candidates have it as
    their nearest fill; each candidate votes once, ties by name) and ``winner`` (the
    smallest summed distance, ties by name).
    """
    names = sorted(inpainted)
    if not names:
        raise ValueError("no inpainted candidates to vote on")
    missing = [k for k in names if k not in masks]
    if missing:
        raise ValueError(f"no mask for candidates {missing}")
    hashes = {k: masked_phash(inpainted[k], masks[k], hash_size) for k in names}
    pairwise = {a: {b: int(hashes[a] - hashes[b]) for b in names if b != a} for a in names}
    distances = {a: int(sum(pairwise[a].values())) for a in names}
    votes = {a: 0 for a in names}
    for a in names:
        if pairwise[a]:
            nearest = min(pairwise[a], key=lambda b: (pairwise[a][b], b))
            votes[nearest] += 1
    winner = min(names, key=lambda a: (distances[a], a))
    return {
        "candidates": names,
        "hashes": {k: str(h) for k, h in hashes.items()},
        "pairwise": pairwise,
        "distances": distances,
        "votes": votes,
        "winner": winner,
    }
