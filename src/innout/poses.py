# Over 600 lines: the COLMAP run is one sequence (features, matching with its fallback, mapping, checks, writing): split, its steps would only pass their state around.
"""The ``poses`` stage: camera intrinsics and extrinsics from COLMAP (pycolmap).

Input is a canonical scene (``docs/scene-format.md``); output is a folder ::

    out_dir/
      sparse/0/          COLMAP binary model (cameras.bin, images.bin, points3D.bin, ...)
      transforms.json    the scene's transforms.json with COLMAP poses and intrinsics
      summary.json       registration counts, reprojection error, time, pose accuracy
      cameras.png        camera centres from above: COLMAP's (aligned) beside the reference

What is run, and why:

* SIFT runs on the *source* images (``innout_source_image``, full resolution; COLMAP
  downsamples them to ``max_image_size`` for extraction and reports keypoints at source
  resolution). Working-resolution images are often too small for reliable SfM.
* Training views contain the object that will be removed, so features on it must not
  anchor the poses: each train view gets a COLMAP mask (0 = no features) made from its
  object mask, upsampled with nearest-neighbour to source resolution and dilated by
  about 1 % of the image diagonal. Test views (photographed without the object) are
  not masked.
* All views, train and test, are reconstructed together (what SPIn-NeRF did), so test
  cameras come out in the same frame as the train cameras.
* One camera shared by all images (``CameraMode.SINGLE``; source images of different
  sizes are an InputError). Model ``PINHOLE`` by default, the project's choice
  (``innout.config.PosesConfig.camera_model``): the benchmark inputs (SPIn-NeRF/LLFF,
  procedural) are undistorted and the later stages use pinhole cameras. For raw photos
  ``SIMPLE_RADIAL`` (f, cx, cy, k1) is the safer fit (one focal and one radial term is
  what COLMAP estimates reliably from a few dozen small images; ``OPENCV``'s separate
  fx/fy and tangential terms are poorly constrained there); its ``k1`` (and ``k2``,
  ``p1``, ``p2`` for ``RADIAL``/``OPENCV``) go to transforms.json for nerfstudio.
  Choices: ``SIMPLE_PINHOLE``, ``PINHOLE``, ``SIMPLE_RADIAL``, ``RADIAL``, ``OPENCV``.
  The principal point is not refined (COLMAP's default), so it stays at the centre.
* Matching: ``auto`` (default) runs sequential matching (each image against its
  ``sequential_overlap`` successors by name plus the ones 2, 4, 8, ... further on, so
  SPIn-NeRF's 40 test views also meet the 60 train views after them) and, when that
  registers too few train views, adds exhaustive matching (pairs already matched are
  skipped) and maps again. ``sequential`` and ``exhaustive`` force one. On 2 CPU cores
  exhaustive matching of 100 views costs ~3x the CPU time of the whole sequential run.
* Speed settings (measured on the 100-view 640x480 procedural scene): 2048 SIFT features
  per image; SIFT without its upsampled first octave for images given to it at >= 640 px
  (``_SIFT_UPSAMPLE_BELOW_PX``); global bundle adjustment every 30 % of model growth
  instead of 10 % (``_BA_GLOBAL_GROWTH``). Rotation errors stay below 0.05 degrees there.
* The largest reconstruction (most registered images) is kept; frames it does not
  contain are dropped from transforms.json and listed in the summary.
* Determinism: ``pycolmap.set_random_seed(seed)`` plus the mapper's, triangulator's and
  RANSAC's ``random_seed``, and (``deterministic=True``, ``poses.deterministic``, the
  default) every COLMAP phase on one thread: two runs give bit-identical poses. With more
  threads the order of multi-threaded work makes them differ slightly (fox: up to 5e-4 in
  c2w entries; the demo: 7e-4 with single-threaded mapping, 1.4e-4 with single-threaded
  matching and mapping: extraction and matching both vary), and every later stage with
  them: two fresh demo runs gave box PSNRs 0.3 dB apart after refinement and 0.5 dB apart
  before. One thread costs the demo's 60 views 59-65 s instead of 45-49 s (SIFT 23 s
  instead of 11); ``deterministic=False`` trades reproducibility for speed on large scenes.
* Progress: our own log lines per phase, a heartbeat every 30 s during extraction and
  matching, a line every 10 registered images while mapping; COLMAP's own (glog)
  output is raised to warnings unless ``log`` is at DEBUG level.

Paths in the output transforms.json (``file_path``, ``mask_path``,
``innout_object_mask`` and the ``*_filenames`` lists) are absolute: the file lives in
``out_dir``, not next to the images. ``innout.scene_dir`` records the scene it was made
from, ``innout.poses_source`` is ``"colmap"``. World orientation and scale are COLMAP's
(nerfstudio's dataparser re-orients and re-centres). Each frame's ``innout_bounds``
([near, far]) is recomputed in COLMAP's units from the depths of the points it observes
(0.1 / 99.9 percentiles, as LLFF's imgs2poses); the scene's values were in the old units.
"""

