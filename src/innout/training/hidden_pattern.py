"""ILA training pairs whose hidden content only the base view can tell.

ILA (In-N-Out's stage 4) makes a target view's fill agree with the base view's by letting
the target attend to the base's self-attention keys and values. The plain ILA pairs of
:mod:`innout.training.inpainter` (two views of one procedural scene) cannot teach that: what
lies behind the object is the scene's background texture, which the target's own context
predicts as well as the base does (``tools/probe_ila_training.py``: the base lowers the
hole's error by 0.2 %). So these pairs hide something the context cannot predict:

* a **reference view** of the scene is the base; the background points behind its object
  mask (its dilated silhouette, unprojected with the object-free depth) form a region R;
* a random smooth colour field (a few sinusoids in world coordinates, scaled to R's extent,
  plus a random tint, or, with ``mean="background"``, centred so that R's mean colour stays
  the background's; :class:`PatternField`) is painted onto R **in 3D**: every view of the scene
  shows it where it sees a point of R, at the colour of that point;
* the base's truth is its object-free view with R painted, entirely inside its own hole;
  a target's truth is its object-free view with the part of R it sees painted, most of it
  behind the target's object (forward scenes: 70-100 % of the hole; 360 scenes: 30-90 %).
  Its context shows only the rim of R it sees around its object.

Predicting the target's hole then pays off only by reading the base's hole through ILA's
attention at the places that hold the same 3D points: the skill that makes fills agree
across views. Pixels of a view belong to R when their object-free surface point projects
into the reference's hole at the reference's own object-free depth (within
``DEPTH_TOLERANCE``), i.e. the reference would see that very point there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from innout.cameras import Camera
from innout.images import to_u8  # stored as the training views are
from innout.training.data import Views
from innout.training.masks import silhouette_mask

log = logging.getLogger("innout")

DEPTH_TOLERANCE = 0.03  # relative: the reference sees a point when its depth there agrees within 3 %
COMPONENTS = 4  # sinusoids per field
MIN_REGION_PIXELS = 20  # a reference whose hole holds fewer background pixels gives no pairs
PATTERN_MEANS = ("random", "background")  # what a pattern does to its region's mean colour (draw_field)


def check_pattern_mean(mean: str) -> None:
    """Refuse a ``unet.pattern_mean`` that is none of :data:`PATTERN_MEANS` (one message for
    the training command's early check and for :func:`draw_field`)."""
    if mean not in PATTERN_MEANS:
        raise ValueError(f"unet.pattern_mean (the hidden-pattern mean) must be one of {PATTERN_MEANS}, not {mean!r}")
PATTERN_FORMAT = 2  # version of build_pattern_samples' tensors (2: with "view"); part of the cache's key


def unproject(camera: Camera, depth: np.ndarray) -> np.ndarray:
    """World points ``(H, W, 3)`` of every pixel centre at z-depth ``depth`` (along the
    camera's -z axis, as the generator renders it); non-finite depths give non-finite points."""
    k = camera.intrinsics
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    in_camera = np.stack([(u - k.cx) / k.fx * depth, -(v - k.cy) / k.fy * depth, -depth], axis=-1)
    return in_camera @ camera.c2w[:3, :3].T + camera.c2w[:3, 3]


@dataclass
class PatternField:
    """A colour offset per world point: ``amplitude * (sum_k colour_k sin(2 pi d_k.(x - centre)
    / period_k + phase_k) / norm + tint)``, ``norm`` making the sum's std 1 on the region."""

    centre: np.ndarray  # (3,)
    directions: np.ndarray  # (K, 3) unit vectors
    periods: np.ndarray  # (K,) world units
    colours: np.ndarray  # (K, 3)
    phases: np.ndarray  # (K,)
    tint: np.ndarray  # (3,)
    norm: float
    amplitude: float

    def waves(self, points: np.ndarray) -> np.ndarray:
        arg = 2 * np.pi * ((points - self.centre) @ self.directions.T) / self.periods + self.phases
        return np.sin(arg) @ self.colours

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """``(N, 3)`` offsets in [0, 1] colour units for world points ``(N, 3)``."""
        return self.amplitude * (self.waves(points) / self.norm + self.tint)


def draw_field(rng: np.random.Generator, region: np.ndarray, amplitude: float, mean: str = "random") -> PatternField:
    """A random field scaled to the region's points ``(N, 3)``: periods 0.4-1.5 x its spread,
    so that a hole holds one to a few stripes of each sinusoid. ``mean``: "random", a tint of
    std 0.5 x the amplitude on top of the waves' own mean over the region (a colour shift that
    the context around a hole cannot predict); "background", the field's mean over the region
    is 0 (only its detail is hidden). The random draws are the same for both."""
    check_pattern_mean(mean)
    centre = region.mean(axis=0)
    spread = float(np.linalg.norm(region.std(axis=0))) + 1e-6
    directions = rng.normal(size=(COMPONENTS, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    field = PatternField(centre=centre, directions=directions, periods=spread * rng.uniform(0.4, 1.5, COMPONENTS),
                         colours=rng.normal(size=(COMPONENTS, 3)), phases=rng.uniform(0, 2 * np.pi, COMPONENTS),
                         tint=0.5 * rng.normal(size=3), norm=1.0, amplitude=float(amplitude))
    waves = field.waves(region)
    field.norm = float(waves.std()) + 1e-6
    if mean == "background":
        field.tint = -waves.mean(axis=0) / field.norm
    return field


def region_mask(points: np.ndarray, reference: Camera, reference_hole: np.ndarray, reference_depth: np.ndarray) -> np.ndarray:
    """Which of ``points`` (H, W, 3) are points of R: seen by the reference inside its hole."""
    h, w = reference_depth.shape
    flat = points.reshape(-1, 3)
    finite = np.isfinite(flat).all(axis=1)
    uv, depth = reference.project(np.where(finite[:, None], flat, 0.0))
    with np.errstate(invalid="ignore"):
        col, row = np.floor(uv[:, 0]), np.floor(uv[:, 1])
        inside = finite & (depth > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    member = np.zeros(len(flat), bool)
    idx = np.nonzero(inside)[0]
    r, c = row[idx].astype(int), col[idx].astype(int)
    seen = reference_depth[r, c]
    member[idx] = reference_hole[r, c] & np.isfinite(seen) & (np.abs(depth[idx] - seen) < DEPTH_TOLERANCE * depth[idx])
    return member.reshape(points.shape[:2])


def paint_scene(views: Views, members: np.ndarray, reference: int, holes: np.ndarray, amplitude: float,
                rng: np.random.Generator, mean: str = "random") -> dict | None:
    """The pattern of one reference view painted into every view ``members`` (indices into
    ``views``, all of one scene). Returns uint8 ``background`` and ``rgb`` (the object stays
    in front of the pattern) and ``covered`` (fraction of each view's hole painted), or None
    when the reference's hole holds too little background."""
    ref_cam = views.camera(reference)
    ref_depth = views.background_depth[reference]
    ref_points = unproject(ref_cam, ref_depth)
    in_region = holes[reference] & np.isfinite(ref_depth)
    if in_region.sum() < MIN_REGION_PIXELS:
        return None
    field = draw_field(rng, ref_points[in_region], amplitude, mean)
    backgrounds, rgbs, covered = [], [], []
    for i in members:
        points = unproject(views.camera(i), views.background_depth[i])
        painted = region_mask(points, ref_cam, holes[reference], ref_depth)
        offset = np.zeros(points.shape, np.float64)
        offset[painted] = field(points[painted])
        background = views.background[i] / 255.0 + offset
        object_free = (views.coverage[i] < 0.5)[..., None]  # the object hides the pattern where it is
        rgb = views.rgb[i] / 255.0 + np.where(object_free, offset, 0.0)
        backgrounds.append(to_u8(background))
        rgbs.append(to_u8(rgb))
        covered.append(float((painted & holes[i]).sum() / max(1, holes[i].sum())))
    return {"background": np.stack(backgrounds), "rgb": np.stack(rgbs), "covered": np.array(covered)}


def reference_views(count: int, per_scene: int) -> list[int]:
    """Positions (within a scene's views) of its reference views: evenly spread, first first."""
    per_scene = max(1, min(int(per_scene), count))
    return sorted({round(k * count / per_scene) for k in range(per_scene)})


@torch.no_grad()
def build_pattern_samples(pipe, views: Views, amplitude: float, references_per_scene: int, seed: int,
                          encode_batch: int = 16, progress=None, mean: str = "random") -> dict:
    """Latent samples of the painted views, conditioned exactly as the pipeline conditions
    (:func:`innout.diffusion.prepare_views`; hole = the view's dilated silhouette):
    ``target``, ``mask``, ``masked`` as :func:`innout.training.inpainter.build_samples`;
    ``group`` (N,) one id per (scene, reference); ``base`` (N,) the index of the group's
    reference sample; ``covered`` (N,) the painted fraction of the sample's hole; ``view``
    (N,) the index in ``views`` of the sample's camera."""
    from innout.diffusion import prepare_views

    rng = np.random.default_rng(seed)
    h, w = views.rgb.shape[1:3]
    resolution = min(h, w)
    holes = np.stack([silhouette_mask(c) for c in views.coverage])
    none = [np.zeros((h, w), bool)]
    parts = {"target": [], "mask": [], "masked": []}
    group, base, covered, view = [], [], [], []
    scenes = np.unique(views.scene)
    count = groups = 0
    for done, scene in enumerate(scenes, 1):
        members = np.nonzero(views.scene == scene)[0]
        for position in reference_views(len(members), references_per_scene):
            painted = paint_scene(views, members, int(members[position]), holes, amplitude, rng, mean)
            if painted is None:
                continue
            n = len(members)
            truth = prepare_views(pipe, list(painted["background"]), none * n, resolution, batch_size=encode_batch)
            inputs = prepare_views(pipe, list(painted["rgb"]), list(holes[members]), resolution, batch_size=encode_batch)
            parts["target"].append(truth["masked_latents"])
            parts["mask"].append(inputs["mask"])
            parts["masked"].append(inputs["masked_latents"])
            group += [groups] * n
            groups += 1
            base += [count + position] * n
            covered.append(painted["covered"])
            view += [int(i) for i in members]
            count += n
        if progress:
            progress("pattern scenes", done, len(scenes))
    if not count:
        raise ValueError("hidden-pattern samples: no reference view's hole holds enough background")
    return {**{key: torch.cat(value).cpu() for key, value in parts.items()}, "group": torch.tensor(group),
            "base": torch.tensor(base), "covered": torch.from_numpy(np.concatenate(covered)).float(),
            "view": torch.tensor(view)}


class PatternPairs:
    """Targets of the hidden-pattern pairs (samples other than their reference, with at least
    ``min_covered`` of their hole painted) and their bases."""

    def __init__(self, data: dict, min_covered: float):
        index = torch.arange(len(data["base"]))
        usable = (data["base"] != index) & (data["covered"] >= float(min_covered))
        self.targets = index[usable]
        if not len(self.targets):
            raise ValueError(f"hidden-pattern pairs: no target has {min_covered:.0%} of its hole painted")
        self.base = data["base"]

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.targets[torch.randint(0, len(self.targets), (batch,), generator=gen)]
        return targets, self.base[targets]
