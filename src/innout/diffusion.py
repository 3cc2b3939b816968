"""Multi-view inpainting with a Stable Diffusion inpainting pipeline's components.

The pipeline's own ``__call__`` denoises one batch from start to end; In-N-Out needs the
base view and the target views to advance *together*, one step at a time, so that at
every step the targets can attend to the base's keys and values (ILA, :mod:`innout.ila`).
This module's loop, per timestep:

1. the base view (batch ``[uncond, cond]`` with classifier-free guidance) runs once in
   RECORD mode: every self-attention layer stores its K/V;
2. the targets run in SHARE mode in batches of ``batch_size`` (``[uncond targets...,
   cond targets...]``), all reusing the same stored base K/V: the base trajectory is
   computed once per step, never re-denoised beside each target;
3. guidance, then a scheduler step for each batch; the store is freed.

Each batch (and the base) has its own scheduler instance: multistep schedulers (PNDM,
which SD2-inpainting ships, DPM-Solver) keep per-trajectory state that interleaved
batches would otherwise corrupt.

Classifier-free guidance that changes nothing is not paid for: when the prompt's and the
negative prompt's embeddings are identical (an empty prompt and an empty negative
prompt, what the demo and the procedural model set use), ``uncond + g (cond - uncond)``
is ``cond`` for any ``g``, so the doubled batch is skipped and every batch runs once
(:func:`guidance`; ``skip_identical_guidance=False`` keeps the doubled batch). ILA then
records and shares a single row of base keys and values.

Inputs and outputs
------------------
Images are RGB (PIL or ``uint8`` arrays), masks ``(H, W)`` (True / nonzero integer /
float >= 0.5 = to inpaint). All views share one size. Each is resized so its shorter
side is ``resolution`` and both sides are multiples of 8 (:func:`processing_size`;
the aspect ratio changes by under 8 px, so latent-resolution cameras must scale x and y
separately: :func:`latent_size` gives ``(h, w)``). The mask at processing resolution is
the resized mask thresholded at 0.5; at latent resolution it is nearest-sampled, like
the diffusers pipeline the model was trained for. The masked-image conditioning is the
VAE posterior's *mode* (deterministic; the pipeline samples it).

``init_latents`` are unit Gaussians ``(N, 4, h, w)`` (ELA's aligned noise, or
:func:`initial_noise`): they are multiplied by the scheduler's ``init_noise_sigma``
here, as the pipeline does with ``latents=``.

The decoded image is resized back to the input size, and only the pixels *inside the
input mask* are taken from it; outside the mask the output is the input image exactly
(the VAE round trip would otherwise blur and shift the whole picture).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from innout.ila import ILAController, ila_installed

SCHEDULERS = ("pipeline", "ddim", "pndm")
GUIDANCE_MODES = {
    "on": "classifier-free guidance: every UNet batch runs [uncond, cond]",
    "off": "no guidance (guidance_scale <= 1): one UNet batch",
    "skipped": "guidance skipped: the prompt's and the negative prompt's embeddings are identical, so guidance "
               "changes nothing; one UNet batch instead of two",
}


# --------------------------------------------------------------------------- geometry

def processing_size(width: int, height: int, resolution: int, multiple: int = 8) -> tuple[int, int]:
    """``(w, h)`` with the shorter side ``resolution`` and both sides multiples of 8."""
    if resolution <= 0 or resolution % multiple:
        raise ValueError(f"inpainting resolution must be a positive multiple of {multiple}, got {resolution}")
    short = min(width, height)
    scale = resolution / short

    def side(x: int) -> int:
        return resolution if x == short else max(multiple, int(round(x * scale / multiple)) * multiple)

    return side(width), side(height)


def latent_size(width: int, height: int, resolution: int, vae_scale_factor: int = 8) -> tuple[int, int]:
    """``(h, w)`` of the latents of a ``width x height`` view (what ELA casts rays at)."""
    w, h = processing_size(width, height, resolution)
    return h // vae_scale_factor, w // vae_scale_factor


def initial_noise(n: int, latent_hw: tuple[int, int], seed: int, channels: int = 4) -> torch.Tensor:
    """``n`` unit-Gaussian initial latents ``(n, channels, h, w)`` from a CPU generator
    (the same numbers on every device)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((n, channels, *latent_hw), generator=gen, dtype=torch.float32)


# --------------------------------------------------------------------------- conversion

