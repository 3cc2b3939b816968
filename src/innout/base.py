# Over 600 lines: the stage's three steps (candidates and vote, depth prior, prior fit) share its inputs and resumable work dir; the losses and samplers live below it.
"""Base-view selection (In-N-Out, stage 3): centroid candidates and a pHash vote.

The candidates are the ``n`` training cameras whose centres are nearest the centroid of
all training camera centres. Every candidate is inpainted with the same seed; each fill
is hashed with a perceptual hash (``imagehash.phash``) of the inpainted image with
everything OUTSIDE the mask painted white, so only the fill (and the mask's shape) is
compared. The candidate whose hash has the smallest summed Hamming distance to the
other candidates' hashes (the "medoid" fill, the one the others agree with best) wins;
ties go to the smallest name.

The stage (:func:`run_base`, rule ``base``) then keeps the winner's inpainted image, mask
and initial latent noise ``z_T^p``, aligns a monocular depth map of the inpainted view
to the pre-trained NeRF's depth (:mod:`innout.depth_prior`), and fine-tunes the NeRF
with the prior loss on the base view's masked pixels (:func:`fit_prior`), so that the
NeRF holds an object-free surface there. Outputs (``results/{scene}/base/``)::

    summary.json            candidates, votes (summed Hamming distances), winner, prompt,
                            seed, depth alignment, its plausibility (``depth_prior``),
                            prior-fit statistics, the weights' provenance
    candidates/<view>.png   every candidate's inpainting (same seed, same noise)
    base.png, mask.png      the winner's inpainting (working resolution) and its mask
    noise.pt                z_T^p: the (4, h, w) float32 unit Gaussian the winner's
                            inpainting started from (h, w: its latent size)
    depth_prior.npy         aligned monocular depth (H, W) float32: DISTANCE ALONG THE
                            UNIT RAY through each pixel centre, scene units (the frame of
                            transforms.json), what NerfRenderer's ``depth`` is
    depth_prior.png         the same, colourised (turbo, near = blue)
    overview.png            contact sheet: candidates, winner, depth prior, base view
                            rendered before / after the prior fit
    renders/{before,after}.png   the base view rendered before / after the prior fit
    curves.png, tensorboard/ the prior fit's losses, PSNR and learning rate (base.tensorboard)
    nerf/innout-nerfacto/   the NeRF after the prior fit (NerfRenderer.from_config)
    config.yaml             the resolved method config

An implausible depth prior (:func:`depth_prior_decision`: a reversed near-far order or a
large error against the NeRF's depth where the NeRF is trustworthy) is a WARNING in the
log and ``summary.json: depth_prior``, and the fit runs without its depth term (colour
only) unless ``base.depth_prior_use`` is ``always``; the refine stage reads the decision.

The fit checkpoints in a work dir (not an output) and resumes from there; candidate
inpaintings are cached there too, keyed by everything that makes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import imagehash
import numpy as np
import torch
from PIL import Image

from innout import depth_prior  # the module: tests stand in for depth_prior.monocular_depth
from innout.cameras import Camera
from innout.config import write_resolved
from innout.depth_prior import align_depth, check_plausible, ray_cosines
from innout.devices import computed_on, stage_device
from innout.errors import InputError, StageError
from innout.finetune import NerfTuner
from innout.frames import load_keep_mask, read_scene
from innout.images import colourise_depth, save_png, to_u8
from innout.models import check_manifest, load_depth_model, load_inpainter, manifest_item
from innout.nerf_training import NS_DIR
from innout.patch_sampling import UnmaskedPixelSampler, pixel_rays
from innout.provenance import provenance_fields, weights_label, weights_provenance
from innout.renderer import find_nerf_config, latest_checkpoint
from innout.rule_params import BASE_INPAINT_KEYS
from innout.stage import atomic_dir
from innout.training_log import TrainingLog
from innout.viz import contact_sheet, overlay_mask, with_weights_banner


def _centre(camera: Camera | np.ndarray) -> np.ndarray:
    if isinstance(camera, Camera):
        return np.asarray(camera.center, float)
    arr = np.asarray(camera, float)
    if arr.shape in ((4, 4), (3, 4)):
        return arr[:3, 3]
    if arr.shape == (3,):
        return arr
    raise ValueError(f"a camera is a Camera, a 4x4/3x4 c2w or a centre (3,), got shape {arr.shape}")


def candidate_views(cameras: Mapping[str, Camera | np.ndarray], n: int = 5) -> list[str]:
    """Names of the ``n`` cameras nearest the centroid of all camera centres, nearest
    first (ties, to 1e-9 of the layout's size, by name). ``cameras``: the training
    cameras by name (Camera objects, c2w matrices or centres)."""
    if n < 1:
        raise ValueError(f"need at least one candidate, got n={n}")
    if not cameras:
        raise ValueError("no cameras to choose a base view from")
    names = list(cameras)
    centres = np.stack([_centre(cameras[k]) for k in names])
    dist = np.linalg.norm(centres - centres.mean(0), axis=1)
    scale = max(float(dist.max()), 1e-12)
    # quantise so floating-point noise does not break exact ties between symmetric cameras
    key = np.round(dist / scale * 1e9).astype(np.int64)
    order = sorted(range(len(names)), key=lambda i: (key[i], names[i]))
    return [names[i] for i in order[: min(n, len(names))]]


def white_outside_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The uint8 RGB image with every pixel outside ``mask`` (True = inpainted) set to white."""
    img = to_u8(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].copy()
    m = np.asarray(mask).astype(bool)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask {m.shape} and image {img.shape[:2]} differ in size")
    img[~m] = 255
    return img


def masked_phash(image: np.ndarray, mask: np.ndarray, hash_size: int = 8) -> imagehash.ImageHash:
    """pHash of the image with everything outside the mask white."""
    return imagehash.phash(Image.fromarray(white_outside_mask(image, mask)), hash_size=hash_size)


def phash_vote(inpainted: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], hash_size: int = 8) -> dict[str, Any]:
    """Vote for the base view among inpainted candidates.

    Returns ``candidates`` (sorted names), ``hashes`` (name -> hex pHash), ``pairwise``
    (name -> name -> Hamming distance), ``distances`` (name -> summed Hamming distance
    to the other candidates), ``votes`` (name -> how many other candidates have it as
    their nearest fill; each candidate votes once, ties by name) and ``winner`` (the
    smallest summed distance, ties by name).
    """
    names = sorted(inpainted)
    if not names:
        raise ValueError("no inpainted candidates to vote on")
    missing = [k for k in names if k not in masks]
    if missing:
        raise ValueError(f"no mask for candidates {missing}")
    hashes = {k: masked_phash(inpainted[k], masks[k], hash_size) for k in names}
    pairwise = {a: {b: int(hashes[a] - hashes[b]) for b in names if b != a} for a in names}
    distances = {a: int(sum(pairwise[a].values())) for a in names}
    votes = {a: 0 for a in names}
    for a in names:
        if pairwise[a]:
            nearest = min(pairwise[a], key=lambda b: (pairwise[a][b], b))
            votes[nearest] += 1
    winner = min(names, key=lambda a: (distances[a], a))
    return {
        "candidates": names,
        "hashes": {k: str(h) for k, h in hashes.items()},
        "pairwise": pairwise,
        "distances": distances,
        "votes": votes,
        "winner": winner,
    }


