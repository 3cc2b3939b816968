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
import math
import os
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from innout.cameras import Camera, Intrinsics, llff_row_to_camera, opencv_w2c_to_opengl_c2w
from innout.errors import InputError
from innout.object_box import BOX_FILE, ObjectBox, check_box_in_view, read_box
from innout.stage import replace_dir
from innout.view_suggest import spread_of, suggest_views

STAGE = "scene"
FORMATS = ("spinnerf", "nerfstudio", "colmap", "images")
POSES_MODES = ("auto", "provided", "colmap")
SPINNERF_N_TEST = 40  # the benchmark's first 40 images (by name) are the ground-truth test views
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_ASPECT_TOLERANCE = 0.05  # masks whose aspect ratio is further off than this are errors
_EXIF_ORIENTATION = 0x0112

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- plan


@dataclass
class _Cam:
    """Pinhole intrinsics at the size the source's numbers refer to, plus distortion."""

    intr: Intrinsics
    model: str = "OPENCV"
    dist: dict[str, float] = field(default_factory=dict)


@dataclass
class _View:
    name: str  # output stem
    split: str  # "train" | "test"
    source: Path  # full-resolution image (what COLMAP would read)
    working: Path  # the file the working image is made from
    factor: int  # the working image is ``working`` downscaled by this
    keys: tuple[str, ...] = ()  # names a mask file of this view may carry (stems)
    mask: Path | None = None
    mask_semantics: str = "object"  # "object": > half max = object; "nerfstudio": 0 = object
    mask_ref_size: tuple[int, int] | None = None  # size of the images the mask was drawn on
    # what the mask is for: "given" (the view's mask), "annotation" (an annotated view of a
    # scene whose other masks the masks stage makes), "reference" (held back: only scores
    # the masks stage), "missing" (the masks stage makes it)
    mask_role: str = "given"
    c2w: np.ndarray | None = None
    cam: _Cam | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # per-frame keys for transforms.json


@dataclass
class _Plan:
    fmt: str
    views: list[_View]
    has_poses: bool
    has_masks: bool


class _Warnings:
    """Collects warnings for summary.json and logs each one."""

    def __init__(self, log: logging.Logger):
        self.items: list[str] = []
        self._log = log

    def __call__(self, message: str) -> None:
        message = " ".join(message.split())
        self.items.append(message)
        self._log.warning("%s: %s", STAGE, message)


# --------------------------------------------------------------------------- small helpers


def _list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files skipped)."""
    return sorted(
        (p for p in folder.iterdir()
         if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
    )


def _exc_text(exc: BaseException, path: Path) -> str:
    text = str(exc).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _image_header(path: Path) -> tuple[tuple[int, int], int]:
    """(width, height) and EXIF orientation (1 when absent) without decoding pixels."""
    try:
        with Image.open(path) as im:
            size = im.size
            try:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
            except Exception:  # a broken EXIF block does not make the pixels unusable
                orientation = 1
    except Exception as exc:
        raise InputError(path, f"not a readable image ({_exc_text(exc, path)})") from exc
    return size, orientation


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.array(rgb)
    except Exception as exc:
        raise InputError(path, f"corrupt or unreadable image ({_exc_text(exc, path)})") from exc


def _read_mask(path: Path) -> np.ndarray:
    """A mask file as one 2-D numeric array (grey levels, or max over colour channels)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            arr = np.array(im)
    except Exception as exc:
        raise InputError(path, f"corrupt or unreadable mask ({_exc_text(exc, path)})") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 3:
        if arr.shape[2] in (2, 4):  # grey/colour + alpha: the alpha is the mask if the colour is flat
            colour = arr[..., :-1]
            arr = arr[..., -1] if colour.min() == colour.max() else colour.max(axis=2)
        else:
            arr = arr.max(axis=2)
    return arr


def _n_levels(arr: np.ndarray) -> int:
    if arr.dtype == np.uint8:
        return int(np.count_nonzero(np.bincount(arr.ravel(), minlength=256)))
    return int(np.unique(arr).size)


