"""The ``scene`` stage: import any supported input into the canonical scene.

The canonical scene is described in ``docs/scene-format.md``; every later stage reads
only that. Supported inputs (``fmt``):

``spinnerf``
    The SPIn-NeRF benchmark layout: ``poses_bounds.npy`` (LLFF, one row of 17 numbers
    per image, sorted by image name, hwf at full resolution), ``images/`` (full
    resolution) and ``images_N/`` (1/N) with ``images_N/label/`` (train masks) and
    ``images_N/test_label/`` (test masks). Sorted by name, the first
    ``spinnerf_n_test`` images are object-free ground-truth test views, the rest train
    views (by default 40, or the ``n_test`` of ``innout_generator.json`` when a
    procedural scene carries one). The working images come from
    ``images_{downscale}/`` when it exists, else they are resized from ``images/``;
    masks come from the label folders of that ``N``, else of the closest ``N`` (by
    ratio; ties go to the finer one) and are resized. ``label/`` may hold masks for all images or only for the train views;
    without ``test_label/``, test masks must be in ``label/``.

``nerfstudio``
    A ``transforms.json`` (nerfstudio / instant-ngp style): global or per-frame
    ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` (``camera_angle_x``/``_y`` as a
    fallback for the focal lengths), optional ``k1 k2 k3 k4 p1 p2``; frames with
    ``file_path`` and ``transform_matrix`` (already OpenGL camera-to-world: copied as
    is). ``source`` may be the folder holding it or the file itself. Like nerfstudio, a
    ``<parent>_{downscale}/`` sibling of an image's folder is used as the working image
    when it exists. A frame with ``"innout_split": "test"`` is a ground-truth view
    (nerfstudio's own ``test_filenames`` are ordinary held-out views and are ignored).

``colmap``
    ``sparse/0/`` (or ``sparse/``) with a COLMAP model (``.bin`` or ``.txt``, read with
    ``pycolmap.Reconstruction``) + ``images/``. Registered images become train views;
    images the model does not contain are skipped with a warning. World-to-camera
    poses (OpenCV axes) are converted with :func:`innout.cameras.opencv_w2c_to_opengl_c2w`.
    Camera models PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV.

``images``
    ``images/`` only (+ masks): no poses. ``transforms.json`` then has
    ``innout.has_poses: false`` and no intrinsics; the ``poses`` stage fills them.

Object masks (255 = object to remove in the output) are found, in this order:

1. spinnerf: ``images_N/label/`` and ``images_N/test_label/`` (required).
2. nerfstudio, per frame: ``innout_object_mask`` (an object mask, as this module
   writes it: > half its maximum = object), else ``mask_path`` (a *nerfstudio* mask,
   0 = ignore the pixel: object = ``mask == 0``). When some frames name a mask, every
   frame must.
3. nerfstudio (when no frame names a mask), colmap and images: a ``masks/`` folder
   beside ``transforms.json`` / ``images/`` holding object masks (0/1 or 0/255; any
   values: > half the mask's maximum = object).
4. None of these: allowed except for spinnerf; every mask is empty and
   ``summary['warnings']`` says so.

Masks are matched to images by file stem (``a.png`` for ``a.jpg``; COLMAP-style
``a.jpg.png`` also matches); when no name matches and the counts are equal they are
paired in sorted order (with a warning). Masks whose size differs from their image's
are resized with nearest neighbour (warning when the source images of that folder
have another size); a mask whose aspect ratio differs by more than 5 % is an error.
Masks of train views are dilated (``mask_dilation_kernel`` square of ones,
``mask_dilation_iterations``; SPIn-NeRF's loader uses 5 and 5). Test masks are not
dilated: they are the evaluation region.

Images are read as stored (an EXIF orientation tag is not applied, so pixels stay in
the frame the poses were computed in) and re-encoded as PNG at the working
resolution: the source downscaled by ``downscale``, then, if wider than
``max_width``, resized to ``max_width`` keeping the aspect ratio.

The scene is written into a temporary sibling of ``out_dir`` and moved onto it at the
end; on any error nothing is left behind (a previous ``out_dir`` stays untouched).
Bad input raises :class:`innout.errors.InputError` naming the offending file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from innout.cameras import Camera
from innout.errors import InputError
from innout.images import save_png
from innout.object_box import BOX_FILE, ObjectBox, check_box_in_view, read_box
from innout.scene_formats import _plan_colmap, _plan_images, _plan_nerfstudio, _plan_spinnerf, detect_format
from innout.scene_sources import (
    _ASPECT_TOLERANCE,
    _DISTORTION_KEYS,
    FORMATS,
    POSES_MODES,
    SPINNERF_N_TEST,
    STAGE,
    _aspect_off,
    _binarize,
    _Cam,
    _exc_text,
    _image_header,
    _log,
    _n_levels,
    _Plan,
    _read_mask,
    _read_rgb,
    _resize,
    _scaled_size,
    _View,
    _Warnings,
)
from innout.stage import replace_dir
from innout.view_suggest import spread_of, suggest_views

# --------------------------------------------------------------------------- partial masks

MASK_MODES = ("all", "some")
_VIEW_LIST = re.compile(r"^[^,\s]+(,[^,\s]+)*$")


def parse_masks_option(masks: str | Sequence[str]) -> tuple[str, list[str]]:
    """(mode, listed view names) of the ``masks`` option: ``all``, ``some``, or view names
    (a list, or one comma-separated string) -> ``listed``."""
    if isinstance(masks, str):
        text = masks.strip()
        if text in MASK_MODES:
            return text, []
        if not _VIEW_LIST.match(text):
            raise ValueError(f"masks must be 'all', 'some' or comma-separated view names, got {masks!r}")
        names = text.split(",")
    else:
        names = [str(n).strip() for n in masks]
    if not names or any(not n for n in names):
        raise ValueError(f"masks: no view names in {masks!r}")
    return "listed", list(dict.fromkeys(names))


def _box_file(source: Path) -> Path:
    return (source.parent if source.is_file() else source) / BOX_FILE


def _assign_mask_roles(plan: _Plan, mode: str, listed: list[str], source: Path,
                       log: logging.Logger) -> ObjectBox | None:
    """Mark each train view's mask as annotation, reference or missing; read the box.

    Returns the box (None without ``object_box.json``). At least one annotated mask or a
    box is required."""
    train = [v for v in plan.views if v.split == "train"]
    if mode == "listed":
        by_name = {v.name: v for v in plan.views}
        for name in listed:
            view = by_name.get(name)
            if view is None or view.split != "train":
                what = "a test view" if view is not None else "no view of the scene"
                raise InputError(source, f"masks lists {name!r} as an annotated view, but it is {what} "
                                         f"(train views: {train[0].name} ... {train[-1].name})")
        for v in train:
            v.mask_role = "annotation" if v.name in listed else ("reference" if v.mask is not None else "missing")
    else:
        for v in train:
            v.mask_role = "annotation" if v.mask is not None else "missing"
    box_path = _box_file(source)
    box = None
    if box_path.is_file():
        box = read_box(box_path)
        if not plan.has_poses:
            raise InputError(box_path, f"a 3D box needs the scene's own camera poses, and this {plan.fmt} scene has "
                                       "none; give masks of some views instead")
        check_box_in_view(box_path, box, [_source_camera(v) for v in plan.views])
        log.info("%s: object box from %s", STAGE, box_path)
    if box is None and not any(v.mask_role == "annotation" for v in train):
        raise InputError(source, "masks: 'some' needs masks of at least one train view (named like its image) "
                                 f"or a 3D box in {BOX_FILE}; found neither")
    return box


def _source_camera(v: _View) -> Camera:
    return Camera(np.asarray(v.c2w, float), v.cam.intr)


def _write_partial_mask(tmp: Path, v: _View, obj: np.ndarray, frame: dict[str, Any]) -> None:
    """An annotated view's mask (``annotations/``) or a held-back one (``reference_masks/``),
    undilated: the masks stage carves with the object's true outline and dilates after."""
    frame["innout_mask"] = v.mask_role
    if v.mask_role == "annotation":
        if not obj.any():
            raise InputError(v.mask, "is empty: an annotated mask must mark the object (> half its maximum = object)")
        (tmp / "annotations").mkdir(exist_ok=True)
        save_png(tmp / "annotations" / f"{v.name}.png", obj, compress_level=3)
        frame["innout_annotation"] = f"annotations/{v.name}.png"
    elif v.mask_role == "reference":
        (tmp / "reference_masks").mkdir(exist_ok=True)
        save_png(tmp / "reference_masks" / f"{v.name}.png", obj, compress_level=3)
        frame["innout_reference_mask"] = f"reference_masks/{v.name}.png"