# ======================================================================================
# the stage
# ======================================================================================

_log = logging.getLogger("innout.base")

STAGE = "base"
# settings that do not change the fitted NeRF: changing them keeps a fit resumable
FIT_CURVE_PANELS = {"losses": ["loss/total", "loss/rec", "loss/prior_colour", "loss/prior_depth"],
                    "PSNR of the L_rec rays (dB)": ["psnr_rec"], "learning rate": ["lr"]}
_NOT_IN_FIT_FINGERPRINT = ("steps_per_checkpoint", "log_every_steps", "tensorboard")
DEPTH_PRIOR_DEFINITION = ("distance along the unit ray through each pixel centre, in scene units "
                          "(the frame of transforms.json), float32 (H, W) at the working resolution")
VOTE_DEFINITION = ("summed Hamming distance between the candidate's pHash and the others' (pHash of the "
                   "inpainted image with everything outside the mask white); the smallest wins, ties by name")


@dataclass
class TrainView:
    """A train view at the working resolution."""

    name: str
    camera: Camera
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool, True = object (to inpaint)
    keep: np.ndarray  # (H, W) bool, True = the NeRF was trained on this pixel


def load_train_views(transforms: Path) -> list[TrainView]:
    """Every train view of the posed scene with its object mask and keep mask."""
    from innout.diffusion import as_mask

    _, _, train, _ = read_scene(Path(transforms))
    views = []
    for f in train:
        if f.object_mask is None or not f.object_mask.is_file():
            raise InputError(f.object_mask or transforms, f"train view {f.name} has no object mask")
        image = np.asarray(Image.open(f.image).convert("RGB"))
        mask = as_mask(np.asarray(Image.open(f.object_mask)))
        if mask.shape != image.shape[:2]:
            raise InputError(f.object_mask, f"mask is {mask.shape[::-1]}, its image {image.shape[1::-1]}")
        views.append(TrainView(f.name, f.camera, image, mask, load_keep_mask(f, image.shape[:2])))
    sizes = {v.image.shape for v in views}
    if len(sizes) > 1:
        raise InputError(transforms, f"train views differ in size ({sorted(sizes)}); the base stage needs one working size")
    return views


