"""The source formats the scene stage imports (SPIn-NeRF, nerfstudio, COLMAP, images):
each is read into a :class:`innout.scene_sources._Plan`; :func:`detect_format` tells which."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from innout.cameras import Intrinsics, llff_row_to_camera, opencv_w2c_to_opengl_c2w
from innout.errors import InputError, read_json
from innout.scene_sources import (
    _DISTORTION_KEYS,
    IMAGE_SUFFIXES,
    STAGE,
    _aspect_off,
    _Cam,
    _check_unique_names,
    _exc_text,
    _finite_matrix,
    _image_header,
    _list_images,
    _match_masks,
    _match_some_masks,
    _Plan,
    _scaled_size,
    _View,
)

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
    meta = read_json(tpath)
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


