"""Which views to annotate (innout.view_suggest)."""

from __future__ import annotations

import numpy as np

from innout.cameras import Camera, Intrinsics, look_at
from innout.procedural import ProceduralScene
from innout.view_suggest import look_at_point, spread_of, suggest_views

K = Intrinsics(50.0, 50.0, 32.0, 24.0, 64, 48)


def test_look_at_point_is_where_the_axes_meet():
    target = np.array([0.3, 1.0, 0.5])
    cams = [Camera(look_at(np.array([x, -3.0, z]), target), K) for x in (-1, 0, 1) for z in (0, 1)]
    assert np.allclose(look_at_point(cams), target, atol=1e-9)


def test_forward_grid_suggests_opposite_corners_then_the_farthest_third():
    target = np.zeros(3)
    positions = [(x, z) for x in (-1.0, -0.5, 0.0, 0.5, 1.0) for z in (-0.4, 0.0, 0.4)]
    cams = [Camera(look_at(np.array([x, -4.0, z]), target), K) for x, z in positions]
    names = [f"v{i:02d}" for i in range(len(cams))]
    two = suggest_views(cams, names, 2)
    picked = sorted(positions[names.index(n)] for n in two.views)
    assert picked in ([(-1.0, -0.4), (1.0, 0.4)], [(-1.0, 0.4), (1.0, -0.4)])  # a diagonal
    three = suggest_views(cams, names, 3)
    assert three.views[:2] == two.views and three.min_angle_deg > 0
    one = suggest_views(cams, names, 1)
    assert positions[names.index(one.views[0])] == (0.0, 0.0)  # the most central view
    assert two.spread_deg == spread_of(cams, names, two.views)[0]


def test_360_ring_suggests_opposite_sides_then_a_side_between():
    scene = ProceduralScene("360", 0)
    cams = scene.cameras(24, 64, 48, "train")
    names = [f"v{i:02d}" for i in range(len(cams))]
    s = suggest_views(cams, names, 3)
    assert s.spread_deg > 150  # nearly opposite
    assert s.min_angle_deg > 60  # the third is well away from both
    assert np.linalg.norm(np.array(s.centre) - scene.target) < 0.3 * scene.distance