def _write_partial_masks_info(plan: _Plan, tmp: Path, summary: dict, mode: str, box: ObjectBox | None) -> dict:
    """transforms.json and summary.json of a scene whose masks the masks stage completes."""

    train = [v for v in plan.views if v.split == "train"]
    annotated = [v.name for v in train if v.mask_role == "annotation"]
    info: dict[str, Any] = {
        "mode": mode,
        "annotated_views": annotated,
        "views_without_masks": [v.name for v in train if v.mask_role != "annotation"],
        "reference_masks": any(v.mask_role == "reference" for v in train),
        "box": BOX_FILE if box is not None else None,
    }
    if box is not None:
        (tmp / BOX_FILE).write_text(json.dumps(box.to_json(), indent=2))
    if plan.has_poses:
        cams = [_source_camera(v) for v in train]
        names = [v.name for v in train]
        info["suggested_views"] = {str(k): suggest_views(cams, names, k).views for k in (1, 2, 3)}
        if len(annotated) > 1:
            info["annotated_spread_deg"] = round(spread_of(cams, names, annotated)[0], 2)
        info["suggested_spread_deg"] = round(suggest_views(cams, names, max(2, len(annotated))).spread_deg, 2)
    meta = json.loads((tmp / "transforms.json").read_text())
    meta["innout"]["masks"] = info
    (tmp / "transforms.json").write_text(json.dumps(meta, indent=2))
    summary["masks"] = info
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------- the stage


