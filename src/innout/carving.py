"""Object masks of every view from a few annotated ones, by visibility-aware carving.

Each view's surface (a depth map along its unit pixel rays, from the whole-scene NeRF)
gives one 3D point per pixel. A point is *object* when it lies inside the object's 3D
region: the intersection of the annotated masks' viewing cones (and the 3D box, when one
is given). Visibility decides which annotated views may vote on a point:

* annotated view ``a`` *sees* point ``X`` when ``X`` projects into ``a``'s image and is not
  behind ``a``'s own surface there (distance along ``a``'s ray <= ``a``'s depth x
  (1 + ``visibility_tolerance``));
* ``X`` is object only if every annotated view that sees it sees it inside its mask, and
  at least one does;
* a view in which ``X`` is hidden (behind the object, say) gives no vote, so the
  background behind the object in one view is not carved in by that view's cone.

Points that no annotated view sees (the far side of an object in a 360 capture annotated
from one side) are decided by the views already propagated, nearest first: the views are
processed in order of their angle to the closest labelled view at the object's centre,
and each one's votes come from the ``propagation_voters`` labelled views closest to it
that see the point (majority). Annotated views always take precedence.

Everything here is numpy on depth maps and cameras; the NeRF, the files and the clean-up
live in :mod:`innout.masks` and :mod:`innout.mask_cleanup`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.spatial import cKDTree

from innout.cameras import Camera
from innout.view_suggest import view_angles

_log = logging.getLogger("innout.carving")


@dataclass
class ViewGeometry:
    """One view's camera and surface: ``distance`` (H, W) along the unit pixel-centre rays
    (scene units; NaN or inf where the ray hits nothing)."""

    name: str
    camera: Camera
    distance: np.ndarray

    def points(self) -> np.ndarray:
        """(H * W, 3) surface points in the scene frame (rows first)."""
        origins, dirs = self.camera.rays()
        return (origins + dirs * self.distance[..., None]).reshape(-1, 3)


@dataclass
class CarvingSettings:
    visibility_tolerance: float = 0.03  # relative depth margin of the visibility test
    propagation_voters: int = 3  # labelled views consulted per unlabelled point (nearest by angle)
    # points no view decides take the label of their nearest decided neighbour, when they lie
    # within this factor of the annotated object's radius around its centre (the object is
    # compact: a hidden floor metres behind it is not object); 0 = no limit
    reach_factor: float = 2.5
    mask_margin_px: int = 1  # an annotated view votes "outside" only beyond this many pixels of its mask


@dataclass
class Propagation:
    """Masks of every view and how each was decided."""

    masks: dict[str, np.ndarray]
    centre: np.ndarray  # the object's centre the views were ordered around
    order: list[str]  # the order views were decided in (annotated ones first)
    stats: dict[str, dict] = field(default_factory=dict)  # per view: fractions decided by annotated / propagated votes
    # per view, what decided each pixel: DECIDED_BY_* codes (uint8, H x W)
    decided_by: dict[str, np.ndarray] = field(default_factory=dict)


DECIDED_BY_NOTHING, DECIDED_BY_ANNOTATION, DECIDED_BY_PROPAGATION, DECIDED_BY_NEIGHBOURS = 0, 1, 2, 3


class _Voter:
    """A labelled view that answers, for world points: do you see them, and inside your mask?

    A mask's edge is uncertain by about a pixel (rasterisation, pose and depth errors), so a
    point that lands within ``margin`` pixels outside the mask still counts as inside when
    its distance is nearer the object's surface beside it than the surface the view sees
    at that pixel (the background seen just past the silhouette stays outside)."""

    def __init__(self, geometry: ViewGeometry, mask: np.ndarray, settings: CarvingSettings, margin: int = 0):
        self.geometry = geometry
        self.mask = mask.astype(bool)
        self.tolerance = float(settings.visibility_tolerance)
        self.centre = np.asarray(geometry.camera.center, float)
        self.margin_depth = None
        self.mask_band = self.mask
        if margin > 0 and self.mask.any():
            k = 2 * int(margin) + 1
            self.mask_band = cv2.dilate(self.mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
            # the object's farthest surface distance within the margin, for each pixel near the mask
            obj_depth = np.where(self.mask & np.isfinite(geometry.distance), geometry.distance, 0.0).astype(np.float32)
            self.margin_depth = cv2.dilate(obj_depth, np.ones((k, k), np.uint8))

    def vote(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(seen, inside, outside_cone) booleans per point: ``inside`` only where seen;
        ``outside_cone``: projects clearly outside the mask (beyond the margin), seen or not."""
        cam = self.geometry.camera
        k = cam.intrinsics
        uv, z = cam.project(points)
        with np.errstate(invalid="ignore"):
            u = np.floor(uv[:, 0])
            v = np.floor(uv[:, 1])
            in_image = (z > 0) & (u >= 0) & (u < k.width) & (v >= 0) & (v < k.height)
        ui = np.where(in_image, u, 0).astype(np.int64)
        vi = np.where(in_image, v, 0).astype(np.int64)
        surface = self.geometry.distance[vi, ui]
        dist = np.linalg.norm(points - self.centre, axis=1)
        slack = 1.0 + self.tolerance
        with np.errstate(invalid="ignore"):
            seen = in_image & np.isfinite(dist) & (~np.isfinite(surface) | (dist <= surface * slack))
            inside = self.mask[vi, ui]
            if self.margin_depth is not None:
                # in the band just outside the mask, the point is on the object when it lies
                # nearer the object's surface beside it than the surface seen at that pixel
                near = self.margin_depth[vi, ui]
                band = (near > 0) & ~inside & np.isfinite(surface)
                inside = inside | (band & (np.abs(dist - near) < np.abs(dist - surface)))
        outside_cone = in_image & ~self.mask_band[vi, ui]
        return seen, inside & seen, outside_cone


