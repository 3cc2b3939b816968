"""Stage 2: geometry pre-training (nerfacto on the unmasked pixels of the train views).

:func:`run_pretrain` trains the ``innout-nerfacto`` nerfstudio method on a canonical scene
(``results/{scene}/scene/transforms.json``, relative paths) or its COLMAP-posed copy
(``results/{scene}/poses/transforms.json``, absolute paths) and writes::

    out_dir/
      innout-nerfacto/            a nerfstudio run folder (innout.nerf: paths relative)
        config.yml                ns-viewer --load-config out_dir/innout-nerfacto/config.yml
        nerfstudio_models/step-NNNNNNNNN.ckpt   the final checkpoint
        dataparser_transforms.json              scene frame -> nerfstudio frame
        transforms.json           the training data as nerfstudio reads it (paths relative to it)
        innout_nerf.json          what the renderer needs besides the checkpoint
      curves.png                  loss, batch PSNR and learning rates over the steps
      tensorboard/                the same as TensorBoard scalars (pretrain.tensorboard)
      summary.json                iterations, seconds, rays_per_second, PSNR/SSIM estimates ...
      config.yaml                 the resolved method config

Nothing is rendered in full here: later stages render what they read (rule
render_pretrain: the test views' evaluation boxes); the quality figures of the summary
come from a few random patches per view (:func:`patch_quality`).

Training runs in ``work_dir`` (persistent across reruns, unlike Snakemake outputs): a
checkpoint every ``pretrain.steps_per_checkpoint`` steps (model, optimisers, schedulers,
RNG states, step). A rerun with the same settings resumes from the last one. The output
folder is assembled in a temporary sibling and renamed at the end.

Checkpoint steps follow nerfstudio: ``step-N`` holds the state after iteration N
(0-based), so a run of ``iterations`` steps ends with ``step-{iterations-1}`` and resumes
at N + 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

from innout.cameras import Camera, Intrinsics
from innout.devices import stage_device
from innout.errors import InputError, StageError

_log = logging.getLogger("innout.pretrain")

NS_DIR = "innout-nerfacto"  # nerfstudio's run folder inside out_dir (= the method name)


# --------------------------------------------------------------------------------------
# the scene as the stage sees it
# --------------------------------------------------------------------------------------


@dataclass
class Frame:
    name: str
    split: str  # "train" | "test" | other
    image: Path
    nerf_mask: Optional[Path]  # nerfstudio mask: 0 = ignore
    object_mask: Optional[Path]  # 255 = object
    camera: Camera
    raw: dict


def _abs(base: Path, value: str) -> Path:
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
                image=_abs(base, fr["file_path"]),
                nerf_mask=_abs(base, fr["mask_path"]) if fr.get("mask_path") else None,
                object_mask=_abs(base, fr["innout_object_mask"]) if fr.get("innout_object_mask") else None,
                camera=Camera(c2w, intr),
                raw=fr,
            )
        )
    by_path = {os.path.normpath(f.image): f for f in frames}
    if "train_filenames" in meta:
        train = []
        for name in meta["train_filenames"]:
            key = os.path.normpath(_abs(base, name))
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


# --------------------------------------------------------------------------------------
# images and metrics
# --------------------------------------------------------------------------------------


def load_rgb(path: Path) -> np.ndarray:
    img = Image.open(path)
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32)[..., :3] / 255.0
    return arr


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


def ssim_map(pred: np.ndarray, gt: np.ndarray, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel SSIM (H, W), averaged over channels: Gaussian window, reflect padding,
    the usual constants for images in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float64)).permute(2, 0, 1)[None]
    y = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float64)).permute(2, 0, 1)[None]
    c = x.shape[1]
    half = window // 2
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - half) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    pad = min(half, x.shape[2] - 1, x.shape[3] - 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = torch.nn.functional.pad(t, (pad, pad, pad, pad), mode="reflect") if pad > 0 else t
        if pad < half:  # tiny images: pad the rest with edge values
            extra = half - pad
            t = torch.nn.functional.pad(t, (extra, extra, extra, extra), mode="replicate")
        return torch.nn.functional.conv2d(t, kernel, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s[0].mean(0).numpy()


def colourise_depth(depth: np.ndarray, accumulation: Optional[np.ndarray] = None) -> np.ndarray:
    """uint8 RGB of a depth map (turbo colormap, 1st-99th percentile range)."""
    from nerfstudio.utils import colormaps

    finite = np.isfinite(depth)
    if not finite.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    lo, hi = np.percentile(depth[finite], [1, 99])
    d = np.clip((np.nan_to_num(depth, nan=hi) - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = colormaps.apply_colormap(torch.from_numpy(d[..., None].astype(np.float32)), colormaps.ColormapOptions("turbo")).numpy()
    if accumulation is not None:
        a = np.clip(accumulation, 0, 1)[..., None]
        rgb = rgb * a + (1 - a)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------
# checkpoints and determinism
# --------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """RNG states as plain lists/tensors (loadable with torch.load(weights_only=True))."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            torch.cuda.set_rng_state_all(state["cuda"])