from __future__ import annotations

# zlib must be loaded before pycolmap: pycolmap 4.2 wheels carry their own zlib, and when
# the system libz is loaded after them every PNG write (PIL, OpenCV) in the process dies
# with "double free or corruption". Importing this module first (it imports pycolmap
# only inside estimate_poses) keeps the order right.
import zlib  # noqa: F401  (isort: skip)

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from PIL import Image

from innout.cameras import Intrinsics, opencv_w2c_to_opengl_c2w, rotation_angle_deg, umeyama_similarity
from innout.errors import InputError, StageError, read_json
from innout.stage import replace_dir
from innout.viz import pose_plot

STAGE = "poses"
MATCHERS = ("auto", "sequential", "exhaustive")
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
# Per-frame keys that describe the old camera; COLMAP's shared camera replaces them.
_FRAME_CAMERA_KEYS = (
    "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_model",
)
# SIFT's first octave: COLMAP's default (-1) first doubles the image, which triples the
# extraction time of the 640x480 demo scene for nothing the stage needs; images whose
# longest side given to SIFT is below this many pixels keep the doubling (they need the
# extra small-scale features: fox at 270x480 has ~1200 per image with it).
_SIFT_UPSAMPLE_BELOW_PX = 640
# Global bundle adjustment once the model has grown by this factor (COLMAP: 1.1); cuts the
# mapping time by ~30 % on the demo scene. A final global BA runs regardless.
_BA_GLOBAL_GROWTH = 1.3
_PATH_KEYS = ("file_path", "mask_path", "innout_object_mask", "depth_file_path")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- comparison