def import_scene(
    source: Path,
    fmt: str,
    out_dir: Path,
    *,
    downscale: int = 4,
    max_width: int | None = None,
    mask_dilation_iterations: int = 5,
    mask_dilation_kernel: int = 5,
    spinnerf_n_test: int | None = None,
    poses: str = "auto",
    masks: str | Sequence[str] = "all",
    log: logging.Logger | None = None,
) -> dict:
    """Convert ``source`` (format ``fmt`` in auto|spinnerf|nerfstudio|colmap|images) into the
    canonical scene at ``out_dir`` (docs/scene-format.md); returns the summary dict that is also
    written to ``out_dir/summary.json``.

    ``spinnerf_n_test``: how many of the first images (by name) are ground-truth test views;
    ``None`` means the ``n_test`` of ``innout_generator.json`` when the source has one (a
    scene written by :mod:`innout.procedural`), else 40 (the SPIn-NeRF benchmark).

    ``poses``: ``auto`` imports whatever poses the source has; ``provided`` requires them
    (:class:`InputError` otherwise); ``colmap`` also imports them (the ``poses`` stage
    replaces them and uses them as its reference). Bad arguments raise ``ValueError``,
    bad input :class:`InputError`; either way nothing is written.

    ``masks``: ``all`` (every view comes with its mask), ``some`` (masks of some train
    views, the annotated ones, and/or an ``object_box.json``; the ``masks`` stage makes
    the rest) or a list of train view names (only those views' masks are used as
    annotations; the scene's other train masks are kept as ``reference_masks/`` to score
    the ``masks`` stage). See "Partial masks" in docs/scene-format.md.
    """
    log = log or _log
    source = Path(os.path.abspath(source))  # absolute and normalised, symlinks kept
    out_dir = Path(os.path.abspath(out_dir))
    if fmt not in ("auto", *FORMATS):
        raise ValueError(f"fmt must be one of auto, {', '.join(FORMATS)}; got {fmt!r}")
    if poses not in POSES_MODES:
        raise ValueError(f"poses must be one of {', '.join(POSES_MODES)}; got {poses!r}")
    if int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    if max_width is not None and (int(max_width) != max_width or max_width < 1):
        raise ValueError(f"max_width must be None or an integer >= 1, got {max_width!r}")
    if mask_dilation_iterations < 0 or mask_dilation_kernel < 1:
        raise ValueError("mask_dilation_iterations must be >= 0 and mask_dilation_kernel >= 1")
    if spinnerf_n_test is not None and spinnerf_n_test < 0:
        raise ValueError(f"spinnerf_n_test must be >= 0, got {spinnerf_n_test}")
    downscale = int(downscale)
    mask_mode, listed = parse_masks_option(masks)

    warn = _Warnings(log)
    if not source.exists():
        raise InputError(source, "does not exist")
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt != "nerfstudio" and source.is_file():
        raise InputError(source, f"is a file; the {fmt} format is a folder")
    log.info("%s: importing %s (%s) at 1/%d", STAGE, source, fmt, downscale)

    partial = mask_mode == "some"
    if fmt == "spinnerf":
        n_test = _default_n_test(source, log) if spinnerf_n_test is None else int(spinnerf_n_test)
        plan = _plan_spinnerf(source, downscale, n_test, warn, log, partial)
    elif fmt == "nerfstudio":
        plan = _plan_nerfstudio(source, downscale, warn, partial)
    elif fmt == "colmap":
        plan = _plan_colmap(source, downscale, warn, partial)
    else:
        plan = _plan_images(source, downscale, warn, partial)
    if poses == "provided" and not plan.has_poses:
        raise InputError(source, f"poses='provided' but this {fmt} scene has no camera poses; "
                                 "use poses='auto' or 'colmap' to estimate them")
    if not any(v.split == "train" for v in plan.views):
        raise InputError(source, "has no train views")

    size, source_sizes = _check_sizes(plan, max_width, warn)
    _check_masks(plan, size, source_sizes, warn)
    box = None
    if mask_mode == "all":
        if not plan.has_masks:
            warn("no object masks found: every mask is empty, nothing will be removed")
    else:
        box = _assign_mask_roles(plan, mask_mode, listed, source, log)

    created = _missing_parents(out_dir)
    tmp: Path | None = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the scene should look like any other folder
        summary = _write_scene(plan, source, tmp, size, source_sizes, downscale=downscale, max_width=max_width,
                               iterations=mask_dilation_iterations, kernel=mask_dilation_kernel,
                               poses=poses, warn=warn)
        if mask_mode != "all":
            summary = _write_partial_masks_info(plan, tmp, summary, mask_mode, box)
        replace_dir(tmp, out_dir)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first; only if still empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    log.info("%s: %d train + %d test views at %dx%d -> %s", STAGE, summary["n_train"], summary["n_test"],
             summary["width"], summary["height"], out_dir)
    return summary


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _default_n_test(source: Path, log: logging.Logger) -> int:
    """40 (SPIn-NeRF), or the test count a procedural scene records about itself."""
    gen = source / "innout_generator.json"
    if not gen.is_file():
        return SPINNERF_N_TEST
    try:
        n_test = json.loads(gen.read_text())["n_test"]
        if int(n_test) != n_test or n_test < 0:
            raise ValueError(n_test)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(gen, f"has no valid n_test ({_exc_text(exc, gen)})") from exc
    log.info("%s: %d test views, as %s says", STAGE, n_test, gen.name)
    return int(n_test)


