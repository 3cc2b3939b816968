# Over 600 lines: the stage's two rules (a shard, the gather) share their fingerprint, inputs and checks; ELA, ILA and the diffusion calls live below it.
"""Stage 4: aligned multi-view inpainting (ELA + ILA), split into shards of views.

Inputs: the posed scene (``transforms.json``: cameras, images, object masks of the train
views) and the base stage's folder ``results/{scene}/base/``::

    summary.json   winner (the base view), prompt, seed, weights (their provenance)
    base.png       the winner's inpainting at the working resolution
    mask.png       its mask (255 = inpainted)
    noise.pt       its initial latent z_T^p, (4, h, w) or (1, 4, h, w) at latent size
    nerf/          the NeRF after the prior fit (NerfRenderer.from_config(base/nerf))

For every train view (the base view too):

* **ELA**: its initial latent is the base noise composited through the NeRF
  (:func:`innout.ela.align_noise_views`, one ray per latent pixel; fresh noise from
  :func:`innout.ela.view_seed` where nothing aligns). The base view keeps ``z_T^p``.
* **ILA**: all views are denoised together with :func:`innout.diffusion.inpaint_views`;
  the base trajectory runs once per step and every target batch attends to its keys
  and values. The base view's output is its own plain inpainting (= ``base.png`` when
  the base stage used the same inpainting settings; the summary says whether it did).

Four variants are inpainted, the method's ablations, for the consistency score:

=============  ==============================  ==================
variant        targets' initial latents        attention
=============  ==============================  ==================
independent    fresh noise (``view_seed``)     own only
ela            ELA                             own only
ila            fresh noise                     ILA (base K/V)
ela_ila        ELA                             ILA: the output
=============  ==============================  ==================

The base view starts from ``z_T^p`` in every variant: its fill is the base stage's, the
one every variant's targets are scored against. (Until 2026-12 ``independent`` started
the base view from fresh noise too, so it was scored against another fill than ``ila``:
on the demo that alone made ``ila`` look 27 % worse than ``independent``, 20.63 vs 16.31
grey levels, while ILA moved the score by 0.04.) "fresh noise" is exactly the noise ELA
falls back to where nothing aligns, so the variants differ only by what they ablate.
With ``inpaint.ela: off`` or ``inpaint.ila: false`` the corresponding variants coincide.

Sharding
--------
The targets (train views other than the base, sorted by name) are cut into denoising
batches of ``inpaint.batch_size``; a shard is a run of whole batches
(:func:`shard_plan`). Each shard recomputes the base trajectory (deterministic: same
inputs, same batch shape) and inpaints its batches; shard 0 also writes the base view.
The gather checks that the shards belong together: every shard records what its result
depends on (:func:`shard_inputs`: settings, models, seed, prompt, the base stage's files);
any difference is an error naming it. Their base trajectories (the base view's output of
each variant, saved by every shard that computed it) are then compared with a tolerance:
two GPU models, or two cuDNN kernel choices, give trajectories a few bits apart, which is
no error; the largest difference is reported in ``summary.json``
(``shard_base_difference``), and only a difference beyond ``inpaint.shard_tolerance``
(mean absolute difference inside the base view's mask, 8-bit grey levels) fails.
:func:`innout.diffusion.inpaint_views` encodes, denoises and decodes in the same groups
whatever other views are in the call, and every view's fresh noise comes from its name,
so the bytes of every output do not depend on the number of shards.
:func:`run_inpaint_shard` writes one shard's folder; :func:`gather_inpaint` checks and
merges the shards into the stage's output and scores consistency::

    out_dir/
      images/<view>.png                    ela_ila inpainting (the method's output), every train view
      noise/<view>.npy                     the initial latents used (float32, (4, h, w))
      variants/{independent,ela,ila}/<view>.png
      consistency.json                     per-view errors of every variant
      comparison.png                       a few views, one row per variant (report)
      summary.json, config.yaml

Consistency (``innout.consistency``): each target's inpainted mask pixels are carried
into the base view with the NeRF's depth (rendered for the masked pixels only) and
compared with that variant's base-view image there, inside the base's mask, occluded
reprojections dropped: mean absolute RGB error in 8-bit grey levels, averaged over the
views (lower is more consistent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, UnidentifiedImageError

from innout.cameras import Camera
from innout.config import write_resolved
from innout.consistency import UNIT, consistency_error
from innout.devices import resolve_device, stage_device
from innout.ela import align_noise_views, fresh_noise, view_seed
from innout.errors import InputError, StageError
from innout.frames import read_scene
from innout.images import save_png
from innout.models import check_manifest, load_inpainter
from innout.provenance import provenance_fields, summary_provenance, weakest, weights_label, weights_provenance
from innout.renderer import NerfRenderer, find_nerf_config
from innout.stage import atomic_dir
from innout.viz import contact_sheet, overlay_mask, with_weights_banner

_log = logging.getLogger("innout.inpaint")

# variant -> (ELA initial latents, ILA attention); ela_ila is the method's output
VARIANTS = {"independent": (False, False), "ela": (True, False), "ila": (False, True), "ela_ila": (True, True)}
OUTPUT_VARIANT = "ela_ila"
SHARD_MANIFEST = "shard.json"


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------


@dataclass
class View:
    name: str
    camera: Camera
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, True = inpaint


@dataclass
class BaseInputs:
    name: str
    image: np.ndarray  # (H, W, 3) uint8: the base stage's inpainting
    mask: np.ndarray  # (H, W) bool
    noise: torch.Tensor  # (4, h, w) float32, z_T^p
    prompt: str
    weights: Optional[str]  # the provenance the base stage records (innout.provenance)
    nerf_dir: Path
    summary: dict


def _read_png(path: Path, mode: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "missing")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise InputError(path, f"unreadable image ({err.__class__.__name__})") from None


def _read_mask(path: Path) -> np.ndarray:
    return _read_png(path, "L") > 127


def load_views(transforms: Path, names: Optional[Sequence[str]] = None) -> tuple[dict[str, Camera], dict[str, View]]:
    """Cameras of every train view (by name), and images/masks of ``names`` (all when None)."""

    _, _, train, _ = read_scene(transforms)
    cameras = {f.name: f.camera for f in train}
    wanted = sorted(cameras) if names is None else list(names)
    frames = {f.name: f for f in train}
    views = {}
    for name in wanted:
        frame = frames[name]
        if frame.object_mask is None:
            raise InputError(transforms, f"train view {name} has no object mask (innout_object_mask)")
        image = _read_png(frame.image, "RGB")
        mask = _read_mask(frame.object_mask)
        if mask.shape != image.shape[:2]:
            raise InputError(frame.object_mask, f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {image.shape[1]}x{image.shape[0]}")
        views[name] = View(name, frame.camera, image, mask)
    return cameras, views


def read_base(base_dir: Path, train_names: Sequence[str], size: tuple[int, int], latent_hw: tuple[int, int]) -> BaseInputs:
    """The base stage's outputs, checked: one-line :class:`InputError` naming the file.

    ``size`` ``(W, H)``: the working resolution; ``latent_hw``: the latent size the
    inpainting settings give (the base noise must have it)."""
    base_dir = Path(base_dir)
    summary_path = base_dir / "summary.json"
    if not summary_path.is_file():
        raise InputError(summary_path, "missing (run the base stage first)")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(summary_path, f"not valid JSON ({err})") from None
    winner = summary.get("winner") if isinstance(summary, dict) else None
    if not isinstance(winner, str) or not winner:
        raise InputError(summary_path, "has no 'winner' (the base view's name)")
    if winner not in train_names:
        raise InputError(summary_path, f"winner {winner!r} is not a train view of the scene")

    image = _read_png(base_dir / "base.png", "RGB")
    if (image.shape[1], image.shape[0]) != tuple(size):
        raise InputError(base_dir / "base.png", f"is {image.shape[1]}x{image.shape[0]}, the scene's views are {size[0]}x{size[1]}")
    mask = _read_mask(base_dir / "mask.png")
    if mask.shape != image.shape[:2]:
        raise InputError(base_dir / "mask.png", f"is {mask.shape[1]}x{mask.shape[0]}, base.png {image.shape[1]}x{image.shape[0]}")
    if not mask.any():
        raise InputError(base_dir / "mask.png", "is empty: the base view has nothing to inpaint")

    noise = _read_noise(base_dir / "noise.pt", latent_hw)
    nerf_dir = base_dir / "nerf"

    try:
        find_nerf_config(nerf_dir)
    except FileNotFoundError as err:
        raise InputError(nerf_dir, f"no NeRF after the prior fit ({err})") from None
    prompt = summary.get("prompt") or ""
    if not isinstance(prompt, str):
        raise InputError(summary_path, "'prompt' is not a string")
    return BaseInputs(winner, image, mask, noise, prompt, summary_provenance(summary), nerf_dir, summary)


def _read_noise(path: Path, latent_hw: tuple[int, int]) -> torch.Tensor:
    if not path.is_file():
        raise InputError(path, "missing")
    try:
        noise = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a corrupt or foreign file
        raise InputError(path, f"not a torch tensor file ({err.__class__.__name__})") from None
    if not isinstance(noise, torch.Tensor):
        raise InputError(path, f"holds a {type(noise).__name__}, not a tensor")
    if noise.ndim == 4 and noise.shape[0] == 1:
        noise = noise[0]
    expected = (4, *latent_hw)
    if tuple(noise.shape) != expected:
        raise InputError(path, f"shape {tuple(noise.shape)} does not match the latent size {expected} of the inpainting "
                               "settings (inpaint.resolution must be the base stage's)")
    noise = noise.detach().to(torch.float32)
    if not torch.isfinite(noise).all():
        raise InputError(path, "holds non-finite values")
    return noise


# --------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------


def shard_plan(names: Sequence[str], base: str, batch_size: int, n_shards: int) -> list[list[str]]:
    """The targets of every shard: the name-sorted train views other than the base, cut
    into denoising batches of ``batch_size``, the batches dealt out as evenly as possible
    in contiguous runs (a shard may be empty when there are more shards than batches)."""
    if n_shards < 1:
        raise ValueError(f"the number of shards must be >= 1, got {n_shards}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    targets = sorted(n for n in names if n != base)
    batches = [targets[s:s + batch_size] for s in range(0, len(targets), batch_size)]
    per, extra = divmod(len(batches), n_shards)
    plan, start = [], 0
    for shard in range(n_shards):
        count = per + (1 if shard < extra else 0)
        plan.append([name for batch in batches[start:start + count] for name in batch])
        start += count
    return plan


def _settings(cfg: Any) -> dict:
    """The inpainting keyword arguments of the method and of its ablations."""
    from innout.diffusion import inpaint_kwargs

    kwargs = inpaint_kwargs(cfg.inpaint)
    ila_lambda = kwargs.pop("ila_lambda")
    return {"kwargs": kwargs, "ila_lambda": ila_lambda}


def ela_kwargs(cfg: Any) -> dict:
    ip = cfg.inpaint
    return {"method": str(ip.ela), "min_visible": float(ip.ela_min_visible), "region": str(ip.ela_region),
            "mask_dilation": int(ip.ela_mask_dilation), "interpolation": str(ip.ela_interpolation)}


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def strided(mask: np.ndarray, stride: int) -> np.ndarray:
    """The mask's pixels on every ``stride``-th row and column (the consistency score's samples)."""
    sel = np.zeros_like(mask)
    sel[::stride, ::stride] = mask[::stride, ::stride]
    return sel


def masked_depth(renderer: Any, camera: Camera, mask: np.ndarray, stride: int = 1) -> np.ndarray:
    """The NeRF's depth (distance along the unit ray, scene units) of the pixels of
    ``mask`` on a grid of every ``stride``-th row and column; NaN elsewhere. Rendering
    only these rays is what makes the consistency score cheap."""
    sel = strided(mask, stride)
    depth = np.full(mask.shape, np.nan, np.float32)
    if not sel.any():
        return depth
    origins, dirs = camera.rays()
    k = camera.intrinsics
    out = renderer.render_rays(origins[sel], dirs[sel], return_samples=False, pixel_area=1.0 / (k.fx * k.fy))
    depth[sel] = out["depth"].cpu().numpy()
    return depth


def _load_pipe(cfg: Any, manifest: Optional[Path], log: logging.Logger):

    cache_dir = cfg.models.cache_dir
    if manifest is not None:
        check_manifest(manifest, cfg.models)
        cache_dir = str(Path(manifest).parent)
    provenance = weights_provenance(cfg.models)
    log.info("inpaint: loading the inpainter %s (%s weights)", cfg.models.inpainter, provenance)
    if weights_label(provenance):
        log.warning("models %s: %s", cfg.models.name, weights_label(provenance))
    return load_inpainter(str(cfg.models.inpainter), device=resolve_device(cfg.device), dtype=str(cfg.models.dtype),
                          cache_dir=cache_dir, options=cfg.models)


def run_inpaint_shard(
    transforms: Path,
    base_dir: Path,
    out_dir: Path,
    cfg: Any,
    shard: int,
    n_shards: int,
    *,
    manifest: Optional[Path] = None,
    pipe: Any = None,
    log: Optional[logging.Logger] = None,
) -> dict:
    """Inpaint shard ``shard`` of ``n_shards`` and write its folder ``out_dir``:
    ``images/``, ``noise/``, ``variants/<v>/`` (its views, PNG/NPY), ``depth/<view>.npy``
    (NeRF depth of the masked pixels, for the consistency score) and ``shard.json``.

    ``manifest``: the models cache's ``manifest.json`` (checked against ``cfg.models``;
    its folder is the cache); ``pipe``: an already loaded pipeline (tests)."""
    from innout.diffusion import GUIDANCE_MODES, guidance, latent_size

    log = log or _log
    t_stage, cpu_stage = time.perf_counter(), time.process_time()
    transforms, base_dir, out_dir = Path(transforms), Path(base_dir), Path(out_dir)
    if not 0 <= shard < n_shards:
        raise StageError("inpaint", f"shard {shard} is not one of the {n_shards} shards")
    cameras, _ = load_views(transforms, names=[])
    names = sorted(cameras)
    k0 = cameras[names[0]].intrinsics
    size = (k0.width, k0.height)
    settings = _settings(cfg)
    kwargs = settings["kwargs"]
    latent_hw = latent_size(*size, kwargs["resolution"])
    base = read_base(base_dir, names, size, latent_hw)
    targets = shard_plan(names, base.name, kwargs["batch_size"], n_shards)[shard]
    own_base = shard == 0  # shard 0 writes the base view's outputs
    _, views = load_views(transforms, [base.name, *targets])
    seed = int(cfg.seed)
    log.info("inpaint shard %d/%d: %d target views%s, %dx%d at resolution %d (latent %dx%d), %d steps, base view %s",
             shard, n_shards, len(targets), " + the base view" if own_base else "", size[0], size[1],
             kwargs["resolution"], latent_hw[1], latent_hw[0], kwargs["steps"], base.name)

    device, device_warning = stage_device(cfg, "inpaint")
    renderer = NerfRenderer.from_config(base.nerf_dir, device=device)
    pipe = pipe if pipe is not None else _load_pipe(cfg, manifest, log)
    _, guidance_mode = guidance(pipe, base.prompt, "", kwargs["guidance_scale"], kwargs["skip_identical_guidance"])
    log.info("inpainting: %s", GUIDANCE_MODES[guidance_mode])

    # ---- initial latents: ELA (aligned) and fresh, per view ----------------------------
    t0 = time.perf_counter()
    ela = align_noise_views(renderer, views[base.name].camera, base.noise, {n: views[n].camera for n in targets},
                            {n: views[n].mask for n in targets}, seed=seed, **ela_kwargs(cfg)) if targets else {}
    ela_seconds = time.perf_counter() - t0
    fresh = {n: fresh_noise(tuple(base.noise.shape), view_seed(n, seed), "cpu") for n in targets}
    coverage = {n: {"aligned_fraction": r.stats["aligned_fraction"], "aligned_share_mean": r.stats["aligned_share_mean"]}
                for n, r in ela.items()}
    log.info("ELA: %d views in %.1f s, mean aligned fraction of the latent masks %.3f", len(ela), ela_seconds,
             float(np.mean([c["aligned_fraction"] for c in coverage.values()])) if coverage else float("nan"))

    # ---- the four variants -------------------------------------------------------------
    outputs: dict[str, dict[str, np.ndarray]] = {}
    inpaint_seconds, base_hashes, base_outputs = {}, {}, {}
    for variant, (use_ela, use_ila) in VARIANTS.items():
        t0 = time.perf_counter()
        outputs[variant], base_out = _inpaint_variant(pipe, views, base, targets, ela, fresh, use_ela, use_ila, own_base,
                                                      settings)
        inpaint_seconds[variant] = time.perf_counter() - t0
        if base_out is not None:
            base_hashes[variant] = _sha256(base_out)
            base_outputs[variant] = base_out
        log.info("inpainted %-11s %d views in %.1f s", variant, len(outputs[variant]), inpaint_seconds[variant])

    # ---- NeRF depth of the masked pixels, for the consistency score ---------------------
    t0 = time.perf_counter()
    stride = int(cfg.inpaint.consistency_stride)
    depths = {n: masked_depth(renderer, views[n].camera, views[n].mask, stride) for n in targets}
    if own_base:
        full = np.ones_like(base.mask)
        depths[base.name] = masked_depth(renderer, views[base.name].camera, full, 1)
    depth_seconds = time.perf_counter() - t0
    log.info("rendered the depth of %d views' masked pixels in %.1f s", len(depths), depth_seconds)

    written = [base.name, *targets] if own_base else list(targets)
    noises = {n: (ela[n].noise if n in ela else base.noise) for n in targets}
    if own_base:
        noises[base.name] = base.noise
    with atomic_dir(out_dir) as tmp:
        for name in written:
            save_png(tmp / "images" / f"{name}.png", outputs[OUTPUT_VARIANT][name])
            for variant in VARIANTS:
                if variant != OUTPUT_VARIANT:
                    save_png(tmp / "variants" / variant / f"{name}.png", outputs[variant][name])
            (tmp / "noise").mkdir(exist_ok=True)
            np.save(tmp / "noise" / f"{name}.npy", noises[name].cpu().numpy().astype(np.float32))
            (tmp / "depth").mkdir(exist_ok=True)
            np.save(tmp / "depth" / f"{name}.npy", depths[name])
        for variant, image in base_outputs.items():  # the base trajectories, for the gather's comparison
            save_png(tmp / "base" / f"{variant}.png", image)
        manifest_data = {
            "shard": shard, "shards": n_shards, "base_view": base.name, "views": written, "targets": list(targets),
            "inputs": shard_inputs(cfg, base_dir, base),
            "ela_coverage": coverage, "ela_stats": {n: r.stats for n, r in ela.items()},
            "base_output_sha256": base_hashes, "ela_seconds": ela_seconds, "inpaint_seconds": inpaint_seconds,
            "depth_seconds": depth_seconds, "seconds": time.perf_counter() - t_stage,
            "cpu_seconds": time.process_time() - cpu_stage, "threads": torch.get_num_threads(),
            "latent_size": list(latent_hw), "size": list(size), "seed": seed, "prompt": base.prompt, "guidance": guidance_mode,
            "device": str(device), "device_warning": device_warning, "dtype": str(pipe.unet.dtype).replace("torch.", ""),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
        (tmp / SHARD_MANIFEST).write_text(json.dumps(manifest_data, indent=2) + "\n")
    log.info("inpaint shard %d/%d done in %.1f s", shard, n_shards, time.perf_counter() - t_stage)
    return manifest_data


def _inpaint_variant(pipe, views: dict[str, View], base: BaseInputs, targets: list[str], ela: dict, fresh: dict,
                     use_ela: bool, use_ila: bool, own_base: bool, settings: dict) -> tuple[dict, Optional[np.ndarray]]:
    """One variant's images of the shard's views, and the base view's output when it
    was computed (for the cross-shard determinism check)."""
    from innout.diffusion import inpaint_views

    kwargs = dict(settings["kwargs"], prompt=base.prompt, progress=False)
    ila_lambda = settings["ila_lambda"] if use_ila else None
    noise = {n: (ela[n].noise if use_ela else fresh[n]) for n in targets}
    # the base view starts from z_T^p in every variant (module doc): the base stage's fill is
    # the one all variants are scored against, whatever they do to the targets
    base_noise = base.noise
    base_view = views[base.name]
    out: dict[str, np.ndarray] = {}
    base_out = None
    if ila_lambda is not None and targets:
        names = [base.name, *targets]
        init = torch.stack([base_noise, *[noise[n] for n in targets]])
        images = inpaint_views(pipe, [base_view.image, *[views[n].image for n in targets]],
                               [base.mask, *[views[n].mask for n in targets]], init, ila_lambda=ila_lambda, base_index=0,
                               **kwargs)
        out = dict(zip(names, images))
        base_out = out[base.name]
        if not own_base:
            del out[base.name]
        return out, base_out
    if targets:
        images = inpaint_views(pipe, [views[n].image for n in targets], [views[n].mask for n in targets],
                               torch.stack([noise[n] for n in targets]), ila_lambda=None, base_index=None, **kwargs)
        out.update(zip(targets, images))
    if own_base:
        out[base.name] = inpaint_views(pipe, [base_view.image], [base.mask], base_noise[None], ila_lambda=None,
                                       base_index=None, **kwargs)[0]
        base_out = out[base.name]
    return out, base_out


# --------------------------------------------------------------------------------------
# gather
# --------------------------------------------------------------------------------------


def _read_shard(folder: Path) -> dict:
    path = Path(folder) / SHARD_MANIFEST
    if not path.is_file():
        raise InputError(path, "missing: the shard did not finish")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def shard_inputs(cfg: Any, base_dir: Path, base: BaseInputs) -> dict:
    """What a shard's outputs depend on besides the numerics of its device, one digest per
    item: the inpainting settings, the models, the seed, the prompt, the base stage's
    files. Shards of one scene must agree on every item (:func:`_check_shards`)."""
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    nerf_config = next(Path(base_dir / "nerf").rglob("config.yml"), None)
    checkpoints = sorted((nerf_config.parent / "nerfstudio_models").glob("*.ckpt")) if nerf_config else []
    return {
        "settings": digest(json.dumps(_plain(cfg.inpaint), sort_keys=True).encode()),
        "models": digest(json.dumps({k: str(v) for k, v in _plain(cfg.models).items()
                                     if k not in ("attention_slicing", "vae_tiling", "cpu_offload")}, sort_keys=True).encode()),
        "seed": str(int(cfg.seed)),
        "prompt": digest(base.prompt.encode()),
        "base_view": base.name,
        "base_image": _sha256(base.image),
        "base_mask": _sha256(base.mask),
        "base_noise": _sha256(base.noise.numpy()),
        "nerf": digest(json.dumps([[p.name, p.stat().st_size] for p in checkpoints]).encode()
                       + (nerf_config.read_bytes() if nerf_config else b"")),
    }


def _check_shards(shard_dirs: Sequence[Path], shards: list[dict], train_names: list[str]) -> str:
    """The shards belong together (same inputs: :func:`shard_inputs`) and cover every
    train view once; returns the base view."""
    n = len(shard_dirs)
    base_names = {s["base_view"] for s in shards}
    if len(base_names) != 1:
        raise StageError("inpaint", f"the shards used different base views: {sorted(base_names)}")
    for i, (folder, s) in enumerate(zip(shard_dirs, shards)):
        if s["shard"] != i or s["shards"] != n:
            raise InputError(folder, f"is shard {s['shard']} of {s['shards']}, expected shard {i} of {n}")
    reference = shards[0].get("inputs", {})
    for i, s in enumerate(shards[1:], start=1):
        differ = sorted(k for k in set(reference) | set(s.get("inputs", {})) if s.get("inputs", {}).get(k) != reference.get(k))
        if differ:
            raise StageError("inpaint", f"shard {i} ran with other inputs than shard 0 ({', '.join(differ)} differ): "
                                        f"rerun the inpaint stage's shards together (--forcerun inpaint_shard)")
    seen = [v for s in shards for v in s["views"]]
    if sorted(seen) != sorted(train_names) or len(set(seen)) != len(seen):
        missing = sorted(set(train_names) - set(seen))
        raise StageError("inpaint", f"the shards do not cover every train view once (missing: {missing[:5]})")
    return base_names.pop()


def compare_base_trajectories(shard_dirs: Sequence[Path], shards: list[dict], base_mask: np.ndarray,
                              tolerance: float) -> dict:
    """Every shard that denoised the base view must have got the same base trajectory up
    to numerics: per variant, each shard's base output against the first one's, inside
    the base view's mask (8-bit grey levels). Returns the largest differences (JSON);
    a mean difference above ``tolerance`` is a :class:`StageError` naming the shards."""
    report = {"tolerance_mean_abs": float(tolerance), "mean_abs": 0.0, "max_abs": 0, "compared": 0,
              "identical": True, "worst": None,
              "devices": sorted({s.get("device_name", s.get("device", "?")) for s in shards})}
    for variant in VARIANTS:
        outputs = [(i, _read_png(Path(d) / "base" / f"{variant}.png", "RGB")) for i, (d, s) in enumerate(zip(shard_dirs, shards))
                   if variant in s.get("base_output_sha256", {})]
        if len(outputs) < 2:
            continue
        first_i, first = outputs[0]
        for i, image in outputs[1:]:
            diff = np.abs(image.astype(np.int16) - first.astype(np.int16))[base_mask]
            mean, peak = float(diff.mean()), int(diff.max())
            report["compared"] += 1
            report["identical"] = report["identical"] and peak == 0
            if report["worst"] is None or mean > report["mean_abs"]:
                report.update(mean_abs=mean, worst={"variant": variant, "shards": [first_i, i]})
            report["max_abs"] = max(report["max_abs"], peak)
            if mean > tolerance:
                raise StageError("inpaint", f"variant {variant}: shard {i}'s base trajectory differs from shard {first_i}'s by "
                                            f"{mean:.2f} grey levels on average in the base mask (max {peak}), more than "
                                            f"inpaint.shard_tolerance={tolerance:g} (devices: {', '.join(report['devices'])})")
    return report


def _variant_path(root: Path, variant: str, name: str) -> Path:
    return root / "images" / f"{name}.png" if variant == OUTPUT_VARIANT else root / "variants" / variant / f"{name}.png"


def _consistency(out: Path, base_view: str, base_mask: np.ndarray, views: dict[str, View], depths: dict[str, np.ndarray]) -> dict:

    results = {}
    base_cam = views[base_view].camera
    targets = [n for n in sorted(views) if n != base_view]
    for variant in VARIANTS:
        base_image = _read_png(_variant_path(out, variant, base_view), "RGB")
        items = [(_read_png(_variant_path(out, variant, n), "RGB"), views[n].mask & np.isfinite(depths[n]), views[n].camera,
                  depths[n], n) for n in targets]
        results[variant] = consistency_error(base_image, base_cam, items, base_mask=base_mask, base_depth=depths[base_view])
    return results


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def gather_inpaint(
    transforms: Path,
    base_dir: Path,
    shard_dirs: Sequence[Path],
    out_dir: Path,
    cfg: Any,
    *,
    log: Optional[logging.Logger] = None,
) -> dict:
    """Merge the shards' folders into ``out_dir`` (see the module docstring), score the
    consistency of every variant and write ``summary.json``. Returns the summary."""

    log = log or _log
    t0 = time.perf_counter()
    shard_dirs = [Path(d) for d in shard_dirs]
    if not shard_dirs:
        raise StageError("inpaint", "no shards to gather")
    shards = [_read_shard(d) for d in shard_dirs]
    cameras, views = load_views(Path(transforms))
    names = sorted(cameras)
    base_view = _check_shards(shard_dirs, shards, names)
    k0 = cameras[names[0]].intrinsics
    base = read_base(Path(base_dir), names, (k0.width, k0.height), tuple(shards[0]["latent_size"]))
    if base.name != base_view:
        raise InputError(Path(base_dir) / "summary.json", f"names base view {base.name}, the shards used {base_view}")
    trajectories = compare_base_trajectories(shard_dirs, shards, base.mask, float(cfg.inpaint.shard_tolerance))
    if trajectories["compared"] and not trajectories["identical"]:
        log.info("shards' base trajectories: up to %.3f grey levels apart on average (max %d) in the base mask, "
                 "within the tolerance %.3g; devices %s", trajectories["mean_abs"], trajectories["max_abs"],
                 float(cfg.inpaint.shard_tolerance), ", ".join(trajectories["devices"]))
    owner = {v: d for d, s in zip(shard_dirs, shards) for v in s["views"]}

    with atomic_dir(out_dir) as tmp:
        for name in names:
            src = owner[name]
            for rel in [f"images/{name}.png", f"noise/{name}.npy",
                        *[f"variants/{v}/{name}.png" for v in VARIANTS if v != OUTPUT_VARIANT]]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, tmp / rel)
        depths = {n: np.load(owner[n] / "depth" / f"{n}.npy") for n in names}
        scores = _consistency(tmp, base_view, base.mask, views, depths)
        (tmp / "consistency.json").write_text(json.dumps(_jsonable(scores), indent=2) + "\n")
        base_out = _read_png(tmp / "images" / f"{base_view}.png", "RGB")
        base_diff = float(np.abs(base_out.astype(np.int16) - base.image.astype(np.int16))[base.mask].mean())
        weights = weakest(weights_provenance(cfg.models), base.weights)
        with_weights_banner(_comparison(tmp, views, base_view), weights, str(cfg.models.name)).save(tmp / "comparison.png")
        summary = _summary(cfg, shards, scores, base, base_diff, weights, UNIT, time.perf_counter() - t0)
        summary["shard_base_difference"] = trajectories
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_resolved(cfg, tmp / "config.yaml")
    c = summary["consistency"]
    log.info("consistency (%s): independent %.2f, ela %.2f, ila %.2f, ela_ila %.2f", UNIT, *[c[v] or float("nan") for v in VARIANTS])
    return summary


def _summary(cfg, shards, scores, base: BaseInputs, base_diff: float, weights: str, unit: str, gather_seconds: float) -> dict:
    from innout.diffusion import GUIDANCE_MODES

    coverage = {n: c for s in shards for n, c in s["ela_coverage"].items()}
    fractions = [c["aligned_fraction"] for c in coverage.values()]
    first = shards[0]
    return {
        **provenance_fields(weights),
        "base_view": base.name,
        "prompt": base.prompt,
        "seed": first["seed"],
        "views": sum(len(s["views"]) for s in shards),
        "size": first["size"],
        "latent_size": first["latent_size"],
        "settings": {**_plain(cfg.inpaint), "device": first["device"], "dtype": first["dtype"]},
        "device_warning": first.get("device_warning"),
        "guidance": first.get("guidance"),
        "guidance_note": GUIDANCE_MODES.get(first.get("guidance")),
        "consistency": {v: _finite_or_none(scores[v]["mean"]) for v in VARIANTS},
        "consistency_pixel_mean": {v: _finite_or_none(scores[v]["pixel_mean"]) for v in VARIANTS},
        "consistency_unit": unit + "; mean over the target views of each view's mean over its masked pixels that "
                                   "reproject into the base view's mask unoccluded (lower is more consistent)",
        "consistency_pixels": int(sum(scores[OUTPUT_VARIANT]["pixels"].values())),
        "consistency_views": int(sum(1 for v in scores[OUTPUT_VARIANT]["pixels"].values() if v > 0)),
        "ela_coverage": {
            "per_view": {n: coverage[n]["aligned_fraction"] for n in sorted(coverage)},
            "mean": float(np.mean(fractions)) if fractions else None,
            "share_mean": float(np.mean([c["aligned_share_mean"] for c in coverage.values()])) if coverage else None,
            "what": "fraction of each target's latent mask (dilated by inpaint.ela_mask_dilation) whose initial "
                    "latent inherited base noise; the base view keeps its own noise",
        },
        "base_output_vs_base_stage": {
            "mean_abs_diff_in_mask": base_diff,
            "note": "0 when this stage's base trajectory reproduces base.png (same inpainting settings as the base stage)",
        },
        "shards": len(shards),
        "ela_seconds": sum(s["ela_seconds"] for s in shards),
        "inpaint_seconds": {v: sum(s["inpaint_seconds"][v] for s in shards) for v in VARIANTS},
        "depth_seconds": sum(s["depth_seconds"] for s in shards),
        "shard_seconds": [s["seconds"] for s in shards],
        "shard_cpu_seconds": [s["cpu_seconds"] for s in shards],
        "gather_seconds": gather_seconds,
    }


def _plain(node: Any) -> dict:
    """A config section as a plain dict (for JSON)."""

    return dict(node) if isinstance(node, dict) else OmegaConf.to_container(node, resolve=True)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def _comparison(out: Path, views: dict[str, View], base_view: str, n_targets: int = 3):
    """The base view and a few targets: input with its mask, then one tile per variant."""

    others = [n for n in sorted(views) if n != base_view]
    # evenly spread over the name-sorted views (neighbours in a capture look alike)
    targets = [others[i] for i in sorted(set(np.linspace(0, len(others) - 1, n_targets).round().astype(int)))] if others else []
    tiles = []
    for name in [base_view, *targets]:
        label = f"{name} (base)" if name == base_view else name
        tiles.append((overlay_mask(views[name].image, views[name].mask), f"{label}: input"))
        for variant in VARIANTS:
            tiles.append((_read_png(_variant_path(out, variant, name), "RGB"), variant))
    return contact_sheet(tiles, columns=1 + len(VARIANTS), tile_width=160)