def _binarize(arr: np.ndarray, semantics: str) -> np.ndarray:
    """Object mask (bool) from a mask array: object = > half the maximum (or its complement)."""
    top = float(arr.max()) if arr.size else 0.0
    high = arr > top / 2.0 if top > 0 else np.zeros(arr.shape, dtype=bool)
    return ~high if semantics == "nerfstudio" else high


def _resize(arr: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    w, h = size
    if arr.shape[1] == w and arr.shape[0] == h:
        return arr
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if w < arr.shape[1] else cv2.INTER_CUBIC
    return cv2.resize(arr, (w, h), interpolation=interp)


def _write_png(path: Path, arr: np.ndarray) -> None:
    img = arr[..., ::-1] if arr.ndim == 3 else arr  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _scaled_size(size: tuple[int, int], factor: int) -> tuple[int, int]:
    w, h = size
    return max(1, int(w / factor + 0.5)), max(1, int(h / factor + 0.5))


def _aspect_off(a: tuple[int, int], b: tuple[int, int]) -> float:
    ra, rb = a[0] / a[1], b[0] / b[1]
    return abs(ra - rb) / rb


def _finite_matrix(value: Any) -> np.ndarray | None:
    try:
        mat = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if mat.shape == (3, 4):
        mat = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
    return mat if mat.shape == (4, 4) else None


def _check_unique_names(views: list[_View]) -> None:
    seen: dict[str, Path] = {}
    for v in views:
        if v.name in seen:
            raise InputError(v.source, f"has the same name {v.name!r} as {seen[v.name]}; output files are named by "
                                       "the image's stem, so stems must be unique")
        seen[v.name] = v.source


# --------------------------------------------------------------------------- mask matching


def _match_masks(mask_dir: Path, wanted: list[_View], all_views: list[_View], what: str,
                 warn: Callable[[str], None]) -> dict[str, Path]:
    """Mask file of every view in ``wanted``: by stem, else in sorted order (see the module docstring)."""
    files = _list_images(mask_dir)
    index: dict[str, Path] = {}
    for f in files:
        index.setdefault(f.stem, f)
    found: dict[str, Path] = {}
    for v in wanted:
        for key in v.keys:
            if key in index:
                found[v.name] = index[key]
                break
    if len(found) == len(wanted):
        return found
    if not found:
        if len(files) == len(wanted):
            pool = wanted
        elif len(files) == len(all_views):
            pool = all_views
        else:
            also = f" ({len(all_views)} images in all)" if len(all_views) != len(wanted) else ""
            views = f"{len(wanted)} {what} view" if what else f"{len(wanted)} image"
            raise InputError(mask_dir, f"holds {len(files)} masks but there are {views}{'s' * (len(wanted) != 1)}"
                                       f"{also}, and no mask is named like an image")
        ordered = sorted(pool, key=lambda v: v.name)
        pairing = {v.name: f for v, f in zip(ordered, files)}
        warn(f"{mask_dir}: no mask is named like an image; {len(files)} masks paired with the images in sorted "
             f"order ({files[0].name} -> {ordered[0].source.name}, ...)")
        return {v.name: pairing[v.name] for v in wanted}
    missing = next(v for v in wanted if v.name not in found)
    raise InputError(mask_dir / f"{missing.name}.png",
                     f"missing: no mask for {missing.split} view {missing.source} "
                     "(masks are matched to images by file name)")


def _match_some_masks(mask_dir: Path, wanted: list[_View], all_views: list[_View]) -> dict[str, Path]:
    """Masks of some of ``wanted`` (annotated views), matched by name only; every file must
    name a view of the scene (an annotation of no view is a mistake worth stopping for)."""
    if not mask_dir.is_dir():
        return {}
    owner = {key: v for v in all_views for key in v.keys}
    wanted_names = {v.name for v in wanted}
    found: dict[str, Path] = {}
    for f in _list_images(mask_dir):
        view = owner.get(f.stem) or owner.get(f.name)
        if view is None:
            examples = ", ".join(v.name for v in all_views[:3])
            raise InputError(f, f"names no view of the scene (annotated masks are matched to images by file name: "
                                f"{examples}, ...)")
        if view.name in wanted_names:
            found.setdefault(view.name, f)
    return found


# --------------------------------------------------------------------------- formats


def detect_format(source: Path) -> str:
    """The format of ``source`` from its content (see the module docstring)."""
    source = Path(source)
    if not source.exists():
        raise InputError(source, "does not exist")
    if source.is_file():
        if source.suffix.lower() == ".json":
            return "nerfstudio"
        raise InputError(source, "is a file; expected a scene folder (or a transforms.json)")
    if (source / "poses_bounds.npy").is_file():
        return "spinnerf"
    if (source / "transforms.json").is_file():
        return "nerfstudio"
    if _colmap_model_dir(source) is not None:
        return "colmap"
    if (source / "images").is_dir():
        return "images"
    raise InputError(source, "cannot tell the format: no poses_bounds.npy, transforms.json, sparse/0/ or images/")


def _colmap_model_dir(source: Path) -> Path | None:
    for d in (source / "sparse" / "0", source / "sparse"):
        if any((d / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return d
    return None


def _load_poses_bounds(path: Path, n_images: int) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(path, f"not a readable .npy file ({_exc_text(exc, path)})") from exc
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] != n_images:
        raise InputError(path, f"{tuple(arr.shape)}: expected (N, 17) with N = number of images ({n_images})")
    try:
        arr = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"not numeric ({exc})") from exc
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        more = f" (and {bad.size - 1} more rows)" if bad.size > 1 else ""
        raise InputError(path, f"row {bad[0]}{more} holds non-finite numbers")
    hwf = arr[:, :15].reshape(-1, 3, 5)[:, :, 4]
    if not (hwf > 0).all():
        raise InputError(path, "height, width and focal (column 4 of the 3x5 matrix) must be positive")
    return arr


def _closest_level(dirs: dict[int, Path], downscale: int) -> tuple[int, Path] | None:
    if not dirs:
        return None
    return min(dirs.items(), key=lambda kv: (abs(math.log(kv[0] / downscale)), kv[0]))


def _plan_spinnerf(src: Path, downscale: int, n_test: int, warn: Callable[[str], None],
                   log: logging.Logger, partial: bool = False) -> _Plan:
    full_dir = src / "images"
    levels: dict[int, Path] = {}
    for p in src.iterdir():
        m = re.fullmatch(r"images_(\d+)", p.name)
        if m and p.is_dir() and int(m[1]) >= 1:
            levels[int(m[1])] = p
    full = _list_images(full_dir) if full_dir.is_dir() else []
    level_dir = levels.get(downscale) if downscale > 1 else None
    level_imgs = _list_images(level_dir) if level_dir is not None else []
    mask_level = downscale  # the level whose label folders fit best
    if not level_imgs:
        level_dir = None
    if not full and not level_imgs:
        # no images/ to make the requested resolution from: the nearest images_N/ the scene
        # ships (SPIn-NeRF scenes do not all ship every level)
        nearest = _closest_level({lv: d for lv, d in levels.items() if _list_images(d)}, downscale)
        if nearest is None:
            raise InputError(full_dir, f"no images here (nor in images_{downscale}/ or any other images_N/)")
        mask_level, level_dir = nearest
        level_imgs = _list_images(level_dir)
        warn(f"{src / f'images_{downscale}'}: missing (scene.downscale = {downscale}) and no images/ to make it from: "
             f"using {level_dir}, the nearest level the scene has (1/{mask_level} of the source)")

    # working file of every full-resolution image
    if full and level_imgs:
        by_stem = {p.stem: p for p in level_imgs}
        if all(p.stem in by_stem for p in full):
            working = [by_stem[p.stem] for p in full]
        elif len(level_imgs) == len(full):
            working = list(level_imgs)
            warn(f"{level_dir}: image names differ from images/; paired in sorted order")
        else:
            raise InputError(level_dir, f"holds {len(level_imgs)} images but images/ holds {len(full)}")
    elif full:
        working = list(full)
    else:
        warn(f"{full_dir}: missing; {level_dir.name}/ images stand in for the full-resolution sources")
        working = list(level_imgs)
    primary = full or level_imgs
    n = len(primary)
    poses = _load_poses_bounds(src / "poses_bounds.npy", n)
    if n_test >= n:
        raise InputError(full_dir if full else level_dir,
                         f"{n} images: spinnerf_n_test = {n_test} test views would leave no train views")

    views: list[_View] = []
    for i, (p, w) in enumerate(zip(primary, working)):
        cam, (near, far) = llff_row_to_camera(poses[i])
        views.append(_View(
            name=p.stem, split="test" if i < n_test else "train", source=p, working=w,
            factor=1 if level_dir is not None else downscale, keys=tuple(dict.fromkeys((p.stem, w.stem))),
            c2w=cam.c2w, cam=_Cam(cam.intrinsics), extra={"innout_bounds": [near, far]},
        ))
    _check_unique_names(views)

    # the poses' image size against the images'
    k = views[0].cam.intr
    ref_file = primary[0]
    (rw, rh), _ = _image_header(ref_file)
    if _aspect_off((k.width, k.height), (rw, rh)) > 0.02:
        raise InputError(src / "poses_bounds.npy", f"describes {k.width}x{k.height} images (H, W, f), but "
                                                   f"{ref_file} is {rw}x{rh}: the aspect ratios differ")
    if full and (k.width, k.height) != (rw, rh):
        warn(f"{src / 'poses_bounds.npy'}: describes {k.width}x{k.height} images, images/ holds {rw}x{rh}; "
             "intrinsics are scaled from the poses' size")

    # masks
    def level_size(level: int) -> tuple[int, int] | None:
        imgs = _list_images(levels[level])
        if imgs:
            return _image_header(imgs[0])[0]
        return _scaled_size(_image_header(full[0])[0], level) if full else None

    train = [v for v in views if v.split == "train"]
    test = [v for v in views if v.split == "test"]
    label_dirs = {lv: d / "label" for lv, d in levels.items() if (d / "label").is_dir()}
    test_dirs = {lv: d / "test_label" for lv, d in levels.items() if (d / "test_label").is_dir()}
    chosen = _closest_level(label_dirs, mask_level)
    if chosen is None and not partial:
        raise InputError(src / f"images_{downscale}" / "label",
                         "missing: SPIn-NeRF scenes need object masks in images_N/label/ (found for no N)")
    lv, label_dir, matched = None, None, {}
    if chosen is not None:  # (partial masks: a 3D box may stand in for every train mask)
        lv, label_dir = chosen
        if lv != downscale:
            log.info("%s: train masks from %s, resized", STAGE, label_dir)
        if partial:
            matched = _match_some_masks(label_dir, train, views)
        else:
            matched = _match_masks(label_dir, train, views, "train", warn)
    ref_size = level_size(lv) if lv is not None else None
    for v in train:
        v.mask, v.mask_ref_size = matched.get(v.name), ref_size
    if test:
        chosen_test = _closest_level(test_dirs, mask_level)
        if chosen_test is not None:
            tlv, test_dir = chosen_test
            matched = _match_masks(test_dir, test, views, "test", warn)
        elif label_dir is None:
            raise InputError(src / f"images_{downscale}" / "test_label",
                             f"missing: the {len(test)} test views need their masks (evaluation region); "
                             "set spinnerf_n_test=0 if there are none")
        else:
            tlv, test_dir = lv, label_dir
            try:
                matched = _match_masks(label_dir, test, views, "test", warn)
            except InputError as exc:
                raise InputError(levels[lv] / "test_label",
                                 f"missing, and {label_dir} has no masks of the {len(test)} test views "
                                 "(their evaluation region); set spinnerf_n_test=0 if there are none") from exc
        ref_size = level_size(tlv)
        for v in test:
            v.mask, v.mask_ref_size = matched[v.name], ref_size
    return _Plan("spinnerf", views, has_poses=True, has_masks=any(v.mask is not None for v in views))


def _nerfstudio_camera(meta: dict, frame: dict, image: Path, where: str, tpath: Path) -> _Cam:
    def get(key: str) -> Any:
        return frame[key] if key in frame else meta.get(key)

    def number(key: str) -> float | None:
        value = get(key)
        if value is None:
            return None
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise InputError(tpath, f"{where}: {key} = {value!r} is not a number") from None
        if not math.isfinite(out):
            raise InputError(tpath, f"{where}: {key} is not finite")
        return out

    (iw, ih), _ = _image_header(image)
    w, h = number("w"), number("h")
    w = float(iw) if w is None else w
    h = float(ih) if h is None else h
    fx, fy = number("fl_x"), number("fl_y")
    ax, ay = number("camera_angle_x"), number("camera_angle_y")
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * ay)
    if fx is None and fy is None:
        raise InputError(tpath, f"{where}: no focal length (fl_x, fl_y or camera_angle_x)")
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    cx, cy = number("cx"), number("cy")
    cx = w / 2.0 if cx is None else cx
    cy = h / 2.0 if cy is None else cy
    if not (fx > 0 and fy > 0 and w > 0 and h > 0):
        raise InputError(tpath, f"{where}: focal lengths and image size must be positive")
    model = str(get("camera_model") or "OPENCV")
    if model in ("PINHOLE", "SIMPLE_PINHOLE", "PERSPECTIVE"):
        model = "OPENCV"
    if model not in ("OPENCV", "OPENCV_FISHEYE"):
        raise InputError(tpath, f"camera_model {model!r} is not supported (OPENCV, OPENCV_FISHEYE, PINHOLE)")
    dist = {key: number(key) or 0.0 for key in _DISTORTION_KEYS}
    return _Cam(Intrinsics(fx, fy, cx, cy, int(round(w)), int(round(h))), model, dist)