def check_nerf(nerf: Path) -> Path:
    """nerfstudio's config.yml of the pre-trained NeRF, with a checkpoint; else one line."""

    try:
        config = find_nerf_config(Path(nerf))
    except FileNotFoundError:
        raise InputError(nerf, "no trained NeRF here (run the pretrain stage first)") from None
    if latest_checkpoint(config.parent / "nerfstudio_models") is None:
        raise InputError(config.parent / "nerfstudio_models", "no step-*.ckpt checkpoint of the NeRF (rerun the pretrain stage)")
    return config


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------- candidates

def inpaint_candidates(pipe: Any, views: Mapping[str, TrainView], names: list[str], prompt: str, settings: Mapping[str, Any],
                       seed: int, cache: Optional[Path], model_key: Any, log: logging.Logger = _log) -> tuple[dict, Any, int]:
    """Inpaint every candidate from the SAME initial noise (one seed, one latent size,
    as method.md says). Returns ``(name -> uint8 image, noise (C, h, w), how many came
    from the cache)``. ``cache`` (a work-dir folder) holds each inpainting with a key of
    everything that made it (model, settings, prompt, seed, image and mask bytes)."""
    from innout.diffusion import initial_noise, inpaint_single, latent_size

    first = views[names[0]]
    h, w = first.image.shape[:2]
    noise = initial_noise(1, latent_size(w, h, int(settings["resolution"])), seed, pipe.vae.config.latent_channels)[0]
    images, cached = {}, 0
    for i, name in enumerate(names):
        view = views[name]
        key = _digest(model_key, dict(settings), prompt, seed, view.image.tobytes(), view.mask.tobytes())
        png, key_file = (cache / f"{name}.png", cache / f"{name}.key") if cache is not None else (None, None)
        if png is not None and png.is_file() and key_file.is_file() and key_file.read_text() == key:
            images[name] = np.asarray(Image.open(png).convert("RGB"))
            cached += 1
            log.info("candidate %d/%d %s: from the work dir's cache", i + 1, len(names), name)
            continue
        t0 = time.perf_counter()
        images[name] = inpaint_single(pipe, view.image, view.mask, latents=noise, prompt=prompt, seed=seed,
                                      steps=int(settings["steps"]), guidance_scale=float(settings["guidance_scale"]),
                                      resolution=int(settings["resolution"]), scheduler=str(settings["scheduler"]),
                                      skip_identical_guidance=bool(settings["skip_identical_guidance"]))
        log.info("candidate %d/%d %s inpainted in %.1f s", i + 1, len(names), name, time.perf_counter() - t0)
        if png is not None:
            save_png(png, images[name])
            key_file.write_text(key)
    return images, noise, cached


# -------------------------------------------------------------------------- prior fit

