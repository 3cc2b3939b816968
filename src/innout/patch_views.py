"""Which train views the refine stage's patch loss uses.

View subset (:func:`select_patch_views`)
    Every train view but the base is put in one of 12 groups by the offset of its centre
    in the base camera's frame, ``d = R_base^T (c_view - c_base)`` (axes: x right, y up,
    z backwards; :mod:`innout.cameras`):

    * ``x+`` if ``d_x >= 0`` else ``x-``; ``y+`` if ``d_y >= 0`` else ``y-``;
    * ``z0 / z1 / z2``: terciles of ``d_z`` by RANK among the non-base views (sorted by
      ``(d_z, name)``, rank ``r`` of ``n`` goes to ``floor(3 r / n)``), so ``z0`` holds
      the views furthest in front of the base camera (towards the scene) and ``z2``
      those furthest behind; the three counts differ by at most one, whatever the
      capture's depth spread (forward-facing captures have almost none).

    Group ids are ``"x+y-z0"`` etc. (:data:`GROUP_IDS`); a group may be empty. From each
    non-empty group the ``ceil(keep_fraction * n)`` views most similar to the base are
    kept, so every direction around the base keeps at least one view. The base view itself
    is added only with ``include_base`` (it is supervised by L_prior already).

    What "similar" means is ``refine.subset_by`` (:func:`subset_scores`):

    * ``phash`` (the paper): the Hamming distance between the perceptual hashes
      (``imagehash.phash``, 64 bits) of the view's inpainting and the base view's, each
      cropped to the bounding box of its own mask (the inpainted content and its
      surroundings; the whole frames would mostly compare where the masks lie);
    * ``lpips`` (the released code): the LPIPS distance between the same box crops, both
      resized to the base crop's size;
    * ``pose``: ``1 - (angle / max_angle + dist / max_dist) / 2`` in [0, 1], ``angle``
      the angle between the two viewing directions (-z axes), ``dist`` the distance
      between the centres, both normalised by their maximum over the non-base views (a
      term whose maximum is 0 contributes 0).

    Ties (pHash distances are integers) go to the pose similarity, then to the name.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import imagehash
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from innout.cameras import Camera
from innout.images import to_u8
from innout.patch_losses import lpips_distance, to_nchw
from innout.patch_sampling import mask_bbox

GROUP_IDS: tuple[str, ...] = tuple(f"x{sx}y{sy}z{z}" for sx in "-+" for sy in "-+" for z in range(3))


def _c2w(camera: Camera | np.ndarray) -> np.ndarray:
    m = camera.c2w if isinstance(camera, Camera) else camera
    m = np.asarray(m, dtype=float)
    if m.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"a camera is a Camera or a 4x4/3x4 c2w, got shape {m.shape}")
    return m


def group_of_offset(dx: float, dy: float, z_tercile: int) -> str:
    """The group id of an offset's x/y signs (zero counts as +) and its z tercile."""
    if z_tercile not in (0, 1, 2):
        raise ValueError(f"z tercile is 0, 1 or 2, got {z_tercile}")
    return f"x{'+' if dx >= 0 else '-'}y{'+' if dy >= 0 else '-'}z{z_tercile}"