def _resolve_image(base: Path, rel: str) -> Path:
    path = Path(rel)
    path = path if path.is_absolute() else base / path
    if not path.exists() and path.suffix.lower() not in IMAGE_SUFFIXES:
        for ext in (".png", ".jpg", ".jpeg"):  # instant-ngp synthetic scenes omit the extension
            if path.with_name(path.name + ext).is_file():
                return path.with_name(path.name + ext)
    return path


def _downscaled_sibling(path: Path, root: Path, downscale: int) -> Path | None:
    """``<root>_{d}/<same relative path>`` (or the same stem as .png), nerfstudio's convention."""
    if downscale <= 1:
        return None
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    base = root.parent / f"{root.name}_{downscale}" / rel
    for cand in (base, base.with_suffix(".png")):
        if cand.is_file():
            return cand
    return None


def _plan_nerfstudio(src: Path, downscale: int, warn: Callable[[str], None], partial: bool = False) -> _Plan:
    tpath = src if src.is_file() else src / "transforms.json"
    base = tpath.parent
    try:
        meta = json.loads(tpath.read_text())
    except FileNotFoundError:
        raise InputError(tpath, "missing") from None
    except (OSError, ValueError) as exc:
        raise InputError(tpath, f"not readable JSON ({_exc_text(exc, tpath)})") from exc
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(tpath, "has no frames")

    views: list[_View] = []
    resized: list[str] = []
    n_posed = 0
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
            raise InputError(tpath, f"frame {i} has no file_path")
        where = f"frame {i} ({fr['file_path']})"
        image = _resolve_image(base, fr["file_path"])
        if not image.is_file():
            raise InputError(image, f"missing (named by {where} of {tpath})")
        split = str(fr.get("innout_split", "train"))
        if split not in ("train", "test"):
            raise InputError(tpath, f"{where}: innout_split is {split!r}, expected 'train' or 'test'")
        small = _downscaled_sibling(image, image.parent, downscale)
        view = _View(name=image.stem, split=split, source=image, working=small or image,
                     factor=1 if small else downscale, keys=(image.stem, image.name))
        if "transform_matrix" in fr:
            c2w = _finite_matrix(fr["transform_matrix"])
            if c2w is None:
                raise InputError(tpath, f"{where}: transform_matrix is not a 4x4 (or 3x4) matrix of numbers")
            if not np.isfinite(c2w).all():
                raise InputError(tpath, f"{where}: transform_matrix holds non-finite numbers")
            if not np.allclose(c2w[3], [0.0, 0.0, 0.0, 1.0]):
                raise InputError(tpath, f"{where}: transform_matrix's last row is {c2w[3].tolist()}, not [0, 0, 0, 1]")
            view.c2w = c2w
            view.cam = _nerfstudio_camera(meta, fr, image, where, tpath)
            n_posed += 1
            cam_size, (iw, ih) = (view.cam.intr.width, view.cam.intr.height), _image_header(image)[0]
            if cam_size != (iw, ih):
                if _aspect_off(cam_size, (iw, ih)) > 0.02:
                    raise InputError(image, f"is {iw}x{ih} but {tpath} gives w x h = {cam_size[0]}x{cam_size[1]} "
                                            f"for {where}: the aspect ratios differ")
                resized.append(image.name)
        for key in ("innout_object_mask", "mask_path"):
            if isinstance(fr.get(key), str):
                mask = _resolve_image(base, fr[key])
                if not mask.is_file():
                    raise InputError(mask, f"missing ({key} of {where} in {tpath})")
                view.mask = mask
                view.mask_semantics = "object" if key == "innout_object_mask" else "nerfstudio"
                break
        views.append(view)
    _check_unique_names(views)
    if resized:
        warn(f"{tpath}: {len(resized)} images ({resized[0]}, ...) do not have the size w x h given for them; "
             "their intrinsics are scaled to the images' size")
    if 0 < n_posed < len(views):
        i = next(i for i, v in enumerate(views) if v.c2w is None)
        raise InputError(tpath, f"frame {i} ({frames[i]['file_path']}) has no transform_matrix while others do")

    n_masked = sum(v.mask is not None for v in views)
    # with partial masks only train views may lack one (test views need their evaluation region)
    must_have = [v for v in views if v.split == "test"] if partial else views
    if 0 < n_masked < len(views) and any(v.mask is None for v in must_have):
        i = next(i for i, v in enumerate(views) if v.mask is None and v in must_have)
        raise InputError(tpath, f"frame {i} ({frames[i]['file_path']}) names no mask "
                                "(mask_path or innout_object_mask) while other frames do")
    if n_masked == 0 and (base / "masks").is_dir():
        if partial:
            matched = _match_some_masks(base / "masks", [v for v in views if v.split == "train"], views)
            for v in views:
                v.mask = matched.get(v.name)
            n_masked = len(matched)
        else:
            matched = _match_masks(base / "masks", views, views, "", warn)
            for v in views:
                v.mask = matched[v.name]
            n_masked = len(views)
    return _Plan("nerfstudio", views, has_poses=n_posed > 0, has_masks=n_masked > 0)


