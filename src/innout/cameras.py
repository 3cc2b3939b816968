"""Camera conventions shared by every stage.

One convention inside the project, the one nerfstudio uses in ``transforms.json``:
a camera-to-world matrix ``c2w`` (4x4) whose rotation columns are the camera's
x (right), y (up) and z (backwards) axes in world coordinates (OpenGL style), and a
pinhole intrinsic (fx, fy, cx, cy) in pixels for an image of ``width`` x ``height``
whose pixel (0, 0) covers [0, 1) x [0, 1) (so the centre of pixel (u, v) is u + 0.5).

Converters to and from the conventions real data comes in (LLFF ``poses_bounds.npy``,
COLMAP/OpenCV world-to-camera) live here so no other module flips an axis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# LLFF stores rotation columns as (down, right, back); ours are (right, up, back).
# ours = llff @ _LLFF_TO_OURS (acting on the columns).
_LLFF_TO_OURS = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
# OpenCV camera axes are (right, down, forward); ours are (right, up, back).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled_to(self, width: int, height: int) -> "Intrinsics":
        """The same camera seen at another resolution (e.g. latent resolution H/8 x W/8)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, int(width), int(height))

    def cropped(self, y0: int, y1: int, x0: int, x1: int) -> "Intrinsics":
        """The pixels ``[y0, y1) x [x0, x1)`` of this image as an image of their own (its
        rays are exactly those pixels' rays)."""
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(f"box rows {y0}:{y1}, columns {x0}:{x1} is not inside a {self.width}x{self.height} image")
        return Intrinsics(self.fx, self.fy, self.cx - x0, self.cy - y0, int(x1 - x0), int(y1 - y0))

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Camera:
    """A posed pinhole camera: ``c2w`` in the OpenGL/nerfstudio convention."""

    c2w: np.ndarray
    intrinsics: Intrinsics

    def with_intrinsics(self, intrinsics: Intrinsics) -> "Camera":
        return replace(self, intrinsics=intrinsics)

    @property
    def center(self) -> np.ndarray:
        return self.c2w[:3, 3]

    def world_to_opencv(self) -> np.ndarray:
        """4x4 world-to-camera matrix in OpenCV axes (what COLMAP stores)."""
        return opengl_c2w_to_opencv_w2c(self.c2w)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) of world points (N, 3) and their depth along -z.

        Depth is positive in front of the camera; pixel coordinates follow the
        continuous convention of the module docstring.
        """
        w2c = self.world_to_opencv()
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        depth = cam[:, 2]
        k = self.intrinsics
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([k.fx * cam[:, 0] / depth + k.cx, k.fy * cam[:, 1] / depth + k.cy], axis=1)
        return uv, depth

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Origins and unit directions (H, W, 3) through every pixel centre."""
        k = self.intrinsics
        u, v = np.meshgrid(np.arange(k.width) + 0.5, np.arange(k.height) + 0.5)
        dirs_cam = np.stack([(u - k.cx) / k.fx, -(v - k.cy) / k.fy, -np.ones_like(u)], axis=-1)
        dirs = dirs_cam @ self.c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        origins = np.broadcast_to(self.c2w[:3, 3], dirs.shape)
        return origins, dirs


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    c2w_cv = np.array(c2w, dtype=float, copy=True)
    c2w_cv[:3, :3] = c2w_cv[:3, :3] @ _FLIP_YZ
    return np.linalg.inv(c2w_cv)


def opencv_w2c_to_opengl_c2w(w2c: np.ndarray) -> np.ndarray:
    c2w = np.linalg.inv(np.asarray(w2c, dtype=float))
    c2w[:3, :3] = c2w[:3, :3] @ _FLIP_YZ
    return c2w


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """c2w of a camera at ``eye`` looking at ``target`` with ``up`` roughly upwards."""
    back = np.asarray(eye, float) - np.asarray(target, float)
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, eye
    return c2w


def llff_row_to_camera(row: np.ndarray, width: int | None = None, height: int | None = None) -> tuple[Camera, tuple[float, float]]:
    """One row of ``poses_bounds.npy`` -> (camera, (near, far)).

    The row's (H, W, f) describe the full-resolution images; pass ``width``/``height``
    of the images actually used to get intrinsics at that resolution.
    """
    row = np.asarray(row, dtype=float)
    if row.shape != (17,):
        raise ValueError(f"a poses_bounds row has 17 numbers, got shape {row.shape}")
    mat = row[:15].reshape(3, 5)
    h, w, f = mat[:, 4]
    c2w = np.eye(4)
    c2w[:3, :3] = mat[:, :3] @ _LLFF_TO_OURS
    c2w[:3, 3] = mat[:, 3]
    intr = Intrinsics(f, f, w / 2.0, h / 2.0, int(round(w)), int(round(h)))
    if width is not None and height is not None:
        intr = intr.scaled_to(width, height)
    return Camera(c2w, intr), (float(row[15]), float(row[16]))


def camera_to_llff_row(camera: Camera, near: float, far: float) -> np.ndarray:
    """Inverse of :func:`llff_row_to_camera` (LLFF stores one focal: fx is used)."""
    k = camera.intrinsics
    mat = np.zeros((3, 5))
    mat[:, :3] = camera.c2w[:3, :3] @ _LLFF_TO_OURS.T
    mat[:, 3] = camera.c2w[:3, 3]
    mat[:, 4] = [k.height, k.width, k.fx]
    return np.concatenate([mat.reshape(-1), [near, far]])


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle of the rotation taking ``r_b`` to ``r_a`` in degrees."""
    cos = (np.trace(r_a @ r_b.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scale s, rotation R, translation t minimising ||dst - (s R src + t)|| (Umeyama 1991)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    var_s = (xs**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ sign) / var_s)
    trans = mu_d - scale * rot @ mu_s
    return scale, rot, trans