def _missing_parents(out_dir: Path) -> list[Path]:
    missing = []
    p = out_dir.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    return missing


def _check_sizes(plan: _Plan, max_width: int | None,
                 warn: Callable[[str], None]) -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
    """Working size (shared by all views) and every view's source size; reads headers only."""
    target: tuple[int, int] | None = None
    first: _View | None = None
    source_sizes: dict[str, tuple[int, int]] = {}
    rotated = []
    for v in plan.views:
        (sw, sh), orientation = _image_header(v.source)
        source_sizes[v.name] = (sw, sh)
        if orientation != 1:
            rotated.append(v.source.name)
        wsize = (sw, sh) if v.working == v.source else _image_header(v.working)[0]
        size = _scaled_size(wsize, v.factor)
        if max_width is not None and size[0] > max_width:
            size = (int(max_width), max(1, int(round(size[1] * max_width / size[0]))))
        if target is None:
            target, first = size, v
        elif size != target:
            raise InputError(v.working, f"is {wsize[0]}x{wsize[1]}, giving {size[0]}x{size[1]} working images, but "
                                        f"{first.working} gives {target[0]}x{target[1]}; all images must have one size")
    if rotated:
        warn(f"{len(rotated)} images carry an EXIF orientation tag ({rotated[0]}, ...); it is ignored: "
             "pixels are used as stored, the frame the poses refer to")
    assert target is not None
    return target, source_sizes


