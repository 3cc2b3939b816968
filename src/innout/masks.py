"""The ``masks`` stage: every view's object mask from a few annotated views (or a 3D box).

Runs only for scenes that give masks of some views (``masks`` column of the scene sheet:
``some`` or a list of views; see docs/scene-format.md), between ``poses`` and
``pretrain``:

1. **Geometry.** A NeRF of the *whole* scene (the pretrain stage's NeRF, settings and
   training, :func:`innout.nerf_training.train_nerf`, on every pixel of the train views:
   the object included), in ``work_dir`` (checkpoints there: a killed run resumes). Each train
   view's surface is its median depth (where the ray's volume-rendering weight reaches
   half: one surface per pixel, also at the object's outline, where the expected depth
   would average the object and the background behind it).
2. **Carving** (:mod:`innout.carving`): a view's surface point is object when it lies in
   every annotated mask's viewing cone that *sees* it (depth test against that view's own
   surface; hidden points give no vote) and inside the 3D box when one is given; points
   that no annotated view sees take the votes of the views already propagated, nearest
   first, then of their nearest neighbours on the surface.
3. **Clean-up** (:mod:`innout.mask_cleanup`): opening, specks, holes.
4. **SAM** (optional, ``masks.sam``; :mod:`innout.sam_refine`).
5. The scene's dilation (``mask_dilation`` of the import, as SPIn-NeRF's loader) on every
   train mask, annotated ones included.

Writes ``out_dir``::

    transforms.json      the posed scene with every train view's mask (absolute paths); the
                         later stages read this instead of the scene's / poses' one
    masks/<view>.png     object masks (255 = object, dilated), nerf_masks/<view>.png (255 - mask)
    raw/<view>.png       the propagated masks before dilation (annotated views: the annotation)
    overview.png         annotated views, then propagated ones (red: mask; with reference
                         masks: green = missed, blue = extra)
    summary.json         per view: mask area, what decided it, IoU against the reference
                         masks (when the scene has them); means; the suggested views
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from innout.cameras import Camera, umeyama_similarity
from innout.carving import (
    DECIDED_BY_ANNOTATION,
    DECIDED_BY_NEIGHBOURS,
    DECIDED_BY_PROPAGATION,
    CarvingSettings,
    Propagation,
    ViewGeometry,
    propagate,
)
from innout.edge_snap import snap_to_edges
from innout.errors import InputError, StageError
from innout.frames import read_scene, resolve_path
from innout.image_metrics import psnr
from innout.images import load_rgb
from innout.mask_cleanup import CleanupSettings, clean_mask, dilate_mask
from innout.nerf_training import NS_DIR, train_nerf
from innout.object_box import BOX_FILE, ObjectBox, read_box
from innout.provenance import PRETRAINED, RANDOM, provenance_fields
from innout.renderer import NerfRenderer
from innout.sam_refine import load_sam, refine
from innout.stage import atomic_dir
from innout.view_suggest import spread_of, suggest_views
from innout.viz import masks_overview

STAGE = "masks"
_log = logging.getLogger("innout.masks")
_PATH_KEYS = ("file_path", "mask_path", "innout_object_mask", "depth_file_path")


# --------------------------------------------------------------------------- inputs


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None


def _read_binary(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the mask ({exc})") from None


def _scene_masks_info(scene_meta: dict, scene_transforms: Path) -> dict:
    info = scene_meta.get("innout", {}).get("masks")
    if not info:
        raise InputError(scene_transforms, "this scene gives every mask (no 'innout.masks' entry): the masks stage "
                                           "has nothing to do")
    return info


def _frame_files(scene_meta: dict, scene_dir: Path, key: str) -> dict[str, Path]:
    """view name -> file named by ``key`` in the scene's frames (annotations, reference masks)."""
    out = {}
    for fr in scene_meta["frames"]:
        if fr.get(key):
            out[Path(fr["file_path"]).stem] = scene_dir / fr[key]
    return out