class _PixelRays:
    """Rays through pixel centres ``(view, y, x)`` of many cameras at once (the same rays
    as :meth:`Camera.rays`), with the views' colours."""

    def __init__(self, views: list[TrainView]):
        self.c2w = np.stack([np.asarray(v.camera.c2w, float) for v in views])
        k = [v.camera.intrinsics for v in views]
        self.fx, self.fy = np.array([i.fx for i in k]), np.array([i.fy for i in k])
        self.cx, self.cy = np.array([i.cx for i in k]), np.array([i.cy for i in k])
        self.colours = np.stack([v.image for v in views])

    def rays(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(origins, unit directions, rgb in [0, 1])``, each (N, 3), of ``(N, 3)`` pixels."""
        view, y, x = pixels[:, 0], pixels[:, 1], pixels[:, 2]
        d_cam = np.stack([(x + 0.5 - self.cx[view]) / self.fx[view], -(y + 0.5 - self.cy[view]) / self.fy[view],
                          -np.ones(len(view))], axis=-1)
        dirs = np.einsum("nij,nj->ni", self.c2w[view, :3, :3], d_cam)
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        return self.c2w[view, :3, 3], dirs, self.colours[view, y, x].astype(np.float32) / 255.0


def _psnr(pred: np.ndarray, target: np.ndarray, where: np.ndarray) -> Optional[float]:
    if not where.any():
        return None
    mse = float(np.mean((pred[where].astype(np.float64) - target[where].astype(np.float64)) ** 2))
    return float(10.0 * math.log10(1.0 / max(mse, 1e-12)))


def _depth_abs_rel(depth: np.ndarray, target: np.ndarray, where: np.ndarray) -> Optional[float]:
    ok = where & np.isfinite(depth) & (target > 0)
    return float(np.median(np.abs(depth[ok] - target[ok]) / target[ok])) if ok.any() else None


def base_view_errors(render: Mapping[str, Any], view: TrainView, inpainted: np.ndarray, prior_depth: np.ndarray) -> dict:
    """How well a render of the base view matches what the prior fit aims at: PSNR of the
    masked pixels against the inpainting, median relative depth error there against the
    aligned prior, and PSNR of the unmasked pixels against the photo (the rest of the
    scene must stay)."""
    rgb = render["rgb"].detach().cpu().numpy()
    depth = render["depth"].detach().cpu().numpy()
    return {
        "psnr_mask": _psnr(rgb, inpainted.astype(np.float32) / 255.0, view.mask),
        "depth_abs_rel_mask": _depth_abs_rel(depth, prior_depth, view.mask),
        "psnr_unmasked": _psnr(rgb, view.image.astype(np.float32) / 255.0, view.keep),
    }


DEPTH_PRIOR_USES = ("auto", "always", "never")


def depth_prior_decision(alignment: Mapping[str, Any], fit: Any) -> dict:
    """Whether the prior fit (and refinement) use the aligned depth prior:
    ``{"plausible", "reason", "used", "use", "scale", "offset", "space", "rel_error",
    "max_rel_error", "note"}``. ``fit``: the base section (``depth_prior_use``,
    ``depth_prior_max_rel_error``); the plausibility test is
    :func:`innout.depth_prior.check_plausible`."""

    use = str(fit.depth_prior_use)
    if use not in DEPTH_PRIOR_USES:
        raise InputError("base.depth_prior_use", f"must be one of {', '.join(DEPTH_PRIOR_USES)}, got {use!r}")
    max_rel_error = float(fit.depth_prior_max_rel_error)
    plausible, reason = check_plausible(alignment, max_rel_error)
    used = use == "always" or (use == "auto" and plausible)
    if used and not plausible:
        note = "implausible depth prior USED because base.depth_prior_use is 'always'"
    elif used:
        note = "plausible: the prior fit and refinement use its depth term"
    elif use == "never":
        note = "not used (base.depth_prior_use is 'never'): the prior fit and refinement use colour only"
    else:
        note = ("NOT USED: the prior fit and refinement run without the depth term (colour only); "
                "set base.depth_prior_use=always to force it")
    return {"plausible": plausible, "reason": reason, "used": used, "use": use, "scale": float(alignment["scale"]),
            "offset": float(alignment["offset"]), "space": alignment.get("space"), "rel_error": float(alignment["rel_error"]),
            "max_rel_error": max_rel_error, "note": note}


def fit_prior(tuner: Any, views: list[TrainView], base: TrainView, inpainted: np.ndarray, prior_depth: np.ndarray,
              fit: Any, work: Path, fingerprint: str, seed: int, log: logging.Logger = _log,
              on_step: Optional[Callable[[int], None]] = None, use_depth: bool = True, curves: Any = None) -> dict:
    """Fine-tune ``tuner`` (an :class:`innout.finetune.NerfTuner` on the pre-trained NeRF)
    for ``fit.prior_iterations`` steps of

        L = L_rec + prior_weight * (MSE(colour) + depth_weight * L_DS-NeRF) + nerfacto's regularisers

    L_rec: ``fit.rays_per_batch`` rays drawn uniformly from the unmasked pixels of all
    train views against their photos; the prior terms: ``fit.prior_rays_per_batch`` rays
    through the base view's masked pixels against its inpainting and the aligned depth
    prior (DS-NeRF sigma = ``fit.depth_sigma`` x the prior's median depth in the mask).
    ``use_depth=False`` (an implausible prior, :func:`depth_prior_decision`) leaves the
    depth term out: colour only.

    Checkpoints every ``fit.steps_per_checkpoint`` steps (and at the end) into ``work``;
    a rerun with the same ``fingerprint`` resumes there, other fingerprints start over.
    ``on_step(step)`` runs after every step (tests interrupt from it); ``curves``: an
    :class:`innout.training_log.TrainingLog` that gets the losses, PSNR and learning rate
    at every logged step (its history is part of the resumable state). Returns the fit's
    statistics."""


    iterations = int(fit.prior_iterations)
    depth_weight = float(fit.depth_weight) if use_depth else 0.0
    n_rec, n_prior = int(fit.rays_per_batch), int(fit.prior_rays_per_batch)
    every = max(1, int(fit.steps_per_checkpoint))
    log_every = max(1, int(fit.log_every_steps))
    masked = np.flatnonzero(base.mask)
    if masked.size == 0:
        raise StageError(STAGE, f"the base view {base.name} has an empty mask")
    sigma = float(fit.depth_sigma) * float(np.median(prior_depth.reshape(-1)[masked]))
    rec_sampler = UnmaskedPixelSampler({v.name: ~v.keep for v in views})
    pixel_rays_of = _PixelRays(views)
    base_rgb = torch.from_numpy(inpainted.reshape(-1, 3)[masked].astype(np.float32) / 255.0)
    base_depth = torch.from_numpy(prior_depth.reshape(-1)[masked].astype(np.float32))
    ys, xs = np.divmod(masked, base.mask.shape[1])
    base_o, base_d = pixel_rays(base.camera, ys, xs)

    ckpt_dir = work / "checkpoints"
    run_file = work / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("fingerprint") != fingerprint and ckpt_dir.is_dir():
        log.warning("work dir %s holds a prior fit with other settings or inputs: starting over", work)
        for old in ckpt_dir.glob("*.ckpt"):
            old.unlink()
    work.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint}, indent=1))

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    state = {"seconds": 0.0, "first_loss": None, "last_loss": None}
    resumed_from = None
    extra = tuner.resume(ckpt_dir)
    if extra is not None:
        rng.bit_generator.state = extra["numpy_rng"]
        state = extra["fit"]
        if curves is not None:
            curves.load_state(extra.get("curves"))
            curves.start_at(tuner.step)
        resumed_from = tuner.step
        log.info("prior fit: resuming at step %d", tuner.step)

    def extra_state() -> dict:
        return {"numpy_rng": rng.bit_generator.state, "fit": dict(state, seconds=state["seconds"] + time.perf_counter() - t_run),
                "curves": curves.state() if curves is not None else []}

    dev = tuner.device
    start = tuner.step
    t_run = time.perf_counter()
    window_t, window_steps = t_run, 0
    log.info("prior fit: steps %d-%d of %d, %d L_rec + %d L_prior rays, DS-NeRF sigma %.4g scene units",
             start + 1, iterations, iterations, n_rec, n_prior, sigma)
    while tuner.step < iterations:
        rec_o, rec_d, rec_rgb = pixel_rays_of.rays(rec_sampler.sample(n_rec, rng).numpy())
        pick = torch.from_numpy(rng.integers(0, masked.size, size=n_prior))
        out = tuner.forward(np.concatenate([rec_o, base_o[pick.numpy()]]), np.concatenate([rec_d, base_d[pick.numpy()]]))
        rgb = out["rgb"]
        loss_rec = torch.mean((rgb[:n_rec] - torch.from_numpy(rec_rgb).to(dev)) ** 2)
        loss_colour = torch.mean((rgb[n_rec:] - base_rgb[pick].to(dev)) ** 2)
        prior_rays = {"_weights": out["_weights"][n_rec:], "_samples": out["_samples"][n_rec:]}
        loss_depth = tuner.depth_loss(prior_rays, base_depth[pick], sigma)
        loss_prior = loss_colour + depth_weight * loss_depth if depth_weight else loss_colour
        loss = loss_rec + float(fit.prior_weight) * loss_prior + out["regulariser"]
        tuner.optimise(loss)
        done = tuner.step
        losses = {"total": float(loss.detach()), "rec": float(loss_rec.detach()), "prior_colour": float(loss_colour.detach()),
                  "prior_depth": float(loss_depth.detach())}
        state["last_loss"] = dict(losses, step=done)
        if state["first_loss"] is None:
            state["first_loss"] = dict(losses, step=done)
        window_steps += 1
        if done % log_every == 0 or done == iterations or done == start + 1:
            now = time.perf_counter()
            rays_per_s = window_steps * (n_rec + n_prior) / max(now - window_t, 1e-9)
            log.info("prior fit step %d/%d: loss %.5f (rec %.5f, prior colour %.5f, depth %.4f) %.0f rays/s eta %.0f s",
                     done, iterations, losses["total"], losses["rec"], losses["prior_colour"], losses["prior_depth"],
                     rays_per_s, (iterations - done) * (n_rec + n_prior) / max(rays_per_s, 1e-9))
            window_t, window_steps = now, 0
            if curves is not None:
                lr = float(next(iter(tuner.optimizers.values())).param_groups[0]["lr"])
                curves.add(done, {**{f"loss/{k}": v for k, v in losses.items()}, "lr": lr,
                                  "psnr_rec": -10.0 * math.log10(max(losses["rec"], 1e-12))})
        if done % every == 0 or done == iterations:
            tuner.save_checkpoint(ckpt_dir, extra_state())
        if on_step is not None:
            on_step(done - 1)
    seconds = state["seconds"] + (time.perf_counter() - t_run if tuner.step > start else 0.0)
    return {
        "iterations": iterations,
        "seconds": round(seconds, 3),
        "rays_per_batch": n_rec,
        "prior_rays_per_batch": n_prior,
        "prior_weight": float(fit.prior_weight),
        "depth_weight": depth_weight,
        "depth_sigma_scene_units": sigma,
        "first_loss": state["first_loss"],
        "last_loss": state["last_loss"],
        "resumed_from_step": resumed_from,
        "steps_this_run": tuner.step - start,
    }


def _fit_fingerprint(cfg: Any, nerf_config: Path, winner: str, inpainted: np.ndarray, prior_depth: np.ndarray,
                     transforms_bytes: bytes, use_depth: bool, device: torch.device) -> str:
    """What a checkpoint of the prior fit must have been made from to be resumed; on a GPU, the
    kind of device too (a CPU's checkpoint is not continued there, nor the reverse)."""

    fit = {k: v for k, v in dict(cfg.base).items() if k not in _NOT_IN_FIT_FINGERPRINT}
    ckpt = latest_checkpoint(nerf_config.parent / "nerfstudio_models")
    return _digest(fit, int(cfg.seed), winner, inpainted.tobytes(), prior_depth.tobytes(), transforms_bytes,
                   hashlib.sha256(ckpt.read_bytes()).hexdigest(), bool(use_depth), *computed_on(device))


# -------------------------------------------------------------------------- run

def _overview(candidates: list[str], images: Mapping[str, np.ndarray], vote: Mapping[str, Any], base: TrainView,
              depth_png: np.ndarray, before: np.ndarray, after: np.ndarray, depth_used: bool, weights: str,
              model_set: str) -> Image.Image:

    tiles = []
    for name in candidates:
        mark = " WINNER" if name == vote["winner"] else ""
        tiles.append((images[name], f"{name}: sum d={vote['distances'][name]}{mark}"))
    depth_caption = "aligned depth prior" if depth_used else "depth prior: IMPLAUSIBLE, NOT USED"
    tiles += [(overlay_mask(base.image, base.mask), f"base {base.name}: mask"), (images[vote["winner"]], "base inpainted"),
              (depth_png, depth_caption), (before, "NeRF before prior fit"), (after, "NeRF after prior fit")]
    return with_weights_banner(contact_sheet(tiles, columns=min(5, len(tiles)), tile_width=200), weights, model_set)


def run_base(transforms: Path, nerf: Path, manifest: Path, out_dir: Path, work_dir: Path, cfg: Any, prompt: str = "",
             log: Optional[logging.Logger] = None, *, on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Stage 3 (module docstring): choose the base view, keep its inpainting and noise,
    align its depth prior and fit the NeRF to it; write ``out_dir`` atomically.

    ``transforms``: the posed scene; ``nerf``: the pre-trained NeRF (its config.yml or
    folder); ``manifest``: the ``models`` rule's manifest (its folder is the models
    cache); ``work_dir``: persistent across reruns (candidate cache, fit checkpoints).
    ``cfg``: ``base``, ``inpaint`` (:data:`BASE_INPAINT_KEYS`), ``models``, ``seed``,
    ``device``. Returns the summary (also ``out_dir/summary.json``)."""

    from innout.diffusion import GUIDANCE_MODES, guidance

    log = log or _log
    t_stage = time.perf_counter()
    transforms, out_dir, work_dir = Path(transforms), Path(out_dir), Path(work_dir)
    seed, prompt = int(cfg.seed), str(prompt or "")
    models = check_manifest(manifest, cfg.models)
    cache_dir = Path(manifest).parent
    nerf_config = check_nerf(Path(nerf))
    views = load_train_views(transforms)
    by_name = {v.name: v for v in views}

    device_t, device_warning = stage_device(cfg, STAGE)
    device = str(device_t)
    weights = weights_provenance(cfg.models)
    if weights_label(weights):
        log.warning("models %s: %s", cfg.models.name, weights_label(weights))

    # ---- candidates and the vote ------------------------------------------------------
    with_object = {v.name: v.camera for v in views if v.mask.any()}
    if not with_object:
        raise InputError(transforms, "no train view has any object pixel in its mask: nothing to inpaint")
    candidates = candidate_views(with_object, int(cfg.base.n_candidates))
    settings = {key: cfg.inpaint[key] for key in BASE_INPAINT_KEYS}
    log.info("base: %d train views, candidates %s, inpainting %s, prompt %r", len(views), ", ".join(candidates), settings, prompt)
    pipe = load_inpainter(str(cfg.models.inpainter), device=device, dtype=str(cfg.models.get("dtype", "auto")), cache_dir=cache_dir,
                          options=cfg.models)
    _, guidance_mode = guidance(pipe, prompt, "", float(settings["guidance_scale"]), bool(settings["skip_identical_guidance"]))
    log.info("inpainting: %s", GUIDANCE_MODES[guidance_mode])
    model_key = [models["model_set"], models["specs"], (manifest_item(models, "inpainter") or {}).get("path"),
                 *computed_on(device_t, pipe.unet.dtype)]
    inpainted, noise, n_cached = inpaint_candidates(pipe, by_name, candidates, prompt, settings, seed, work_dir / "candidates",
                                                   model_key, log)
    del pipe
    vote = phash_vote(inpainted, {n: by_name[n].mask for n in candidates}, hash_size=int(cfg.base.phash_size))
    winner = vote["winner"]
    base = by_name[winner]
    log.info("pHash vote: summed Hamming distances %s -> base view %s", vote["distances"], winner)

    # ---- depth prior --------------------------------------------------------------------
    depth_model, processor = load_depth_model(str(cfg.models.depth), cache_dir, device)
    mono = depth_prior.monocular_depth(depth_model, processor, inpainted[winner])
    del depth_model
    tuner = NerfTuner(nerf_config, device=device, learning_rate=float(cfg.base.learning_rate), lr_final=float(cfg.base.lr_final),
                      decay_steps=max(1, int(cfg.base.prior_iterations)), stage=STAGE,
                      warmup_steps=int(cfg.base.warmup_steps))
    before = tuner.renderer.render_camera(base.camera, return_samples=False)
    nerf_depth = before["depth"].cpu().numpy().astype(np.float64)
    valid = ~base.mask & (before["accumulation"].cpu().numpy() > 0.5)
    try:
        prior_depth, alignment = align_depth(mono, nerf_depth, valid, kind=str(cfg.base.depth_kind), method=str(cfg.base.depth_fit),
                                             ray_cos=ray_cosines(base.camera), iterations=int(cfg.base.depth_fit_iterations),
                                             inlier_sigmas=float(cfg.base.depth_inlier_sigmas), seed=seed)
    except ValueError as err:
        raise StageError(STAGE, f"cannot align the depth prior of {winner}: {err}") from None
    log.info("depth prior: scale %.4g offset %.4g (%s), inliers %.1f %%, median relative error against the NeRF's depth "
             "outside the mask %.3f (inliers %.3f)", alignment["scale"], alignment["offset"], alignment["space"],
             100 * alignment["inlier_fraction"], alignment["rel_error"], alignment["depth_abs_rel"])
    depth_check = depth_prior_decision(alignment, cfg.base)
    if not depth_check["plausible"]:
        log.warning("DEPTH PRIOR IMPLAUSIBLE for %s: %s; %s", winner, depth_check["reason"], depth_check["note"])
    errors_before = base_view_errors(before, base, inpainted[winner], prior_depth)

    # ---- prior fit ----------------------------------------------------------------------
    use_depth = depth_check["used"]
    fingerprint = _fit_fingerprint(cfg, nerf_config, winner, inpainted[winner], prior_depth, transforms.read_bytes(), use_depth,
                                   tuner.device)
    curves = TrainingLog(work_dir / "tensorboard" if bool(cfg.base.tensorboard) else None)
    fit = fit_prior(tuner, views, base, inpainted[winner], prior_depth, cfg.base, work_dir / "fit", fingerprint, seed, log, on_step,
                    use_depth=use_depth, curves=curves)
    after = tuner.renderer.render_camera(base.camera, return_samples=False)
    errors_after = base_view_errors(after, base, inpainted[winner], prior_depth)
    for key in errors_before:
        fit[f"{key}_before"], fit[f"{key}_after"] = errors_before[key], errors_after[key]
    log.info("prior fit: %d steps in %.1f s; masked PSNR vs inpainting %s -> %s dB, depth error %s -> %s, unmasked PSNR %s -> %s dB",
             fit["iterations"], fit["seconds"], *(_fmt(fit[f"{k}_{w}"]) for k in errors_before for w in ("before", "after")))

    # ---- outputs ------------------------------------------------------------------------
    h, w = base.image.shape[:2]
    depth_png = colourise_depth(prior_depth)
    rgb_before, rgb_after = (r["rgb"].detach().cpu().numpy() for r in (before, after))
    summary = {
        **provenance_fields(weights),
        "models": models["model_set"],
        "candidates": candidates,
        "votes": vote["distances"],
        "vote_definition": VOTE_DEFINITION,
        "nearest_neighbour_votes": vote["votes"],
        "hashes": vote["hashes"],
        "pairwise_hamming": vote["pairwise"],
        "winner": winner,
        "prompt": prompt,
        "seed": seed,
        "inpainting": dict(settings, latent_size=list(noise.shape[1:]), noise_shape=list(noise.shape), candidates_from_cache=n_cached,
                           guidance=guidance_mode, guidance_note=GUIDANCE_MODES[guidance_mode]),
        "mask_fraction": float(base.mask.mean()),
        "depth_prior": depth_check,
        "depth_alignment": dict(alignment, model=str(cfg.models.depth)),
        "depth_prior_definition": DEPTH_PRIOR_DEFINITION,
        "prior_fit": fit,
        "resolution": [w, h],
        "n_train_views": len(views),
        "device": device,
        "device_warning": device_warning,
        "preset": cfg.get("preset"),
        "nerf": f"nerf/{NS_DIR}/config.yml",
    }
    with atomic_dir(out_dir) as tmp:
        for name in candidates:
            save_png(tmp / "candidates" / f"{name}.png", inpainted[name])
        save_png(tmp / "base.png", inpainted[winner])
        save_png(tmp / "mask.png", base.mask.astype(np.uint8) * 255)
        torch.save(noise.clone().contiguous(), tmp / "noise.pt")
        np.save(tmp / "depth_prior.npy", prior_depth.astype(np.float32))
        save_png(tmp / "depth_prior.png", depth_png)
        save_png(tmp / "renders" / "before.png", rgb_before)
        save_png(tmp / "renders" / "after.png", rgb_after)
        sheet = _overview(candidates, inpainted, vote, base, depth_png, to_u8(rgb_before), to_u8(rgb_after),
                          use_depth, weights, str(cfg.models.name))
        sheet.save(tmp / "overview.png")
        tuner.export(tmp / "nerf", extra_meta={"stage": STAGE, "base_view": winner}, final_dir=out_dir / "nerf")
        curves.plot(tmp / "curves.png", f"base view {winner}: prior fit", FIT_CURVE_PANELS)
        curves.export(tmp)
        summary["stage_seconds"] = round(time.perf_counter() - t_stage, 3)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        write_resolved(cfg, tmp / "config.yaml")
    log.info("base done in %.1f s: base view %s", summary["stage_seconds"], winner)
    return summary


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"