_COLMAP_PARAMS = {
    # model: names of its parameters, in COLMAP's order
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}


def _colmap_camera(cam: Any, model_dir: Path) -> _Cam:
    model = cam.model_name if hasattr(cam, "model_name") else getattr(cam.model, "name", str(cam.model))
    model = str(model).split(".")[-1]
    if model not in _COLMAP_PARAMS:
        raise InputError(model_dir, f"camera {cam.camera_id} has model {model}; supported: {', '.join(_COLMAP_PARAMS)}")
    values = dict(zip(_COLMAP_PARAMS[model], (float(x) for x in cam.params)))
    if "f" in values:
        values["fx"] = values["fy"] = values["f"]
    if not all(math.isfinite(x) for x in values.values()):
        raise InputError(model_dir, f"camera {cam.camera_id} has non-finite parameters")
    intr = Intrinsics(values["fx"], values["fy"], values["cx"], values["cy"], int(cam.width), int(cam.height))
    return _Cam(intr, "OPENCV", {k: values.get(k, 0.0) for k in _DISTORTION_KEYS})


def _plan_colmap(src: Path, downscale: int, warn: Callable[[str], None], partial: bool = False) -> _Plan:
    import pycolmap  # heavy; only this format needs it

    model_dir = _colmap_model_dir(src)
    if model_dir is None:
        raise InputError(src / "sparse" / "0", "missing: no COLMAP model (cameras.bin or cameras.txt)")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:
        raise InputError(model_dir, f"not a readable COLMAP model ({_exc_text(exc, model_dir)})") from exc
    image_dir = src / "images"
    if not image_dir.is_dir():
        raise InputError(image_dir, "missing")
    views: list[_View] = []
    cams: dict[int, _Cam] = {}
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not getattr(image, "has_pose", getattr(image, "registered", True)):
            continue
        path = image_dir / image.name
        if not path.is_file():
            raise InputError(path, f"missing (registered in the COLMAP model {model_dir})")
        pose = image.cam_from_world
        pose = pose() if callable(pose) else pose
        w2c = np.eye(4)
        w2c[:3, :] = np.asarray(pose.matrix(), dtype=float)
        if not np.isfinite(w2c).all():
            raise InputError(model_dir, f"image {image.name} has a non-finite pose")
        if image.camera_id not in cams:
            cams[image.camera_id] = _colmap_camera(rec.cameras[image.camera_id], model_dir)
        small = _downscaled_sibling(path, image_dir, downscale)
        views.append(_View(name=path.stem, split="train", source=path, working=small or path,
                           factor=1 if small else downscale, keys=(path.stem, path.name),
                           c2w=opencv_w2c_to_opengl_c2w(w2c), cam=cams[image.camera_id]))
    if not views:
        raise InputError(model_dir, "has no registered images")
    _check_unique_names(views)
    named = {v.source.resolve() for v in views}
    skipped = [p for p in _list_images(image_dir) if p.resolve() not in named]
    if skipped:
        warn(f"{image_dir}: {len(skipped)} images are not in the COLMAP model and are skipped "
             f"({', '.join(p.name for p in skipped[:3])}{', ...' if len(skipped) > 3 else ''})")
    has_masks = _attach_mask_folder(src / "masks", views, warn, partial)
    return _Plan("colmap", views, has_poses=True, has_masks=has_masks)


