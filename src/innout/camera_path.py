"""Camera paths: the video's smooth closed path through train cameras, and nerfstudio's
``camera_path.json`` format that carries it.

nerfstudio's format (what ``ns-viewer``'s render panel writes and ``ns-render
camera-path`` reads, parsed by ``nerfstudio.cameras.camera_paths.get_path_from_json``)::

    {"camera_type": "perspective", "render_width": W, "render_height": H,
     "fps": F, "seconds": N / F, "is_cycle": true, "smoothness_value": 0.5,
     "default_fov": deg, "default_transition_sec": s, "crop": null,
     "keyframes":   [{"matrix": [16 floats], "fov": deg, "aspect": W / H}, ...],
     "camera_path": [{"camera_to_world": [16 floats], "fov": deg, "aspect": W / H}, ...]}

``camera_to_world`` / ``matrix``: a row-major 4x4 OpenGL camera-to-world matrix in the
NeRF's own (nerfstudio-normalised) frame, the frame ``ns-render`` and the viewer work
in; ``fov``: the VERTICAL field of view in degrees; pixels are square and the principal
point is the image centre (nerfstudio builds the cameras so). The frame conversion is
the NeRF's :class:`innout.renderer.SceneFrame` (passed in, so this module needs no NeRF).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation, RotationSpline

from innout.cameras import Camera, Intrinsics
from innout.errors import InputError


def path_keyframes(cameras: "list[Camera]", count: int) -> list[int]:
    """Indices of up to ``count`` cameras that a closed path visits in order around the
    capture: the camera centres are projected on their two main axes (PCA), and for
    ``count`` directions evenly spread over the circle the camera furthest along that
    direction is taken (the extreme points of the capture, in angular order), repeats
    dropped. A ring of cameras (360 capture) gives points on the ring, a forward-facing
    grid the points of its outline."""
    centres = np.stack([np.asarray(c.c2w, float)[:3, 3] for c in cameras])
    if len(cameras) <= 2:
        return list(range(len(cameras)))
    offsets = centres - centres.mean(axis=0)
    _, _, axes = np.linalg.svd(offsets, full_matrices=False)
    uv = offsets @ axes[:2].T
    uv /= np.maximum(np.abs(uv).max(axis=0), 1e-12)  # equal weight to both axes
    picked: list[int] = []
    for k in range(max(2, int(count))):
        angle = 2.0 * np.pi * k / max(2, int(count))
        best = int(np.argmax(uv @ np.array([np.cos(angle), np.sin(angle)])))
        if best not in picked:
            picked.append(best)
    return picked


def smooth_path(keyframes: "list[Camera]", n_frames: int, intrinsics: Any = None) -> "list[Camera]":
    """A smooth closed path through the keyframe cameras: centres on a periodic cubic
    spline (parameterised by chord length), orientations on a rotation spline (scipy's
    ``RotationSpline``: continuous angular velocity) through the keyframes' rotations,
    ``n_frames`` cameras evenly spaced in the parameter. ``intrinsics``: of every frame
    (default: the first keyframe's)."""

    if not keyframes:
        raise ValueError("a camera path needs at least one keyframe")
    intr = intrinsics or keyframes[0].intrinsics
    c2ws = [np.asarray(c.c2w, float) for c in keyframes]
    if len(c2ws) == 1:
        return [Camera(c2ws[0].copy(), intr) for _ in range(n_frames)]
    closed = c2ws + [c2ws[0]]
    centres = np.stack([m[:3, 3] for m in closed])
    chord = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    chord = np.where(chord > 1e-9, chord, 1e-9)  # two keyframes at one place still get distinct times
    times = np.concatenate([[0.0], np.cumsum(chord)])
    position = CubicSpline(times, centres, bc_type="periodic")
    rotations = Rotation.from_matrix(np.stack([m[:3, :3] for m in closed]))
    orientation = RotationSpline(times, rotations)
    ts = np.linspace(0.0, times[-1], int(n_frames), endpoint=False)
    out = []
    for t, p, r in zip(ts, position(ts), orientation(ts).as_matrix()):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = r, p
        out.append(Camera(m, intr))
    return out


def path_intrinsics(reference: Intrinsics, width: int, height: int) -> Intrinsics:
    """Intrinsics nerfstudio's camera-path format can carry for a ``width`` x ``height``
    image with ``reference``'s vertical field of view: square pixels, centred principal
    point."""
    vfov = 2.0 * math.atan(reference.height / (2.0 * reference.fy))
    focal = 0.5 * height / math.tan(0.5 * vfov)
    return Intrinsics(focal, focal, width / 2.0, height / 2.0, int(width), int(height))


def _vertical_fov_deg(intr: Intrinsics) -> float:
    return math.degrees(2.0 * math.atan(intr.height / (2.0 * intr.fy)))


def _matrix_4x4(c2w_3x4: np.ndarray) -> list[float]:
    m = np.eye(4)
    m[:3] = np.asarray(c2w_3x4, dtype=np.float64)[:3]
    return [float(v) for v in m.reshape(-1)]


def to_nerfstudio(path: "list[Camera]", frame: Any, fps: float, keyframes: "Optional[list[Camera]]" = None,
                  is_cycle: bool = True) -> dict:
    """nerfstudio's camera-path dict (module docstring) of scene-frame cameras; ``frame``:
    the NeRF's :class:`innout.renderer.SceneFrame`. Every camera must share one image size
    and have square pixels with the principal point at the centre (:func:`path_intrinsics`)."""
    if not path:
        raise ValueError("an empty camera path")
    intr = path[0].intrinsics
    for cam in path:
        k = cam.intrinsics
        if (k.width, k.height) != (intr.width, intr.height):
            raise ValueError("every camera of a path must have one image size")
        if abs(k.fx - k.fy) > 1e-6 * k.fy or abs(k.cx - k.width / 2) > 1e-6 or abs(k.cy - k.height / 2) > 1e-6:
            raise ValueError("nerfstudio's camera paths need square pixels and a centred principal point (path_intrinsics)")
    aspect = intr.width / intr.height
    fov = _vertical_fov_deg(intr)
    return {
        "camera_type": "perspective",
        "render_width": int(intr.width),
        "render_height": int(intr.height),
        "fps": float(fps),
        "seconds": len(path) / float(fps),
        "is_cycle": bool(is_cycle),
        "smoothness_value": 0.5,
        "default_fov": fov,
        "default_transition_sec": 2.0,
        "crop": None,
        "keyframes": [{"matrix": _matrix_4x4(frame.c2w_to_nerf(c.c2w)), "fov": _vertical_fov_deg(c.intrinsics), "aspect": aspect}
                      for c in (keyframes or [])],
        "camera_path": [{"camera_to_world": _matrix_4x4(frame.c2w_to_nerf(c.c2w)), "fov": _vertical_fov_deg(c.intrinsics),
                         "aspect": aspect} for c in path],
    }


def read_nerfstudio(path: Path) -> dict:
    """A camera_path.json as a dict; one-line errors naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the camera path: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("camera_path"), list) or not data["camera_path"]:
        raise InputError(path, "not a nerfstudio camera path: no 'camera_path' list of frames")
    for key in ("render_width", "render_height"):
        if not isinstance(data.get(key), (int, float)) or data[key] < 2:
            raise InputError(path, f"not a nerfstudio camera path: '{key}' missing or below 2")
    kind = str(data.get("camera_type", "perspective")).lower()
    if kind != "perspective":
        raise InputError(path, f"camera_type {kind!r}: only perspective camera paths are rendered")
    for i, cam in enumerate(data["camera_path"]):
        matrix = np.asarray(cam.get("camera_to_world", []), dtype=np.float64) if isinstance(cam, dict) else np.zeros(0)
        if matrix.size != 16 or not np.isfinite(matrix).all() or not isinstance(cam.get("fov"), (int, float)):
            raise InputError(path, f"frame {i}: needs a finite 16-number camera_to_world and a fov")
    return data


def from_nerfstudio(data: dict, frame: Any) -> "list[Camera]":
    """Scene-frame cameras of a camera-path dict, parsed by nerfstudio's own loader
    (``get_path_from_json``), so they are the cameras ``ns-render`` would render."""
    from nerfstudio.cameras.camera_paths import get_path_from_json

    cameras = get_path_from_json(data)
    out = []
    for i in range(cameras.shape[0]):
        c = cameras[i]
        intr = Intrinsics(float(c.fx), float(c.fy), float(c.cx), float(c.cy), int(c.width), int(c.height))
        out.append(Camera(frame.c2w_to_scene(c.camera_to_worlds.double().cpu().numpy()), intr))
    return out


def fps_of(data: dict, default: float = 30.0) -> float:
    """Frames per second of a camera-path dict (``fps``, else frames / ``seconds``)."""
    if isinstance(data.get("fps"), (int, float)) and data["fps"] > 0:
        return float(data["fps"])
    if isinstance(data.get("seconds"), (int, float)) and data["seconds"] > 0:
        return len(data["camera_path"]) / float(data["seconds"])
    return float(default)
