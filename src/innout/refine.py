"""Stage 5, refinement (In-N-Out): the NeRF refined with the patch loss.

The NeRF is refined with

    L = L_rec + prior_weight * L_prior + lambda_patch * L_patch,
    L_patch = l1_weight * L1 + lpips_weight * LPIPS + adv_weight * L_adv,

where L_rec is the photometric loss on random rays through UNMASKED pixels of all train
views (:func:`innout.patch_sampling.sample_unmasked_pixels`), L_prior the base view's prior loss (stage 3), and
L_patch compares square patches rendered by the NeRF with the same patches of the
aligned inpaintings (stage 4). The pieces live below this module: the view subset
(:mod:`innout.patch_views`), patches and pixels (:mod:`innout.patch_sampling`), the
discriminator (:mod:`innout.discriminator`) and the losses (:mod:`innout.patch_losses`);
this module loads the inputs and runs the loop (:class:`Refiner`). ``lambda_patch`` is
applied in :func:`innout.patch_losses.patch_loss`: ``patch_loss(...)["total"]`` already carries it, so a step's loss is ``rec + prior_weight * prior + out["total"]``.

A step, in order: render the patches, ``out = patch_loss(pred, target, lpips, D, w)``
(D's parameters get no gradient from it), backward ``rec + prior + out["total"]`` into
the NeRF and step its optimiser; then :func:`discriminator_step` with the same patches
(the renders detached).
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
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from innout.config import write_resolved
from innout.devices import computed_on, stage_device
from innout.errors import InputError, StageError
from innout.finetune import NerfTuner
from innout.frames import load_keep_mask, read_scene
from innout.images import load_rgb
from innout.lpips_metric import make_lpips_module
from innout.patch_losses import (
    PatchLossWeights,
    discriminator_step,
    make_discriminator,
    make_discriminator_optimizer,
    patch_loss,
)
from innout.patch_sampling import PatchSampler, UnmaskedPixelSampler
from innout.patch_views import select_patch_views, subset_scores
from innout.renderer import find_nerf_config
from innout.stage import atomic_dir
from innout.training_log import TrainingLog
from innout.viz import plot_curves

from .cameras import Camera
from .provenance import metric_backbones, provenance_fields, summary_provenance, weakest, weights_provenance

# --------------------------------------------------------------------------------------
# the stage: run_refine
# --------------------------------------------------------------------------------------
#
# The driver holds the inputs in memory at the working resolution (images, masks,
# inpaintings of the train views) and trains the base stage's NeRF further with
# innout.finetune.NerfTuner. One step renders, in ONE forward pass, the L_rec rays
# (unmasked pixels of all train views), the L_prior rays (masked pixels of the base view)
# and the pixels of the patches, so nerfacto's proposal regularisers see all of them.

REFINE_LOSS_KEYS = ("loss", "rec", "prior_rgb", "prior_depth", "l1", "lpips", "adv", "d_real", "d_fake", "d_r1")
CURVE_PANELS = {"losses": ["loss", "rec", "prior_rgb", "prior_depth"], "patch loss": ["l1", "lpips", "adv"],
                "discriminator": ["d_real", "d_fake"], "PSNR of the L_rec rays (dB)": ["psnr_rec"],
                "learning rate": ["lr"]}


@dataclass
class RefineInputs:
    """What one refinement run trains on, at the working resolution (H x W)."""

    names: list[str]  # train views, in transforms.json order
    cameras: dict[str, Camera]
    images: np.ndarray  # (V, H, W, 3) float32 photos of the train views
    object_masks: dict[str, np.ndarray]  # {name: bool H x W}, True = object (not seen by L_rec)
    base: str
    base_image: np.ndarray  # (H, W, 3) float32, the base view's inpainting
    base_mask: np.ndarray  # bool H x W
    depth_prior: np.ndarray  # (H, W) float32, distance along the ray (scene units)
    inpainted: dict[str, np.ndarray]  # {name: (H, W, 3) float32} patch targets
    upstream_weights: Optional[str]  # the weakest provenance the base and inpaint summaries record
    # whether the base stage found its depth prior plausible and fitted with it; when it did
    # not (innout.base.check_depth_prior), L_prior's depth term is left out here too
    depth_prior_used: bool = True


def _read_json(path: Path) -> dict:

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:

        raise InputError(path, f"cannot read: {err}") from None


def _load_rgb_at(path: Path, size: tuple[int, int]) -> np.ndarray:
    """float32 RGB in [0, 1] of an image file, resized (bicubic) to ``size`` = (W, H)."""


    if not Path(path).is_file():
        raise InputError(path, "image not found")
    img = Image.open(path).convert("RGB")
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _load_mask_at(path: Path, size: tuple[int, int]) -> np.ndarray:
    """bool mask (nonzero = object) of a PNG, resized (nearest) to ``size`` = (W, H)."""


    if not Path(path).is_file():
        raise InputError(path, "mask not found")
    img = Image.open(path)
    img = img.convert("L") if img.mode not in ("L", "1", "P", "I", "I;16") else img
    if img.size != tuple(size):
        img = img.resize(tuple(size), Image.NEAREST)
    return np.asarray(img) > 0


def load_refine_inputs(transforms: Path, base_dir: Path, inpaint_dir: Path) -> RefineInputs:
    """Read the scene, the base stage's and the inpaint stage's outputs (one-line
    ``InputError`` naming the file on anything missing or inconsistent)."""

    _, _, train, _ = read_scene(Path(transforms))
    w, h = train[0].camera.intrinsics.width, train[0].camera.intrinsics.height
    names = [f.name for f in train]
    images, masks = [], {}
    for f in train:
        img = load_rgb(f.image)
        if img.shape[:2] != (h, w):
            raise InputError(f.image, f"image is {img.shape[1]}x{img.shape[0]}, the camera says {w}x{h}")
        images.append(img)
        masks[f.name] = ~load_keep_mask(f, (h, w))
    base_summary = _read_json(Path(base_dir) / "summary.json")
    base = base_summary.get("winner")
    if base not in names:
        raise InputError(Path(base_dir) / "summary.json", f"winner {base!r} is not a train view of {transforms}")
    depth_path = Path(base_dir) / "depth_prior.npy"
    if not depth_path.is_file():
        raise InputError(depth_path, "depth prior not found")
    depth = np.load(depth_path).astype(np.float32)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise InputError(depth_path, f"expected an H x W depth map, got shape {depth.shape}")
    if depth.shape != (h, w):
        depth = F.interpolate(torch.from_numpy(depth)[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
    base_mask = _load_mask_at(Path(base_dir) / "mask.png", (w, h))
    if not base_mask.any():
        raise InputError(Path(base_dir) / "mask.png", "the base view's mask is empty: no pixel for L_prior")
    usable = base_mask & np.isfinite(depth) & (depth > 0)
    if not usable.any():
        raise InputError(depth_path, "no finite positive depth inside the base view's mask")
    inpaint_summary = _read_json(Path(inpaint_dir) / "summary.json")
    inpainted = {}
    for name in names:
        path = Path(inpaint_dir) / "images" / f"{name}.png"
        if path.is_file():
            inpainted[name] = _load_rgb_at(path, (w, h))
    if not inpainted:
        raise InputError(Path(inpaint_dir) / "images", "no inpainted train view (images/<view>.png)")
    return RefineInputs(
        names=names,
        cameras={f.name: f.camera for f in train},
        images=np.stack(images).astype(np.float32),
        object_masks=masks,
        base=base,
        base_image=_load_rgb_at(Path(base_dir) / "base.png", (w, h)),
        base_mask=base_mask,
        depth_prior=depth,
        inpainted=inpainted,
        upstream_weights=weakest(summary_provenance(base_summary), summary_provenance(inpaint_summary)),
        depth_prior_used=bool((base_summary.get("depth_prior") or {}).get("used", True)),
    )


class CameraRays:
    """Rays of pixels ``(view, y, x)`` of several cameras at once (vectorised
    :func:`pixel_rays`: the ray through the pixel's centre, unit direction)."""

    def __init__(self, cameras: Sequence[Camera]):
        k = [c.intrinsics for c in cameras]
        self.fx = np.array([i.fx for i in k], float)
        self.fy = np.array([i.fy for i in k], float)
        self.cx = np.array([i.cx for i in k], float)
        self.cy = np.array([i.cy for i in k], float)
        self.c2w = np.stack([np.asarray(c.c2w, float)[:3] for c in cameras])  # (V, 3, 4)

    def __call__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        v, y, x = idx[:, 0], idx[:, 1].astype(float) + 0.5, idx[:, 2].astype(float) + 0.5
        d_cam = np.stack([(x - self.cx[v]) / self.fx[v], -(y - self.cy[v]) / self.fy[v], -np.ones_like(x)], axis=-1)
        dirs = np.einsum("nij,nj->ni", self.c2w[v, :, :3], d_cam)
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        return torch.from_numpy(self.c2w[v, :, 3].copy()), torch.from_numpy(dirs)


def _fingerprint(cfg: Any, inputs: "RefineInputs", nerf_config: Path, device: torch.device) -> str:
    """What a checkpoint in the work dir must have been trained with to be resumed, the kind of
    device included (:func:`innout.devices.computed_on`)."""


    section = OmegaConf.to_container(cfg.refine, resolve=True) if hasattr(cfg.refine, "_metadata") else dict(cfg.refine)
    for key in ("steps_per_checkpoint", "log_every_steps", "tensorboard"):  # do not change the result
        section.pop(key, None)
    digest = hashlib.sha256()
    digest.update(repr(sorted(section.items())).encode())
    digest.update(f"{cfg.seed}|{inputs.base}|{sorted(inputs.inpainted)}|{inputs.depth_prior_used}".encode())
    for arr in (inputs.images, inputs.base_image, inputs.depth_prior, inputs.base_mask,
                *[inputs.inpainted[k] for k in sorted(inputs.inpainted)],
                *[inputs.object_masks[k] for k in inputs.names]):
        digest.update(np.ascontiguousarray(arr).tobytes())
    digest.update(Path(nerf_config).read_bytes())
    for part in computed_on(device):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


class Refiner:
    """One refinement run: the NeRF (a NerfTuner), the discriminator, the samplers, one
    :meth:`step` at a time, resumable state (:meth:`state` / :meth:`load_state`)."""

    def __init__(self, tuner: Any, inputs: RefineInputs, cfg: Any, lpips_module: Optional[nn.Module]):
        rc = cfg.refine
        self.tuner, self.inputs, self.rc = tuner, inputs, rc
        seed = int(cfg.seed)
        self.weights = PatchLossWeights.from_config(rc)
        self.lpips = lpips_module
        candidates = [n for n in inputs.names if n in inputs.inpainted and n != inputs.base]
        self.subset_by = str(rc.subset_by)
        scores = subset_scores(self.subset_by, {n: inputs.inpainted[n] for n in candidates},
                               {n: inputs.object_masks[n] for n in candidates}, inputs.base_image, inputs.base_mask,
                               lpips_module, tuner.device)
        self.patch_views = select_patch_views(
            {n: inputs.cameras[n] for n in inputs.names if n in inputs.inpainted or n == inputs.base},
            inputs.base, float(rc.keep_fraction), bool(rc.include_base_in_patches), scores,
        )
        chosen = [n for n in self.patch_views["selected"] if n in inputs.inpainted]
        self.patch_targets = {n: inputs.inpainted[n] for n in chosen}
        if rc.include_base_in_patches and inputs.base not in self.patch_targets:
            self.patch_targets[inputs.base] = inputs.base_image  # the base's own fill is its target
        if not self.patch_targets:
            raise StageError("refine", "no inpainted view was selected for the patch loss")
        self.patch_sampler = PatchSampler({n: inputs.object_masks[n] for n in self.patch_targets}, int(rc.patch_size), seed + 1)
        self.rec_sampler = UnmaskedPixelSampler(inputs.object_masks)
        self.rec_rng = np.random.default_rng(seed + 2)
        self.prior_rng = np.random.default_rng(seed + 3)
        self.tile_gen = torch.Generator().manual_seed(seed + 4)
        ok = inputs.base_mask & np.isfinite(inputs.depth_prior) & (inputs.depth_prior > 0)
        self.prior_pixels = np.argwhere(ok)  # (n, 2) (y, x)
        self.prior_sigma = float(rc.prior_depth_sigma) * float(np.median(inputs.depth_prior[ok]))
        # an implausible depth prior (the base stage's check) is never used: colour only
        self.prior_depth_weight = float(rc.prior_depth_weight) if inputs.depth_prior_used else 0.0
        self.view_index = {n: i for i, n in enumerate(inputs.names)}
        self.rays = CameraRays([inputs.cameras[n] for n in inputs.names])
        self.images = torch.from_numpy(inputs.images)
        torch.manual_seed(seed)
        self.discriminator = make_discriminator(rc).to(tuner.device) if self.weights.adv != 0 else None
        self.d_optimizer = make_discriminator_optimizer(self.discriminator, rc) if self.discriminator is not None else None
        self.history: list[dict] = []

    # -- one step -----------------------------------------------------------------------

    def _batch(self) -> dict[str, Any]:
        """Pixels of this step: L_rec, L_prior and the patches, with their targets."""
        inp = self.inputs
        rec = self.rec_sampler.sample(int(self.rc.rays_per_batch), self.rec_rng)
        pick = self.prior_rng.integers(0, len(self.prior_pixels), size=int(self.rc.prior_rays_per_batch))
        yx = self.prior_pixels[pick]
        base_i = self.view_index[inp.base]
        prior = torch.from_numpy(np.concatenate([np.full((len(yx), 1), base_i), yx], axis=1).astype(np.int64))
        patches = self.patch_sampler.sample_many(int(self.rc.patches_per_step))
        patch_idx = [p.ray_indices(self.view_index[p.name]) for p in patches]
        return {
            "rec": rec,
            "rec_rgb": self.images[rec[:, 0], rec[:, 1], rec[:, 2]],
            "prior": prior,
            "prior_rgb": torch.from_numpy(inp.base_image[yx[:, 0], yx[:, 1]]),
            "prior_depth": torch.from_numpy(inp.depth_prior[yx[:, 0], yx[:, 1]]),
            "patches": patches,
            "patch_idx": patch_idx,
            "patch_rgb": [torch.from_numpy(np.ascontiguousarray(p.crop(self.patch_targets[p.name]))) for p in patches],
        }

    def step(self) -> dict[str, float]:
        """One NeRF step on L = L_rec + reg + prior_weight L_prior + L_patch, then one
        discriminator step on the same patches. Returns the step's losses."""
        rc, tuner = self.rc, self.tuner
        b = self._batch()
        index = torch.cat([b["rec"], b["prior"], *b["patch_idx"]], dim=0)
        origins, dirs = self.rays(index)
        out = tuner.forward(origins, dirs)
        n_rec, n_prior = len(b["rec"]), len(b["prior"])
        dev = out["rgb"].device
        rgb = out["rgb"]
        rec = F.mse_loss(rgb[:n_rec], b["rec_rgb"].to(dev))
        sl = slice(n_rec, n_rec + n_prior)
        prior_rgb = F.mse_loss(rgb[sl], b["prior_rgb"].to(dev))
        prior_outputs = {"_weights": out["_weights"][sl], "_samples": out["_samples"][sl]}
        prior_depth = tuner.depth_loss(prior_outputs, b["prior_depth"], self.prior_sigma)
        prior = prior_rgb + self.prior_depth_weight * prior_depth if self.prior_depth_weight else prior_rgb
        preds, start = [], n_rec + n_prior
        for p in b["patches"]:
            n = p.size * p.size
            preds.append(rgb[start:start + n].reshape(1, p.size, p.size, 3))
            start += n
        targets = [t.to(dev)[None] for t in b["patch_rgb"]]
        same_size = len({p.size for p in b["patches"]}) == 1
        pred_groups = [torch.cat(preds)] if same_size else preds
        target_groups = [torch.cat(targets)] if same_size else targets
        terms = [patch_loss(pg, tg, self.lpips, self.discriminator, self.weights, self.tile_gen) for pg, tg in zip(pred_groups, target_groups)]
        patch = {k: sum(t[k] for t in terms) / len(terms) for k in ("l1", "lpips", "adv", "total")}
        loss = rec + out["regulariser"] + float(rc.prior_weight) * prior + patch["total"]
        tuner.optimise(loss)
        d = {"real": 0.0, "fake": 0.0, "r1": 0.0}
        if self.discriminator is not None:
            for pg, tg in zip(pred_groups, target_groups):
                d = discriminator_step(self.discriminator, self.d_optimizer, tg, pg.detach(), rc, tuner.step - 1, self.tile_gen)
        return {
            "loss": float(loss.detach()), "rec": float(rec.detach()), "prior_rgb": float(prior_rgb.detach()),
            "prior_depth": float(prior_depth.detach()), "l1": float(patch["l1"].detach()),
            "lpips": float(torch.as_tensor(patch["lpips"]).detach()), "adv": float(torch.as_tensor(patch["adv"]).detach()),
            "d_real": float(d["real"]), "d_fake": float(d["fake"]), "d_r1": float(d["r1"]),
        }

    # -- resumable state ----------------------------------------------------------------

    def state(self) -> dict:
        return {
            "discriminator": self.discriminator.state_dict() if self.discriminator is not None else None,
            "d_optimizer": self.d_optimizer.state_dict() if self.d_optimizer is not None else None,
            "patch_sampler": self.patch_sampler.state_dict(),
            "rec_rng": self.rec_rng.bit_generator.state,
            "prior_rng": self.prior_rng.bit_generator.state,
            "tile_gen": self.tile_gen.get_state(),
            "history": list(self.history),
        }

    def load_state(self, state: dict) -> None:
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.patch_sampler.load_state_dict(state["patch_sampler"])
        self.rec_rng.bit_generator.state = state["rec_rng"]
        self.prior_rng.bit_generator.state = state["prior_rng"]
        self.tile_gen.set_state(state["tile_gen"])
        self.history = list(state["history"])


def _curve_summary(history: list[dict]) -> dict:
    """Per loss term: first, last, min and mean of the logged values (and the steps)."""
    if not history:
        return {}
    out: dict[str, Any] = {"steps": [h["step"] for h in history]}
    for key in REFINE_LOSS_KEYS:
        values = [h[key] for h in history if key in h]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "min": min(values), "mean": float(np.mean(values)),
                        "values": values}
    return out