def _attach_mask_folder(mask_dir: Path, views: list[_View], warn: Callable[[str], None], partial: bool = False) -> bool:
    if not mask_dir.is_dir():
        return False
    if partial:
        matched = _match_some_masks(mask_dir, views, views)
        for v in views:
            v.mask = matched.get(v.name)
        return bool(matched)
    matched = _match_masks(mask_dir, views, views, "", warn)
    for v in views:
        v.mask = matched[v.name]
    return True


def _plan_images(src: Path, downscale: int, warn: Callable[[str], None], partial: bool = False) -> _Plan:
    image_dir = src / "images"
    if not image_dir.is_dir():
        raise InputError(image_dir, "missing")
    files = _list_images(image_dir)
    if not files:
        raise InputError(image_dir, "holds no images (" + ", ".join(IMAGE_SUFFIXES) + ")")
    views = []
    for p in files:
        small = _downscaled_sibling(p, image_dir, downscale)
        views.append(_View(name=p.stem, split="train", source=p, working=small or p,
                           factor=1 if small else downscale, keys=(p.stem, p.name)))
    _check_unique_names(views)
    has_masks = _attach_mask_folder(src / "masks", views, warn, partial)
    return _Plan("images", views, has_poses=False, has_masks=has_masks)


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
        _write_png(tmp / "annotations" / f"{v.name}.png", obj)
        frame["innout_annotation"] = f"annotations/{v.name}.png"
    elif v.mask_role == "reference":
        (tmp / "reference_masks").mkdir(exist_ok=True)
        _write_png(tmp / "reference_masks" / f"{v.name}.png", obj)
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
        _write_png(tmp / "images" / f"{v.name}.png", rgb)
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
            _write_png(tmp / "masks" / f"{v.name}.png", obj)
            _write_png(tmp / "nerf_masks" / f"{v.name}.png", 255 - obj)
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
