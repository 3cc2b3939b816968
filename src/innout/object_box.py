"""A 3D box around the object, given in the scene's frame (``object_box.json``).

The box is an alternative (or an addition) to annotated masks: every view's surface
points inside it are object. It is written in the frame and units of the scene's own
camera poses (``poses_bounds.npy``, ``transforms.json`` or the COLMAP model the scene
comes with) as either of::

    {"min": [x0, y0, z0], "max": [x1, y1, z1]}                  axis-aligned
    {"center": [x, y, z], "size": [sx, sy, sz],
     "rotation": [[...], [...], [...]]}                          oriented (rotation optional:
                                                                  box axes as columns, world frame)

When the workflow re-estimates the poses with COLMAP, the masks stage carries the box into
COLMAP's frame with the similarity that aligns the two sets of camera centres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from innout.cameras import Camera
from innout.errors import InputError, read_json

BOX_FILE = "object_box.json"


@dataclass(frozen=True)
class ObjectBox:
    """An oriented box: ``center`` (3,), ``size`` (3,) edge lengths, ``rotation`` (3, 3)
    whose columns are the box's axes in the world frame."""

    center: np.ndarray
    size: np.ndarray
    rotation: np.ndarray

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Bool per point (N, 3): inside the box (faces included)."""
        local = (np.asarray(points, float) - self.center) @ self.rotation
        return np.all(np.abs(local) <= self.size / 2.0 + 1e-12, axis=-1)

    def corners(self) -> np.ndarray:
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        return self.center + (signs * self.size / 2.0) @ self.rotation.T

    def grid(self, n: int = 5) -> np.ndarray:
        """(n^3, 3) points spread evenly through the box (its corners included)."""
        t = np.linspace(-0.5, 0.5, n)
        local = np.stack(np.meshgrid(t, t, t, indexing="ij"), axis=-1).reshape(-1, 3) * self.size
        return self.center + local @ self.rotation.T

    def transformed(self, scale: float, rotation: np.ndarray, translation: np.ndarray) -> "ObjectBox":
        """The box under the similarity ``x -> scale * rotation @ x + translation``."""
        rotation = np.asarray(rotation, float)
        return ObjectBox(scale * rotation @ self.center + np.asarray(translation, float), self.size * abs(scale),
                         rotation @ self.rotation)

    def to_json(self) -> dict:
        return {"center": self.center.tolist(), "size": self.size.tolist(), "rotation": self.rotation.tolist()}


def _vector(path: Path, data: dict, key: str) -> np.ndarray:
    try:
        value = np.asarray(data[key], dtype=float)
    except (TypeError, ValueError):
        raise InputError(path, f"'{key}' must be three numbers") from None
    if value.shape != (3,) or not np.isfinite(value).all():
        raise InputError(path, f"'{key}' must be three finite numbers, got {data[key]!r}")
    return value


def read_box(path: Path) -> ObjectBox:
    """The box in ``path`` (see the module docstring); one-line errors naming the file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(path, "must hold a JSON object with min/max or center/size")
    if "min" in data or "max" in data:
        lo, hi = _vector(path, data, "min"), _vector(path, data, "max")
        if not (hi > lo).all():
            raise InputError(path, f"max {hi.tolist()} must exceed min {lo.tolist()} on every axis")
        return ObjectBox((lo + hi) / 2.0, hi - lo, np.eye(3))
    if "center" in data and "size" in data:
        center, size = _vector(path, data, "center"), _vector(path, data, "size")
        if not (size > 0).all():
            raise InputError(path, f"size {size.tolist()} must be positive on every axis")
        rotation = np.eye(3)
        if data.get("rotation") is not None:
            try:
                rotation = np.asarray(data["rotation"], dtype=float)
            except (TypeError, ValueError):
                raise InputError(path, "'rotation' must be a 3x3 matrix of numbers") from None
            if rotation.shape != (3, 3) or not np.isfinite(rotation).all():
                raise InputError(path, "'rotation' must be a 3x3 matrix of finite numbers")
            if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0:
                raise InputError(path, "'rotation' is not a rotation matrix (orthonormal, determinant +1)")
        return ObjectBox(center, size, rotation)
    raise InputError(path, "needs 'min' and 'max', or 'center' and 'size' (and optionally 'rotation')")


def views_seeing(box: ObjectBox, cameras: Sequence[Camera]) -> list[int]:
    """Indices of the cameras in whose image some part of the box appears (a 5x5x5 grid
    of its points, in front of the camera and inside the image)."""
    points = box.grid(5)
    seeing = []
    for i, cam in enumerate(cameras):
        uv, depth = cam.project(points)
        k = cam.intrinsics
        with np.errstate(invalid="ignore"):
            inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < k.width) & (uv[:, 1] >= 0) & (uv[:, 1] < k.height)
        if inside.any():
            seeing.append(i)
    return seeing


def check_box_in_view(path: Path, box: ObjectBox, cameras: Sequence[Camera]) -> None:
    """InputError naming ``path`` when no camera sees any part of the box."""
    if not views_seeing(box, cameras):
        centres = np.stack([np.asarray(c.center, float) for c in cameras])
        raise InputError(path, f"the box (center {np.round(box.center, 3).tolist()}, size "
                               f"{np.round(box.size, 3).tolist()}) lies outside every camera's view "
                               f"(camera centres span {np.round(centres.min(0), 3).tolist()} to "
                               f"{np.round(centres.max(0), 3).tolist()}); is it in the scene's frame and units?")
