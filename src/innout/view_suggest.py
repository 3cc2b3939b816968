"""Which views to annotate: the ones whose rays meet at the object at the widest angles.

A mask carves the object's 3D region as the viewing cone through it. Two cones seen from
nearly the same place are almost the same cone and fix the object's depth badly; views
far apart around the object see more of its surface and cut the cones short. So the views
to annotate are the ones that maximise the angle between their directions at the
object's centre: the widest pair first, then (farthest-point order) each further view
the one whose smallest angle to those already chosen is largest. In a forward-facing
capture that is two opposite corners of the capture area; in a 360 capture two views on
opposite sides, then one between them.

Without masks the object's centre is unknown; the point nearest to every camera's
optical axis (least squares) stands in for it: in both kinds of capture the cameras
look at the object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from innout.cameras import Camera, Intrinsics
from innout.errors import InputError


def look_at_point(cameras: Sequence[Camera]) -> np.ndarray:
    """The point nearest (least squares) to every camera's optical axis."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for cam in cameras:
        c2w = np.asarray(cam.c2w, float)
        axis = -c2w[:3, 2] / np.linalg.norm(c2w[:3, 2])  # cameras look down -z
        proj = np.eye(3) - np.outer(axis, axis)
        a += proj
        b += proj @ c2w[:3, 3]
    if np.linalg.matrix_rank(a, tol=1e-9) < 3:  # parallel axes: no crossing point
        centres = np.stack([np.asarray(c.c2w, float)[:3, 3] for c in cameras])
        axes = np.stack([-np.asarray(c.c2w, float)[:3, 2] for c in cameras])
        return centres.mean(0) + axes.mean(0)
    return np.linalg.solve(a, b)


def view_angles(cameras: Sequence[Camera], centre: np.ndarray) -> np.ndarray:
    """(N, N) angles (radians) between the cameras' directions seen from ``centre``."""
    dirs = np.stack([np.asarray(c.c2w, float)[:3, 3] - np.asarray(centre, float) for c in cameras])
    dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-12)
    return np.arccos(np.clip(dirs @ dirs.T, -1.0, 1.0))


@dataclass
class Suggestion:
    views: list[str]  # names, in the order chosen
    spread_deg: float  # largest angle between two of them at the centre
    min_angle_deg: float  # smallest angle between two of them (0 for one view)
    centre: list[float]


def suggest_views(cameras: Sequence[Camera], names: Sequence[str], count: int,
                  centre: np.ndarray | None = None) -> Suggestion:
    """``count`` views to annotate (see the module docstring). One view: the most central
    one (smallest mean angle to all others), which shares most of its surface with them."""
    if not cameras:
        raise ValueError("no cameras")
    count = max(1, min(int(count), len(cameras)))
    centre = look_at_point(cameras) if centre is None else np.asarray(centre, float)
    angles = view_angles(cameras, centre)
    if count == 1:
        chosen = [int(np.argmin(angles.mean(axis=1)))]
    else:
        i, j = np.unravel_index(int(np.argmax(angles)), angles.shape)
        chosen = sorted([int(i), int(j)], key=lambda k: names[k])
        while len(chosen) < count:
            gap = angles[:, chosen].min(axis=1)
            gap[chosen] = -1.0
            chosen.append(int(np.argmax(gap)))
    return Suggestion([names[k] for k in chosen], *_spread(angles, chosen), centre=np.round(centre, 6).tolist())


def _spread(angles: np.ndarray, chosen: list[int]) -> tuple[float, float]:
    if len(chosen) < 2:
        return 0.0, 0.0
    sub = angles[np.ix_(chosen, chosen)]
    off = sub[~np.eye(len(chosen), dtype=bool)]
    return float(np.degrees(off.max())), float(np.degrees(off.min()))


def spread_of(cameras: Sequence[Camera], names: Sequence[str], chosen: Sequence[str],
              centre: np.ndarray | None = None) -> tuple[float, float]:
    """(largest, smallest) angle in degrees between the named views at ``centre``."""
    centre = look_at_point(cameras) if centre is None else np.asarray(centre, float)
    index = {n: i for i, n in enumerate(names)}
    return _spread(view_angles(cameras, centre), [index[n] for n in chosen])


def suggest_from_transforms(transforms, counts=(1, 2, 3)) -> dict:
    """Suggestions for the train views of a posed ``transforms.json`` (nerfstudio style, as
    the scene and poses stages write it): ``{"<count>": {"views", "spread_deg",
    "min_angle_deg"}, "centre": [...]}``. One-line InputErrors naming the file."""


    path = Path(transforms)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    cams, names = [], []
    for i, fr in enumerate(meta.get("frames") or []):
        if fr.get("innout_split", "train") != "train":
            continue
        if "transform_matrix" not in fr:
            raise InputError(path, f"frame {i} has no pose: run the poses stage first and use its transforms.json")
        w, h = int(fr.get("w", meta.get("w", 1))), int(fr.get("h", meta.get("h", 1)))
        fx = float(fr.get("fl_x", meta.get("fl_x", 1.0)))
        fy = float(fr.get("fl_y", meta.get("fl_y", fx)))
        k = Intrinsics(fx, fy, float(fr.get("cx", meta.get("cx", w / 2))), float(fr.get("cy", meta.get("cy", h / 2))), w, h)
        cams.append(Camera(np.asarray(fr["transform_matrix"], float), k))
        names.append(Path(fr["file_path"]).stem)
    if len(cams) < 2:
        raise InputError(path, f"has {len(cams)} posed train views; suggestions need at least 2")
    out: dict = {}
    centre = look_at_point(cams)
    for count in counts:
        s = suggest_views(cams, names, count, centre)
        out[str(count)] = {"views": s.views, "spread_deg": round(s.spread_deg, 2), "min_angle_deg": round(s.min_angle_deg, 2)}
    out["centre"] = np.round(centre, 6).tolist()
    return out
