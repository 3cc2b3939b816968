"""Refinement building blocks (In-N-Out, stage 5), pure torch/numpy.

The NeRF is refined with

    L = L_rec + prior_weight * L_prior + lambda_patch * L_patch,
    L_patch = l1_weight * L1 + lpips_weight * LPIPS + adv_weight * L_adv,

where L_rec is the photometric loss on random rays through UNMASKED pixels of all train
views (:func:`sample_unmasked_pixels`), L_prior the base view's prior loss (stage 3), and
L_patch compares square patches rendered by the NeRF with the same patches of the
aligned inpaintings (stage 4). This module holds the pieces; the nerfstudio training
loop lives elsewhere. ``lambda_patch`` is applied HERE: ``patch_loss(...)["total"]``
already carries it, so a step's loss is ``rec + prior_weight * prior + out["total"]``.

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

Patches (:class:`PatchSampler`)
    A patch is ``size = min(patch_size, H, W)`` pixels square. Its centre pixel is drawn
    uniformly from the pixels of the bounding box of the view's mask, the patch is
    placed at ``y0 = cy - size // 2`` (likewise x) and clamped into the image, so it
    always lies fully inside the image and always contains the drawn centre, hence
    intersects the bounding box. Pixel coordinates are integer ``(row, col)`` =
    ``(y, x)``; the ray of pixel ``(y, x)`` passes through its centre ``(x + .5, y + .5)``
    as in :meth:`innout.cameras.Camera.rays` (:func:`pixel_rays`).

Losses
    Images are float tensors in [0, 1], patches ``(N, 3, S, S)``. LPIPS is given an
    ``lpips.LPIPS``-like module (called as ``module(a, b)`` on images in [-1, 1], which
    this module maps to); building it (and its backbone) is the caller's business, so
    nothing is downloaded here. Adversarial: a StyleGAN2-style :class:`Discriminator`
    on ``tile`` x ``tile`` tiles of the patches (:func:`extract_tiles`), non-saturating
    losses (generator ``softplus(-D(fake))``; discriminator ``softplus(D(fake)) +
    softplus(-D(real))``) with the INPAINTED patches as "real" and the NeRF's renders as
    "fake", and an R1 penalty ``gamma / 2 * E ||grad_x D(x_real)||^2`` with the gradient
    taken with respect to the image in [-1, 1] (StyleGAN2's convention, so published
    gammas transfer), optionally lazy (every ``r1_every`` steps, scaled by it).

A step, in order: render the patches, ``out = patch_loss(pred, target, lpips, D, w)``
(D's parameters get no gradient from it), backward ``rec + prior + out["total"]`` into
the NeRF and step its optimiser; then :func:`discriminator_step` with the same patches
(the renders detached).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import imagehash
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cameras import Camera
from .provenance import metric_backbones, provenance_fields, summary_provenance, weakest, weights_provenance

GROUP_IDS: tuple[str, ...] = tuple(f"x{sx}y{sy}z{z}" for sx in "-+" for sy in "-+" for z in range(3))


# --------------------------------------------------------------------------------------
# view subset
# --------------------------------------------------------------------------------------


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


def _uint8(image: Any) -> np.ndarray:
    a = np.asarray(image)
    return a if a.dtype == np.uint8 else (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


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
    base_crop = _uint8(box_crop(base_image, base_mask))
    if by == "phash":
        from PIL import Image

        reference = imagehash.phash(Image.fromarray(base_crop))
        return {n: -float(imagehash.phash(Image.fromarray(_uint8(box_crop(img, masks[n])))) - reference)
                for n, img in inpainted.items()}
    if lpips_module is None:
        raise ValueError("refine.subset_by=lpips needs an LPIPS network (refine.lpips_weight > 0)")
    h, w = base_crop.shape[:2]
    ref = to_nchw(torch.from_numpy(base_crop.astype(np.float32) / 255.0)).to(device)
    scores = {}
    with torch.no_grad():
        for name, img in inpainted.items():
            crop = to_nchw(torch.from_numpy(_uint8(box_crop(img, masks[name])).astype(np.float32) / 255.0)).to(device)
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            scores[name] = -float(lpips_distance(lpips_module, crop, ref).mean())
    return scores


# --------------------------------------------------------------------------------------
# patches and pixels
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# discriminator
# --------------------------------------------------------------------------------------

_ACT_GAIN = math.sqrt(2.0)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * _ACT_GAIN


class _Conv(nn.Module):
    """Conv2d with StyleGAN2's equalized learning rate (weights N(0, 1) scaled by
    1/sqrt(fan_in) at run time) or, with ``equalized=False``, the same initial
    function with the scale folded into the stored weights."""

    def __init__(self, c_in: int, c_out: int, k: int, bias: bool = True, equalized: bool = True):
        super().__init__()
        scale = 1.0 / math.sqrt(c_in * k * k)
        self.scale = scale if equalized else 1.0
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k) * (1.0 if equalized else scale))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.padding = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class _Linear(nn.Module):
    def __init__(self, c_in: int, c_out: int, equalized: bool = True):
        super().__init__()
        scale = 1.0 / math.sqrt(c_in)
        self.scale = scale if equalized else 1.0
        self.weight = nn.Parameter(torch.randn(c_out, c_in) * (1.0 if equalized else scale))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class _BlurDown(nn.Module):
    """Low-pass [1, 3, 3, 1] (outer product, normalised) then stride 2: halves H and W."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(k, k)
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.kernel.expand(c, 1, 4, 4).to(x.dtype), stride=2, padding=1, groups=c)