def _check_masks(plan: _Plan, size: tuple[int, int], source_sizes: dict[str, tuple[int, int]],
                 warn: Callable[[str], None]) -> None:
    """Mask headers: aspect ratio must match; sizes that differ from their images are reported.

    A SPIn-NeRF mask should have the size of the images of its ``images_N`` folder; any other
    mask the size of its source image, its working file or the working resolution.
    """
    off: dict[tuple[Path, tuple[int, int], tuple[int, int]], list[str]] = defaultdict(list)
    for v in plan.views:
        if v.mask is None:
            continue
        msize, _ = _image_header(v.mask)
        if v.mask_ref_size is not None:
            ref, accepted = v.mask_ref_size, {v.mask_ref_size}
        else:
            ref = source_sizes[v.name]
            accepted = {ref, size, _image_header(v.working)[0] if v.working != v.source else ref}
        if _aspect_off(msize, ref) > _ASPECT_TOLERANCE:
            raise InputError(v.mask, f"is {msize[0]}x{msize[1]} but its image is {ref[0]}x{ref[1]}: "
                                     "the aspect ratios differ (a mask of another image?)")
        if msize not in accepted:
            off[(v.mask.parent, msize, ref)].append(v.mask.name)
    for (folder, msize, ref), names in off.items():
        warn(f"{folder}: {len(names)} masks are {msize[0]}x{msize[1]} but their images are {ref[0]}x{ref[1]} "
             f"({names[0]}{', ...' if len(names) > 1 else ''}); resized with nearest neighbour")


def _camera_keys(cam: _Cam, size: tuple[int, int]) -> dict[str, Any]:
    k = cam.intr.scaled_to(*size)
    keys: dict[str, Any] = {"camera_model": cam.model, "fl_x": k.fx, "fl_y": k.fy, "cx": k.cx, "cy": k.cy}
    for name in _DISTORTION_KEYS:
        value = float(cam.dist.get(name, 0.0))
        if name in ("k1", "k2", "p1", "p2") or value != 0.0:
            keys[name] = value
    return keys