def compare_poses(est: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy of estimated camera-to-world poses against reference ones.

    Both are ``{name: 4x4 c2w}`` in the same axis convention (OpenGL). The estimated
    camera centres are aligned onto the reference centres by a similarity (Umeyama);
    for every view in both sets:

    * rotation error: angle between the reference rotation and the aligned estimated
      rotation ``R_align @ R_est`` (degrees);
    * relative translation error: ``|aligned centre - reference centre|`` divided by the
      mean distance of the reference centres from their centroid.

    ``aligned_centres``: the estimated centres after the alignment, by view.

    Returns ``rotation_error_deg_mean/max``, ``translation_error_rel_mean/max``,
    ``num_compared``, ``scale`` (of the alignment) and ``per_view``
    (``{name: [rotation_deg, translation_rel]}``). Needs three views in common whose
    reference centres are not all the same point; raises ``ValueError`` otherwise.
    """
    names = sorted(set(est) & set(ref))
    if len(names) < 3:
        raise ValueError(f"need at least 3 views in common to compare poses, got {len(names)}")
    est_m = np.stack([np.asarray(est[n], dtype=float) for n in names])
    ref_m = np.stack([np.asarray(ref[n], dtype=float) for n in names])
    est_c, ref_c = est_m[:, :3, 3], ref_m[:, :3, 3]
    spread = float(np.linalg.norm(ref_c - ref_c.mean(0), axis=1).mean())
    if not spread > 0 or not np.isfinite(spread):
        raise ValueError("reference camera centres all coincide; cannot align")
    if not np.linalg.norm(est_c - est_c.mean(0), axis=1).mean() > 0:
        raise ValueError("estimated camera centres all coincide; cannot align")
    scale, rot, trans = umeyama_similarity(est_c, ref_c)
    aligned_c = scale * est_c @ rot.T + trans
    t_err = np.linalg.norm(aligned_c - ref_c, axis=1) / spread
    r_err = np.array([rotation_angle_deg(r, rot @ e) for r, e in zip(ref_m[:, :3, :3], est_m[:, :3, :3])])
    return {
        "num_compared": len(names),
        "rotation_error_deg_mean": float(r_err.mean()),
        "rotation_error_deg_max": float(r_err.max()),
        "translation_error_rel_mean": float(t_err.mean()),
        "translation_error_rel_max": float(t_err.max()),
        "scale": float(scale),
        "per_view": {n: [float(r), float(t)] for n, r, t in zip(names, r_err, t_err)},
        "aligned_centres": {n: c.tolist() for n, c in zip(names, aligned_c)},
    }


# --------------------------------------------------------------------------- helpers


def _pose_caption(summary: dict) -> str:
    text = (f"registered {summary['registered']}/{summary['total']} train, {summary['registered_test']}/{summary['total_test']} "
            f"test views; reprojection error {summary['mean_reprojection_error_px']:.2f} px")
    if summary.get("rotation_error_deg_mean") is not None:
        text += (f"\nvs reference poses: rotation error {summary['rotation_error_deg_mean']:.3f} deg mean "
                 f"({summary['rotation_error_deg_max']:.3f} max), translation {100 * summary['translation_error_rel_mean']:.2f} % "
                 "of the camera spread")
    return text


def _read_scene(scene_dir: Path) -> dict:
    path = scene_dir / "transforms.json"
    if not path.is_file():
        raise InputError(path, "missing; run the scene stage first")
    meta = read_json(path)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(path, "has no frames")
    return meta


def _resolve(scene_dir: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else (scene_dir / q)


def _frame_name(frame: dict) -> str:
    return Path(frame["file_path"]).stem


def _working_size(scene_dir: Path, meta: dict, frame: dict) -> tuple[int, int]:
    for src in (frame, meta):
        if "w" in src and "h" in src:
            return int(src["w"]), int(src["h"])
    with Image.open(_resolve(scene_dir, frame["file_path"])) as im:
        return im.size


def _source_size(frame: dict, source: Path) -> tuple[int, int]:
    if "innout_source_size" in frame:
        w, h = frame["innout_source_size"]
        return int(w), int(h)
    with Image.open(source) as im:
        return im.size


def _colmap_mask(object_mask_path: Path, size: tuple[int, int], dilate_px: int) -> Image.Image:
    """COLMAP feature mask at ``size`` (w, h): 0 on the (dilated) object, 255 elsewhere."""

    with Image.open(object_mask_path) as im:
        obj = np.asarray(im.convert("L")) > 127
    obj = np.asarray(Image.fromarray(obj.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    if dilate_px > 0 and obj.any():
        k = 2 * dilate_px + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        obj = cv2.dilate(obj.astype(np.uint8), kernel) > 0
    return Image.fromarray(np.where(obj, 0, 255).astype(np.uint8))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _camera_entries(cam: Any, work_w: int, work_h: int) -> dict[str, Any]:
    """transforms.json camera keys for a COLMAP camera, scaled to the working size."""
    model = cam.model_name if hasattr(cam, "model_name") else str(cam.model).split(".")[-1]
    p = [float(x) for x in cam.params]
    k1 = k2 = p1 = p2 = 0.0
    if model == "SIMPLE_PINHOLE":
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    elif model == "PINHOLE":
        fx, fy, cx, cy = p[:4]
    elif model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, k1 = p[1], p[2], p[3]
    elif model == "RADIAL":
        fx = fy = p[0]
        cx, cy, k1, k2 = p[1], p[2], p[3], p[4]
    elif model == "OPENCV":
        fx, fy, cx, cy, k1, k2, p1, p2 = p[:8]
    else:  # pragma: no cover - only the models above are ever requested
        raise StageError(STAGE, f"unsupported COLMAP camera model {model}")
    intr = Intrinsics(fx, fy, cx, cy, int(cam.width), int(cam.height)).scaled_to(work_w, work_h)
    return {
        "camera_model": "OPENCV",
        "w": int(work_w), "h": int(work_h),
        "fl_x": intr.fx, "fl_y": intr.fy, "cx": intr.cx, "cy": intr.cy,
        "k1": k1, "k2": k2, "p1": p1, "p2": p2,
    }


def _depth_bounds(rec: Any, image: Any) -> list[float] | None:
    """[near, far] of the image's triangulated points (0.1 / 99.9 percentiles, as LLFF's imgs2poses)."""
    ids = [p.point3D_id for p in image.get_observation_points2D()]
    if len(ids) < 2:
        return None
    xyz = np.array([rec.points3D[i].xyz for i in ids])
    m = image.cam_from_world().matrix()
    z = xyz @ m[2, :3] + m[2, 3]
    z = z[z > 0]
    if len(z) < 2:
        return None
    return [float(np.percentile(z, 0.1)), float(np.percentile(z, 99.9))]


def _keypoint_counts(pycolmap: Any, database: Path) -> dict[str, int]:
    db = pycolmap.Database.open(str(database))
    try:
        return {im.name: int(db.num_keypoints_for_image(im.image_id)) for im in db.read_all_images()}
    finally:
        db.close()


class _Heartbeat:
    """Logs ``what`` every ``every`` seconds while a long COLMAP call runs (it reports nothing)."""

    def __init__(self, log: logging.Logger, what: str, every: float = 30.0):
        self.log, self.what, self.every = log, what, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.every):
            self.log.info("poses: %s ... %.0f s", self.what, time.monotonic() - t0)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _PhaseClock:
    """``with clock("name"):`` adds the block's wall and CPU seconds to the two dicts."""

    def __init__(self, wall: dict[str, float], cpu: dict[str, float]):
        self.wall, self.cpu = wall, cpu

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t, c = time.monotonic(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = round(self.wall.get(name, 0.0) + time.monotonic() - t, 2)
            self.cpu[name] = round(self.cpu.get(name, 0.0) + time.process_time() - c, 2)


def _seed_options(obj: Any, seed: int) -> None:
    if hasattr(obj, "random_seed"):
        obj.random_seed = seed


# --------------------------------------------------------------------------- the stage


def estimate_poses(
    scene_dir: Path,
    out_dir: Path,
    *,
    max_num_features: int = 2048,
    max_image_size: int = 1600,
    matcher: str = "auto",
    min_registered_fraction: float = 0.95,
    num_threads: int = -1,
    seed: int = 0,
    sequential_overlap: int = 10,
    camera_model: str = "PINHOLE",
    deterministic: bool = True,
    log: logging.Logger | None = None,
) -> dict:
    """Run COLMAP on a canonical scene and write ``out_dir`` (see the module docstring).

    Returns the summary (also written to ``out_dir/summary.json``). Raises
    :class:`InputError` for a broken scene and :class:`StageError` when fewer than
    ``min_registered_fraction`` of the train views register; ``out_dir`` is then left
    untouched and nothing partial is written.
    """
    import pycolmap

    log = log or _log
    # COLMAP's multi-threaded extraction, matching and mapping finish work in a varying order
    # (module doc): one thread is what makes same seed, same poses
    colmap_threads = 1 if deterministic else int(num_threads)
    t0, cpu0 = time.monotonic(), time.process_time()
    phase_seconds: dict[str, float] = {}  # wall clock per COLMAP phase
    phase_cpu_seconds: dict[str, float] = {}  # CPU time (all threads) per phase
    scene_dir, out_dir = Path(scene_dir).resolve(), Path(out_dir).absolute()
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {CAMERA_MODELS}, got {camera_model!r}")
    meta = _read_scene(scene_dir)
    tpath = scene_dir / "transforms.json"

    # ---- gather frames
    frames: list[dict] = meta["frames"]
    by_name: dict[str, dict] = {}
    image_name: dict[str, str] = {}  # frame name -> COLMAP image name
    sources: dict[str, Path] = {}
    for i, fr in enumerate(frames):
        if "file_path" not in fr:
            raise InputError(tpath, f"frame {i} has no file_path")
        name = _frame_name(fr)
        if name in by_name:
            raise InputError(tpath, f"two frames are named {name!r}")
        src = fr.get("innout_source_image") or str(_resolve(scene_dir, fr["file_path"]))
        src = _resolve(scene_dir, src)
        if not src.is_file():
            raise InputError(src, f"source image of frame {name!r} not found")
        by_name[name] = fr
        sources[name] = src
        image_name[name] = name + src.suffix.lower()
    split = {n: fr.get("innout_split", "train") for n, fr in by_name.items()}
    train = [n for n in by_name if split[n] == "train"]
    test = [n for n in by_name if split[n] != "train"]
    if not train:
        raise InputError(tpath, "has no train frames")
    has_ref = bool(meta.get("innout", {}).get("has_poses", False))
    ref = {n: np.asarray(fr["transform_matrix"], float) for n, fr in by_name.items()
           if has_ref and "transform_matrix" in fr}
    src_sizes = {n: _source_size(by_name[n], sources[n]) for n in by_name}
    if len(set(src_sizes.values())) > 1:
        raise InputError(tpath, f"source images differ in size ({sorted(set(src_sizes.values()))}); "
                                "one shared camera needs one size")
    log.info("poses: %d train + %d test views from %s, matcher=%s, %d features, max size %d, COLMAP on %s",
             len(train), len(test), scene_dir, matcher, max_num_features, max_image_size,
             "1 thread (deterministic)" if deterministic else f"{colmap_threads} threads (not deterministic)")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; out_dir should look like any other folder
    old_level = pycolmap.logging.minloglevel
    if not log.isEnabledFor(logging.DEBUG):  # COLMAP's per-image chatter only when debugging
        pycolmap.logging.minloglevel = pycolmap.logging.WARNING
    try:
        work = tmp / "work"
        img_dir, mask_dir, map_dir = work / "images", work / "masks", work / "sparse"
        for d in (img_dir, mask_dir, map_dir):
            d.mkdir(parents=True)
        database = work / "database.db"

        # ---- images and feature masks
        diag = math.hypot(*next(iter(src_sizes.values())))
        dilate_px = max(2, int(round(0.01 * diag)))
        n_masked = 0
        for n in by_name:
            _link_or_copy(sources[n], img_dir / image_name[n])
            # COLMAP 4 skips an image whose mask file is missing (MASK_ERROR), so every
            # image gets one; only train views (which show the object) mask anything.
            om = by_name[n].get("innout_object_mask")
            if split[n] == "train" and om:
                om_path = _resolve(scene_dir, om)
                if not om_path.is_file():
                    raise InputError(om_path, f"object mask of frame {n!r} not found")
                mask = _colmap_mask(om_path, src_sizes[n], dilate_px)
                n_masked += 1
            else:
                mask = Image.new("L", src_sizes[n], 255)
            mask.save(mask_dir / f"{image_name[n]}.png")
        log.info("poses: %d feature masks written (object dilated by %d px)", n_masked, dilate_px)

        pycolmap.set_random_seed(seed)
        # ---- features
        clock = _PhaseClock(phase_seconds, phase_cpu_seconds)
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = camera_model
        reader.mask_path = str(mask_dir)
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.sift.max_num_features = int(max_num_features)
        sift_side = min(max(src_sizes[train[0]]), max_image_size if max_image_size > 0 else 10**9)
        first_octave = -1 if sift_side < _SIFT_UPSAMPLE_BELOW_PX else 0
        extraction.sift.first_octave = first_octave
        extraction.max_image_size = int(max_image_size)
        extraction.num_threads = colmap_threads
        extraction.use_gpu = False
        names_sorted = sorted(image_name.values())
        with clock("features"), _Heartbeat(log, f"extracting features from {len(names_sorted)} images"):
            pycolmap.extract_features(
                database, img_dir, image_names=names_sorted, camera_mode=pycolmap.CameraMode.SINGLE,
                reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu,
            )
        n_keypoints = _keypoint_counts(pycolmap, database)
        for n in names_sorted:
            if n_keypoints.get(n, 0) == 0:
                log.warning("poses: no features in %s%s", n, "" if n in n_keypoints else " (COLMAP could not read it)")
        log.info("poses: features extracted from %d images in %.1f s (%.0f per image)", len(n_keypoints),
                 phase_seconds["features"], np.mean(list(n_keypoints.values())) if n_keypoints else 0)

        # ---- matching and incremental mapping
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = colmap_threads
        matching.use_gpu = False
        verification = pycolmap.TwoViewGeometryOptions()
        _seed_options(verification.ransac, seed)

        def match(kind: str) -> None:
            n_img = len(names_sorted)
            what = f"exhaustive matching of {n_img * (n_img - 1) // 2} pairs" if kind == "exhaustive" \
                else f"sequential matching (overlap {sequential_overlap})"
            t = time.monotonic()
            with clock("matching"), _Heartbeat(log, what):
                if kind == "exhaustive":  # pairs already in the database are skipped
                    pycolmap.match_exhaustive(database, matching_options=matching,
                                              verification_options=verification, device=pycolmap.Device.cpu)
                else:
                    pairing = pycolmap.SequentialPairingOptions()
                    pairing.overlap = int(sequential_overlap)
                    pairing.num_threads = colmap_threads
                    pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                                              verification_options=verification, device=pycolmap.Device.cpu)
            log.info("poses: %s done in %.1f s", what, time.monotonic() - t)

        def reconstruct() -> dict:
            if map_dir.exists():
                shutil.rmtree(map_dir)
            map_dir.mkdir()
            pycolmap.set_random_seed(seed)
            options = pycolmap.IncrementalPipelineOptions()
            options.num_threads = colmap_threads
            _seed_options(options, seed)
            _seed_options(options.mapper, seed)
            _seed_options(options.triangulation, seed)
            options.mapper.num_threads = colmap_threads
            options.ba_global_frames_ratio = _BA_GLOBAL_GROWTH
            options.ba_global_points_ratio = _BA_GLOBAL_GROWTH
            options.extract_colors = True
            counter = {"n": 0}
            t = time.monotonic()

            def next_image() -> None:
                counter["n"] += 1
                if counter["n"] % 10 == 0:
                    log.info("poses: mapping, %d registrations so far (%.0f s)", counter["n"], time.monotonic() - t)

            with clock("mapping"):
                recs = pycolmap.incremental_mapping(database, img_dir, map_dir, options=options,
                                                    next_image_callback=next_image)
            log.info("poses: mapping done in %.1f s, %d model(s)", time.monotonic() - t, len(recs))
            return recs

        def n_train_registered(recs: dict) -> int:
            if not recs:
                return 0
            best = max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
            names = {im.name for im in best.images.values() if im.has_pose}
            return sum(image_name[n] in names for n in train)

        total, total_test = len(train), len(test)
        needed = min_registered_fraction * total
        first = "exhaustive" if matcher == "exhaustive" else "sequential"
        matchers_run = [first]
        match(first)
        recs = reconstruct()
        if matcher == "auto" and n_train_registered(recs) < needed:
            log.warning("poses: sequential matching registered %d of %d train views; adding exhaustive matching",
                        n_train_registered(recs), total)
            matchers_run.append("exhaustive")
            match("exhaustive")
            recs = reconstruct()
        if not recs:
            raise StageError(STAGE, f"COLMAP reconstructed nothing: 0 of {total} train views registered "
                                    f"(< {100 * min_registered_fraction:.0f} %); try more features / check overlap")
        rec = max(recs.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))

        # ---- poses of registered frames
        colmap_to_frame = {image_name[n]: n for n in by_name}
        est: dict[str, np.ndarray] = {}
        bounds: dict[str, list[float] | None] = {}
        for image in rec.images.values():
            if not image.has_pose or image.name not in colmap_to_frame:
                continue
            w2c = np.eye(4)
            w2c[:3, :] = image.cam_from_world().matrix()
            est[colmap_to_frame[image.name]] = opencv_w2c_to_opengl_c2w(w2c)
            bounds[colmap_to_frame[image.name]] = _depth_bounds(rec, image)
        registered = sum(n in est for n in train)
        registered_test = sum(n in est for n in test)
        unregistered = sorted(n for n in by_name if n not in est)
        if registered < min_registered_fraction * total:
            raise StageError(
                STAGE,
                f"only {registered} of {total} train views registered "
                f"(< {100 * min_registered_fraction:.0f} %) in the largest of {len(recs)} COLMAP model(s); "
                f"try more features / check overlap",
            )
        for n in unregistered:
            log.warning("poses: view %s (%s) did not register and is dropped", n, split[n])

        cams = list(rec.cameras.values())
        if len(cams) != 1:
            raise StageError(STAGE, f"expected one shared COLMAP camera, got {len(cams)}")
        cam = cams[0]
        src_w, src_h = next(iter(src_sizes.values()))
        if (int(cam.width), int(cam.height)) != (src_w, src_h):
            raise StageError(STAGE, f"COLMAP read the images as {cam.width}x{cam.height} but the scene says "
                                    f"{src_w}x{src_h} (EXIF rotation?)")

        # ---- outputs
        sparse0 = tmp / "sparse" / "0"
        sparse0.mkdir(parents=True)
        rec.write_binary(str(sparse0))
        work_w, work_h = _working_size(scene_dir, meta, by_name[train[0]])
        out_meta = _transforms_with_poses(meta, scene_dir, est, bounds, _camera_entries(cam, work_w, work_h))
        (tmp / "transforms.json").write_text(json.dumps(out_meta, indent=2))

        comparison = None
        if ref:
            try:
                comparison = compare_poses(est, ref)
            except ValueError as exc:
                log.warning("poses: cannot compare with the reference poses: %s", exc)
        summary = {
            "registered": registered,
            "total": total,
            "registered_test": registered_test,
            "total_test": total_test,
            "unregistered": unregistered,
            "num_models": len(recs),
            "num_points3D": int(rec.num_points3D()),
            "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
            "camera": {"model": camera_model, "width": int(cam.width), "height": int(cam.height),
                       "params": [float(x) for x in cam.params]},
            "matcher": matcher,
            "matchers_run": matchers_run,
            "max_num_features": int(max_num_features),
            "max_image_size": int(max_image_size),
            "sift_first_octave": first_octave,
            "seed": int(seed),
            "deterministic": bool(deterministic),
            "colmap_threads": colmap_threads,
            "rotation_error_deg_mean": comparison["rotation_error_deg_mean"] if comparison else None,
            "rotation_error_deg_max": comparison["rotation_error_deg_max"] if comparison else None,
            "translation_error_rel_mean": comparison["translation_error_rel_mean"] if comparison else None,
            "seconds": round(time.monotonic() - t0, 2),
            "phase_seconds": phase_seconds,
            "phase_cpu_seconds": phase_cpu_seconds,
            "cpu_seconds": round(time.process_time() - cpu0, 2),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        pose_plot(comparison["aligned_centres"] if comparison else {n: m[:3, 3].tolist() for n, m in est.items()},
                  {n: ref[n][:3, 3].tolist() for n in ref} if comparison else None, unregistered,
                  _pose_caption(summary), tmp / "cameras.png")
        shutil.rmtree(work)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pycolmap.logging.minloglevel = old_level
    log.info("poses: %d/%d train and %d/%d test views registered, %d points, reprojection error %.2f px%s, "
             "%.0f s", registered, total, registered_test, total_test, summary["num_points3D"],
             summary["mean_reprojection_error_px"],
             f", rotation error {summary['rotation_error_deg_mean']:.2f} deg mean" if comparison else "",
             summary["seconds"])
    return summary


def _transforms_with_poses(meta: dict, scene_dir: Path, est: dict[str, np.ndarray],
                           bounds: dict[str, list[float] | None], camera: dict) -> dict:
    """The scene's transforms.json with COLMAP cameras, absolute paths, registered frames only.

    ``innout_bounds`` ([near, far] depth) is recomputed from COLMAP's points: the scene's
    values are in the reference poses' units, not COLMAP's.
    """
    out = {k: v for k, v in meta.items() if k not in ("frames",) and k not in _FRAME_CAMERA_KEYS}
    # Keys nerfstudio derives from old intrinsics would contradict the new ones.
    for k in ("camera_angle_x", "camera_angle_y", "k3", "k4", "ply_file_path", "applied_transform"):
        out.pop(k, None)
    out.update(camera)
    frames = []
    kept_paths: set[str] = set()
    for fr in meta["frames"]:
        name = _frame_name(fr)
        if name not in est:
            continue
        fr = {k: v for k, v in fr.items() if k not in _FRAME_CAMERA_KEYS}
        for k in _PATH_KEYS:
            if k in fr:
                fr[k] = str(_resolve(scene_dir, fr[k]))
        fr["transform_matrix"] = est[name].tolist()
        fr.pop("innout_bounds", None)
        if bounds.get(name) is not None:
            fr["innout_bounds"] = bounds[name]
        kept_paths.add(fr["file_path"])
        frames.append(fr)
    out["frames"] = frames
    for key in ("train_filenames", "val_filenames", "test_filenames"):
        if key in out:
            paths = [str(_resolve(scene_dir, p)) for p in out[key]]
            out[key] = [p for p in paths if p in kept_paths]
    innout = dict(out.get("innout", {}))
    innout.update({"has_poses": True, "poses_source": "colmap", "scene_dir": str(scene_dir),
                   "colmap_model": "sparse/0", "paths": "absolute"})
    out["innout"] = innout
    return out