def select_patch_views(
    cameras: Mapping[str, Camera | np.ndarray],
    base: str,
    keep_fraction: float = 0.5,
    include_base: bool = False,
    scores: Optional[Mapping[str, float]] = None,
) -> dict[str, Any]:
    """Split the train views into the 12 groups around ``base`` and keep, per group, the
    ``ceil(keep_fraction * n)`` most similar to it (module docstring: definitions).
    ``scores``: {name: similarity to the base, higher = more similar} of every non-base
    view (:func:`subset_scores`); None ranks by the pose similarity.

    Returns plain data (JSON-ready)::

        selected    kept names, in the order of ``cameras`` (the base first when included)
        groups      {group_id: [names, most similar first]} for all 12 ids (maybe empty)
        kept        {group_id: [kept names, most similar first]}
        group_of    {name: group_id}
        score       {name: the ranking score} (``scores``, or the pose similarity)
        similarity  {name: pose similarity in [0, 1]}, 1 = the base's own pose
        angle_deg   {name: angle between viewing directions}
        distance    {name: distance between centres (scene units)}
        offset      {name: [dx, dy, dz] in the base camera's frame}
    """
    if base not in cameras:
        raise KeyError(f"base view {base!r} is not among the {len(cameras)} cameras")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    b = _c2w(cameras[base])
    rot_b, c_b = b[:3, :3], b[:3, 3]
    fwd_b = -rot_b[:, 2] / np.linalg.norm(rot_b[:, 2])
    others = [n for n in cameras if n != base]

    offset, angle, dist = {}, {}, {}
    for name in others:
        m = _c2w(cameras[name])
        offset[name] = rot_b.T @ (m[:3, 3] - c_b)
        fwd = -m[:3, 2] / np.linalg.norm(m[:3, 2])
        angle[name] = float(np.arccos(np.clip(np.dot(fwd_b, fwd), -1.0, 1.0)))
        dist[name] = float(np.linalg.norm(m[:3, 3] - c_b))

    max_a = max(angle.values(), default=0.0)
    max_d = max(dist.values(), default=0.0)
    similarity = {}
    for name in others:
        a_n = angle[name] / max_a if max_a > 0 else 0.0
        d_n = dist[name] / max_d if max_d > 0 else 0.0
        similarity[name] = 1.0 - 0.5 * (a_n + d_n)

    n = len(others)
    by_z = sorted(others, key=lambda k: (float(offset[k][2]), k))
    tercile = {name: (3 * rank) // n for rank, name in enumerate(by_z)}
    group_of = {k: group_of_offset(float(offset[k][0]), float(offset[k][1]), tercile[k]) for k in others}

    score = dict(similarity) if scores is None else {k: float(scores[k]) for k in others}
    order = lambda k: (-score[k], -similarity[k], k)  # noqa: E731  most similar first; ties: pose, then name
    groups: dict[str, list[str]] = {g: [] for g in GROUP_IDS}
    for name in others:
        groups[group_of[name]].append(name)
    kept: dict[str, list[str]] = {}
    for g in GROUP_IDS:
        groups[g].sort(key=order)
        k = math.ceil(keep_fraction * len(groups[g]) - 1e-9) if groups[g] else 0
        kept[g] = groups[g][:k]
    keep = {name for names in kept.values() for name in names}
    selected = ([base] if include_base else []) + [k for k in cameras if k in keep]
    return {
        "base": base,
        "selected": selected,
        "groups": groups,
        "kept": kept,
        "group_of": group_of,
        "score": score,
        "similarity": similarity,
        "angle_deg": {k: math.degrees(v) for k, v in angle.items()},
        "distance": dist,
        "offset": {k: [float(x) for x in v] for k, v in offset.items()},
    }


SUBSET_BY = ("phash", "lpips", "pose")


def box_crop(image: Any, mask: Any) -> np.ndarray:
    """The image inside the bounding box of its mask (the whole image for an empty mask)."""
    box = mask_bbox(mask)
    img = np.asarray(image)
    return img if box is None else img[box[0]:box[1], box[2]:box[3]]


def subset_scores(
    by: str,
    inpainted: Mapping[str, Any],
    masks: Mapping[str, Any],
    base_image: Any,
    base_mask: Any,
    lpips_module: Optional[nn.Module] = None,
    device: Any = "cpu",
) -> Optional[dict[str, float]]:
    """{name: similarity of the view's fill to the base view's, higher = more similar}
    for ``refine.subset_by`` (module docstring): ``phash`` = minus the Hamming distance of
    the box crops' pHashes, ``lpips`` = minus their LPIPS distance (``lpips_module`` as
    :func:`patch_loss` takes it), ``pose`` = None (the pose similarity ranks)."""
    if by not in SUBSET_BY:
        raise ValueError(f"refine.subset_by is {by!r}: one of {', '.join(SUBSET_BY)}")
    if by == "pose":
        return None
    base_crop = to_u8(box_crop(base_image, base_mask))
    if by == "phash":
        reference = imagehash.phash(Image.fromarray(base_crop))
        return {n: -float(imagehash.phash(Image.fromarray(to_u8(box_crop(img, masks[n])))) - reference)
                for n, img in inpainted.items()}
    if lpips_module is None:
        raise ValueError("refine.subset_by=lpips needs an LPIPS network (refine.lpips_weight > 0)")
    h, w = base_crop.shape[:2]
    ref = to_nchw(torch.from_numpy(base_crop.astype(np.float32) / 255.0)).to(device)
    scores = {}
    with torch.no_grad():
        for name, img in inpainted.items():
            crop = to_nchw(torch.from_numpy(to_u8(box_crop(img, masks[name])).astype(np.float32) / 255.0)).to(device)
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            scores[name] = -float(lpips_distance(lpips_module, crop, ref).mean())
    return scores
