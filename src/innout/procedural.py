# Over 600 lines: the scene generator itself (layout, cameras, ray casting, the SPIn-NeRF writer): one algorithm read top to bottom; textures and shapes are split off.
"""Seeded procedural scenes with ground truth, written in the SPIn-NeRF layout.

A scene is a textured room (floor, walls, ceiling), a few textured props standing in it
and one object (box, cylinder, sphere or a small composition of them) standing on the
floor. Everything is ray-cast analytically with numpy: Lambertian surfaces under baked
lighting (ambient + two directional lights, no shadows, no specular), so a surface
point has the same colour from every view and a NeRF can reproduce the renders.

Textures are image arrays built once per scene from the seed (multi-octave noise mapped
through a colour ramp, colourful spots at several scales, shapes, strokes, glyphs and
checker patches) and sampled bilinearly by surface UV; every surface has its own
texture region, so nothing repeats and SIFT/COLMAP find many distinctive matches.

Variants:

``forward``
    SPIn-NeRF/LLFF style: cameras on a jittered disc ("sunflower" layout) in a plane in
    front of the object, all looking at it, with the back wall, the floor and props
    behind it.
``360``
    Cameras on rings at two or three elevations around the object at the centre of a
    room.

Coordinates: world z is up, metres. Cameras follow :mod:`innout.cameras` (OpenGL c2w);
the principal point is the image centre and fx == fy so the LLFF row round trip is
exact.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from innout.cameras import Camera, Intrinsics, camera_to_llff_row, look_at
from innout.images import save_png, to_u8
from innout.procedural_shapes import _Box, _Cylinder, _Prim, _Room, _Sphere
from innout.procedural_textures import _make_texture, _rng, _sample_texture

VARIANTS = ("forward", "360")
GENERATOR_VERSION = 1
_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
_CHUNK_RAYS = 1 << 17  # rays per chunk (bounds memory, keeps arrays cache-friendly)
_DIR_CACHE_RAYS = 1 << 22  # camera ray directions of images up to this many rays are cached
_PNG_COMPRESS_LEVEL = 3

# Texel sizes (metres per texel) of the generated textures.
_ROOM_TEXEL = 0.006
_PROP_TEXEL = 0.004
_OBJECT_TEXEL = 0.003


# --------------------------------------------------------------------------- scene


def _make_object(rng: np.random.Generator) -> tuple[str, list[_Prim]]:
    """The removable object, standing on the floor at the origin."""
    kind = ["box", "cylinder", "pedestal_sphere", "box_sphere", "sphere"][int(rng.integers(0, 5))]
    T, S = _OBJECT_TEXEL, "object"
    if kind == "box":
        half = [rng.uniform(0.22, 0.36), rng.uniform(0.18, 0.3), rng.uniform(0.3, 0.48)]
        prims = [_Box([0, 0, half[2]], half, rng.uniform(0, math.pi), T, S, True)]
    elif kind == "cylinder":
        r, h = rng.uniform(0.2, 0.32), rng.uniform(0.6, 0.95)
        prims = [_Cylinder([0, 0], r, 0.0, h, T, S, True)]
    elif kind == "pedestal_sphere":
        r, h, R = rng.uniform(0.12, 0.2), rng.uniform(0.3, 0.5), rng.uniform(0.24, 0.32)
        prims = [_Cylinder([0, 0], r, 0.0, h, T, S, True), _Sphere([0, 0, h + 0.85 * R], R, T, S, True)]
    elif kind == "box_sphere":
        half = [rng.uniform(0.22, 0.32), rng.uniform(0.2, 0.3), rng.uniform(0.18, 0.28)]
        R = rng.uniform(0.16, 0.22)
        prims = [_Box([0, 0, half[2]], half, rng.uniform(0, math.pi), T, S, True),
                 _Sphere([rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), 2 * half[2] + 0.9 * R], R, T, S, True)]
    else:
        R = rng.uniform(0.33, 0.43)
        prims = [_Sphere([0, 0, R], R, T, S, True)]
    return kind, prims


def _prop(rng: np.random.Generator, center_xy, size) -> _Prim:
    """A background prop (box or cylinder) standing on the floor."""
    if rng.random() < 0.65:
        half = [size * rng.uniform(0.5, 1.0), size * rng.uniform(0.5, 1.0), rng.uniform(0.25, 0.9)]
        return _Box([center_xy[0], center_xy[1], half[2]], half, rng.uniform(-0.5, 0.5), _PROP_TEXEL, "prop")
    return _Cylinder(center_xy, size * rng.uniform(0.6, 1.0), 0.0, rng.uniform(0.4, 1.4), _PROP_TEXEL, "prop")


@dataclass
class ProceduralScene:
    """A deterministic textured scene (``variant`` 'forward' or '360') built from ``seed``.

    ``hfov_deg``: default horizontal field of view of :meth:`cameras` (None: drawn from
    the seed in [55, 65] degrees).
    """

    variant: str = "forward"
    seed: int = 0
    hfov_deg: float | None = None
    _prims: list = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)
    _textured: bool = field(init=False, repr=False, compare=False, default=False)
    _dir_cache: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)
        self._lock = threading.Lock()
        self._build()

    # ---------------------------------------------------------------- construction
    def _build(self):
        vcode = VARIANTS.index(self.variant)
        rng = _rng(self.seed, vcode, 1)
        if self.hfov_deg is None:
            self.hfov_deg = float(rng.uniform(55.0, 65.0))
        else:
            rng.uniform(55.0, 65.0)  # keep the stream aligned
        self.object_kind, obj = _make_object(rng)
        corners = np.concatenate([p.corners() for p in obj])
        self.object_height = float(corners[:, 2].max())
        obj_half_w = float(np.abs(corners[:, :2]).max())
        self.target = np.array([0.0, 0.0, 0.5 * self.object_height])
        # camera distance: the object covers ~7-15 % of a (nominal 4:3) image, at most 60 % of
        # its height and 50 % of its width, so it stays in view under the pose jitter
        tan_h = math.tan(math.radians(self.hfov_deg) / 2)
        tan_v = tan_h * 0.75
        silhouette = sum(p.silhouette_area() for p in obj)
        cover = rng.uniform(0.07, 0.15)
        d = max(math.sqrt(silhouette / (4 * cover * tan_h * tan_v)),
                self.object_height / (0.6 * 2 * tan_v), 2 * obj_half_w / (0.5 * 2 * tan_h))
        self.distance = float(d)
        props: list[_Prim] = []
        if self.variant == "forward":
            self.pitch = math.radians(rng.uniform(14.0, 24.0))
            self.spread = np.array([rng.uniform(0.2, 0.26), rng.uniform(0.09, 0.13)]) * d
            back = rng.uniform(1.8, 2.6)
            front = -(d * math.cos(self.pitch) + 1.5 + 0.3 * d)
            half_x = rng.uniform(3.0, 3.8) + 0.4 * d
            height = rng.uniform(2.8, 3.3) + 0.3 * d
            room_lo, room_hi = [-half_x, front, 0.0], [half_x, back, height]
            # props behind the object and to its sides, never between it and the cameras
            n_props = int(rng.integers(3, 6))
            for i in range(n_props):
                size = rng.uniform(0.18, 0.45)
                x = (i + 0.5) / n_props * 2 * (half_x - 0.7) - (half_x - 0.7) + rng.uniform(-0.3, 0.3)
                y = rng.uniform(0.9, back - size - 0.05)
                props.append(_prop(rng, [x, y], size))
        else:
            self.elevations = np.radians([12.0, 27.0, 42.0]) + math.radians(rng.uniform(-3, 3))
            # props stand between the camera ring (radius <= d) and the walls
            half = max(rng.uniform(4.0, 5.0), d + 2.6)
            half_y = max(half + rng.uniform(-0.4, 0.4), d + 2.6)
            height = max(rng.uniform(3.0, 3.4), 0.5 * self.object_height + d * math.sin(self.elevations[-1]) + 1.0)
            room_lo, room_hi = [-half, -half_y, 0.0], [half, half_y, height]
            n_props = int(rng.integers(4, 8))
            az0 = rng.uniform(0, 2 * math.pi)
            for i in range(n_props):
                size = rng.uniform(0.2, 0.45)
                az = az0 + 2 * math.pi * (i + rng.uniform(0.2, 0.8)) / n_props
                # push the prop out to the wall along its azimuth
                c, s = math.cos(az), math.sin(az)
                reach = min((half - 2 * size - 0.1) / max(abs(c), 1e-6), (half_y - 2 * size - 0.1) / max(abs(s), 1e-6))
                reach = max(reach, d + 0.8 + 2 * size)
                props.append(_prop(rng, [reach * c, reach * s], size))
        self.room = _Room(room_lo, room_hi, _ROOM_TEXEL)
        self._prims = [self.room, *props, *obj]
        # lights: direction *to* the light; key light from above on the camera side
        key_az = rng.uniform(-0.6, 0.6) - math.pi / 2 if self.variant == "forward" else rng.uniform(0, 2 * math.pi)
        key_el = math.radians(rng.uniform(45, 65))
        self.lights = np.array([
            [math.cos(key_el) * math.cos(key_az), math.cos(key_el) * math.sin(key_az), math.sin(key_el)],
            [-math.cos(0.4) * math.cos(key_az), -math.cos(0.4) * math.sin(key_az), math.sin(0.4)],
        ])
        self.light_gains = np.array([0.5, 0.22])
        self.ambient = 0.4
        self.object_hue = float(rng.random())

    def _ensure_textures(self):
        if self._textured:
            return
        with self._lock:
            if self._textured:
                return
            vcode = VARIANTS.index(self.variant)
            jobs = [(pid, j, spec) for pid, prim in enumerate(self._prims)
                    for j, spec in enumerate(prim.texture_specs())]
            # largest first so the two threads finish together
            jobs.sort(key=lambda job: -job[2][0] * job[2][1])

            def make(job):
                pid, j, spec = job
                return _make_texture(_rng(self.seed, vcode, 2, pid, j), *spec, hue0=self.object_hue)

            with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
                made = list(pool.map(make, jobs))
            for prim in self._prims:
                prim.textures = [None] * len(prim.texture_specs())
            for (pid, j, _), tex in zip(jobs, made):
                self._prims[pid].textures[j] = tex
            self._textured = True

    # ---------------------------------------------------------------- cameras
    def default_focal(self, width: int) -> float:
        return (width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    def cameras(self, n: int, width: int, height: int, split: str, focal: float | None = None) -> list[Camera]:
        """``n`` cameras of this variant's layout for ``split`` ('train' or 'test').

        Train and test poses come from the same layout with different phases and
        jitter (test poses lie inside the region the train poses cover). Intrinsics:
        fx = fy = ``focal`` (default from :attr:`hfov_deg`), principal point at the
        image centre.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        n, width, height = int(n), int(width), int(height)
        if n < 0 or width < 1 or height < 1:
            raise ValueError("n must be >= 0 and width, height >= 1")
        f = float(focal) if focal is not None else self.default_focal(width)
        intr = Intrinsics(f, f, width / 2.0, height / 2.0, width, height)
        rng = _rng(self.seed, VARIANTS.index(self.variant), 3, 0 if split == "train" else 1)
        d = self.distance
        eyes = []
        if self.variant == "forward":
            view = np.array([0.0, -math.cos(self.pitch), math.sin(self.pitch)])  # target -> centre eye
            centre = self.target + d * view
            right = np.array([1.0, 0.0, 0.0])
            up = np.cross(view, right)
            scale = 1.0 if split == "train" else 0.8
            phase = 0.0 if split == "train" else 0.5
            for i in range(n):
                r = math.sqrt((i + 0.5) / max(n, 1)) * scale
                a = (i + phase) * _GOLDEN_ANGLE + (0.0 if split == "train" else 1.3)
                jx, jy = rng.uniform(-0.06, 0.06, 2)
                x = (r * math.cos(a) + jx) * self.spread[0]
                y = (r * math.sin(a) + jy) * self.spread[1]
                eyes.append(centre + x * right + y * up + rng.uniform(-0.04, 0.04) * d * view)
        else:
            if split == "train":
                elev = self.elevations if n >= 6 else self.elevations[:1]
            else:
                elev = 0.5 * (self.elevations[:-1] + self.elevations[1:]) if n >= 4 else self.elevations[1:2]
            counts = [n // len(elev) + (1 if j < n % len(elev) else 0) for j in range(len(elev))]
            for j, (e, m) in enumerate(zip(elev, counts)):
                phase = (0.37 * j if split == "train" else 0.5 + 0.29 * j)
                for i in range(m):
                    az = 2 * math.pi * (i + phase + rng.uniform(-0.15, 0.15)) / m
                    ee = e + math.radians(rng.uniform(-1.5, 1.5))
                    dd = d * rng.uniform(0.96, 1.04)
                    ring = np.array([math.cos(ee) * math.cos(az), math.cos(ee) * math.sin(az), math.sin(ee)])
                    eyes.append(self.target + dd * ring)
        cams = []
        for eye in eyes:
            tgt = self.target + rng.uniform(-0.03, 0.03, 3) * d
            cams.append(Camera(look_at(eye, tgt), intr))
        return cams

    # ---------------------------------------------------------------- rendering
    def _screen_boxes(self, camera: Camera, s: int) -> list[tuple[int, int, int, int]]:
        """Per primitive (u0, u1, v0, v1) pixel bounds at ``s`` x resolution (empty if behind)."""
        k = camera.intrinsics
        W, H = k.width * s, k.height * s
        boxes = []
        for prim in self._prims:
            c = prim.corners()
            if c is None:
                boxes.append((0, W, 0, H))
                continue
            uv, depth = camera.project(c)
            if np.all(depth <= 1e-6):
                boxes.append((0, 0, 0, 0))
                continue
            if np.any(depth <= 1e-6):
                boxes.append((0, W, 0, H))
                continue
            uv = uv * s
            u0, v0 = np.floor(uv.min(0)).astype(int) - 2
            u1, v1 = np.ceil(uv.max(0)).astype(int) + 2
            boxes.append((max(u0, 0), min(u1, W), max(v0, 0), min(v1, H)))
        return boxes

    def _camera_dirs(self, intr: Intrinsics, s: int, dtype, r0: int, r1: int) -> np.ndarray:
        """Unit ray directions in camera axes, (3, r1 - r0, W*s), of (sub)pixel rows r0:r1 at s x resolution.

        Whole images of up to 4M rays are computed once per intrinsics and cached.
        """
        big = Intrinsics(intr.fx * s, intr.fy * s, intr.cx * s, intr.cy * s, intr.width * s, intr.height * s)
        if big.width * big.height > _DIR_CACHE_RAYS:
            crop = Intrinsics(big.fx, big.fy, big.cx, big.cy - r0, big.width, r1 - r0)
            return np.ascontiguousarray(Camera(np.eye(4), crop).rays()[1].transpose(2, 0, 1), dtype=dtype)
        key = (big, np.dtype(dtype).str)
        dirs = self._dir_cache.get(key)
        if dirs is None:
            dirs = np.ascontiguousarray(Camera(np.eye(4), big).rays()[1].transpose(2, 0, 1), dtype=dtype)
            dirs.setflags(write=False)
            with self._lock:
                if len(self._dir_cache) > 8:
                    self._dir_cache.clear()
                self._dir_cache[key] = dirs
        return dirs[:, r0:r1]

    @staticmethod
    def _world_dirs(cam_dirs: np.ndarray, rot: np.ndarray):
        """World direction components (dx, dy, dz) of camera-axes directions (3, ...)."""
        dt = cam_dirs.dtype
        cx, cy, cz = cam_dirs
        return tuple(dt.type(rot[i, 0]) * cx + dt.type(rot[i, 1]) * cy + dt.type(rot[i, 2]) * cz for i in range(3))

    def _trace(self, eye, dx, dy, dz, row0, boxes):
        """Nearest hits of a (rows, cols) chunk: (t, pid, aux) for the background and for the object."""
        rows, cols = dx.shape
        dt = dx.dtype
        out = {}
        for is_obj in (False, True):
            out[is_obj] = (np.full((rows, cols), np.inf, dt), np.full((rows, cols), -1, np.int16),
                           np.zeros((rows, cols), np.int8))
        for pid, prim in enumerate(self._prims):
            u0, u1, v0, v1 = boxes[pid]
            r0, r1 = max(v0 - row0, 0), min(v1 - row0, rows)
            if r1 <= r0 or u1 <= u0:
                continue
            win = (slice(r0, r1), slice(u0, u1))
            t, aux = prim.intersect(eye, dx[win], dy[win], dz[win])
            tb, ib, ab = out[prim.is_object]
            sub_t = tb[win]
            better = t < sub_t
            np.copyto(sub_t, t, where=better)
            ib[win][better] = pid
            if aux is not None:
                np.copyto(ab[win], aux, where=better)
        return out[False], out[True]

    def _shade(self, eye, dx, dy, dz, t, pid, aux):
        """Colour (k, 3) of hits at distances t along (dx, dy, dz) on primitive pid, face aux (all (k,))."""
        rgb = np.empty((len(t), 3), np.float32)
        key = pid.astype(np.int16) * 8 + aux
        order = np.argsort(key, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(key, minlength=8 * len(self._prims)))])
        gains = self.light_gains.astype(np.float32)
        lights = self.lights.astype(np.float32)
        for g in np.flatnonzero(bounds[1:] > bounds[:-1]):
            sel = order[bounds[g]:bounds[g + 1]]
            prim = self._prims[g // 8]
            tt = t[sel]
            tex, uv, normal = prim.hit_surface(eye, tt, dx[sel], dy[sel], dz[sel], int(g % 8))
            albedo = _sample_texture(prim.textures[tex], uv)
            if normal.ndim == 1:
                albedo *= np.float32(self.ambient + gains @ np.maximum(lights @ normal, 0.0))
            else:
                shade = np.maximum(normal.astype(np.float32, copy=False) @ lights.T, 0.0) @ gains
                shade += np.float32(self.ambient)
                albedo *= shade[:, None]
            rgb[sel] = albedo
        return np.clip(rgb, 0.0, 1.0, out=rgb)

    def render(self, camera: Camera, with_object: bool = True, supersample: int = 2) -> dict:
        """Render one view.

        Returns ``rgb`` float32 (H, W, 3) in [0, 1] (mean of ``supersample`` x
        ``supersample`` rays per pixel), ``distance`` float32 (H, W) to the first hit
        along the unit pixel-centre ray, ``depth`` float32 (H, W) along the camera's
        -z axis, ``object_mask`` bool (H, W) where the pixel-centre ray's first hit
        would be the object (even when rendered ``with_object=False``) and
        ``object_coverage`` float32 (H, W), the fraction of the pixel's supersamples
        whose first hit would be the object.
        """
        s = int(supersample)
        if s < 1:
            raise ValueError("supersample must be >= 1")
        self._ensure_textures()
        k = camera.intrinsics
        W, H = k.width, k.height
        eye = np.asarray(camera.center, float)
        rot = np.asarray(camera.c2w[:3, :3], float)
        rgb = np.empty((H, W, 3), np.float32)
        coverage = np.empty((H, W), np.float32)
        distance = np.empty((H, W), np.float32)
        obj_mask = np.empty((H, W), bool)
        cos_axis = np.empty((H, W), np.float64)

        # colour: supersampled rays, float32, in row chunks
        boxes = self._screen_boxes(camera, s)
        rows_per = max(1, _CHUNK_RAYS // (W * s * s))
        for r0 in range(0, H, rows_per):
            r1 = min(H, r0 + rows_per)
            nr = r1 - r0
            dx, dy, dz = self._world_dirs(self._camera_dirs(k, s, np.float32, r0 * s, r1 * s), rot)
            (t_bg, id_bg, aux_bg), (t_obj, id_obj, aux_obj) = self._trace(eye, dx, dy, dz, r0 * s, boxes)
            hit_obj = t_obj < t_bg
            if with_object:
                t, pid, aux = (np.where(hit_obj, a, b) for a, b in ((t_obj, t_bg), (id_obj, id_bg), (aux_obj, aux_bg)))
            else:
                t, pid, aux = t_bg, id_bg, aux_bg
            col = self._shade(eye, dx.reshape(-1), dy.reshape(-1), dz.reshape(-1), t.reshape(-1), pid.reshape(-1),
                              aux.reshape(-1))
            rgb[r0:r1] = _block_mean(col.reshape(nr * s, W * s, 3), s)
            coverage[r0:r1] = _block_mean(hit_obj.astype(np.float32), s)
        # geometry: pixel-centre rays, float64
        boxes = self._screen_boxes(camera, 1)
        rows_per = max(1, _CHUNK_RAYS // W)
        for r0 in range(0, H, rows_per):
            r1 = min(H, r0 + rows_per)
            cam_dirs = self._camera_dirs(k, 1, np.float64, r0, r1)
            dx, dy, dz = self._world_dirs(cam_dirs, rot)
            (t_bg, _, _), (t_obj, _, _) = self._trace(eye, dx, dy, dz, r0, boxes)
            # z-depth = distance * cos(angle to the optical axis) = distance * -(camera-axes z of the ray)
            cos_axis[r0:r1] = -cam_dirs[2]
            hit_obj = t_obj < t_bg
            obj_mask[r0:r1] = hit_obj
            distance[r0:r1] = np.where(hit_obj, t_obj, t_bg) if with_object else t_bg
        if s == 1:
            coverage = obj_mask.astype(np.float32)
        depth = (distance * cos_axis).astype(np.float32)
        return {"rgb": rgb, "distance": distance, "depth": depth, "object_mask": obj_mask, "object_coverage": coverage}

    # ---------------------------------------------------------------- ground-truth points
    def _surface_points(self, prims: list[_Prim], n: int, tag: int) -> np.ndarray:
        rng = _rng(self.seed, VARIANTS.index(self.variant), 4, tag, n)
        areas = np.array([p.area() for p in prims])
        out = []
        have = 0
        while have < n:
            m = 2 * (n - have) + 16
            counts = rng.multinomial(m, areas / areas.sum())
            pts = np.concatenate([p.sample(rng, int(c)) for p, c in zip(prims, counts)])
            owner = np.repeat(np.arange(len(prims)), counts)
            keep = np.ones(len(pts), bool)
            for q in self._prims:
                keep &= ~q.contains(pts)
            # faces resting on the floor are never seen
            not_room = np.array([not isinstance(prims[o], _Room) for o in owner], bool)
            keep &= ~(not_room & (pts[:, 2] < 1e-4))
            pts = pts[keep]
            perm = rng.permutation(len(pts))
            out.append(pts[perm][: n - have])
            have += len(out[-1])
        return np.concatenate(out)[:n] if n else np.zeros((0, 3))

    def object_points(self, n: int) -> np.ndarray:
        """(n, 3) points on the object's surface (excluding parts hidden inside it or on the floor)."""
        return self._surface_points([p for p in self._prims if p.is_object], int(n), 0)

    def background_points(self, n: int) -> np.ndarray:
        """(n, 3) points on background surfaces (room and props), none inside a solid."""
        return self._surface_points([p for p in self._prims if not p.is_object], int(n), 1)

    def summary(self) -> dict:
        return {"variant": self.variant, "seed": self.seed, "hfov_deg": self.hfov_deg,
                "object_kind": self.object_kind, "object_height": self.object_height,
                "camera_distance": self.distance}


# --------------------------------------------------------------------------- SPIn-NeRF writer


def _block_mean(img: np.ndarray, n: int) -> np.ndarray:
    """Mean over n x n pixel blocks (area downsampling by an integer factor), float32."""
    if n == 1:
        return img.astype(np.float32)
    acc = np.zeros((img.shape[0] // n, img.shape[1] // n, *img.shape[2:]), np.float32)
    for i in range(n):
        for j in range(n):
            acc += img[i::n, j::n]
    acc *= np.float32(1.0 / (n * n))
    return acc


def write_spinnerf_scene(out_dir, variant: str = "forward", seed: int = 0, n_train: int = 60, n_test: int = 40,
                         width: int = 640, height: int = 480, downscales=(2, 4), focal: float | None = None,
                         supersample: int = 2, workers: int | None = None, overwrite: bool = False,
                         progress: bool = True) -> dict:
    """Write a procedural scene in the SPIn-NeRF layout and return a summary dict.

    ``out_dir`` gets ``images/`` (full resolution), ``images_N/`` for N in
    ``downscales`` with ``label/`` (train masks) and ``test_label/`` (test masks),
    ``poses_bounds.npy`` and ``innout_generator.json``. Sorted by name the first
    ``n_test`` images are the test views, rendered without the object (ground truth);
    the remaining ``n_train`` are the training views with the object. Everything is
    written to a temporary sibling folder that is renamed at the end. An existing
    non-empty ``out_dir`` is an error unless ``overwrite``.

    ``focal``: pixels at full resolution (default: the scene's seeded 55-65 degree
    horizontal field of view). ``supersample``: rays per pixel along each axis.
    ``workers``: rendering threads (default: up to 2). ``progress``: a tqdm bar on stderr.
    Same arguments give byte-identical files.
    """
    t_start = time.perf_counter()
    width, height, n_train, n_test = int(width), int(height), int(n_train), int(n_test)
    downscales = tuple(int(n) for n in downscales)
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if width < 1 or height < 1:
        raise ValueError(f"bad image size {width}x{height}")
    if len(set(downscales)) != len(downscales) or any(n < 1 for n in downscales):
        raise ValueError(f"downscales must be distinct positive integers, got {downscales}")
    for n in downscales:
        if width % n or height % n:
            raise ValueError(f"width and height ({width}x{height}) must be divisible by every downscale, not by {n}")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: exists and is not empty (pass overwrite=True to replace it)")

    scene = ProceduralScene(variant, seed)
    focal = float(focal) if focal is not None else scene.default_focal(width)
    cams = scene.cameras(n_test, width, height, "test", focal) + scene.cameras(n_train, width, height, "train", focal)
    n_all = n_test + n_train
    digits = max(3, len(str(n_all - 1)))
    names = [f"img_{i:0{digits}d}.png" for i in range(n_all)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "images").mkdir(parents=True)
        for n in downscales:
            (tmp / f"images_{n}" / "label").mkdir(parents=True)
            (tmp / f"images_{n}" / "test_label").mkdir(parents=True)
        scene._ensure_textures()

        def one(i: int):
            is_test = i < n_test
            out = scene.render(cams[i], with_object=not is_test, supersample=supersample)
            rgb, cov = out["rgb"], out["object_coverage"]
            save_png(tmp / "images" / names[i], to_u8(rgb), _PNG_COMPRESS_LEVEL)
            for n in downscales:
                save_png(tmp / f"images_{n}" / names[i], to_u8(_block_mean(rgb, n)), _PNG_COMPRESS_LEVEL)
                mask = (_block_mean(cov, n) >= 0.5).astype(np.uint8)
                save_png(tmp / f"images_{n}" / ("test_label" if is_test else "label") / names[i], mask, _PNG_COMPRESS_LEVEL)
            z = out["depth"][np.isfinite(out["depth"])]
            near, far = np.percentile(z, [1, 99])
            return camera_to_llff_row(cams[i], 0.9 * float(near), 1.1 * float(far)), float(cov.mean())

        n_workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        results = [None] * n_all
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n_all, desc=f"generate {variant} seed {seed}", unit="view", file=sys.stderr)
        with ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
            for i, res in zip(range(n_all), pool.map(one, range(n_all))):
                results[i] = res
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        rows = np.stack([r[0] for r in results]).astype(np.float64)
        np.save(tmp / "poses_bounds.npy", rows)
        cover = np.array([r[1] for r in results[n_test:]])
        k = cams[0].intrinsics
        meta = {
            "generator": "innout.procedural",
            "generator_version": GENERATOR_VERSION,
            "variant": variant,
            "seed": int(seed),
            "n_train": n_train,
            "n_test": n_test,
            "width": width,
            "height": height,
            "downscales": list(downscales),
            "supersample": int(supersample),
            "focal": focal,
            "intrinsics": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": k.width, "height": k.height},
            "hfov_deg": scene.hfov_deg,
            "object_kind": scene.object_kind,
            "names": {"test": names[:n_test], "train": names[n_test:]},
        }
        (tmp / "innout_generator.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            if out_dir.is_dir():
                shutil.rmtree(out_dir)
            else:
                out_dir.unlink()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {key: meta[key] for key in ("variant", "seed", "n_train", "n_test", "width", "height", "downscales",
                                          "focal", "intrinsics", "object_kind", "hfov_deg")}
    summary.update({
        "out_dir": str(out_dir),
        "object_coverage_mean": float(cover.mean()),
        "object_coverage_min": float(cover.min()),
        "object_coverage_max": float(cover.max()),
        "seconds": round(time.perf_counter() - t_start, 2),
    })
    return summary


def generate_main(argv: list[str] | None = None) -> int:
    """``innout generate``: write a procedural SPIn-NeRF-layout scene."""
    ap = argparse.ArgumentParser(prog="innout generate",
                                 description="Write a procedural scene with ground truth in the SPIn-NeRF layout.")
    ap.add_argument("out_dir", help="scene folder to create")
    ap.add_argument("--variant", choices=VARIANTS, default="forward")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=40)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--downscales", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--focal", type=float, default=None, help="focal length in pixels at full resolution")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing non-empty out_dir")
    args = ap.parse_args(argv)
    try:
        summary = write_spinnerf_scene(args.out_dir, variant=args.variant, seed=args.seed, n_train=args.n_train,
                                       n_test=args.n_test, width=args.width, height=args.height,
                                       downscales=tuple(args.downscales), focal=args.focal, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
        print(f"innout generate: {err}", file=sys.stderr)
        return 2
    print(f"{summary['out_dir']}: {summary['n_test']} test + {summary['n_train']} train views, "
          f"{summary['width']}x{summary['height']}, object {summary['object_kind']} covering "
          f"{100 * summary['object_coverage_mean']:.1f}% of train views, {summary['seconds']} s")
    return 0
