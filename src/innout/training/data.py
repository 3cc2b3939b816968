"""Training views from procedural scenes: images with and without the object, true
depth, the object's coverage; and the seeds training may never use.

Every training scene is an :class:`innout.procedural.ProceduralScene` whose seed is NOT in
:data:`RESERVED_SEEDS`: the demo (forward seed 0, ``config/config.yaml``), every seed the
tests use (all below 100: 0, 2, 5, 6 today) and the held-out measurement scenes
(:data:`MEASUREMENT_SCENES`). :func:`training_scenes` refuses any overlap, so a model
trained here has never seen a scene it is evaluated on.

Scenes alternate between the ``forward`` and ``360`` variants; each gives
``views_per_scene`` cameras of its own layout (half from its train split, half from its
test split), rendered at the demo's working size (160x120: the demo renders 640x480 and
the scene import downsamples by 4) with ``supersample`` x ``supersample`` rays per pixel
(the demo's views average 8x8 rays per pixel; 4x4 already resolves the textures, whose
texels are ~5 to a pixel at this size, and costs a quarter).

Cost (2 cores, measured on a machine shared with other jobs): building a scene's textures
takes 1.3-2.2 s, one 160x120 view 0.13-0.15 s at supersample 4, and each view is rendered
twice (with and without the object). Scenes render in ``workers`` processes (spawned: the
parent may hold torch's thread pools, which a fork can deadlock). Threads scaled no further
than a few cores: on a 16-core H200 machine 16 threads rendered 1024 views in 74-79 s, no
faster per view than two cores (likely the GIL, held by the ray casting's Python between
numpy calls). Every scene is rendered from its own seed alone, so the arrays do not depend on the
pool.
"""

from __future__ import annotations

import logging
import time
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from innout.cameras import Camera, Intrinsics
from innout.images import to_u8  # views stored as the scene writer stores renders
from innout.procedural import VARIANTS, ProceduralScene

log = logging.getLogger("innout")

MEASUREMENT_SCENES = (("forward", 1000), ("360", 1001))
"""Held-out scenes for measuring the trained models (never trained on)."""

RESERVED_SEEDS = frozenset(range(100)) | frozenset(seed for _, seed in MEASUREMENT_SCENES)
"""Seeds training refuses: 0-99 (the demo's seed 0 and every seed the tests use, with
room for more) and the measurement scenes' seeds. A seed is reserved for both variants."""


@dataclass
class DataConfig:
    scenes: int = 32  # training scenes, alternating forward / 360
    views_per_scene: int = 16
    width: int = 160
    height: int = 120
    supersample: int = 4
    first_seed: int = 10_000  # scene i has seed first_seed + i
    workers: int = 2  # rendering threads


VIEWS_FORMAT = 2
"""Version of the arrays :class:`Views` saves (2: with the cameras); part of the cache's name."""


