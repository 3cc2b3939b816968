"""The primitives the procedural scenes are built of (room, box, cylinder, sphere): ray
intersection, normals and textured colour (:mod:`innout.procedural`)."""

from __future__ import annotations

import math

import numpy as np

_EPS = 1e-6


# --------------------------------------------------------------------------- primitives
#
# Rays are passed as structure-of-arrays: one origin ``eye`` (3,) shared by all rays (a
# pinhole camera) and direction components dx, dy, dz (arrays of one shape). ``intersect``
# returns the distance t to the first hit in front of the eye (inf: miss) and an ``aux``
# int8 array naming the face that was hit (None: one face); ``hit_surface`` takes the
# rays of one face and returns (texture index, texel uv (k, 2), normal (3,) or (k, 3)).


class _Prim:
    """A textured solid."""

    is_object = False
    textures: list

    def intersect(self, eye, dx, dy, dz):  # pragma: no cover - interface
        raise NotImplementedError

    def hit_surface(self, eye, t, dx, dy, dz, aux: int):  # pragma: no cover - interface
        raise NotImplementedError

    def corners(self) -> np.ndarray | None:
        """(8, 3) corners of a world box holding the solid; None: covers the whole view."""
        return None

    def contains(self, pts: np.ndarray) -> np.ndarray:
        return np.zeros(len(pts), bool)

    def area(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def texture_specs(self) -> list[tuple[int, int, float, str, float]]:  # pragma: no cover - interface
        """(h, w, texel, style, detail) of each texture, in index order."""
        raise NotImplementedError


_PLANE_AXES = {0: (1, 2), 1: (0, 2), 2: (0, 1)}  # in-plane (u, v) axes of a face normal to an axis
_UNIT_CUBE = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)


