"""What the scene stage reads of a source scene before writing it: the plan of views
(cameras, images, masks), image and mask reading, matching masks to their images."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

from innout.cameras import Intrinsics
from innout.errors import InputError
from innout.errors import exception_text as _exc_text  # the name scene, scene_formats import

STAGE = "scene"
FORMATS = ("spinnerf", "nerfstudio", "colmap", "images")
POSES_MODES = ("auto", "provided", "colmap")
SPINNERF_N_TEST = 40  # the benchmark's first 40 images (by name) are the ground-truth test views
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_ASPECT_TOLERANCE = 0.05  # masks whose aspect ratio is further off than this are errors
_EXIF_ORIENTATION = 0x0112

_log = logging.getLogger("innout.scene")


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