def box_in_posed_frame(box: ObjectBox, scene_meta: dict, posed_cameras: dict[str, Camera]) -> tuple[ObjectBox, dict]:
    """The box (scene frame) in the frame of the posed cameras: identity when the poses are
    the scene's own, else the similarity aligning the scene's camera centres to the posed ones
    (COLMAP's frame)."""
    scene_centres, posed_centres = [], []
    for fr in scene_meta["frames"]:
        name = Path(fr["file_path"]).stem
        if name in posed_cameras and "transform_matrix" in fr:
            scene_centres.append(np.asarray(fr["transform_matrix"], float)[:3, 3])
            posed_centres.append(posed_cameras[name].c2w[:3, 3])
    if len(scene_centres) < 3:
        raise StageError(STAGE, f"only {len(scene_centres)} views have both the scene's and the estimated poses: "
                                f"cannot carry {BOX_FILE} into the estimated frame")
    src, dst = np.stack(scene_centres), np.stack(posed_centres)
    if np.allclose(src, dst, atol=1e-9):
        return box, {"aligned": False}
    scale, rot, trans = umeyama_similarity(src, dst)
    residual = float(np.linalg.norm(scale * src @ rot.T + trans - dst, axis=1).mean())
    spread = float(np.linalg.norm(dst - dst.mean(0), axis=1).mean())
    return box.transformed(scale, rot, trans), {"aligned": True, "scale": scale,
                                               "residual_relative": residual / max(spread, 1e-12)}


# --------------------------------------------------------------------------- geometry