class _Room(_Prim):
    """The inside of an axis-aligned box. Face f = 2 * axis + (1: hi side); texture f."""

    def __init__(self, lo, hi, texel):
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)
        self.texel = texel
        self.textures = []

    def texture_specs(self):
        specs = []
        ext = self.hi - self.lo
        for f in range(6):
            a, b = _PLANE_AXES[f // 2]
            style = "floor" if f == 4 else "wall"
            detail = 0.4 if f == 5 else 1.0  # the ceiling is rarely seen
            specs.append((int(math.ceil(ext[b] / self.texel)) + 2, int(math.ceil(ext[a] / self.texel)) + 2,
                          self.texel, style, detail))
        return specs

    def intersect(self, eye, dx, dy, dz):
        t = face = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for k, d in enumerate((dx, dy, dz)):
                pos = d > 0
                # the eye is inside, so the distance to the wall ahead is positive (inf if d == 0)
                tk = np.abs(np.where(pos, d.dtype.type(self.hi[k] - eye[k]), d.dtype.type(self.lo[k] - eye[k])) / d)
                fk = pos.view(np.int8) + np.int8(2 * k)
                if t is None:
                    t, face = tk, fk
                else:
                    closer = tk < t
                    np.minimum(t, tk, out=t)
                    np.copyto(face, fk, where=closer)
        return t, face

    def hit_surface(self, eye, t, dx, dy, dz, aux):
        axis, hi_side = aux // 2, aux % 2
        a, b = _PLANE_AXES[axis]
        d = (dx, dy, dz)
        uv = np.empty((len(t), 2), np.float32)
        inv = 1.0 / self.texel
        uv[:, 0] = (eye[a] - self.lo[a] + t * d[a]) * inv
        uv[:, 1] = (self.hi[b] - eye[b] - t * d[b]) * inv
        normal = np.zeros(3)
        normal[axis] = -1.0 if hi_side else 1.0
        return aux, uv, normal

    def _face_areas(self):
        ext = self.hi - self.lo
        return np.array([ext[_PLANE_AXES[f // 2][0]] * ext[_PLANE_AXES[f // 2][1]] for f in range(6)])

    def area(self):
        return float(self._face_areas().sum())

    def sample(self, rng, n):
        areas = self._face_areas()
        face = rng.choice(6, n, p=areas / areas.sum())
        pts = self.lo + (self.hi - self.lo) * rng.random((n, 3))
        axis = face // 2
        pts[np.arange(n), axis] = np.where(face % 2 == 0, self.lo[axis], self.hi[axis])
        return pts


class _Box(_Prim):
    """An oriented box (rotated by ``yaw`` about z); one atlas texture with a cell per face.

    Face f = 2 * axis + (1: + side) in the box's own axes.
    """

    def __init__(self, center, half, yaw, texel, style, is_object=False):
        self.c = np.asarray(center, float)
        self.h = np.asarray(half, float)
        cy, sy = math.cos(yaw), math.sin(yaw)
        self.R = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])  # columns: local axes in world
        self.texel, self.style, self.is_object = texel, style, is_object
        self.cell = int(math.ceil(2 * self.h.max() / texel)) + 4
        self.textures = []

    def texture_specs(self):
        return [(2 * self.cell, 3 * self.cell, self.texel, self.style, 1.0)]

    def corners(self):
        return (_UNIT_CUBE * self.h) @ self.R.T + self.c

    def _local_dir(self, k, dx, dy, dz):
        if k == 2:
            return dz
        r = self.R[:, k]
        return dx.dtype.type(r[0]) * dx + dx.dtype.type(r[1]) * dy

    def intersect(self, eye, dx, dy, dz):
        dt = dx.dtype
        q = self.R.T @ (eye - self.c)
        t_near = np.full(dx.shape, -np.inf, dt)
        t_far = np.full(dx.shape, np.inf, dt)
        face = np.zeros(dx.shape, np.int8)
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(3):
                e = self._local_dir(k, dx, dy, dz)
                inv = 1.0 / e
                a = dt.type(-self.h[k] - q[k]) * inv
                b = dt.type(self.h[k] - q[k]) * inv
                lo, hi = np.fmin(a, b), np.fmax(a, b)
                later = lo > t_near
                np.copyto(t_near, lo, where=later)
                np.copyto(face, (e < 0).view(np.int8) + np.int8(2 * k), where=later)
                np.fmin(t_far, hi, out=t_far)
        hit = (t_near <= t_far) & (t_near > 0)
        return np.where(hit, t_near, dt.type(np.inf)), face

    def hit_surface(self, eye, t, dx, dy, dz, aux):
        axis, plus = aux // 2, aux % 2
        a, b = [i for i in range(3) if i != axis]
        q = self.R.T @ (eye - self.c)
        inv = 1.0 / self.texel
        uv = np.empty((len(t), 2), np.float32)
        uv[:, 0] = (q[a] + self.h[a] + t * self._local_dir(a, dx, dy, dz)) * inv + ((aux % 3) * self.cell + 2)
        uv[:, 1] = (self.h[b] - q[b] - t * self._local_dir(b, dx, dy, dz)) * inv + ((aux // 3) * self.cell + 2)
        return 0, uv, self.R[:, axis] * (1.0 if plus else -1.0)

    def _local(self, pts):
        return (pts - self.c) @ self.R

    def silhouette_area(self):
        """Mean area of the side view over azimuths (a rough projected size)."""
        return 2 * self.h[2] * 2 * (2 * self.h[0] + 2 * self.h[1]) / math.pi

    def contains(self, pts):
        return np.all(np.abs(self._local(pts)) < self.h - _EPS, 1)

    def _face_areas(self):
        x, y, z = 2 * self.h
        return np.array([y * z, y * z, x * z, x * z, x * y, x * y])

    def area(self):
        return float(self._face_areas().sum())

    def sample(self, rng, n):
        areas = self._face_areas()
        face = rng.choice(6, n, p=areas / areas.sum())
        q = rng.uniform(-1, 1, (n, 3)) * self.h
        axis = face // 2
        q[np.arange(n), axis] = np.where(face % 2 == 1, 1.0, -1.0) * self.h[axis]
        return q @ self.R.T + self.c


class _Cylinder(_Prim):
    """A vertical cylinder with caps (aux 0: side, 1: top, 2: bottom).

    Texture: the unrolled side in the top band, the two caps below it.
    """

    def __init__(self, center_xy, radius, z0, z1, texel, style, is_object=False):
        self.cxy = np.asarray(center_xy, float)
        self.r, self.z0, self.z1 = float(radius), float(z0), float(z1)
        self.texel, self.style, self.is_object = texel, style, is_object
        self.side_w = int(math.ceil(2 * math.pi * self.r / texel))
        self.side_h = int(math.ceil((self.z1 - self.z0) / texel)) + 2
        self.cap = int(math.ceil(2 * self.r / texel)) + 4
        self.textures = []

    def texture_specs(self):
        return [(self.side_h + self.cap, max(self.side_w, 2 * self.cap), self.texel, self.style, 1.0)]

    def corners(self):
        c = _UNIT_CUBE.copy()
        return np.stack([self.cxy[0] + c[:, 0] * self.r, self.cxy[1] + c[:, 1] * self.r,
                         np.where(c[:, 2] > 0, self.z1, self.z0)], 1)

    def intersect(self, eye, dx, dy, dz):
        dt = dx.dtype
        ox, oy = eye[0] - self.cxy[0], eye[1] - self.cxy[1]
        a = dx * dx + dy * dy
        b = dt.type(ox) * dx + dt.type(oy) * dy  # half of the usual b
        c = dt.type(ox * ox + oy * oy - self.r * self.r)
        disc = b * b - a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
            zs = dt.type(eye[2]) + ts * dz
            t = np.where((disc >= 0) & (ts > 0) & (zs >= self.z0) & (zs <= self.z1), ts, dt.type(np.inf))
            aux = np.zeros(dx.shape, np.int8)
            for code, zc in ((1, self.z1), (2, self.z0)):
                if (zc - eye[2]) == 0:
                    continue
                tc = dt.type(zc - eye[2]) / dz
                xc = dt.type(ox) + tc * dx
                yc = dt.type(oy) + tc * dy
                ok = (tc > 0) & (xc * xc + yc * yc <= dt.type(self.r * self.r)) & (tc < t)
                np.copyto(t, tc, where=ok)
                aux[ok] = code
        return t, aux

    def hit_surface(self, eye, t, dx, dy, dz, aux):
        inv = 1.0 / self.texel
        x = (eye[0] - self.cxy[0]) + t * dx
        y = (eye[1] - self.cxy[1]) + t * dy
        uv = np.empty((len(t), 2), np.float32)
        if aux == 0:
            z = eye[2] + t * dz
            uv[:, 0] = (np.arctan2(y, x) + math.pi) * (self.r * inv)
            uv[:, 1] = (self.z1 - z) * inv + 1
            normal = np.zeros((len(t), 3), np.float32)
            normal[:, 0] = x / self.r
            normal[:, 1] = y / self.r
            return 0, uv, normal
        off = 2 if aux == 1 else self.cap + 2
        uv[:, 0] = (x + self.r) * inv + off
        uv[:, 1] = (y + self.r) * inv + self.side_h + 2
        return 0, uv, np.array([0.0, 0.0, 1.0 if aux == 1 else -1.0])

    def contains(self, pts):
        x, y = pts[:, 0] - self.cxy[0], pts[:, 1] - self.cxy[1]
        return (x * x + y * y < (self.r - _EPS) ** 2) & (pts[:, 2] > self.z0 + _EPS) & (pts[:, 2] < self.z1 - _EPS)

    def area(self):
        return 2 * math.pi * self.r * (self.z1 - self.z0) + 2 * math.pi * self.r**2

    def silhouette_area(self):
        return 2 * self.r * (self.z1 - self.z0)

    def sample(self, rng, n):
        side_a = 2 * math.pi * self.r * (self.z1 - self.z0)
        cap_a = math.pi * self.r**2
        which = rng.choice(3, n, p=np.array([side_a, cap_a, cap_a]) / (side_a + 2 * cap_a))
        ang = rng.uniform(0, 2 * math.pi, n)
        rad = np.where(which == 0, self.r, self.r * np.sqrt(rng.random(n)))
        z = np.where(which == 0, rng.uniform(self.z0, self.z1, n), np.where(which == 1, self.z1, self.z0))
        return np.stack([self.cxy[0] + rad * np.cos(ang), self.cxy[1] + rad * np.sin(ang), z], 1)


class _Sphere(_Prim):
    """A sphere, textured by longitude/latitude."""

    def __init__(self, center, radius, texel, style, is_object=False):
        self.c, self.r = np.asarray(center, float), float(radius)
        self.texel, self.style, self.is_object = texel, style, is_object
        self.textures = []

    def texture_specs(self):
        return [(int(math.ceil(math.pi * self.r / self.texel)) + 2, int(math.ceil(2 * math.pi * self.r / self.texel)),
                 self.texel, self.style, 1.0)]

    def corners(self):
        return self.c + self.r * _UNIT_CUBE

    def intersect(self, eye, dx, dy, dz):
        dt = dx.dtype
        oc = eye - self.c
        b = dt.type(oc[0]) * dx + dt.type(oc[1]) * dy + dt.type(oc[2]) * dz
        disc = b * b - dt.type(oc @ oc - self.r * self.r)
        with np.errstate(invalid="ignore"):
            t = -b - np.sqrt(np.maximum(disc, 0))
        return np.where((disc >= 0) & (t > 0), t, dt.type(np.inf)), None

    def hit_surface(self, eye, t, dx, dy, dz, aux):
        oc = (eye - self.c) / self.r
        inv_r = 1.0 / self.r
        normal = np.empty((len(t), 3), np.float32)
        normal[:, 0] = oc[0] + t * dx * inv_r
        normal[:, 1] = oc[1] + t * dy * inv_r
        normal[:, 2] = oc[2] + t * dz * inv_r
        uv = np.empty((len(t), 2), np.float32)
        s = self.r / self.texel
        uv[:, 0] = (np.arctan2(normal[:, 1], normal[:, 0]) + math.pi) * s
        uv[:, 1] = np.arccos(np.clip(normal[:, 2], -1, 1)) * s + 1
        return 0, uv, normal

    def contains(self, pts):
        return np.linalg.norm(pts - self.c, axis=1) < self.r - _EPS

    def area(self):
        return 4 * math.pi * self.r**2

    def silhouette_area(self):
        return math.pi * self.r**2

    def sample(self, rng, n):
        v = rng.normal(size=(n, 3))
        return self.c + self.r * v / np.linalg.norm(v, axis=1, keepdims=True)