@dataclass
class Views:
    """Rendered training views, ``N`` of them, all ``H x W``."""

    rgb: np.ndarray  # (N, H, W, 3) uint8, with the object
    background: np.ndarray  # (N, H, W, 3) uint8, the same camera without the object
    depth: np.ndarray  # (N, H, W) float32 z-depth (camera -z axis) with the object
    background_depth: np.ndarray  # (N, H, W) float32 z-depth without the object
    coverage: np.ndarray  # (N, H, W) float32: fraction of the pixel's rays hitting the object
    scene: np.ndarray  # (N,) int32: index of the view's scene in training_scenes()
    c2w: np.ndarray  # (N, 4, 4) float64 camera-to-world (OpenGL axes, as innout.cameras.Camera)
    intrinsics: np.ndarray  # (N, 4) float64 fx, fy, cx, cy in pixels of this H x W

    def camera(self, i: int) -> Camera:
        fx, fy, cx, cy = (float(v) for v in self.intrinsics[i])
        h, w = self.rgb.shape[1:3]
        return Camera(np.asarray(self.c2w[i], np.float64), Intrinsics(fx, fy, cx, cy, w, h))

    def __len__(self) -> int:
        return len(self.rgb)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **{f.name: getattr(self, f.name) for f in fields(self)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Views":
        with np.load(path) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls)})

    def subset(self, index) -> "Views":
        return Views(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def check_disjoint(seeds) -> None:
    """Raise ``ValueError`` when a training seed is reserved for evaluation."""
    overlap = sorted(set(int(s) for s in seeds) & RESERVED_SEEDS)
    if overlap:
        shown = ", ".join(str(s) for s in overlap[:10]) + (" ..." if len(overlap) > 10 else "")
        raise ValueError(f"training scene seeds {shown} are reserved for evaluation (demo, tests, measurement scenes: "
                         f"innout.training.data.RESERVED_SEEDS); choose seeds outside 0-99, "
                         f"{', '.join(str(s) for _, s in MEASUREMENT_SCENES)}")


def training_scenes(cfg: DataConfig) -> list[tuple[str, int]]:
    """``(variant, seed)`` of every training scene, checked against :data:`RESERVED_SEEDS`."""
    if cfg.scenes < 1 or cfg.views_per_scene < 1:
        raise ValueError("data.scenes and data.views_per_scene must be >= 1")
    scenes = [(VARIANTS[i % len(VARIANTS)], int(cfg.first_seed) + i) for i in range(int(cfg.scenes))]
    check_disjoint(seed for _, seed in scenes)
    return scenes


def render_scene_views(variant: str, seed: int, cfg: DataConfig) -> tuple[Views, list]:
    """``cfg.views_per_scene`` views of one scene (any seed: the inspection tool renders
    the held-out measurement scenes with it), half from its train cameras, half from its
    test cameras. Returns the views and their :class:`innout.cameras.Camera` list (the
    same cameras as ``Views.camera(i)``)."""
    scene = ProceduralScene(variant, seed)
    cams = _cameras(scene, cfg)
    views = [_render_pair(scene, cam, cfg.supersample) for cam in cams]
    return Views(**{key: np.stack([v[key] for v in views]) for key in views[0]},
                 scene=np.zeros(len(views), np.int32)), cams


def _cameras(scene: ProceduralScene, cfg: DataConfig) -> list:
    n_train = (cfg.views_per_scene + 1) // 2
    return scene.cameras(n_train, cfg.width, cfg.height, "train") + \
        scene.cameras(cfg.views_per_scene - n_train, cfg.width, cfg.height, "test")


def _render_pair(scene: ProceduralScene, cam, supersample: int) -> dict:
    with_object = scene.render(cam, with_object=True, supersample=supersample)
    without = scene.render(cam, with_object=False, supersample=supersample)
    k = cam.intrinsics
    return {"rgb": to_u8(with_object["rgb"]), "background": to_u8(without["rgb"]), "depth": with_object["depth"],
            "background_depth": without["depth"], "coverage": with_object["object_coverage"],
            "c2w": np.asarray(cam.c2w, np.float64), "intrinsics": np.array([k.fx, k.fy, k.cx, k.cy], np.float64)}


def _scene_views(variant: str, seed: int, cfg: DataConfig) -> dict:
    scene = ProceduralScene(variant, seed)
    views = [_render_pair(scene, cam, cfg.supersample) for cam in _cameras(scene, cfg)]
    return {key: np.stack([v[key] for v in views]) for key in views[0]}


def _pool(workers: int) -> Executor:
    """``workers`` spawned processes (module doc); one worker renders in this process (a
    thread: no start-up cost, and the same progress loop)."""
    if workers <= 1:
        return ThreadPoolExecutor(max_workers=1)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def render_views(cfg: DataConfig) -> Views:
    """Render every training view (same config, same arrays), logging progress at least
    every 10 s."""
    scenes = training_scenes(cfg)
    start = last = time.perf_counter()
    parts = [None] * len(scenes)
    with _pool(min(int(cfg.workers), len(scenes))) as pool:
        futures = [pool.submit(_scene_views, variant, seed, cfg) for variant, seed in scenes]
        for i, future in enumerate(futures):
            while True:
                try:
                    parts[i] = future.result(timeout=5.0)
                    break
                except TimeoutError:
                    pass
                now = time.perf_counter()
                if now - last >= 8.0:
                    log.info("data: rendering scene %d/%d (%s seed %d), %.0f s", i + 1, len(scenes), *scenes[i], now - start)
                    last = now
            now = time.perf_counter()
            if now - last >= 8.0 or i + 1 == len(scenes):
                eta = (now - start) / (i + 1) * (len(scenes) - i - 1)
                log.info("data: %d/%d scenes rendered (%d views), %.0f s, eta %.0f s", i + 1, len(scenes),
                         (i + 1) * cfg.views_per_scene, now - start, eta)
                last = now
    views = Views(
        rgb=np.concatenate([p["rgb"] for p in parts]),
        background=np.concatenate([p["background"] for p in parts]),
        depth=np.concatenate([p["depth"] for p in parts]).astype(np.float32),
        background_depth=np.concatenate([p["background_depth"] for p in parts]).astype(np.float32),
        coverage=np.concatenate([p["coverage"] for p in parts]).astype(np.float32),
        scene=np.repeat(np.arange(len(scenes), dtype=np.int32), cfg.views_per_scene),
        c2w=np.concatenate([p["c2w"] for p in parts]),
        intrinsics=np.concatenate([p["intrinsics"] for p in parts]),
    )
    return views
