"""Visibility-aware carving (innout.carving) on exact geometry: procedural scenes whose
true surfaces and object masks come from the analytic renderer (no NeRF here; the
masks stage's NeRF is tested in test_masks.py)."""

from __future__ import annotations

import numpy as np
import pytest

from innout.carving import (DECIDED_BY_ANNOTATION, DECIDED_BY_NEIGHBOURS, DECIDED_BY_NOTHING, CarvingSettings,
                            ViewGeometry, propagate)
from innout.mask_cleanup import clean_mask
from innout.object_box import ObjectBox
from innout.procedural import ProceduralScene
from innout.view_suggest import suggest_views

W, H = 96, 72


def _render(variant: str, n: int):
    scene = ProceduralScene(variant, 0)
    views, truth = [], {}
    for i, cam in enumerate(scene.cameras(n, W, H, "train")):
        out = scene.render(cam, supersample=2)
        name = f"v{i:02d}"
        views.append(ViewGeometry(name, cam, out["distance"].astype(np.float64)))
        truth[name] = out["object_coverage"] >= 0.5
    return scene, views, truth


@pytest.fixture(scope="module")
def forward():
    return _render("forward", 16)


@pytest.fixture(scope="module")
def ring():
    return _render("360", 24)


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _suggested(views, k):
    return suggest_views([v.camera for v in views], [v.name for v in views], k).views


def _mean_iou(result, truth, annotated):
    return float(np.mean([_iou(result.masks[n], truth[n]) for n in truth if n not in annotated]))


def test_two_views_carve_a_forward_scene(forward):
    _, views, truth = forward
    annotated = _suggested(views, 2)
    result = propagate(views, {n: truth[n] for n in annotated}, clean=lambda name, mask: clean_mask(mask))
    assert _mean_iou(result, truth, annotated) >= 0.9
    for n in annotated:  # annotations are kept as given
        assert np.array_equal(result.masks[n], truth[n])
        assert result.order.index(n) < len(annotated)


def test_background_hidden_behind_the_object_is_not_carved_in(forward):
    """From one annotated view, the wall behind the object projects inside its mask: only
    the depth test keeps it out of the other views' masks (counted away from the object's
    outline, where a pixel's coverage and its centre ray may disagree)."""
    import cv2

    _, views, truth = forward
    annotated = _suggested(views, 2)[0]  # a corner of the capture: the widest parallax to the others
    voter = next(v for v in views if v.name == annotated)
    result = propagate(views, {annotated: truth[annotated]})
    behind, carved = 0, 0
    for v in views:
        if v.name == annotated:
            continue
        uv, z = voter.camera.project(v.points())
        u, w = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        ok = (z > 0) & (u >= 0) & (u < W) & (w >= 0) & (w < H)
        in_cone = np.zeros(len(ok), bool)
        in_cone[ok] = truth[annotated][w[ok], u[ok]]
        away = cv2.dilate(truth[v.name].astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
        hidden_background = in_cone & away.reshape(-1)
        behind += hidden_background.sum()
        carved += (hidden_background & result.masks[v.name].reshape(-1)).sum()
    assert behind > 100  # the cone does reach the background in the other views
    assert carved <= 0.1 * behind  # with the depth test off, all of it is


def test_one_view_of_a_360_scene_propagates_around_the_object(ring):
    """The far side of the object is seen by no annotated view: the views propagated before
    it, nearest first, decide it."""
    _, views, truth = ring
    annotated = _suggested(views, 1)
    result = propagate(views, {n: truth[n] for n in annotated}, clean=lambda name, mask: clean_mask(mask))
    assert _mean_iou(result, truth, annotated) >= 0.8
    # the order goes round: each view after the first is decided next to an already labelled one
    assert result.order[0] == annotated[0] and len(result.order) == len(views)


def test_every_pixel_says_what_decided_it(forward):
    _, views, truth = forward
    annotated = _suggested(views, 2)
    result = propagate(views, {n: truth[n] for n in annotated})
    for n, codes in result.decided_by.items():
        assert codes.shape == (H, W)
        assert not (codes == DECIDED_BY_NOTHING).any()  # every ray of the room hits a surface
        assert (codes == DECIDED_BY_ANNOTATION).mean() > 0.5
    assert set(result.decided_by) == {v.name for v in views} - set(annotated)
    assert any((c == DECIDED_BY_NEIGHBOURS).any() for c in result.decided_by.values())


def test_the_box_bounds_the_object(forward):
    scene, views, truth = forward
    annotated = _suggested(views, 2)
    # a box holding only the lower half of the object: nothing above it may be object
    top = scene.object_height / 2
    box = ObjectBox(np.array([0.0, 0.0, top / 2]), np.array([4.0, 4.0, top]), np.eye(3))
    result = propagate(views, {n: truth[n] for n in annotated}, inside_box=box.contains)
    for v in views:
        if v.name in annotated:
            continue
        points = v.points()[result.masks[v.name].reshape(-1)]
        assert box.contains(points).all()
        assert result.masks[v.name].sum() < truth[v.name].sum()


def test_a_box_alone_masks_the_surface_inside_it(forward):
    scene, views, truth = forward
    box = ObjectBox(scene.target.copy(), np.array([3.0, 3.0, scene.object_height * 2]), np.eye(3))
    result = propagate(views, {}, inside_box=box.contains, centre=box.center)
    for v in views:
        inside = box.contains(v.points()).reshape(H, W)
        assert np.array_equal(result.masks[v.name], inside)
        # the object is inside it (but for outline pixels whose centre ray passes it by)
        assert (result.masks[v.name] & truth[v.name]).sum() >= 0.95 * truth[v.name].sum()


def test_margin_keeps_the_object_rim_without_taking_the_background():
    """A point one pixel outside a mask counts as inside only when it is nearer the
    object's surface beside it than the surface that view sees there."""
    from innout.carving import _Voter
    from innout.cameras import Camera, Intrinsics, look_at

    cam = Camera(look_at(np.array([0.0, -5.0, 0.0]), np.zeros(3)), Intrinsics(50.0, 50.0, 16.0, 16.0, 32, 32))
    distance = np.full((32, 32), 9.0)  # a wall at 9
    distance[12:20, 12:20] = 5.0  # an object at 5
    mask = distance < 6
    voter = _Voter(ViewGeometry("a", cam, distance), mask, CarvingSettings(), margin=1)
    origins, dirs = cam.rays()
    rim_pixel = (16, 20)  # the first column right of the mask
    near_object = origins[rim_pixel] + dirs[rim_pixel] * 5.1
    on_wall = origins[rim_pixel] + dirs[rim_pixel] * 9.0
    seen, inside, _ = voter.vote(np.stack([near_object, on_wall]))
    assert seen.all()
    assert inside.tolist() == [True, False]
    far_pixel = (16, 24)  # beyond the margin: outside whatever its depth
    seen, inside, outside_cone = voter.vote((origins[far_pixel] + dirs[far_pixel] * 5.0)[None])
    assert seen.all() and not inside.any() and outside_cone.all()