def median_depth(weights: np.ndarray, distances: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance where each ray's cumulative weight reaches half its total; ``expected`` where
    a ray holds (almost) no weight."""
    total = weights.sum(axis=-1)
    cumulative = np.cumsum(weights, axis=-1)
    index = np.argmax(cumulative >= 0.5 * total[..., None], axis=-1)
    median = np.take_along_axis(distances, index[..., None], axis=-1)[..., 0]
    return np.where(total > 1e-4, median, expected).astype(np.float64)


def _unmasked_transforms(meta: dict, base: Path, train_names: set[str]) -> dict:
    """The posed scene for the whole-scene NeRF: train views only (test views were
    photographed without the object), every pixel (no masks), absolute paths."""
    out = {k: v for k, v in meta.items() if k != "frames"}
    frames = []
    for fr in meta["frames"]:
        if Path(fr["file_path"]).stem not in train_names:
            continue
        fr = {k: v for k, v in fr.items() if k not in ("mask_path", "innout_object_mask", "innout_mask")}
        fr["file_path"] = str(resolve_path(base, fr["file_path"]))
        frames.append(fr)
    out["frames"] = frames
    out["train_filenames"] = [f["file_path"] for f in frames]
    out["val_filenames"] = out["train_filenames"]
    out["test_filenames"] = []
    return out


def _nerf_config(cfg: Any) -> Any:
    """The method config the whole-scene NeRF trains with: pretrain's, with the masks
    stage's own number of iterations when set."""
    pretrain = OmegaConf.to_container(cfg.pretrain, resolve=True) if not isinstance(cfg.pretrain, dict) else dict(cfg.pretrain)
    if int(cfg.masks.nerf_iterations) > 0:
        pretrain["iterations"] = int(cfg.masks.nerf_iterations)
    nerf_cfg = OmegaConf.create({"preset": cfg.preset, "seed": cfg.seed, "device": cfg.device, "pretrain": pretrain})
    OmegaConf.set_readonly(nerf_cfg, True)
    return nerf_cfg


def train_scene_nerf(meta: dict, base: Path, train_names: set[str], work_dir: Path, cfg: Any, log: logging.Logger) -> Path:
    """Train (or resume, or reuse) the whole-scene NeRF; returns its nerfstudio config.yml."""

    work_dir.mkdir(parents=True, exist_ok=True)
    data = work_dir / "scene_unmasked.json"
    data.write_text(json.dumps(_unmasked_transforms(meta, base, train_names), indent=1))
    nerf_dir = work_dir / "nerf"
    log.info("masks: training a NeRF of the whole scene (every pixel, %d train views)", len(train_names))
    summary = train_nerf(data, nerf_dir, work_dir / "train", _nerf_config(cfg), log=log)  # no quality patches
    log.info("masks: whole-scene NeRF trained (%d steps, final loss %s)", summary["iterations"], summary.get("final_loss"))
    return nerf_dir / NS_DIR / "config.yml"


def render_surfaces(nerf_config: Path, cameras: dict[str, Camera], device: str, log: logging.Logger,
                    images: dict[str, Path] | None = None) -> dict[str, dict[str, Any]]:
    """Each view's surface distances (H, W) along its unit pixel rays, scene units, as
    ``{"median": ..., "expected": ...}`` (both come from one rendering), and with
    ``images`` the PSNR of the rendered colour (``"psnr"``: how well the NeRF fits)."""

    renderer = NerfRenderer.from_config(nerf_config, device=device)
    out, t0 = {}, time.perf_counter()
    for i, (name, cam) in enumerate(cameras.items()):
        res = renderer.render_camera(cam, return_samples=True)
        expected = res["depth"].cpu().numpy().astype(np.float64)
        median = median_depth(res["weights"].cpu().numpy(), res["distances"].cpu().numpy(), expected)
        out[name] = {"median": median, "expected": expected}
        if images is not None:
            gt = load_rgb(images[name])
            out[name]["psnr"] = psnr(res["rgb"].cpu().numpy(), gt)
        if (i + 1) % 10 == 0 or i + 1 == len(cameras):
            log.info("masks: rendered the surface of %d/%d views (%.0f s)", i + 1, len(cameras), time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- carving


def carve_views(views: list[ViewGeometry], annotations: dict[str, np.ndarray], box: ObjectBox | None,
                mc: Any, images: dict[str, Path] | None = None) -> tuple[Propagation, dict[str, dict]]:
    """Carving and clean-up with the ``masks`` config section ``mc`` (and, with ``images``
    and ``mc.snap_band_px``, the outline snapped to the image's edges) of every view,
    each view cleaned before it votes for the next; annotated views keep their annotation.
    Returns the propagation and the snapping record of each view."""
    carving = CarvingSettings(visibility_tolerance=float(mc.visibility_tolerance),
                              propagation_voters=int(mc.propagation_voters), mask_margin_px=int(mc.mask_margin_px),
                              reach_factor=float(mc.reach_factor))
    cleanup = CleanupSettings(open_radius=int(mc.open_radius), speck_fraction=float(mc.speck_fraction),
                              hole_fraction=float(mc.hole_fraction))
    centre = box.center if (box is not None and not annotations) else None
    snaps: dict[str, dict] = {}

    def clean(name: str, mask: np.ndarray) -> np.ndarray:
        mask = clean_mask(mask, cleanup)
        if images is not None and int(mc.snap_band_px) > 0:
            rgb = np.asarray(Image.open(images[name]).convert("RGB"))
            mask, snaps[name] = snap_to_edges(rgb, mask, int(mc.snap_band_px), min_iou=float(mc.snap_min_iou))
            mask = clean_mask(mask, cleanup)
        return mask

    result = propagate(views, annotations, carving, inside_box=box.contains if box is not None else None,
                       centre=centre, clean=clean)
    return result, snaps


# --------------------------------------------------------------------------- scoring


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- the stage


def run_masks(camera_transforms: Path, scene_transforms: Path, out_dir: Path, work_dir: Path, cfg: Any,
              log: logging.Logger | None = None) -> dict:
    """Make every train view's object mask (see the module docstring); returns the summary."""

    log = log or _log
    t_stage = time.perf_counter()
    camera_transforms, scene_transforms = Path(camera_transforms).resolve(), Path(scene_transforms).resolve()
    out_dir, work_dir = Path(out_dir).resolve(), Path(work_dir).resolve()
    mc = cfg.masks
    if mc.depth not in ("median", "expected"):
        raise InputError("masks.depth", f"must be median or expected, got {mc.depth!r}")

    meta, frames, train, test = read_scene(camera_transforms, allow_missing_masks=True)
    scene_dir = scene_transforms.parent
    scene_meta = _read_json(scene_transforms)
    info = _scene_masks_info(scene_meta, scene_transforms)
    dilation = scene_meta.get("innout", {}).get("mask_dilation", {"kernel": 5, "iterations": 5})
    cameras = {f.name: f.camera for f in train}
    shape = (train[0].camera.intrinsics.height, train[0].camera.intrinsics.width)

    annotation_files = _frame_files(scene_meta, scene_dir, "innout_annotation")
    dropped = sorted(n for n in annotation_files if n not in cameras)
    if dropped:
        log.warning("masks: annotated views %s have no pose (COLMAP did not register them): not used", ", ".join(dropped))
    annotations = {n: _read_binary(p) for n, p in annotation_files.items() if n in cameras}
    for n, m in annotations.items():
        if m.shape != shape:
            raise InputError(annotation_files[n], f"is {m.shape[1]}x{m.shape[0]}, the views are {shape[1]}x{shape[0]}")
    references = {n: _read_binary(p) for n, p in _frame_files(scene_meta, scene_dir, "innout_reference_mask").items()
                  if n in cameras}
    box, box_alignment = None, None
    if info.get("box"):
        box, box_alignment = box_in_posed_frame(read_box(scene_dir / info["box"]), scene_meta, cameras)
    if not annotations and box is None:
        raise StageError(STAGE, "no annotated view has a pose and there is no 3D box: nothing to carve with")
    log.info("masks: %d train views, %d annotated (%s)%s", len(train), len(annotations), ", ".join(sorted(annotations)),
             ", a 3D box" if box is not None else "")

    # views to annotate, and how the given ones compare
    names = list(cameras)
    cams = [cameras[n] for n in names]
    suggestion = suggest_views(cams, names, max(2, len(annotations)))
    annotated_spread = spread_of(cams, names, sorted(annotations))[0] if len(annotations) > 1 else 0.0
    if len(annotations) == 1:
        log.warning("masks: one annotated view; annotating %s (%.1f deg apart at the object) gives tighter masks "
                    "(see the README)", " + ".join(suggestion.views), suggestion.spread_deg)
    elif len(annotations) > 1 and annotated_spread < 0.5 * suggestion.spread_deg:
        log.warning("masks: the annotated views span %.1f deg around the object; %s span %.1f deg: annotating "
                    "those gives tighter masks (see the README)", annotated_spread, " + ".join(suggestion.views),
                    suggestion.spread_deg)

    # 1. geometry
    t0 = time.perf_counter()
    nerf_config = train_scene_nerf(meta, camera_transforms.parent, set(names), work_dir, cfg, log)
    rendered = render_surfaces(nerf_config, cameras, str(cfg.device), log, images={f.name: f.image for f in train})
    surfaces = {n: r[str(mc.depth)] for n, r in rendered.items()}
    nerf_psnr = float(np.mean([r["psnr"] for r in rendered.values()]))
    log.info("masks: whole-scene NeRF: PSNR %.2f dB on the train views (every pixel)", nerf_psnr)
    geometry_seconds = time.perf_counter() - t0

    # 2. carving + 3. clean-up
    t0 = time.perf_counter()
    views = [ViewGeometry(n, cameras[n], surfaces[n]) for n in names]
    result, snaps = carve_views(views, annotations, box, mc, images={f.name: f.image for f in train})
    carving_seconds = time.perf_counter() - t0
    log.info("masks: carved %d views in %.1f s", len(views), carving_seconds)
    raw = dict(result.masks)

    # 4. SAM
    sam_records: dict[str, dict] = {}
    sam_random = False
    if str(mc.sam):
        refiner = load_sam(str(mc.sam), device=str(cfg.device))
        sam_random = refiner.random_weights
        images = {f.name: f.image for f in train}
        for n in names:
            if n in annotations:
                continue
            rgb = np.asarray(Image.open(images[n]).convert("RGB"))
            raw[n], sam_records[n] = refine(refiner, rgb, raw[n], int(mc.sam_points), float(mc.sam_min_iou))
        log.info("masks: SAM (%s%s) replaced %d of %d propagated masks", mc.sam, ", RANDOM weights" if sam_random else "",
                 sum(r["used"] for r in sam_records.values()), len(sam_records))

    # 5. dilation and outputs
    final = {n: dilate_mask(raw[n], int(dilation["kernel"]), int(dilation["iterations"])) for n in names}
    per_view: dict[str, dict] = {}
    for n in names:
        entry: dict[str, Any] = {
            "source": "annotation" if n in annotations else "propagated",
            "area": float(raw[n].mean()),
            "area_dilated": float(final[n].mean()),
        }
        if n in result.decided_by and n not in annotations:
            codes = np.bincount(result.decided_by[n].ravel(), minlength=4) / raw[n].size
            entry["decided_by"] = {"annotations": round(float(codes[DECIDED_BY_ANNOTATION]), 4),
                                   "propagation": round(float(codes[DECIDED_BY_PROPAGATION]), 4),
                                   "neighbours": round(float(codes[DECIDED_BY_NEIGHBOURS]), 4)}
        if n in references:
            entry["iou"] = round(iou(raw[n], references[n]), 4)
            entry["iou_dilated"] = round(iou(final[n], dilate_mask(references[n], int(dilation["kernel"]),
                                                                 int(dilation["iterations"]))), 4)
        if n in snaps:
            entry["edge_snap"] = snaps[n]
        if n in sam_records:
            entry["sam"] = sam_records[n]
        per_view[n] = entry
    scored = [per_view[n]["iou"] for n in names if "iou" in per_view[n] and n not in annotations]

    empty = [n for n in names if not raw[n].any()]
    if len(empty) == len(names):
        raise StageError(STAGE, "every propagated mask is empty: the annotated object was not found in the geometry")
    if empty:
        log.warning("masks: %d views got an empty mask (%s, ...): the object is out of them or hidden", len(empty), empty[0])

    with atomic_dir(out_dir) as tmp:
        for sub in ("masks", "nerf_masks", "raw"):
            (tmp / sub).mkdir()
        for n in names:
            Image.fromarray(final[n].astype(np.uint8) * 255).save(tmp / "masks" / f"{n}.png")
            Image.fromarray((~final[n]).astype(np.uint8) * 255).save(tmp / "nerf_masks" / f"{n}.png")
            Image.fromarray(raw[n].astype(np.uint8) * 255).save(tmp / "raw" / f"{n}.png")
        out_meta = _transforms_with_masks(meta, camera_transforms.parent, out_dir, set(names), info, per_view)
        (tmp / "transforms.json").write_text(json.dumps(out_meta, indent=2))

        masks_overview({f.name: f.image for f in train}, raw, references, sorted(annotations), tmp / "overview.png")
        summary = {
            "n_train": len(names),
            "annotated_views": sorted(annotations),
            "annotated_views_without_pose": dropped,
            "box": box.to_json() if box is not None else None,
            "box_alignment": box_alignment,
            "iou_mean": _mean(scored),
            "iou_min": min(scored) if scored else None,
            "iou_definition": ("IoU of each propagated mask (before dilation) with the scene's own mask of that view, "
                               "over the train views that were not annotated; iou_dilated: both dilated"),
            "iou_dilated_mean": _mean([per_view[n]["iou_dilated"] for n in names
                                       if "iou_dilated" in per_view[n] and n not in annotations]),
            "area_mean": float(np.mean([per_view[n]["area"] for n in names])),
            "empty_views": empty,
            "per_view": per_view,
            "order": result.order,
            "annotated_spread_deg": round(annotated_spread, 2),
            "suggested_views": suggestion.views,
            "suggested_spread_deg": round(suggestion.spread_deg, 2),
            "object_centre": np.round(result.centre, 6).tolist(),
            "depth": str(mc.depth),
            "nerf_psnr_train": round(nerf_psnr, 3),
            "mask_dilation": dilation,
            "sam": {"model": str(mc.sam), "random_weights": sam_random,
                    "used": sum(r["used"] for r in sam_records.values())} if str(mc.sam) else None,
            # SAM is the stage's only learnt model: without it the masks come from the scene's own
            # geometry and there is nothing to label (provenance "pretrained": no label)
            **provenance_fields(RANDOM if sam_random else PRETRAINED),
            "seconds": {"geometry": round(geometry_seconds, 2), "carving": round(carving_seconds, 2),
                        "stage": round(time.perf_counter() - t_stage, 2)},
            "seed": int(cfg.seed),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    if scored:
        log.info("masks: IoU with the reference masks: mean %.3f, min %.3f over %d views", summary["iou_mean"],
                 summary["iou_min"], len(scored))
    log.info("masks: done in %.0f s", summary["seconds"]["stage"])
    return summary


def _transforms_with_masks(meta: dict, base: Path, out_dir: Path, names: set[str], info: dict,
                           per_view: dict[str, dict]) -> dict:
    """The posed transforms with every train view's new mask; absolute paths throughout."""
    out = {k: v for k, v in meta.items() if k != "frames"}
    frames = []
    for fr in meta["frames"]:
        fr = dict(fr)
        for key in _PATH_KEYS:
            if key in fr:
                fr[key] = str(resolve_path(base, fr[key]))
        name = Path(fr["file_path"]).stem
        if name in names:
            fr["mask_path"] = str(out_dir / "nerf_masks" / f"{name}.png")
            fr["innout_object_mask"] = str(out_dir / "masks" / f"{name}.png")
            fr["innout_mask"] = per_view[name]["source"]
        frames.append(fr)
    out["frames"] = frames
    for key in ("train_filenames", "val_filenames", "test_filenames"):
        if key in out:
            out[key] = [str(resolve_path(base, p)) for p in out[key]]
    innout = dict(out.get("innout", {}))
    innout.update({"masks": {**info, "made_by": "masks stage"}, "paths": "absolute"})
    out["innout"] = innout
    return out
