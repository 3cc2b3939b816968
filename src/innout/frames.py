"""The canonical scene as every stage after ``scene`` reads it: its ``transforms.json``
(:func:`read_scene`), one :class:`Frame` per view, and a view's pixels that a NeRF may
see (:func:`load_keep_mask`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from innout.cameras import Camera, Intrinsics
from innout.errors import InputError


@dataclass
class Frame:
    name: str
    split: str  # "train" | "test" | other
    image: Path
    nerf_mask: Optional[Path]  # nerfstudio mask: 0 = ignore
    object_mask: Optional[Path]  # 255 = object
    camera: Camera
    raw: dict


def resolve_path(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def read_scene(transforms: Path, allow_missing_masks: bool = False) -> tuple[dict, list[Frame], list[Frame], list[Frame]]:
    """(meta, all frames, train frames, ground-truth test frames) of a canonical scene.

    A scene that gives masks of some views only (frames marked ``innout_mask``) is an
    InputError unless ``allow_missing_masks`` (the masks stage reads it)."""
    transforms = Path(transforms)
    try:
        meta = json.loads(transforms.read_text())
    except (OSError, ValueError) as err:
        raise InputError(transforms, f"cannot read transforms: {err}") from None
    base = transforms.parent
    frames_raw = meta.get("frames") or []
    if not frames_raw:
        raise InputError(transforms, "no frames")
    if meta.get("innout", {}).get("has_poses") is False:
        raise InputError(transforms, "the scene has no poses yet (run the poses stage first)")
    frames: list[Frame] = []
    for i, fr in enumerate(frames_raw):
        if "transform_matrix" not in fr:
            raise InputError(transforms, f"frame {i} ({fr.get('file_path')}) has no transform_matrix")

        def get(key: str) -> Any:
            v = fr.get(key, meta.get(key))
            if v is None:
                raise InputError(transforms, f"frame {i} has no {key} (nor a global one)")
            return v

        intr = Intrinsics(float(get("fl_x")), float(get("fl_y")), float(get("cx")), float(get("cy")), int(get("w")), int(get("h")))
        c2w = np.asarray(fr["transform_matrix"], dtype=np.float64)
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0, 0, 0, 1]])
        if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
            raise InputError(transforms, f"frame {i}: transform_matrix is not a finite 4x4 matrix")
        for key in ("k1", "k2", "k3", "p1", "p2"):
            if abs(float(fr.get(key, meta.get(key, 0.0)) or 0.0)) > 1e-9:
                raise InputError(transforms, f"frame {i}: lens distortion ({key}) is not supported; undistort the images first")
        frames.append(
            Frame(
                name=Path(fr["file_path"]).stem,
                split=str(fr.get("innout_split", "train")),
                image=resolve_path(base, fr["file_path"]),
                nerf_mask=resolve_path(base, fr["mask_path"]) if fr.get("mask_path") else None,
                object_mask=resolve_path(base, fr["innout_object_mask"]) if fr.get("innout_object_mask") else None,
                camera=Camera(c2w, intr),
                raw=fr,
            )
        )
    by_path = {os.path.normpath(f.image): f for f in frames}
    if "train_filenames" in meta:
        train = []
        for name in meta["train_filenames"]:
            key = os.path.normpath(resolve_path(base, name))
            if key not in by_path:
                raise InputError(transforms, f"train_filenames names {name}, which is not a frame")
            train.append(by_path[key])
    else:
        train = [f for f in frames if f.split == "train"]
    if not train:
        raise InputError(transforms, "no train views")
    test = [f for f in frames if f.split == "test"]
    unmasked = [f.name for f in frames if f.nerf_mask is None and f.raw.get("innout_mask") is not None]
    if unmasked and not allow_missing_masks:
        raise InputError(transforms, f"{len(unmasked)} views have no object mask yet ({unmasked[0]}, ...): the scene "
                                     "gives masks of some views only; the masks stage makes the others "
                                     "(results/<scene>/masks/transforms.json)")
    masked = [f.nerf_mask is not None for f in frames if not (allow_missing_masks and f.name in unmasked)]
    if any(masked) and not all(masked):
        raise InputError(transforms, "mask_path is given for some frames only (nerfstudio needs all or none)")
    for f in frames:
        if not f.image.is_file():
            raise InputError(f.image, "image listed in transforms.json does not exist")
    return meta, frames, train, test


def nerfstudio_transforms(meta: dict, frames: list[Frame], train: list[Frame], test: list[Frame]) -> dict:
    """The transforms.json nerfstudio trains on: absolute paths, non-empty splits, no
    ``applied_transform`` (so the saved dataparser transform maps the scene frame)."""
    out = {k: v for k, v in meta.items() if k not in ("frames", "applied_transform", "applied_scale")}
    out["frames"] = []
    for f in frames:
        fr = dict(f.raw)
        fr["file_path"] = str(f.image)
        if f.nerf_mask is not None:
            fr["mask_path"] = str(f.nerf_mask)
        if f.object_mask is not None:
            fr["innout_object_mask"] = str(f.object_mask)
        out["frames"].append(fr)
    evals = test or train
    out["train_filenames"] = [str(f.image) for f in train]
    out["val_filenames"] = [str(f.image) for f in evals]
    out["test_filenames"] = [str(f.image) for f in evals]
    return out


def load_keep_mask(frame: Frame, shape: tuple[int, int]) -> np.ndarray:
    """Pixels the NeRF was allowed to see (True) for a view: nerfstudio mask != 0, else
    object mask == 0, else everything."""
    if frame.nerf_mask is not None and frame.nerf_mask.is_file():
        m = np.asarray(Image.open(frame.nerf_mask))
        keep = (m[..., 0] if m.ndim == 3 else m) > 0
    elif frame.object_mask is not None and frame.object_mask.is_file():
        m = np.asarray(Image.open(frame.object_mask))
        keep = (m[..., 0] if m.ndim == 3 else m) == 0
    else:
        keep = np.ones(shape, dtype=bool)
    if keep.shape != shape:
        raise InputError(frame.nerf_mask or frame.object_mask or frame.image, f"mask is {keep.shape[::-1]}, image {shape[::-1]}")
    return keep