def as_rgb(image: Any) -> np.ndarray:
    """``(H, W, 3) uint8`` from a PIL image or an array (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"an image is (H, W, 3), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return arr


def as_mask(mask: Any) -> np.ndarray:
    """``(H, W) bool``: True where to inpaint (bool; nonzero integers; floats >= 0.5)."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"a mask is (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return arr > 0
    return arr >= 0.5


# --------------------------------------------------------------------------- preparation

def make_scheduler(pipe, name: str = "pipeline"):
    """A fresh scheduler: the pipeline's own class (``pipeline``) or DDIM / PNDM with the
    pipeline's noise schedule."""
    from diffusers import DDIMScheduler, PNDMScheduler

    if name == "pipeline":
        return type(pipe.scheduler).from_config(pipe.scheduler.config)
    if name == "ddim":
        return DDIMScheduler.from_config(pipe.scheduler.config)
    if name == "pndm":
        return PNDMScheduler.from_config(pipe.scheduler.config)
    raise ValueError(f"unknown scheduler {name!r} ({', '.join(SCHEDULERS)})")


def _device_dtype(pipe) -> tuple[torch.device, torch.dtype]:
    # the execution device: with CPU offload (models.cpu_offload) the UNet waits on the CPU
    return pipe._execution_device, pipe.unet.dtype


@torch.no_grad()
def prepare_views(pipe, images: Sequence[Any], masks: Sequence[Any], resolution: int, batch_size: int = 4) -> dict:
    """Resize, encode the masked images, downsample the masks.

    Returns ``{"mask": (N, 1, h, w), "masked_latents": (N, 4, h, w), "size": (W, H),
    "processing_size": (w, h), "images": [uint8], "masks": [bool]}``."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if not images:
        raise ValueError("no views to inpaint")
    rgbs = [as_rgb(im) for im in images]
    bools = [as_mask(m) for m in masks]
    size = (rgbs[0].shape[1], rgbs[0].shape[0])
    for i, (rgb, m) in enumerate(zip(rgbs, bools)):
        if (rgb.shape[1], rgb.shape[0]) != size:
            raise ValueError(f"view {i} is {rgb.shape[1]}x{rgb.shape[0]}, view 0 is {size[0]}x{size[1]}: views must share one size")
        if m.shape != rgb.shape[:2]:
            raise ValueError(f"view {i}: mask {m.shape[1]}x{m.shape[0]} does not match its image {size[0]}x{size[1]}")
    pw, ph = processing_size(*size, resolution)
    device, dtype = _device_dtype(pipe)
    factor = pipe.vae_scale_factor

    pixels, pix_masks = [], []
    for rgb, m in zip(rgbs, bools):
        im = Image.fromarray(rgb)
        mk = Image.fromarray(m.astype(np.uint8) * 255)
        if (pw, ph) != size:
            im = im.resize((pw, ph), Image.LANCZOS)
            mk = mk.resize((pw, ph), Image.BILINEAR)
        pixels.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        pix_masks.append(torch.from_numpy((np.asarray(mk, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32))[None])
    pixels = torch.stack(pixels)
    pix_masks = torch.stack(pix_masks)
    masked = pixels * (pix_masks < 0.5)

    latents = []
    scaling = pipe.vae.config.scaling_factor
    for start in range(0, len(masked), batch_size):
        chunk = masked[start:start + batch_size].to(device=device, dtype=pipe.vae.dtype)
        latents.append(pipe.vae.encode(chunk).latent_dist.mode() * scaling)
    masked_latents = torch.cat(latents).to(dtype)
    lat_mask = F.interpolate(pix_masks, size=(ph // factor, pw // factor)).to(device=device, dtype=dtype)
    return {"mask": lat_mask, "masked_latents": masked_latents, "size": size, "processing_size": (pw, ph),
            "images": rgbs, "masks": bools}


# --------------------------------------------------------------------------- the loop

class _Trajectory:
    """One batch of views advancing together: latents, conditioning, its scheduler."""

    def __init__(self, pipe, indices, init, mask, masked, embeds, scheduler_name, steps, cfg, seed):
        device, dtype = _device_dtype(pipe)
        self.indices = list(indices)
        self.scheduler = make_scheduler(pipe, scheduler_name)
        self.scheduler.set_timesteps(steps, device=device)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        self.latents = init[self.indices].to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        extra = torch.cat([mask[self.indices], masked[self.indices]], dim=1)
        self.extra = torch.cat([extra, extra]) if cfg else extra
        uncond, cond = embeds
        n = len(self.indices)
        self.embeds = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)]) if cfg else cond.expand(n, -1, -1)
        params = inspect.signature(self.scheduler.step).parameters
        self.step_kwargs = {}
        if "eta" in params:
            self.step_kwargs["eta"] = 0.0
        if "generator" in params:
            self.step_kwargs["generator"] = torch.Generator(device="cpu").manual_seed(int(seed) + self.indices[0])

    def step(self, unet, t, guidance_scale: float, cfg: bool) -> None:
        x = torch.cat([self.latents, self.latents]) if cfg else self.latents
        x = torch.cat([self.scheduler.scale_model_input(x, t), self.extra], dim=1)
        eps = unet(x, t, encoder_hidden_states=self.embeds, return_dict=False)[0]
        if cfg:
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        self.latents = self.scheduler.step(eps, t, self.latents, **self.step_kwargs, return_dict=False)[0]


@torch.no_grad()
def encode_prompt(pipe, prompt: str = "", negative_prompt: str = "", cfg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uncond, cond)`` text embeddings ``(1, 77, D)`` (uncond is None without CFG)."""
    device, _ = _device_dtype(pipe)
    cond, uncond = pipe.encode_prompt(prompt or "", device, 1, cfg, negative_prompt or None)
    return uncond, cond


@torch.no_grad()
def guidance(pipe, prompt: str = "", negative_prompt: str = "", guidance_scale: float = 7.5,
             skip_identical: bool = True) -> tuple[tuple[torch.Tensor | None, torch.Tensor], str]:
    """``((uncond, cond), mode)``: the text embeddings the loop conditions on and the
    guidance ``mode`` (a key of :data:`GUIDANCE_MODES`): ``on`` (doubled batches),
    ``off`` (``guidance_scale <= 1``) or ``skipped`` (identical embeddings and
    ``skip_identical``; uncond is then None, as without guidance)."""
    if guidance_scale <= 1.0:
        return encode_prompt(pipe, prompt, negative_prompt, False), "off"
    uncond, cond = encode_prompt(pipe, prompt, negative_prompt, True)
    if skip_identical and torch.equal(uncond, cond):
        return (None, cond), "skipped"
    return (uncond, cond), "on"


@torch.no_grad()
def denoise(pipe, mask: torch.Tensor, masked_latents: torch.Tensor, init_latents: torch.Tensor, *, prompt: str = "",
            negative_prompt: str = "", steps: int = 20, guidance_scale: float = 7.5, ila_lambda: float | None = 0.2,
            base_index: int | None = None, batch_size: int = 4, scheduler: str = "pipeline", seed: int = 0,
            progress: bool = True, controller: ILAController | None = None,
            skip_identical_guidance: bool = True) -> torch.Tensor:
    """The denoising loop over prepared views (:func:`prepare_views`); final latents
    ``(N, 4, h, w)`` in input order.

    ILA is on when ``ila_lambda`` is not None and ``base_index`` is given: the base runs
    once per step (RECORD), the others in batches (SHARE). Otherwise every view is
    denoised independently, in batches of ``batch_size``. Guidance: :func:`guidance`
    (a no-op guidance is skipped unless ``skip_identical_guidance`` is false)."""
    n = init_latents.shape[0]
    if mask.shape[0] != n or masked_latents.shape[0] != n:
        raise ValueError(f"{n} initial latents for {mask.shape[0]} views")
    if tuple(init_latents.shape[2:]) != tuple(masked_latents.shape[2:]):
        raise ValueError(f"initial latents are {tuple(init_latents.shape[2:])}, the views' latents {tuple(masked_latents.shape[2:])}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    use_ila = ila_lambda is not None and base_index is not None
    if base_index is not None and not 0 <= base_index < n:
        raise ValueError(f"base_index {base_index} is not one of the {n} views")
    embeds, mode = guidance(pipe, prompt, negative_prompt, guidance_scale, skip_identical_guidance)
    cfg = mode == "on"

    def trajectory(indices):
        return _Trajectory(pipe, indices, init_latents, mask, masked_latents, embeds, scheduler, steps, cfg, seed)

    others = [i for i in range(n) if not (use_ila and i == base_index)]
    batches = [trajectory(others[s:s + batch_size]) for s in range(0, len(others), batch_size)]
    base = trajectory([base_index]) if use_ila else None
    timesteps = (base or batches[0]).scheduler.timesteps
    ctl = controller if controller is not None else ILAController()
    if use_ila:
        ctl.share(ila_lambda)  # validates lambda
        ctl.off()

    with contextlib.ExitStack() as stack:
        if use_ila:
            stack.enter_context(ila_installed(pipe.unet, ctl))
        bar = stack.enter_context(tqdm(total=len(timesteps), desc="inpaint", unit="step", disable=not progress, leave=False))
        for t in timesteps:
            if use_ila:
                ctl.record()
                base.step(pipe.unet, t, guidance_scale, cfg)
                ctl.share(ila_lambda)
            for batch in batches:
                batch.step(pipe.unet, t, guidance_scale, cfg)
            ctl.clear()
            ctl.off()
            bar.update()

    out = torch.empty_like(init_latents, dtype=(base or batches[0]).latents.dtype, device=(base or batches[0]).latents.device)
    for traj in ([base] if base else []) + batches:
        out[traj.indices] = traj.latents
    return out


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, batch_size: int = 4) -> np.ndarray:
    """VAE-decode ``(N, 4, h, w)`` latents to ``(N, H, W, 3)`` float32 images in [0, 1]."""
    scaling = pipe.vae.config.scaling_factor
    images = []
    for start in range(0, latents.shape[0], batch_size):
        chunk = latents[start:start + batch_size].to(pipe.vae.dtype) / scaling
        x = pipe.vae.decode(chunk, return_dict=False)[0]
        images.append((x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy())
    return np.concatenate(images)


def composite(inpainted: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The inpainted pixels inside ``mask``, the input elsewhere (``uint8``); the inpainted
    image is resized (Lanczos) to the input's size first when needed."""
    if inpainted.dtype != np.uint8:
        inpainted = np.clip(np.round(inpainted * 255.0), 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    if inpainted.shape[:2] != (h, w):
        inpainted = np.asarray(Image.fromarray(inpainted).resize((w, h), Image.LANCZOS))
    return np.where(mask[..., None], inpainted, image)


def inpaint_views(pipe, images: Sequence[Any], masks: Sequence[Any], init_latents: torch.Tensor | None = None,
                  prompt: str = "", *, steps: int = 20, guidance_scale: float = 7.5, ila_lambda: float | None = 0.2,
                  base_index: int | None = None, batch_size: int = 4, resolution: int = 512, seed: int = 0,
                  negative_prompt: str = "", scheduler: str = "pipeline", progress: bool = True,
                  controller: ILAController | None = None, skip_identical_guidance: bool = True) -> list[np.ndarray]:
    """Inpaint ``N`` views of one scene; ``uint8 (H, W, 3)`` images in input order.

    ``init_latents``: ``(N, 4, h, w)`` unit Gaussians with ``(h, w) =``
    :func:`latent_size` (ELA's aligned noise; the base's entry is its ``z_T^p``), or None
    for :func:`initial_noise` from ``seed``. With ``base_index`` and ``ila_lambda`` set,
    ILA aligns every other view to the base (whose own output is its plain inpainting);
    ``ila_lambda=None`` or ``base_index=None`` inpaints every view independently.
    VAE encoding and decoding run in the groups of :func:`denoising_groups`, so a view's
    output depends only on its own batch (what makes sharded runs byte-identical).
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if not images:
        raise ValueError("no views to inpaint")
    if base_index is not None and not 0 <= base_index < len(images):
        raise ValueError(f"base_index {base_index} is not one of the {len(images)} views")
    use_ila = ila_lambda is not None and base_index is not None
    groups = denoising_groups(len(images), base_index if use_ila else None, batch_size)
    views = _prepare_in_groups(pipe, images, masks, resolution, groups)
    h, w = views["masked_latents"].shape[2:]
    if init_latents is None:
        init_latents = initial_noise(len(images), (h, w), seed, pipe.vae.config.latent_channels)
    init_latents = torch.as_tensor(init_latents)
    if init_latents.ndim != 4 or init_latents.shape[0] != len(images) or tuple(init_latents.shape[2:]) != (h, w):
        raise ValueError(f"init_latents must be ({len(images)}, {pipe.vae.config.latent_channels}, {h}, {w}) for "
                         f"{views['size'][0]}x{views['size'][1]} views at resolution {resolution}, got {tuple(init_latents.shape)}")
    latents = denoise(pipe, views["mask"], views["masked_latents"], init_latents, prompt=prompt,
                      negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale, ila_lambda=ila_lambda,
                      base_index=base_index, batch_size=batch_size, scheduler=scheduler, seed=seed, progress=progress,
                      controller=controller, skip_identical_guidance=skip_identical_guidance)
    decoded = [None] * len(images)
    for group in groups:  # decode the same groups as were denoised together
        for i, image in zip(group, decode(pipe, latents[group], batch_size)):
            decoded[i] = image
    return [composite(out, img, m) for out, img, m in zip(decoded, views["images"], views["masks"])]


def denoising_groups(n: int, base_index: int | None, batch_size: int) -> list[list[int]]:
    """The batches :func:`denoise` advances together: the base alone (when ILA is on),
    then the other views in input order, ``batch_size`` at a time.

    :func:`inpaint_views` also VAE-encodes and decodes in exactly these groups, so a
    view's pixels depend only on its own group's tensors: inpainting a list whose
    targets are a run of whole batches of a longer list (a shard) gives the same bytes
    for them as inpainting the longer list (CPU kernels may pick other code paths for
    other batch shapes, which changes the last bits)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    others = [i for i in range(n) if i != base_index]
    groups = [[base_index]] if base_index is not None else []
    return groups + [others[s:s + batch_size] for s in range(0, len(others), batch_size)]


def _prepare_in_groups(pipe, images: Sequence[Any], masks: Sequence[Any], resolution: int, groups: list[list[int]]) -> dict:
    """:func:`prepare_views` of every group on its own, reassembled in input order."""
    parts = [(group, prepare_views(pipe, [images[i] for i in group], [masks[i] for i in group], resolution, len(group)))
             for group in groups]
    first = parts[0][1]
    n = len(images)
    views = {"size": first["size"], "processing_size": first["processing_size"], "images": [None] * n, "masks": [None] * n}
    for key in ("mask", "masked_latents"):
        views[key] = torch.empty((n, *first[key].shape[1:]), dtype=first[key].dtype, device=first[key].device)
    for group, part in parts:
        if part["size"] != first["size"]:
            raise ValueError(f"views are {part['size']} and {first['size']}: views must share one size")
        for j, i in enumerate(group):
            views["mask"][i] = part["mask"][j]
            views["masked_latents"][i] = part["masked_latents"][j]
            views["images"][i] = part["images"][j]
            views["masks"][i] = part["masks"][j]
    return views


def inpaint_single(pipe, image: Any, mask: Any, latents: torch.Tensor | None = None, prompt: str = "", *,
                   steps: int = 20, guidance_scale: float = 7.5, resolution: int = 512, seed: int = 0,
                   negative_prompt: str = "", scheduler: str = "pipeline", progress: bool = False,
                   skip_identical_guidance: bool = True) -> np.ndarray:
    """One view, no alignment (base-view candidates). ``latents``: ``(4, h, w)`` or
    ``(1, 4, h, w)`` unit Gaussian, or None for :func:`initial_noise` from ``seed`` (the
    same seed gives every candidate of one size the same noise)."""
    if latents is not None:
        latents = torch.as_tensor(latents)
        latents = latents[None] if latents.ndim == 3 else latents
    return inpaint_views(pipe, [image], [mask], latents, prompt, steps=steps, guidance_scale=guidance_scale,
                         ila_lambda=None, base_index=None, batch_size=1, resolution=resolution, seed=seed,
                         negative_prompt=negative_prompt, scheduler=scheduler, progress=progress,
                         skip_identical_guidance=skip_identical_guidance)[0]


def inpaint_kwargs(inpaint_cfg: Any) -> dict:
    """The :func:`inpaint_views` keyword arguments from ``InpaintConfig`` (``ila: false``
    turns ILA off: the "without ILA" ablation)."""
    get = (lambda k, d=None: inpaint_cfg.get(k, d)) if isinstance(inpaint_cfg, dict) else (lambda k, d=None: getattr(inpaint_cfg, k, d))
    return {
        "steps": int(get("steps", 20)),
        "guidance_scale": float(get("guidance_scale", 7.5)),
        "ila_lambda": float(get("ila_lambda", 0.2)) if get("ila", True) else None,
        "resolution": int(get("resolution", 512)),
        "batch_size": int(get("batch_size", 4)),
        "scheduler": str(get("scheduler", "pipeline")),
        "skip_identical_guidance": bool(get("skip_identical_guidance", True)),
    }