class _ResBlock(nn.Module):
    """StyleGAN2 residual D block: conv3x3 -> act -> blur-down -> conv3x3 -> act, plus a
    skip blur-down -> 1x1 conv, summed and scaled by 1/sqrt(2)."""

    def __init__(self, c_in: int, c_out: int, equalized: bool):
        super().__init__()
        self.conv0 = _Conv(c_in, c_in, 3, equalized=equalized)
        self.conv1 = _Conv(c_in, c_out, 3, equalized=equalized)
        self.skip = _Conv(c_in, c_out, 1, bias=False, equalized=equalized)
        self.down = _BlurDown()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _act(self.conv1(self.down(_act(self.conv0(x)))))
        s = self.skip(self.down(x))
        return (y + s) * (1.0 / math.sqrt(2.0))


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the std of features over groups of samples, averaged over
    channels and pixels (StyleGAN2). The group is the largest divisor of the batch size
    not above ``group_size``."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.reshape(g, n // g, c, h, w).float()
    y = y - y.mean(dim=0)
    std = (y.square().mean(dim=0) + 1e-8).sqrt()  # (n/g, c, h, w)
    std = std.mean(dim=(1, 2, 3)).to(x.dtype)  # (n/g,)
    std = std.reshape(1, n // g, 1, 1, 1).expand(g, n // g, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, std], dim=1)


class Discriminator(nn.Module):
    """StyleGAN2-style residual discriminator on ``tile`` x ``tile`` RGB images in [0, 1].

    fromRGB (1x1) at ``channels``; residual blocks halving the resolution down to 4 x 4,
    channels doubling per halving up to ``max_channels``; minibatch-stddev; conv3x3;
    FC -> FC -> one logit per image. Leaky ReLU 0.2 (gain sqrt 2), blur [1,3,3,1]
    downsampling, equalized learning rate (``equalized``)."""

    def __init__(self, channels: int = 256, tile: int = 64, max_channels: int = 512, mbstd_group: int = 4, equalized: bool = True):
        super().__init__()
        if tile < 8 or tile & (tile - 1):
            raise ValueError(f"tile must be a power of two >= 8, got {tile}")
        self.tile = int(tile)
        self.mbstd_group = int(mbstd_group)

        def ch(res: int) -> int:
            return int(min(max_channels, channels * (tile // res)))

        self.from_rgb = _Conv(3, ch(tile), 1, equalized=equalized)
        blocks = []
        res = tile
        while res > 4:
            blocks.append(_ResBlock(ch(res), ch(res // 2), equalized))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        c = ch(4)
        self.conv = _Conv(c + 1, c, 3, equalized=equalized)
        self.fc = _Linear(c * 16, c, equalized=equalized)
        self.out = _Linear(c, 1, equalized=equalized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` of images ``(N, 3, tile, tile)`` in [0, 1]."""
        if x.shape[-2:] != (self.tile, self.tile):
            raise ValueError(f"the discriminator takes {self.tile} x {self.tile} tiles, got {tuple(x.shape[-2:])}")
        h = _act(self.from_rgb(x * 2.0 - 1.0))
        for block in self.blocks:
            h = block(h)
        h = minibatch_stddev(h, self.mbstd_group)
        h = _act(self.conv(h))
        h = _act(self.fc(h.flatten(1)))
        return self.out(h).reshape(-1)


@contextlib.contextmanager
def frozen(module: Any) -> Iterator[None]:
    """Parameters of ``module`` without gradients inside the block (restored after);
    anything that is not an ``nn.Module`` (None, a plain callable) passes through."""
    if not isinstance(module, nn.Module):
        yield
        return
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


# --------------------------------------------------------------------------------------
# tiles and losses
# --------------------------------------------------------------------------------------


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)``, ``(N, H, W, 3)``, ``(3, H, W)`` or ``(N, 3, H, W)`` -> ``(N, 3, H, W)``."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an image or a batch of images, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


def _torch_rng(generator: torch.Generator | int | None) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(int(generator))
    return g


def extract_tiles(
    patches: torch.Tensor | Sequence[torch.Tensor],
    tile: int,
    mode: str = "grid",
    count: int = 1,
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """Discriminator inputs ``(M, 3, tile, tile)`` from patches ``(N, 3, S, S)`` (or a list
    of such batches, e.g. of different sizes).

    A patch smaller than ``tile`` is resized (bilinear) to one tile. Otherwise ``grid``
    cuts it into its ``(S // tile)^2`` non-overlapping tiles (the grid shifted by a random
    offset when ``tile`` does not divide ``S``) and ``random`` takes ``count`` random
    crops per patch. Offsets come from ``generator`` (a CPU torch.Generator or a seed)."""
    if not isinstance(patches, torch.Tensor):
        return torch.cat([extract_tiles(p, tile, mode, count, generator) for p in patches], dim=0)
    if mode not in ("grid", "random"):
        raise ValueError(f"tile mode is grid or random, got {mode!r}")
    x = to_nchw(patches)
    n, c, h, w = x.shape
    if min(h, w) < tile:
        return F.interpolate(x, size=(tile, tile), mode="bilinear", align_corners=False)
    gen = _torch_rng(generator)

    def offset(limit: int, k: int) -> torch.Tensor:
        return torch.randint(0, limit + 1, (k,), generator=gen) if limit > 0 else torch.zeros(k, dtype=torch.long)

    if mode == "grid":
        ny, nx = h // tile, w // tile
        oy, ox = int(offset(h - ny * tile, 1)), int(offset(w - nx * tile, 1))
        x = x[:, :, oy : oy + ny * tile, ox : ox + nx * tile]
        x = x.unfold(2, tile, tile).unfold(3, tile, tile)  # (n, c, ny, nx, tile, tile)
        return x.permute(0, 2, 3, 1, 4, 5).reshape(n * ny * nx, c, tile, tile)
    oys, oxs = offset(h - tile, n * count), offset(w - tile, n * count)
    tiles = [x[i // count, :, oy : oy + tile, ox : ox + tile] for i, (oy, ox) in enumerate(zip(oys.tolist(), oxs.tolist()))]
    return torch.stack(tiles, dim=0)


@dataclass
class PatchLossWeights:
    """Weights of L_patch and how D sees the patches. ``total = lambda_patch * (l1 * L1 +
    lpips * LPIPS + adv * L_adv)``."""

    l1: float = 1.0
    lpips: float = 1.0
    adv: float = 1.0
    lambda_patch: float = 0.01
    tile_mode: str = "grid"
    tiles_per_patch: int = 4

    @classmethod
    def from_config(cls, cfg: Any) -> "PatchLossWeights":
        """From a RefineConfig (dataclass, DictConfig or mapping)."""
        get = (lambda k, d: cfg.get(k, d)) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else (lambda k, d: getattr(cfg, k, d))
        return cls(
            l1=float(get("l1_weight", 1.0)),
            lpips=float(get("lpips_weight", 1.0)),
            adv=float(get("adv_weight", 1.0)),
            lambda_patch=float(get("lambda_patch", 0.01)),
            tile_mode=str(get("disc_tiles", "grid")),
            tiles_per_patch=int(get("tiles_per_patch", 4)),
        )


def lpips_distance(lpips_module: Any, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS of image batches in [0, 1] (the module gets them in [-1, 1]). The
    module's own parameters get no gradient; the images do."""
    with frozen(lpips_module):
        d = lpips_module(to_nchw(pred) * 2.0 - 1.0, to_nchw(target) * 2.0 - 1.0)
    return d.mean()


def generator_adv_loss(discriminator: nn.Module, fake_tiles: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``E softplus(-D(fake))``; D gets no gradient."""
    with frozen(discriminator):
        return F.softplus(-discriminator(fake_tiles)).mean()


def patch_loss(
    pred_patch: torch.Tensor,
    target_patch: torch.Tensor,
    lpips_module: Any,
    discriminator: Optional[nn.Module],
    weights: PatchLossWeights | Any = None,
    generator: torch.Generator | int | None = None,
) -> dict[str, torch.Tensor]:
    """L_patch of rendered patches against inpainted ones (both ``(N, 3, S, S)`` or
    ``(N, S, S, 3)``, in [0, 1]).

    Returns ``l1``, ``lpips``, ``adv`` (unweighted), ``patch`` = the weighted sum and
    ``total`` = ``lambda_patch * patch`` (lambda_patch is applied here). A term whose
    weight is 0 or whose module is None is 0 and not computed (the ablations)."""
    w = weights if isinstance(weights, PatchLossWeights) else PatchLossWeights.from_config(weights or {})
    pred, target = to_nchw(pred_patch), to_nchw(target_patch).to(pred_patch.dtype)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} patches differ")
    zero = pred.new_zeros(())
    l1 = (pred - target).abs().mean()
    lp = lpips_distance(lpips_module, pred, target) if (lpips_module is not None and w.lpips != 0) else zero
    if discriminator is not None and w.adv != 0:
        tiles = extract_tiles(pred, discriminator.tile, w.tile_mode, w.tiles_per_patch, generator)
        adv = generator_adv_loss(discriminator, tiles)
    else:
        adv = zero
    patch = w.l1 * l1 + w.lpips * lp + w.adv * adv
    return {"l1": l1, "lpips": lp, "adv": adv, "patch": patch, "total": w.lambda_patch * patch}


def r1_penalty(discriminator: nn.Module, real_tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E ||grad D(x)||^2 over the image in [-1, 1], logits)`` at real tiles in [0, 1]
    (graph kept, so the penalty can be backpropagated into D)."""
    x = real_tiles.detach().requires_grad_(True)
    logits = discriminator(x)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    # D sees 2x - 1, so d/d(2x - 1) = (d/dx) / 2 and the squared norm is a quarter
    return grad.square().sum(dim=(1, 2, 3)).mean() / 4.0, logits


def discriminator_loss(
    discriminator: nn.Module,
    real_tiles: torch.Tensor,
    fake_tiles: Optional[torch.Tensor],
    r1_gamma: float = 0.2,
    r1_every: int = 1,
    step: int = 0,
) -> dict[str, torch.Tensor]:
    """``softplus(D(fake)) + softplus(-D(real)) + R1`` with the INPAINTED tiles as real
    and the renders as fake (detached here; ``fake_tiles`` may be None: real term only).

    R1 = ``gamma / 2 * E ||grad D(real)||^2`` (gradient w.r.t. the image in [-1, 1]);
    lazy: computed when ``step % r1_every == 0`` and then multiplied by ``r1_every``."""
    if r1_every < 1:
        raise ValueError(f"r1_every must be >= 1, got {r1_every}")
    use_r1 = r1_gamma > 0 and step % r1_every == 0
    if use_r1:
        grad_sq, logits_real = r1_penalty(discriminator, real_tiles)
        r1 = 0.5 * r1_gamma * r1_every * grad_sq
    else:
        logits_real = discriminator(real_tiles.detach())
        r1 = logits_real.new_zeros(())
    real = F.softplus(-logits_real).mean()
    if fake_tiles is not None:
        logits_fake = discriminator(fake_tiles.detach())
        fake = F.softplus(logits_fake).mean()
        fake_mean = logits_fake.detach().mean()
    else:
        fake = fake_mean = logits_real.new_zeros(())
    return {
        "real": real,
        "fake": fake,
        "r1": r1,
        "total": real + fake + r1,
        "logit_real": logits_real.detach().mean(),
        "logit_fake": fake_mean,
    }


def make_discriminator(cfg: Any) -> Discriminator:
    """The discriminator a RefineConfig describes."""
    return Discriminator(
        channels=int(cfg.disc_channels),
        tile=int(cfg.disc_tile),
        max_channels=int(cfg.disc_max_channels),
        mbstd_group=int(cfg.disc_mbstd_group),
        equalized=bool(cfg.disc_equalized_lr),
    )


def make_discriminator_optimizer(discriminator: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """Adam (betas 0, 0.99; with lazy R1 the lr and betas get StyleGAN2's
    ``k / (k + 1)`` correction) or RMSprop (the released code's), at ``disc_lr``."""
    kind = str(cfg.disc_optimizer)
    lr = float(cfg.disc_lr)
    if kind == "adam":
        k = int(cfg.r1_every)
        ratio = k / (k + 1) if k > 1 else 1.0
        return torch.optim.Adam(discriminator.parameters(), lr=lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)
    if kind == "rmsprop":
        return torch.optim.RMSprop(discriminator.parameters(), lr=lr)
    raise ValueError(f"disc_optimizer is adam or rmsprop, got {kind!r}")


def discriminator_step(
    discriminator: nn.Module,
    optimizer: torch.optim.Optimizer,
    real_patches: torch.Tensor,
    fake_patches: Optional[torch.Tensor],
    cfg: Any,
    step: int,
    generator: torch.Generator | int | None = None,
) -> dict[str, float]:
    """One D update on the tiles of inpainted (real) and rendered (fake, detached)
    patches. Skipped (``skipped = 1``) when a gradient is not finite."""
    w = PatchLossWeights.from_config(cfg)
    gen = _torch_rng(generator)
    real = extract_tiles(to_nchw(real_patches), discriminator.tile, w.tile_mode, w.tiles_per_patch, gen)
    fake = None
    if fake_patches is not None:
        fake = extract_tiles(to_nchw(fake_patches).detach(), discriminator.tile, w.tile_mode, w.tiles_per_patch, gen)
    losses = discriminator_loss(discriminator, real, fake, float(cfg.r1_gamma), int(cfg.r1_every), step)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in discriminator.parameters())
    if finite:
        optimizer.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["skipped"] = 0.0 if finite else 1.0
    return out


# --------------------------------------------------------------------------------------
# the stage: run_refine
# --------------------------------------------------------------------------------------
#
# The driver holds the inputs in memory at the working resolution (images, masks,
# inpaintings of the train views) and trains the base stage's NeRF further with
# innout.finetune.NerfTuner. One step renders, in ONE forward pass, the L_rec rays
# (unmasked pixels of all train views), the L_prior rays (masked pixels of the base view)
# and the pixels of the patches, so nerfacto's proposal regularisers see all of them.

REFINE_LOSS_KEYS = ("loss", "rec", "prior_rgb", "prior_depth", "l1", "lpips", "adv", "d_real", "d_fake", "d_r1")
CURVE_PANELS = {"losses": ["loss", "rec", "prior_rgb", "prior_depth"], "patch loss": ["l1", "lpips", "adv"],
                "discriminator": ["d_real", "d_fake"], "PSNR of the L_rec rays (dB)": ["psnr_rec"],
                "learning rate": ["lr"]}


@dataclass
class RefineInputs:
    """What one refinement run trains on, at the working resolution (H x W)."""

    names: list[str]  # train views, in transforms.json order
    cameras: dict[str, Camera]
    images: np.ndarray  # (V, H, W, 3) float32 photos of the train views
    object_masks: dict[str, np.ndarray]  # {name: bool H x W}, True = object (not seen by L_rec)
    base: str
    base_image: np.ndarray  # (H, W, 3) float32, the base view's inpainting
    base_mask: np.ndarray  # bool H x W
    depth_prior: np.ndarray  # (H, W) float32, distance along the ray (scene units)
    inpainted: dict[str, np.ndarray]  # {name: (H, W, 3) float32} patch targets
    upstream_weights: Optional[str]  # the weakest provenance the base and inpaint summaries record
    # whether the base stage found its depth prior plausible and fitted with it; when it did
    # not (innout.base.check_depth_prior), L_prior's depth term is left out here too
    depth_prior_used: bool = True


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        from innout.errors import InputError

        raise InputError(path, f"cannot read: {err}") from None


def _load_rgb_at(path: Path, size: tuple[int, int]) -> np.ndarray:
    """float32 RGB in [0, 1] of an image file, resized (bicubic) to ``size`` = (W, H)."""
    from PIL import Image

    from innout.errors import InputError

    if not Path(path).is_file():
        raise InputError(path, "image not found")
    img = Image.open(path).convert("RGB")
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _load_mask_at(path: Path, size: tuple[int, int]) -> np.ndarray:
    """bool mask (nonzero = object) of a PNG, resized (nearest) to ``size`` = (W, H)."""
    from PIL import Image

    from innout.errors import InputError

    if not Path(path).is_file():
        raise InputError(path, "mask not found")
    img = Image.open(path)
    img = img.convert("L") if img.mode not in ("L", "1", "P", "I", "I;16") else img
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.NEAREST)
    return np.asarray(img) > 0


def load_refine_inputs(transforms: Path, base_dir: Path, inpaint_dir: Path) -> RefineInputs:
    """Read the scene, the base stage's and the inpaint stage's outputs (one-line
    ``InputError`` naming the file on anything missing or inconsistent)."""
    from innout.errors import InputError
    from innout.pretrain import load_keep_mask, load_rgb, read_scene

    _, _, train, _ = read_scene(Path(transforms))
    w, h = train[0].camera.intrinsics.width, train[0].camera.intrinsics.height
    names = [f.name for f in train]
    images, masks = [], {}
    for f in train:
        img = load_rgb(f.image)
        if img.shape[:2] != (h, w):
            raise InputError(f.image, f"image is {img.shape[1]}x{img.shape[0]}, the camera says {w}x{h}")
        images.append(img)
        masks[f.name] = ~load_keep_mask(f, (h, w))
    base_summary = _read_json(Path(base_dir) / "summary.json")
    base = base_summary.get("winner")
    if base not in names:
        raise InputError(Path(base_dir) / "summary.json", f"winner {base!r} is not a train view of {transforms}")
    depth_path = Path(base_dir) / "depth_prior.npy"
    if not depth_path.is_file():
        raise InputError(depth_path, "depth prior not found")
    depth = np.load(depth_path).astype(np.float32)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise InputError(depth_path, f"expected an H x W depth map, got shape {depth.shape}")
    if depth.shape != (h, w):
        depth = F.interpolate(torch.from_numpy(depth)[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
    base_mask = _load_mask_at(Path(base_dir) / "mask.png", (w, h))
    if not base_mask.any():
        raise InputError(Path(base_dir) / "mask.png", "the base view's mask is empty: no pixel for L_prior")
    usable = base_mask & np.isfinite(depth) & (depth > 0)
    if not usable.any():
        raise InputError(depth_path, "no finite positive depth inside the base view's mask")
    inpaint_summary = _read_json(Path(inpaint_dir) / "summary.json")
    inpainted = {}
    for name in names:
        path = Path(inpaint_dir) / "images" / f"{name}.png"
        if path.is_file():
            inpainted[name] = _load_rgb_at(path, (w, h))
    if not inpainted:
        raise InputError(Path(inpaint_dir) / "images", "no inpainted train view (images/<view>.png)")
    return RefineInputs(
        names=names,
        cameras={f.name: f.camera for f in train},
        images=np.stack(images).astype(np.float32),
        object_masks=masks,
        base=base,
        base_image=_load_rgb_at(Path(base_dir) / "base.png", (w, h)),
        base_mask=base_mask,
        depth_prior=depth,
        inpainted=inpainted,
        upstream_weights=weakest(summary_provenance(base_summary), summary_provenance(inpaint_summary)),
        depth_prior_used=bool((base_summary.get("depth_prior") or {}).get("used", True)),
    )


class CameraRays:
    """Rays of pixels ``(view, y, x)`` of several cameras at once (vectorised
    :func:`pixel_rays`: the ray through the pixel's centre, unit direction)."""

    def __init__(self, cameras: Sequence[Camera]):
        k = [c.intrinsics for c in cameras]
        self.fx = np.array([i.fx for i in k], float)
        self.fy = np.array([i.fy for i in k], float)
        self.cx = np.array([i.cx for i in k], float)
        self.cy = np.array([i.cy for i in k], float)
        self.c2w = np.stack([np.asarray(c.c2w, float)[:3] for c in cameras])  # (V, 3, 4)

    def __call__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        v, y, x = idx[:, 0], idx[:, 1].astype(float) + 0.5, idx[:, 2].astype(float) + 0.5
        d_cam = np.stack([(x - self.cx[v]) / self.fx[v], -(y - self.cy[v]) / self.fy[v], -np.ones_like(x)], axis=-1)
        dirs = np.einsum("nij,nj->ni", self.c2w[v, :, :3], d_cam)
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        return torch.from_numpy(self.c2w[v, :, 3].copy()), torch.from_numpy(dirs)


class _MinSide(nn.Module):
    """An LPIPS module that first enlarges (bilinear, both alike) images with a side below
    ``min_side``: VGG pools four times, smaller patches have no deep features."""

    def __init__(self, module: nn.Module, min_side: int):
        super().__init__()
        self.module = module
        self.min_side = int(min_side)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        if min(h, w) < self.min_side:
            size = (max(self.min_side, round(h * self.min_side / min(h, w))), max(self.min_side, round(w * self.min_side / min(h, w))))
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return self.module(a, b)


def make_lpips_module(models_cfg: Any, device: Any, seed: int = 0, min_side: int = 32) -> tuple[nn.Module, str, str]:
    """``(module, description, backbone)``: lpips.LPIPS (v0.1, the configured
    backbone) called on images in [-1, 1]. Real backbones load from the models cache
    (``innout.evaluate.LpipsMetric``: nothing is downloaded); ``random`` (offline
    presets) is a seeded random VGG trunk with random heads."""
    from innout.evaluate import LpipsMetric

    get = (lambda k, d: models_cfg.get(k, d)) if hasattr(models_cfg, "get") else (lambda k, d: getattr(models_cfg, k, d))
    metric = LpipsMetric(str(get("lpips_backbone", "vgg")), get("cache_dir", None), str(device), seed=seed, min_side=min_side)
    return _MinSide(metric.model, min_side), metric.description, metric.backbone


def _fingerprint(cfg: Any, inputs: "RefineInputs", nerf_config: Path) -> str:
    """What a checkpoint in the work dir must have been trained with to be resumed."""
    import hashlib

    from omegaconf import OmegaConf

    section = OmegaConf.to_container(cfg.refine, resolve=True) if hasattr(cfg.refine, "_metadata") else dict(cfg.refine)
    for key in ("steps_per_checkpoint", "log_every_steps", "tensorboard"):  # do not change the result
        section.pop(key, None)
    digest = hashlib.sha256()
    digest.update(repr(sorted(section.items())).encode())
    digest.update(f"{cfg.seed}|{inputs.base}|{sorted(inputs.inpainted)}|{inputs.depth_prior_used}".encode())
    for arr in (inputs.images, inputs.base_image, inputs.depth_prior, inputs.base_mask,
                *[inputs.inpainted[k] for k in sorted(inputs.inpainted)],
                *[inputs.object_masks[k] for k in inputs.names]):
        digest.update(np.ascontiguousarray(arr).tobytes())
    digest.update(Path(nerf_config).read_bytes())
    return digest.hexdigest()[:16]


class Refiner:
    """One refinement run: the NeRF (a NerfTuner), the discriminator, the samplers, one
    :meth:`step` at a time, resumable state (:meth:`state` / :meth:`load_state`)."""

    def __init__(self, tuner: Any, inputs: RefineInputs, cfg: Any, lpips_module: Optional[nn.Module]):
        rc = cfg.refine
        self.tuner, self.inputs, self.rc = tuner, inputs, rc
        seed = int(cfg.seed)
        self.weights = PatchLossWeights.from_config(rc)
        self.lpips = lpips_module
        candidates = [n for n in inputs.names if n in inputs.inpainted and n != inputs.base]
        self.subset_by = str(rc.subset_by)
        scores = subset_scores(self.subset_by, {n: inputs.inpainted[n] for n in candidates},
                               {n: inputs.object_masks[n] for n in candidates}, inputs.base_image, inputs.base_mask,
                               lpips_module, tuner.device)
        self.patch_views = select_patch_views(
            {n: inputs.cameras[n] for n in inputs.names if n in inputs.inpainted or n == inputs.base},
            inputs.base, float(rc.keep_fraction), bool(rc.include_base_in_patches), scores,
        )
        chosen = [n for n in self.patch_views["selected"] if n in inputs.inpainted]
        self.patch_targets = {n: inputs.inpainted[n] for n in chosen}
        if rc.include_base_in_patches and inputs.base not in self.patch_targets:
            self.patch_targets[inputs.base] = inputs.base_image  # the base's own fill is its target
        if not self.patch_targets:
            from innout.errors import StageError

            raise StageError("refine", "no inpainted view was selected for the patch loss")
        self.patch_sampler = PatchSampler({n: inputs.object_masks[n] for n in self.patch_targets}, int(rc.patch_size), seed + 1)
        self.rec_sampler = UnmaskedPixelSampler(inputs.object_masks)
        self.rec_rng = np.random.default_rng(seed + 2)
        self.prior_rng = np.random.default_rng(seed + 3)
        self.tile_gen = torch.Generator().manual_seed(seed + 4)
        ok = inputs.base_mask & np.isfinite(inputs.depth_prior) & (inputs.depth_prior > 0)
        self.prior_pixels = np.argwhere(ok)  # (n, 2) (y, x)
        self.prior_sigma = float(rc.prior_depth_sigma) * float(np.median(inputs.depth_prior[ok]))
        # an implausible depth prior (the base stage's check) is never used: colour only
        self.prior_depth_weight = float(rc.prior_depth_weight) if inputs.depth_prior_used else 0.0
        self.view_index = {n: i for i, n in enumerate(inputs.names)}
        self.rays = CameraRays([inputs.cameras[n] for n in inputs.names])
        self.images = torch.from_numpy(inputs.images)
        torch.manual_seed(seed)
        self.discriminator = make_discriminator(rc).to(tuner.device) if self.weights.adv != 0 else None
        self.d_optimizer = make_discriminator_optimizer(self.discriminator, rc) if self.discriminator is not None else None
        self.history: list[dict] = []

    # -- one step -----------------------------------------------------------------------

    def _batch(self) -> dict[str, Any]:
        """Pixels of this step: L_rec, L_prior and the patches, with their targets."""
        inp = self.inputs
        rec = self.rec_sampler.sample(int(self.rc.rays_per_batch), self.rec_rng)
        pick = self.prior_rng.integers(0, len(self.prior_pixels), size=int(self.rc.prior_rays_per_batch))
        yx = self.prior_pixels[pick]
        base_i = self.view_index[inp.base]
        prior = torch.from_numpy(np.concatenate([np.full((len(yx), 1), base_i), yx], axis=1).astype(np.int64))
        patches = self.patch_sampler.sample_many(int(self.rc.patches_per_step))
        patch_idx = [p.ray_indices(self.view_index[p.name]) for p in patches]
        return {
            "rec": rec,
            "rec_rgb": self.images[rec[:, 0], rec[:, 1], rec[:, 2]],
            "prior": prior,
            "prior_rgb": torch.from_numpy(inp.base_image[yx[:, 0], yx[:, 1]]),
            "prior_depth": torch.from_numpy(inp.depth_prior[yx[:, 0], yx[:, 1]]),
            "patches": patches,
            "patch_idx": patch_idx,
            "patch_rgb": [torch.from_numpy(np.ascontiguousarray(p.crop(self.patch_targets[p.name]))) for p in patches],
        }

    def step(self) -> dict[str, float]:
        """One NeRF step on L = L_rec + reg + prior_weight L_prior + L_patch, then one
        discriminator step on the same patches. Returns the step's losses."""
        rc, tuner = self.rc, self.tuner
        b = self._batch()
        index = torch.cat([b["rec"], b["prior"], *b["patch_idx"]], dim=0)
        origins, dirs = self.rays(index)
        out = tuner.forward(origins, dirs)
        n_rec, n_prior = len(b["rec"]), len(b["prior"])
        dev = out["rgb"].device
        rgb = out["rgb"]
        rec = F.mse_loss(rgb[:n_rec], b["rec_rgb"].to(dev))
        sl = slice(n_rec, n_rec + n_prior)
        prior_rgb = F.mse_loss(rgb[sl], b["prior_rgb"].to(dev))
        prior_outputs = {"_weights": out["_weights"][sl], "_samples": out["_samples"][sl]}
        prior_depth = tuner.depth_loss(prior_outputs, b["prior_depth"], self.prior_sigma)
        prior = prior_rgb + self.prior_depth_weight * prior_depth if self.prior_depth_weight else prior_rgb
        preds, start = [], n_rec + n_prior
        for p in b["patches"]:
            n = p.size * p.size
            preds.append(rgb[start:start + n].reshape(1, p.size, p.size, 3))
            start += n
        targets = [t.to(dev)[None] for t in b["patch_rgb"]]
        same_size = len({p.size for p in b["patches"]}) == 1
        pred_groups = [torch.cat(preds)] if same_size else preds
        target_groups = [torch.cat(targets)] if same_size else targets
        terms = [patch_loss(pg, tg, self.lpips, self.discriminator, self.weights, self.tile_gen) for pg, tg in zip(pred_groups, target_groups)]
        patch = {k: sum(t[k] for t in terms) / len(terms) for k in ("l1", "lpips", "adv", "total")}
        loss = rec + out["regulariser"] + float(rc.prior_weight) * prior + patch["total"]
        tuner.optimise(loss)
        d = {"real": 0.0, "fake": 0.0, "r1": 0.0}
        if self.discriminator is not None:
            for pg, tg in zip(pred_groups, target_groups):
                d = discriminator_step(self.discriminator, self.d_optimizer, tg, pg.detach(), rc, tuner.step - 1, self.tile_gen)
        return {
            "loss": float(loss.detach()), "rec": float(rec.detach()), "prior_rgb": float(prior_rgb.detach()),
            "prior_depth": float(prior_depth.detach()), "l1": float(patch["l1"].detach()),
            "lpips": float(torch.as_tensor(patch["lpips"]).detach()), "adv": float(torch.as_tensor(patch["adv"]).detach()),
            "d_real": float(d["real"]), "d_fake": float(d["fake"]), "d_r1": float(d["r1"]),
        }

    # -- resumable state ----------------------------------------------------------------

    def state(self) -> dict:
        return {
            "discriminator": self.discriminator.state_dict() if self.discriminator is not None else None,
            "d_optimizer": self.d_optimizer.state_dict() if self.d_optimizer is not None else None,
            "patch_sampler": self.patch_sampler.state_dict(),
            "rec_rng": self.rec_rng.bit_generator.state,
            "prior_rng": self.prior_rng.bit_generator.state,
            "tile_gen": self.tile_gen.get_state(),
            "history": list(self.history),
        }

    def load_state(self, state: dict) -> None:
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.patch_sampler.load_state_dict(state["patch_sampler"])
        self.rec_rng.bit_generator.state = state["rec_rng"]
        self.prior_rng.bit_generator.state = state["prior_rng"]
        self.tile_gen.set_state(state["tile_gen"])
        self.history = list(state["history"])


def _curve_summary(history: list[dict]) -> dict:
    """Per loss term: first, last, min and mean of the logged values (and the steps)."""
    if not history:
        return {}
    out: dict[str, Any] = {"steps": [h["step"] for h in history]}
    for key in REFINE_LOSS_KEYS:
        values = [h[key] for h in history if key in h]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "min": min(values), "mean": float(np.mean(values)),
                        "values": values}
    return out


def run_refine(
    transforms: Path,
    base_dir: Path,
    inpaint_dir: Path,
    out_dir: Path,
    work_dir: Path,
    cfg: Any,
    log: Any = None,
    *,
    on_step: Any = None,
) -> dict:
    """Stage 5: refine the base stage's NeRF (module docstring) and write ``out_dir``::

        nerf/innout-nerfacto/   the refined NeRF (NerfRenderer.from_config(out_dir / "nerf"))
        summary.json            iterations, seconds, loss curves, patch views, the weights' provenance
        config.yaml             the resolved config

    ``work_dir`` holds resumable checkpoints (NeRF, its optimisers, D and its optimiser,
    the samplers' RNG states); a rerun with the same settings and inputs resumes there.
    ``on_step(step)`` is called after every completed step (tests interrupt from it)."""
    import json
    import logging
    import shutil
    import time

    from innout.config import write_resolved
    from innout.devices import stage_device
    from innout.errors import InputError
    from innout.finetune import NerfTuner
    from innout.render import find_nerf_config
    from innout.stage import atomic_dir
    from innout.training_log import TrainingLog
    from innout.viz import plot_curves

    log = log or logging.getLogger("innout.refine")
    t_stage = time.perf_counter()
    rc = cfg.refine
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    iterations = int(rc.iterations)
    if iterations < 1:
        raise InputError("refine.iterations", "must be at least 1")
    inputs = load_refine_inputs(Path(transforms), Path(base_dir), Path(inpaint_dir))
    try:
        nerf_config = find_nerf_config(Path(base_dir) / "nerf")
    except FileNotFoundError as err:
        raise InputError(Path(base_dir) / "nerf", str(err)) from None
    h, w = inputs.images.shape[1:3]
    log.info("refine: %d train views (%dx%d), base view %s, %d inpainted, %d iterations on %s",
             len(inputs.names), w, h, inputs.base, len(inputs.inpainted), iterations, cfg.device)

    # ---- work dir: resume only what was trained with these settings and inputs -------
    fingerprint = _fingerprint(cfg, inputs, nerf_config)
    ckpt_dir = work_dir / "checkpoints"
    run_file = work_dir / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("fingerprint") != fingerprint:
        log.warning("work dir %s holds a run with other settings or inputs: starting over", work_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint}, indent=1))

    device, device_warning = stage_device(cfg, "refine")
    torch.manual_seed(int(cfg.seed))
    reset = bool(rc.reset_fields)
    learning_rate = float(rc.reset_learning_rate if reset else rc.learning_rate)
    tuner = NerfTuner(nerf_config, device=device, learning_rate=learning_rate, lr_final=float(rc.lr_final),
                      decay_steps=iterations, stage="refine", reset_seed=int(cfg.seed) if reset else None)
    log.info("refine: %s, learning rate %.3g -> %.3g", "fields re-initialised (a fresh nerfacto)" if reset
             else "continuing from the base stage's NeRF", learning_rate, float(rc.lr_final))
    lpips_module, lpips_description, lpips_backbone = None, None, None
    if float(rc.lpips_weight) != 0:
        lpips_module, lpips_description, lpips_backbone = make_lpips_module(cfg.models, tuner.device, int(cfg.seed))
    refiner = Refiner(tuner, inputs, cfg, lpips_module)
    log.info("patch views: %d of %d ranked by %s (%s), patches %d px, LPIPS: %s",
             len(refiner.patch_targets), len(inputs.names) - 1, refiner.subset_by, ", ".join(refiner.patch_targets),
             refiner.patch_sampler.patch_size, lpips_description or "off")

    seconds_before, resumed_from = 0.0, None
    extra = tuner.resume(ckpt_dir)
    if extra:
        refiner.load_state(extra["refiner"])
        seconds_before = float(extra.get("seconds", 0.0))
        resumed_from = tuner.step
        log.info("resuming at step %d", tuner.step)

    # ---- train -------------------------------------------------------------------------
    tensorboard = TrainingLog(work_dir / "tensorboard" if bool(rc.tensorboard) else None, start_step=tuner.step)
    log_every = max(1, int(rc.log_every_steps))
    every_ckpt = max(1, int(rc.steps_per_checkpoint))
    t_train, start = time.perf_counter(), tuner.step

    def seconds() -> float:
        return seconds_before + time.perf_counter() - t_train

    while tuner.step < iterations:
        losses = refiner.step()
        done = tuner.step
        if done % log_every == 0 or done == iterations or done == start + 1:
            point = {**losses, "psnr_rec": -10.0 * math.log10(max(losses["rec"], 1e-12)),
                     "lr": float(next(iter(tuner.optimizers.values())).param_groups[0]["lr"])}
            refiner.history.append({"step": done, **point})
            tensorboard.add(done, {(k if k in ("lr", "psnr_rec") else f"loss/{k}"): v for k, v in point.items()})
            eta = (iterations - done) * (time.perf_counter() - t_train) / max(1, done - start)
            log.info("step %d/%d loss %.5f rec %.5f prior %.5f/%.4f patch l1 %.4f lpips %.4f adv %.3f | D real %.3f fake %.3f | eta %.0f s",
                     done, iterations, losses["loss"], losses["rec"], losses["prior_rgb"], losses["prior_depth"],
                     losses["l1"], losses["lpips"], losses["adv"], losses["d_real"], losses["d_fake"], eta)
        if done % every_ckpt == 0 and done < iterations:
            tuner.save_checkpoint(ckpt_dir, {"refiner": refiner.state(), "seconds": seconds()})
        if on_step is not None:
            on_step(done - 1)
    train_seconds = seconds()
    ran = tuner.step - start
    if ran:
        tuner.save_checkpoint(ckpt_dir, {"refiner": refiner.state(), "seconds": train_seconds})

    # ---- outputs -----------------------------------------------------------------------
    weights = weakest(weights_provenance(cfg.models), inputs.upstream_weights)
    with atomic_dir(out_dir) as tmp:
        tuner.export(tmp / "nerf", extra_meta={"stage": "refine", "refine_iterations": iterations}, final_dir=out_dir / "nerf")
        plot_curves(refiner.history, CURVE_PANELS, tmp / "curves.png", f"refine: {iterations} steps")
        tensorboard.export(tmp)
        summary = {
            "iterations": iterations,
            "seconds": round(train_seconds, 3),
            "stage_seconds": round(time.perf_counter() - t_stage, 3),
            "steps_this_run": ran,
            "resumed_from_step": resumed_from,
            "rays_per_step": {"rec": int(rc.rays_per_batch), "prior": int(rc.prior_rays_per_batch),
                              "patch": int(rc.patches_per_step) * refiner.patch_sampler.patch_size ** 2},
            "base_view": inputs.base,
            "patch_views": list(refiner.patch_targets),
            "patch_view_groups": refiner.patch_views["kept"],
            "patch_view_ranking": {"by": refiner.subset_by, "score": refiner.patch_views["score"]},
            "reset_fields": reset,
            "learning_rate": learning_rate,
            "patch_size": refiner.patch_sampler.patch_size,
            "prior_depth_sigma_scene_units": refiner.prior_sigma,
            "prior_depth_weight": refiner.prior_depth_weight,
            "depth_prior_used": inputs.depth_prior_used,
            "losses": _curve_summary(refiner.history),
            "loss_definition": "loss = rec + nerfacto regularisers + prior_weight * (prior_rgb + prior_depth_weight * prior_depth) "
                               "+ lambda_patch * (l1_weight * l1 + lpips_weight * lpips + adv_weight * adv)",
            "lpips": lpips_description,
            **{key: value for key, value in metric_backbones(lpips_backbone, None).items() if key != "fid_backbone"},
            **provenance_fields(weights),
            "n_train_views": len(inputs.names),
            "resolution": [int(w), int(h)],
            "device": str(tuner.device),
            "device_warning": device_warning,
            "seed": int(cfg.seed),
            "preset": cfg.get("preset") if hasattr(cfg, "get") else None,
            "nerfstudio_config": "nerf/innout-nerfacto/config.yml",
            "tensorboard": "tensorboard" if tensorboard.tensorboard_dir is not None else None,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        write_resolved(cfg, tmp / "config.yaml")
    log.info("refine done: %d steps in %.1f s (%d this run)", iterations, train_seconds, ran)
    return summary