def _fill_by_nearest(points: np.ndarray, undecided: np.ndarray, decided: np.ndarray, is_object: np.ndarray) -> None:
    """Undecided points take the label of the nearest decided point of the same view (3D)."""
    if not undecided.any() or not decided.any():
        return

    tree = cKDTree(points[decided])
    _, nearest = tree.query(points[undecided], k=1)
    is_object[np.flatnonzero(undecided)] = is_object[np.flatnonzero(decided)[nearest]]


def annotated_points(views: dict[str, ViewGeometry], annotations: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) surface points of the annotated views inside their masks."""
    pts = []
    for name, mask in annotations.items():
        p = views[name].points()[mask.reshape(-1)]
        pts.append(p[np.isfinite(p).all(axis=1)])
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def object_centre(views: dict[str, ViewGeometry], annotations: dict[str, np.ndarray]) -> np.ndarray:
    """Median of the annotated views' surface points inside their masks."""
    pts = annotated_points(views, annotations)
    if not len(pts):
        raise ValueError("the annotated masks hold no surface point")
    return np.median(pts, axis=0)


def object_reach(views: dict[str, ViewGeometry], annotations: dict[str, np.ndarray], centre: np.ndarray,
                 factor: float) -> float:
    """Radius around ``centre`` the object may fill: ``factor`` x the distance within which
    98 % of the annotated object points lie (inf without annotations or with factor 0)."""
    pts = annotated_points(views, annotations)
    if not len(pts) or factor <= 0:
        return float("inf")
    return float(factor * np.percentile(np.linalg.norm(pts - centre, axis=1), 98))