def run_refine(
    transforms: Path,
    base_dir: Path,
    inpaint_dir: Path,
    out_dir: Path,
    work_dir: Path,
    cfg: Any,
    log: Any = None,
    *,
    on_step: Any = None,
) -> dict:
    """Stage 5: refine the base stage's NeRF (module docstring) and write ``out_dir``::

        nerf/innout-nerfacto/   the refined NeRF (NerfRenderer.from_config(out_dir / "nerf"))
        summary.json            iterations, seconds, loss curves, patch views, the weights' provenance
        config.yaml             the resolved config

    ``work_dir`` holds resumable checkpoints (NeRF, its optimisers, D and its optimiser,
    the samplers' RNG states); a rerun with the same settings and inputs resumes there.
    ``on_step(step)`` is called after every completed step (tests interrupt from it)."""


    log = log or logging.getLogger("innout.refine")
    t_stage = time.perf_counter()
    rc = cfg.refine
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    iterations = int(rc.iterations)
    if iterations < 1:
        raise InputError("refine.iterations", "must be at least 1")
    inputs = load_refine_inputs(Path(transforms), Path(base_dir), Path(inpaint_dir))
    try:
        nerf_config = find_nerf_config(Path(base_dir) / "nerf")
    except FileNotFoundError as err:
        raise InputError(Path(base_dir) / "nerf", str(err)) from None
    h, w = inputs.images.shape[1:3]
    log.info("refine: %d train views (%dx%d), base view %s, %d inpainted, %d iterations on %s",
             len(inputs.names), w, h, inputs.base, len(inputs.inpainted), iterations, cfg.device)

    # ---- work dir: resume only what was trained with these settings and inputs -------
    device, device_warning = stage_device(cfg, "refine")
    fingerprint = _fingerprint(cfg, inputs, nerf_config, device)
    ckpt_dir = work_dir / "checkpoints"
    run_file = work_dir / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("fingerprint") != fingerprint:
        log.warning("work dir %s holds a run with other settings or inputs: starting over", work_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint}, indent=1))

    torch.manual_seed(int(cfg.seed))
    reset = bool(rc.reset_fields)
    learning_rate = float(rc.reset_learning_rate if reset else rc.learning_rate)
    tuner = NerfTuner(nerf_config, device=device, learning_rate=learning_rate, lr_final=float(rc.lr_final),
                      decay_steps=iterations, stage="refine", reset_seed=int(cfg.seed) if reset else None)
    log.info("refine: %s, learning rate %.3g -> %.3g", "fields re-initialised (a fresh nerfacto)" if reset
             else "continuing from the base stage's NeRF", learning_rate, float(rc.lr_final))
    lpips_module, lpips_description, lpips_backbone = None, None, None
    if float(rc.lpips_weight) != 0:
        lpips_module, lpips_description, lpips_backbone = make_lpips_module(cfg.models, tuner.device, int(cfg.seed))
    refiner = Refiner(tuner, inputs, cfg, lpips_module)
    log.info("patch views: %d of %d ranked by %s (%s), patches %d px, LPIPS: %s",
             len(refiner.patch_targets), len(inputs.names) - 1, refiner.subset_by, ", ".join(refiner.patch_targets),
             refiner.patch_sampler.patch_size, lpips_description or "off")

    seconds_before, resumed_from = 0.0, None
    extra = tuner.resume(ckpt_dir)
    if extra:
        refiner.load_state(extra["refiner"])
        seconds_before = float(extra.get("seconds", 0.0))
        resumed_from = tuner.step
        log.info("resuming at step %d", tuner.step)

    # ---- train -------------------------------------------------------------------------
    tensorboard = TrainingLog(work_dir / "tensorboard" if bool(rc.tensorboard) else None, start_step=tuner.step)
    log_every = max(1, int(rc.log_every_steps))
    every_ckpt = max(1, int(rc.steps_per_checkpoint))
    t_train, start = time.perf_counter(), tuner.step

    def seconds() -> float:
        return seconds_before + time.perf_counter() - t_train

    while tuner.step < iterations:
        losses = refiner.step()
        done = tuner.step
        if done % log_every == 0 or done == iterations or done == start + 1:
            point = {**losses, "psnr_rec": -10.0 * math.log10(max(losses["rec"], 1e-12)),
                     "lr": float(next(iter(tuner.optimizers.values())).param_groups[0]["lr"])}
            refiner.history.append({"step": done, **point})
            tensorboard.add(done, {(k if k in ("lr", "psnr_rec") else f"loss/{k}"): v for k, v in point.items()})
            eta = (iterations - done) * (time.perf_counter() - t_train) / max(1, done - start)
            log.info("step %d/%d loss %.5f rec %.5f prior %.5f/%.4f patch l1 %.4f lpips %.4f adv %.3f | D real %.3f fake %.3f | eta %.0f s",
                     done, iterations, losses["loss"], losses["rec"], losses["prior_rgb"], losses["prior_depth"],
                     losses["l1"], losses["lpips"], losses["adv"], losses["d_real"], losses["d_fake"], eta)
        if done % every_ckpt == 0 and done < iterations:
            tuner.save_checkpoint(ckpt_dir, {"refiner": refiner.state(), "seconds": seconds()})
        if on_step is not None:
            on_step(done - 1)
    train_seconds = seconds()
    ran = tuner.step - start
    if ran:
        tuner.save_checkpoint(ckpt_dir, {"refiner": refiner.state(), "seconds": train_seconds})

    # ---- outputs -----------------------------------------------------------------------
    weights = weakest(weights_provenance(cfg.models), inputs.upstream_weights)
    with atomic_dir(out_dir) as tmp:
        tuner.export(tmp / "nerf", extra_meta={"stage": "refine", "refine_iterations": iterations}, final_dir=out_dir / "nerf")
        plot_curves(refiner.history, CURVE_PANELS, tmp / "curves.png", f"refine: {iterations} steps")
        tensorboard.export(tmp)
        summary = {
            "iterations": iterations,
            "seconds": round(train_seconds, 3),
            "stage_seconds": round(time.perf_counter() - t_stage, 3),
            "steps_this_run": ran,
            "resumed_from_step": resumed_from,
            "rays_per_step": {"rec": int(rc.rays_per_batch), "prior": int(rc.prior_rays_per_batch),
                              "patch": int(rc.patches_per_step) * refiner.patch_sampler.patch_size ** 2},
            "base_view": inputs.base,
            "patch_views": list(refiner.patch_targets),
            "patch_view_groups": refiner.patch_views["kept"],
            "patch_view_ranking": {"by": refiner.subset_by, "score": refiner.patch_views["score"]},
            "reset_fields": reset,
            "learning_rate": learning_rate,
            "patch_size": refiner.patch_sampler.patch_size,
            "prior_depth_sigma_scene_units": refiner.prior_sigma,
            "prior_depth_weight": refiner.prior_depth_weight,
            "depth_prior_used": inputs.depth_prior_used,
            "losses": _curve_summary(refiner.history),
            "loss_definition": "loss = rec + nerfacto regularisers + prior_weight * (prior_rgb + prior_depth_weight * prior_depth) "
                               "+ lambda_patch * (l1_weight * l1 + lpips_weight * lpips + adv_weight * adv)",
            "lpips": lpips_description,
            **{key: value for key, value in metric_backbones(lpips_backbone, None).items() if key != "fid_backbone"},
            **provenance_fields(weights),
            "n_train_views": len(inputs.names),
            "resolution": [int(w), int(h)],
            "device": str(tuner.device),
            "device_warning": device_warning,
            "seed": int(cfg.seed),
            "preset": cfg.get("preset") if hasattr(cfg, "get") else None,
            "nerfstudio_config": "nerf/innout-nerfacto/config.yml",
            "tensorboard": "tensorboard" if tensorboard.tensorboard_dir is not None else None,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        write_resolved(cfg, tmp / "config.yaml")
    log.info("refine done: %d steps in %.1f s (%d this run)", iterations, train_seconds, ran)
    return summary