def _write_scene(plan: _Plan, source: Path, tmp: Path, size: tuple[int, int],
                 source_sizes: dict[str, tuple[int, int]], *, downscale: int, max_width: int | None,
                 iterations: int, kernel: int, poses: str, warn: _Warnings) -> dict:
    for sub in ("images", "masks", "nerf_masks"):
        (tmp / sub).mkdir()
    w, h = size
    kernel_ones = np.ones((kernel, kernel), np.uint8)
    multi_level: dict[Path, list[str]] = defaultdict(list)
    empty_train: list[str] = []
    fractions: dict[str, float] = {}
    frames: list[dict[str, Any]] = []

    camera_keys = {v.name: _camera_keys(v.cam, size) for v in plan.views} if plan.has_poses else {}
    shared = camera_keys[plan.views[0].name] if plan.has_poses else {}
    per_frame_cameras = any(keys != shared for keys in camera_keys.values())

    for v in tqdm(plan.views, desc="scene: images", unit="img", disable=None, leave=False):
        rgb = _resize(_read_rgb(v.working), size)
        save_png(tmp / "images" / f"{v.name}.png", rgb, compress_level=3)
        if v.mask is not None:
            raw = _read_mask(v.mask)
            if _n_levels(raw) > 2:
                multi_level[v.mask.parent].append(v.mask.name)
            obj = _binarize(raw, v.mask_semantics).astype(np.uint8) * 255
            obj = _resize(obj, size, nearest=True)
        else:
            obj = np.zeros((h, w), np.uint8)
        # Train masks are dilated (as SPIn-NeRF's loader does) so the object's fringe is
        # inpainted too. Test masks are NOT dilated: they are the evaluation region.
        if v.split == "train" and v.mask is not None and obj.all():
            # the geometry stage trains on unmasked pixels only: this view would give none
            raise InputError(v.mask, "the object mask covers the whole image: no pixel of this train view shows the scene")
        frame: dict[str, Any] = {"file_path": f"images/{v.name}.png"}
        if v.mask_role == "given":
            if v.split == "train" and iterations > 0 and kernel > 1:
                obj = cv2.dilate(obj, kernel_ones, iterations=iterations)
            if v.split == "train" and plan.has_masks and not obj.any():
                empty_train.append(v.name)
            save_png(tmp / "masks" / f"{v.name}.png", obj, compress_level=3)
            save_png(tmp / "nerf_masks" / f"{v.name}.png", 255 - obj, compress_level=3)
            fractions[v.name] = float(np.count_nonzero(obj)) / obj.size
            frame["mask_path"] = f"nerf_masks/{v.name}.png"
            frame["innout_object_mask"] = f"masks/{v.name}.png"
        else:
            _write_partial_mask(tmp, v, obj, frame)
        frame.update({
            "innout_split": v.split,
            "innout_source_image": str(v.source.absolute()),
            "innout_source_size": list(source_sizes[v.name]),
        })
        if plan.has_poses:
            frame["transform_matrix"] = np.asarray(v.c2w, dtype=float).tolist()
            if per_frame_cameras:
                frame.update(camera_keys[v.name])
        frame.update(v.extra)
        frames.append(frame)

    for folder, names in multi_level.items():
        warn(f"{folder}: {len(names)} masks have more than two grey levels ({names[0]}, ...); "
             "pixels above half the mask's maximum are the object")
    n_train = sum(v.split == "train" for v in plan.views)
    if plan.has_masks and empty_train and len(empty_train) == n_train:
        first = next(v for v in plan.views if v.split == "train")
        raise InputError(first.mask.parent if first.mask else source,
                         f"all {n_train} train masks are empty: there is no object to remove")
    if empty_train:
        warn(f"{len(empty_train)} train masks are empty ({empty_train[0]}, ...)")

    train = [f["file_path"] for f in frames if f["innout_split"] == "train"]
    test = [f["file_path"] for f in frames if f["innout_split"] == "test"]
    src_w, src_h = source_sizes[plan.views[0].name]
    scale_to_source = src_w / w
    meta: dict[str, Any] = {}
    if plan.has_poses:
        meta.update(shared)
    meta.update({"w": w, "h": h})
    meta["frames"] = frames
    meta["train_filenames"] = train
    meta["val_filenames"] = test or train
    meta["test_filenames"] = test
    meta["innout"] = {
        "format": plan.fmt, "source": str(source), "has_poses": plan.has_poses,
        "poses_source": "provided" if plan.has_poses else None, "poses_mode": poses,
        "scale_to_source": scale_to_source, "downscale": downscale, "max_width": max_width,
        "mask_dilation": {"kernel": kernel, "iterations": iterations},
    }
    (tmp / "transforms.json").write_text(json.dumps(meta, indent=2))

    train_names = [v.name for v in plan.views if v.split == "train"]
    test_names = [v.name for v in plan.views if v.split == "test"]
    summary: dict[str, Any] = {
        "format": plan.fmt,
        "source": str(source),
        "n_train": len(train_names),
        "n_test": len(test_names),
        "width": w,
        "height": h,
        "source_width": src_w,
        "source_height": src_h,
        "scale_to_source": scale_to_source,
        "downscale": downscale,
        "max_width": max_width,
        "has_poses": plan.has_poses,
        "poses_source": "provided" if plan.has_poses else None,
        "poses_mode": poses,
        "has_masks": plan.has_masks,
        "train_views": train_names,
        "test_views": test_names,
        "mask_fraction_mean": _mean_or_none([fractions[n] for n in train_names if n in fractions]),
        "mask_fraction_mean_test": _mean_or_none([fractions[n] for n in test_names if n in fractions]),
        "mask_fraction": fractions,
        "mask_dilation": {"kernel": kernel, "iterations": iterations},
        "per_frame_intrinsics": per_frame_cameras,
        "warnings": list(warn.items),
    }
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