def propagate(views: list[ViewGeometry], annotations: dict[str, np.ndarray], settings: CarvingSettings | None = None,
              inside_box=None, centre: np.ndarray | None = None, clean=None) -> Propagation:
    """Masks of every view (annotated views keep their annotation).

    ``annotations``: view name -> bool mask (H, W). ``inside_box``: optional callable
    (N, 3) points -> bool, the 3D box constraint (points outside are background).
    ``centre``: the object's centre (default: :func:`object_centre`, or needed when
    there are no annotations). ``clean``: optional callable (view name, bool (H, W)) ->
    bool (H, W) applied to each propagated mask before it votes for the views after it.
    """
    settings = settings or CarvingSettings()
    by_name = {v.name: v for v in views}
    if centre is None:
        centre = object_centre(by_name, annotations)
    centre = np.asarray(centre, float)
    reach = object_reach(by_name, annotations, centre, float(settings.reach_factor))
    names = [v.name for v in views]
    angles = view_angles([v.camera for v in views], centre)
    index = {n: i for i, n in enumerate(names)}

    annotated = [_Voter(by_name[n], annotations[n], settings, settings.mask_margin_px) for n in names if n in annotations]
    labelled: dict[str, np.ndarray] = {n: annotations[n].astype(bool) for n in names if n in annotations}
    propagated_voters: dict[str, _Voter] = {}
    order = [n for n in names if n in labelled]
    stats: dict[str, dict] = {n: {"source": "annotation"} for n in order}
    decided_by: dict[str, np.ndarray] = {}

    remaining = [n for n in names if n not in labelled]
    t_log = time.perf_counter()
    while remaining:
        if time.perf_counter() - t_log > 10:  # long scenes show progress
            _log.info("carving: %d of %d views decided", len(order), len(names))
            t_log = time.perf_counter()
        if labelled:
            lab_idx = [index[n] for n in labelled]
            nearest = {n: float(angles[index[n], lab_idx].min()) for n in remaining}
            target = min(remaining, key=lambda n: (nearest[n], n))
        else:
            target = remaining[0]
        remaining.remove(target)
        geo = by_name[target]
        pts = geo.points()
        finite = np.isfinite(pts).all(axis=1)
        decided = np.zeros(len(pts), bool)
        is_object = np.zeros(len(pts), bool)

        if annotated:
            seen_any = np.zeros(len(pts), bool)
            all_inside = np.ones(len(pts), bool)
            out_of_a_cone = np.zeros(len(pts), bool)
            for voter in annotated:
                seen, inside, outside_cone = voter.vote(pts)
                seen_any |= seen
                all_inside &= ~seen | inside
                out_of_a_cone |= outside_cone
            # seen by an annotated view: its masks decide; seen by none but outside one of
            # their cones (hidden there behind something that is not the object): background
            decided = (seen_any | out_of_a_cone) & finite
            is_object = seen_any & finite & all_inside & ~out_of_a_cone
        n_annotated = int(decided.sum())

        undecided = finite & ~decided
        if undecided.any() and propagated_voters:
            ti = index[target]
            near = sorted(propagated_voters, key=lambda n: (angles[ti, index[n]], n))
            pts_u = pts[undecided]
            yes = np.zeros(len(pts_u), np.int32)
            count = np.zeros(len(pts_u), np.int32)
            for n in near:
                still = count < settings.propagation_voters
                if not still.any():
                    break
                seen, inside, _ = propagated_voters[n].vote(pts_u)
                seen &= still
                count += seen
                yes += inside & seen
            voted = count > 0
            idx = np.flatnonzero(undecided)
            is_object[idx[voted]] = 2 * yes[voted] >= count[voted]
            decided[idx[voted]] = True
        n_propagated = int(decided.sum()) - n_annotated
        source = np.full(len(pts), DECIDED_BY_NOTHING, np.uint8)
        source[decided] = DECIDED_BY_PROPAGATION
        if annotated:
            source[(seen_any | out_of_a_cone) & finite] = DECIDED_BY_ANNOTATION
        source[finite & ~decided] = DECIDED_BY_NEIGHBOURS
        _fill_by_nearest(pts, finite & ~decided, decided, is_object)
        is_object &= ~(np.linalg.norm(pts - centre, axis=1) > reach) | (source == DECIDED_BY_ANNOTATION)

        if inside_box is not None:
            in_box = np.zeros(len(pts), bool)
            in_box[finite] = inside_box(pts[finite])
            if not annotated:
                is_object = in_box
            else:
                is_object &= in_box
        mask = is_object.reshape(geo.distance.shape)
        if clean is not None:
            mask = clean(target, mask)
        labelled[target] = mask
        decided_by[target] = source.reshape(mask.shape)
        propagated_voters[target] = _Voter(geo, mask, settings, settings.mask_margin_px)
        order.append(target)
        stats[target] = {
            "source": "propagated",
            "decided_by_annotations": n_annotated / max(1, len(pts)),
            "decided_by_propagation": n_propagated / max(1, len(pts)),
        }
    return Propagation(masks={n: labelled[n] for n in names}, centre=np.asarray(centre, float), order=order, stats=stats, decided_by=decided_by)