# settings that do not change the trained model: changing them keeps a run resumable
_NOT_IN_FINGERPRINT = ("steps_per_checkpoint", "log_every_steps", "eval_rays_per_chunk", "eval_patches_per_view",
                       "eval_patch_size", "tensorboard")


def _fingerprint(cfg: Any, transforms_bytes: bytes) -> str:
    """What a checkpoint in the work dir must have been trained with to be resumed."""
    from omegaconf import OmegaConf

    pre = OmegaConf.to_container(cfg.pretrain, resolve=True) if not isinstance(cfg.pretrain, dict) else dict(cfg.pretrain)
    for key in _NOT_IN_FINGERPRINT:
        pre.pop(key, None)
    blob = json.dumps({"pretrain": pre, "seed": int(cfg.seed)}, sort_keys=True).encode()
    h = hashlib.sha256(blob)
    h.update(hashlib.sha256(transforms_bytes).digest())
    return h.hexdigest()[:16]


def plain_state(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into Python numbers/tensors.

    nerfstudio's learning-rate schedules compute with numpy, so optimiser and scheduler
    states hold numpy floats; torch >= 2.6 loads with ``weights_only=True`` by default
    (nerfstudio's ``eval_setup`` included), which refuses numpy objects."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        items = [(k, plain_state(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [plain_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain_state(v) for v in obj)
    return obj


def _save_checkpoint(ckpt_dir: Path, step: int, pipeline, optimizers, grad_scaler, extra: dict) -> Path:
    """nerfstudio's checkpoint layout (plus an ``innout`` entry), written atomically;
    older checkpoints in the folder are removed once the new one is in place."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:09d}.ckpt"
    tmp = ckpt_dir / f".step-{step:09d}.ckpt.tmp"
    state = {
        "step": step,
        "pipeline": pipeline.state_dict(),
        "optimizers": {k: v.state_dict() for k, v in optimizers.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in optimizers.schedulers.items()},
        "scalers": grad_scaler.state_dict(),
        "innout": extra,
    }
    torch.save(plain_state(state), tmp)
    os.replace(tmp, path)
    for old in ckpt_dir.glob("step-*.ckpt"):
        if old != path:
            old.unlink()
    return path


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------


class _Quiet:
    """Silence nerfstudio's rich console (its messages go to stdout, not our log)."""

    def __enter__(self):
        from nerfstudio.utils.rich_utils import CONSOLE

        self.console, self.was = CONSOLE, CONSOLE.quiet
        CONSOLE.quiet = True
        return self

    def __exit__(self, *exc):
        self.console.quiet = self.was
        return False


CURVE_POINTS = 200
"""About this many points of each training curve (TensorBoard and curves.png)."""
CURVE_PANELS = {"losses": ["loss/total", "loss/rgb_loss", "loss/interlevel_loss", "loss/distortion_loss"],
                "PSNR of the training batch (dB)": ["psnr/train_batch"],
                "learning rate": ["lr/fields", "lr/proposal_networks"]}


def _curve_scalars(loss: torch.Tensor, loss_dict: dict, metrics: dict, optimizers: Any) -> dict:
    """Losses, the batch PSNR and every optimiser's learning rate at one step."""
    out = {"loss/total": float(loss.detach())}
    out.update({f"loss/{k}": float(v.detach()) for k, v in loss_dict.items()})
    if "psnr" in metrics:
        out["psnr/train_batch"] = float(metrics["psnr"].detach())
    for name, optimizer in optimizers.optimizers.items():
        out[f"lr/{name}"] = float(optimizer.param_groups[0]["lr"])
    return out


def sample_patches(width: int, height: int, count: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """``count`` boxes ``(y0, y1, x0, x1)`` of ``size`` x ``size`` px (clipped to the image)
    at uniformly random places inside a ``width`` x ``height`` image."""
    pw, ph = min(size, width), min(size, height)
    return [(int(y), int(y) + ph, int(x), int(x) + pw)
            for y, x in zip(rng.integers(0, height - ph + 1, count), rng.integers(0, width - pw + 1, count))]


def patch_quality(renderer: Any, train: list[Frame], test: list[Frame], per_view: int, size: int, seed: int,
                  log: logging.Logger) -> dict:
    """How well the NeRF reproduces what it was allowed to see, estimated from
    ``per_view`` random ``size`` px patches of every view instead of whole renders:

    * ``psnr_train_unmasked``: per train view the PSNR over its patches' unmasked pixels,
      mean over the views;
    * ``psnr_test_outside_mask`` / ``ssim_test_outside_mask`` (scenes with ground-truth
      test views): the same outside the test views' masks, and SSIM (11x11 Gaussian,
      sigma 1.5) of the patch pixels whose window lies inside the patch.

    Patches fall uniformly over each view, so these are unbiased estimates of the
    full-view values (SSIM: of its value away from the image border) at a fraction of the
    cost; same seed, same patches."""
    from innout.progress import Progress

    rng = np.random.default_rng(seed)
    margin = 5  # half of SSIM's 11 px window
    jobs = [(f, sample_patches(f.camera.intrinsics.width, f.camera.intrinsics.height, per_view, size, rng))
            for f in [*train, *test]]
    rays = sum((b[1] - b[0]) * (b[3] - b[2]) for _, boxes in jobs for b in boxes)
    psnr_train, psnr_test, ssim_test = [], [], []
    with Progress("pretrain quality patches", len(jobs), rays, log=log) as progress:
        for f, boxes in jobs:
            gt = load_rgb(f.image)
            keep = load_keep_mask(f, gt.shape[:2])
            errors, ssims = [], []
            for y0, y1, x0, x1 in boxes:
                cam = f.camera.with_intrinsics(f.camera.intrinsics.cropped(y0, y1, x0, x1))
                rgb = renderer.render_camera(cam, return_samples=False, progress=progress.advance)["rgb"].cpu().numpy()
                gt_patch, keep_patch = gt[y0:y1, x0:x1], keep[y0:y1, x0:x1]
                errors.append(((rgb - gt_patch) ** 2)[keep_patch])
                if f.split == "test" and min(y1 - y0, x1 - x0) > 2 * margin:
                    inner = (slice(margin, -margin), slice(margin, -margin))
                    ssims.append(ssim_map(rgb, gt_patch)[inner][keep_patch[inner]])
            progress.item_done()
            squared = np.concatenate(errors) if errors else np.zeros((0, 3))
            if squared.size:
                value = float(10.0 * math.log10(1.0 / max(float(squared.mean()), 1e-12)))
                (psnr_test if f.split == "test" else psnr_train).append(value)
            kept = np.concatenate(ssims) if ssims else np.zeros(0)
            if kept.size:
                ssim_test.append(float(kept.mean()))
    return {
        "psnr_train_unmasked": _mean(psnr_train),
        "psnr_test_outside_mask": _mean(psnr_test) if test else None,
        "ssim_test_outside_mask": _mean(ssim_test) if test else None,
        "quality_patches": {"per_view": per_view, "size": size, "rays": int(rays)},
        "psnr_definition": f"mean over views of the PSNR over the unmasked pixels (test: outside the object mask) of "
                           f"{per_view} random {size} px patches per view (an estimate of the full-view value)",
        "ssim_definition": "SSIM (11x11 Gaussian, sigma 1.5) of the same test patches at the pixels whose window lies "
                           "inside the patch and outside the mask, mean over pixels, then over views",
    }


def run_pretrain(
    transforms: Path,
    out_dir: Path,
    work_dir: Path,
    cfg: Any,
    log: Optional[logging.Logger] = None,
    *,
    on_step: Optional[Callable[[int], None]] = None,
    quality_patches: bool = True,
) -> dict:
    """Train the geometry NeRF and write ``out_dir`` (see the module docstring).

    ``quality_patches=False`` skips the PSNR/SSIM estimate from rendered patches (its keys
    are then None) for callers that render what they need themselves (the masks stage).

    ``cfg``: the resolved method config (``cfg.pretrain``, ``cfg.seed``, ``cfg.device``).
    ``on_step(step)`` is called after every completed iteration (and after that
    iteration's checkpoint, if any): tests interrupt training from it.
    Returns the summary dict (also ``out_dir/summary.json``).
    """
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    from innout.nerf import NerfSettings, make_trainer_config, rebase_transforms, resolve_implementation, write_folder_config
    from innout.render import SIDECAR, NerfRenderer, SceneFrame, latest_checkpoint
    from innout.stage import atomic_dir
    from innout.training_log import TrainingLog

    log = log or _log
    t_stage = time.perf_counter()
    transforms, out_dir, work_dir = Path(transforms).resolve(), Path(out_dir).resolve(), Path(work_dir).resolve()
    meta, frames, train, test = read_scene(transforms)
    settings = NerfSettings.from_pretrain(cfg.pretrain)
    if settings.iterations < 1:
        raise InputError("pretrain.iterations", "must be at least 1")
    device_t, device_warning = stage_device(cfg, "pretrain")
    device = str(device_t)
    settings.implementation = resolve_implementation(settings.implementation, device)
    seed = int(cfg.seed)
    w, h = train[0].camera.intrinsics.width, train[0].camera.intrinsics.height
    log.info(
        "pretrain: %d train views, %d ground-truth test views, %dx%d, %d iterations x %d rays on %s (nerfacto implementation %s)",
        len(train), len(test), w, h, settings.iterations, settings.rays_per_batch, device, settings.implementation,
    )

    # ---- work dir: resumable state ------------------------------------------------
    ns_data = nerfstudio_transforms(meta, frames, train, test)
    ns_data_text = json.dumps(ns_data, indent=1)
    # a checkpoint of the other implementation (tcnn / torch) has another layout
    fingerprint = _fingerprint(cfg, ns_data_text.encode() + settings.implementation.encode())
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file = work_dir / "run.json"
    ckpt_dir = work_dir / "checkpoints"
    if run_file.is_file():
        previous = json.loads(run_file.read_text()).get("fingerprint")
        if previous != fingerprint and ckpt_dir.exists():
            log.warning("work dir %s holds a run with other settings or data: starting over", work_dir)
            for f in ckpt_dir.glob("*.ckpt"):
                f.unlink()
    run_file.write_text(json.dumps({"fingerprint": fingerprint, "transforms": str(transforms)}, indent=1))
    data_json = work_dir / "data" / "transforms.json"
    data_json.parent.mkdir(parents=True, exist_ok=True)
    data_json.write_text(ns_data_text)

    # ---- nerfstudio pipeline --------------------------------------------------------
    if settings.pose_scale_factor <= 0:
        settings.pose_scale_factor, why = auto_pose_scale_factor(data_json, train)
        log.info("pose_scale_factor auto: %.4g (%s)", settings.pose_scale_factor, why)
    seed_everything(seed)
    mixed = bool(settings.mixed_precision) and device.startswith("cuda")
    trainer_cfg = make_trainer_config(settings, data=data_json, output_dir=work_dir, experiment_name="run", timestamp="", device=device.split(":")[0])
    grad_scaler = torch.amp.GradScaler("cuda", enabled=mixed)
    t0 = time.perf_counter()
    with _Quiet():
        pipeline = trainer_cfg.pipeline.setup(device=device, test_mode="val", world_size=1, local_rank=0, grad_scaler=grad_scaler)
    dp_out = pipeline.datamanager.train_dataparser_outputs
    frame_map = SceneFrame(dp_out.dataparser_transform.cpu().numpy(), float(dp_out.dataparser_scale))
    _check_frame(frame_map, dp_out, train)
    log.info("nerfstudio pipeline ready in %.1f s (scene -> nerfstudio scale %.4g)", time.perf_counter() - t0, frame_map.scale)
    optimizers = Optimizers(trainer_cfg.optimizers.copy(), pipeline.get_param_groups())
    callbacks = pipeline.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=grad_scaler, pipeline=pipeline, trainer=None)
    )
    model = pipeline.model

    # ---- resume ------------------------------------------------------------------------
    start, train_seconds, resumed_from, history = 0, 0.0, None, []
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        state = torch.load(last, map_location="cpu", weights_only=False)
        pipeline.load_pipeline(state["pipeline"], state["step"])
        optimizers.load_optimizers(state["optimizers"])
        optimizers.load_schedulers(state["schedulers"])
        grad_scaler.load_state_dict(state["scalers"])
        extra = state.get("innout", {})
        if "rng" in extra:
            _set_rng_state(extra["rng"])
        ps = extra.get("proposal_sampler")
        if ps:
            model.proposal_sampler._steps_since_update = int(ps["steps_since_update"])
            model.proposal_sampler._step = int(ps["step"])
        train_seconds = float(extra.get("train_seconds", 0.0))
        history = extra.get("curves", [])
        start = int(state["step"]) + 1
        resumed_from = start
        log.info("resuming from step %d (checkpoint %s)", start, last.name)
        del state

    # ---- train ---------------------------------------------------------------------------
    curves = TrainingLog(work_dir / "tensorboard" if bool(cfg.pretrain.tensorboard) else None, start_step=start)
    curves.load_state(history)
    n_iter = settings.iterations
    curve_every = max(1, n_iter // CURVE_POINTS)
    rays = settings.rays_per_batch
    log_every = max(1, int(_cfg_get(cfg.pretrain, "log_every_steps", 50)))
    every_ckpt = max(1, settings.steps_per_checkpoint)
    dev_type = device.split(":")[0]
    loss_val, psnr_val = float("nan"), float("nan")
    window_t, window_steps = time.perf_counter(), 0
    t_train = time.perf_counter()
    seconds_before = train_seconds
    step = start - 1

    def extra_state() -> dict:
        return {
            "rng": _rng_state(),
            "train_seconds": seconds_before + (time.perf_counter() - t_train),
            "fingerprint": fingerprint,
            "curves": curves.state(),
            "proposal_sampler": {
                "steps_since_update": int(model.proposal_sampler._steps_since_update),
                "step": int(model.proposal_sampler._step),
            },
        }

    for step in range(start, n_iter):
        pipeline.train()
        for cb in callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        with torch.autocast(device_type=dev_type, enabled=mixed):
            _, loss_dict, metrics = pipeline.get_train_loss_dict(step=step)
            loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise StageError("pretrain", f"loss became {float(loss)} at step {step}")
        grad_scaler.scale(loss).backward()
        optimizers.optimizer_scaler_step_all(grad_scaler)
        scale_before = grad_scaler.get_scale()
        grad_scaler.update()
        if scale_before <= grad_scaler.get_scale():
            for sched in optimizers.schedulers.values():
                sched.step()
        for cb in callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        window_steps += 1
        done = step + 1
        if done % curve_every == 0 or done == n_iter:
            curves.add(done, _curve_scalars(loss, loss_dict, metrics, optimizers))
        if done % log_every == 0 or done == n_iter or step == start:
            loss_val = float(loss.detach())
            psnr_val = float(metrics["psnr"].detach()) if "psnr" in metrics else float("nan")
            now = time.perf_counter()
            rps = window_steps * rays / max(now - window_t, 1e-9)
            eta = (n_iter - done) * rays / max(rps, 1e-9)
            log.info("step %d/%d loss %.5f psnr %.2f dB %.0f rays/s eta %.0f s", done, n_iter, loss_val, psnr_val, rps, eta)
            window_t, window_steps = now, 0
        if done % every_ckpt == 0 and done < n_iter:
            _save_checkpoint(ckpt_dir, step, pipeline, optimizers, grad_scaler, extra_state())
        if on_step is not None:
            on_step(step)

    ran = max(0, n_iter - start)
    train_seconds = seconds_before + (time.perf_counter() - t_train if ran else 0.0)
    if ran or last is None or int(last.name[5:14]) != n_iter - 1:
        final_ckpt = _save_checkpoint(ckpt_dir, n_iter - 1, pipeline, optimizers, grad_scaler, extra_state())
    else:
        final_ckpt = last
        log.info("training was already complete (%d steps)", n_iter)
    log.info("training: %d steps in %.1f s (%d this run)", n_iter, train_seconds, ran)

    # ---- outputs ---------------------------------------------------------------------------
    # nothing is rendered in full here: the "before" of the metrics is rule render_pretrain's
    # (test-view boxes), and the quality check below renders a few patches per view
    renderer = NerfRenderer(model, frame_map, device=device, chunk=int(settings.eval_rays_per_chunk))
    t_quality = time.perf_counter()
    if quality_patches:
        quality = patch_quality(renderer, train, test, int(cfg.pretrain.eval_patches_per_view),
                                int(cfg.pretrain.eval_patch_size), seed, log)
    else:
        quality = {"psnr_train_unmasked": None, "psnr_test_outside_mask": None, "ssim_test_outside_mask": None,
                   "quality_patches": None}
    quality_seconds = time.perf_counter() - t_quality
    with atomic_dir(out_dir) as tmp:
        ns_base = tmp / NS_DIR
        final_ns = out_dir / NS_DIR
        (ns_base / "nerfstudio_models").mkdir(parents=True)
        (ns_base / "transforms.json").write_text(json.dumps(rebase_transforms(ns_data, transforms.parent, final_ns), indent=1))
        out_cfg = make_trainer_config(settings, device=dev_type)
        out_cfg.max_num_iterations = n_iter
        write_folder_config(out_cfg, ns_base, final_ns)
        dp_out.save_dataparser_transform(ns_base / "dataparser_transforms.json")
        (ns_base / SIDECAR).write_text(
            json.dumps(
                {
                    "num_train_data": len(pipeline.datamanager.train_dataset),
                    "aabb": dp_out.scene_box.aabb.tolist(),
                    "scene_to_nerf": frame_map.to_json(),
                    "train_views": [f.name for f in train],
                    "step": n_iter - 1,
                },
                indent=1,
            )
        )
        # the final checkpoint without the resume-only entries (RNG states etc.)
        state = torch.load(final_ckpt, map_location="cpu", weights_only=False)
        state.pop("innout", None)
        torch.save(plain_state(state), ns_base / "nerfstudio_models" / final_ckpt.name)
        del state
        curves.plot(tmp / "curves.png", f"pretrain: {len(train)} train views, {n_iter} steps of {rays} rays", CURVE_PANELS)
        curves.export(tmp)

        summary = {
            "iterations": n_iter,
            "seconds": round(train_seconds, 3),
            "rays_per_second": round(n_iter * rays / max(train_seconds, 1e-9), 1),
            "rays_per_batch": rays,
            **quality,
            "n_train_views": len(train),
            "n_test_views": len(test),
            "resolution": [w, h],
            "device": device,
            "device_warning": device_warning,
            "implementation": settings.implementation,
            "seed": seed,
            "preset": _cfg_get(cfg, "preset", None),
            "resumed_from_step": resumed_from,
            "steps_this_run": ran,
            "final_loss": None if math.isnan(loss_val) else loss_val,
            "quality_seconds": round(quality_seconds, 3),
            "stage_seconds": round(time.perf_counter() - t_stage, 3),
            "dataparser_scale": frame_map.scale,
            "nerfstudio_config": f"{NS_DIR}/config.yml",
            "checkpoint": f"{NS_DIR}/nerfstudio_models/{final_ckpt.name}",
            "tensorboard": "tensorboard" if curves.tensorboard_dir is not None else None,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        from innout.config import write_resolved

        write_resolved(cfg, tmp / "config.yaml")
    log.info(
        "pretrain done: PSNR train (unmasked) %s dB, test outside mask %s dB / SSIM %s",
        _fmt(summary["psnr_train_unmasked"]), _fmt(summary["psnr_test_outside_mask"]), _fmt(summary["ssim_test_outside_mask"]),
    )
    return summary


def _cfg_get(node: Any, key: str, default: Any) -> Any:
    try:
        return node[key] if key in node else default
    except TypeError:
        return getattr(node, key, default)


def auto_pose_scale_factor(data_json: Path, train: list[Frame]) -> tuple[float, str]:
    """Scale factor (<= 1) that puts the train views' median near bound at distance 1 in
    nerfstudio's frame; 1.0 when the frames have no ``innout_bounds``."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    nears = []
    for f in train:
        b = f.raw.get("innout_bounds")
        if isinstance(b, (list, tuple)) and len(b) == 2 and b[0] is not None and np.isfinite(b[0]) and b[0] > 0:
            nears.append(float(b[0]))
    if not nears:
        return 1.0, "no innout_bounds in the frames"
    with _Quiet():
        parser = NerfstudioDataParserConfig(data=Path(data_json), downscale_factor=1).setup()
        base = float(parser.get_dataparser_outputs(split="train").dataparser_scale)
    near = float(np.median(nears))
    factor = min(1.0, 1.0 / (base * near))
    return factor, f"median near bound {near:.4g} x nerfstudio scale {base:.4g}"


def _mean(values: list) -> Optional[float]:
    return float(np.mean(values)) if values else None


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _check_frame(frame: "Any", dp_out: Any, train: list[Frame]) -> None:
    """The saved transform must map every train camera exactly onto nerfstudio's."""
    by_path = {os.path.normpath(f.image): f for f in train}
    c2ws = dp_out.cameras.camera_to_worlds.cpu().numpy()
    worst = 0.0
    for path, c2w_ns in zip(dp_out.image_filenames, c2ws):
        f = by_path.get(os.path.normpath(path))
        if f is None:
            raise StageError("pretrain", f"nerfstudio trains on {path}, which is not a train view")
        worst = max(worst, float(np.abs(frame.c2w_to_nerf(f.camera.c2w) - c2w_ns).max()))
    if worst > 1e-4:
        raise StageError("pretrain", f"scene -> nerfstudio transform does not reproduce nerfstudio's poses (error {worst:.2e})")
