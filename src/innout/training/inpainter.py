"""The inpainting ``UNet2DConditionModel``: SD2-inpainting's interface at CPU size.

Interface (what :mod:`innout.diffusion` feeds it, so that the trained weights drop into
the workflow unchanged): 9 input channels ``[noisy latents (4), mask (1), masked-image
latents (4)]``, epsilon prediction, the SD2 noise schedule of the pipeline's scheduler
(:data:`innout.model_presets.SD2_SCHEDULER`: ``scaled_linear`` betas 0.00085-0.012 over 1000
steps), cross-attention on the embedding of a fixed empty prompt from a small seeded
``CLIPTextModel`` with :func:`innout.model_presets.tiny_tokenizer`. The conditioning is built by
:func:`innout.diffusion.prepare_views` itself (mask thresholded, nearest-downsampled to
the latent grid; masked-image latents = VAE posterior mode x ``scaling_factor`` of the
image with the masked pixels zeroed), from the trained VAE.

Samples (:func:`build_samples`, ``masks_per_view`` per training view):

* the object's silhouette, dilated as the scene import does (5x5, 5 times), sometimes
  united with a box or blob: input = the view WITH the object, target = the same view
  rendered without it (what object removal should produce);
* a box or blob on the object-free render (target: the render);
* a box or blob that avoids the object on the render with it (target: that render): the
  context may hold a vivid object, the hole is still background.

Objective: MSE between predicted and true noise (the model predicts epsilon, as SD2
inpainting does), weighted by 1 + 1/SNR (:func:`loss_weights`: the v-parameterisation's
loss written for an epsilon model, which counts the error of the implied clean latent at
low SNR). Weights are averaged (EMA) for the saved model.

The first step of sampling decides the fill's colour, and two choices make the model
learn it from the hole's surroundings:

* ``start_fraction`` of every batch is trained at t = 999 from PURE noise, as the sampler's
  first step sees it, with the epsilon target from which the scheduler recovers the true
  clean latent; the saved scheduler uses ``trailing`` timestep spacing, so that sampling
  does start at t = 999 (SD2's ``leading`` spacing starts 5 steps at t = 801).
* ``hole_noise_offset``: the noise in the hole gets a random per-channel constant (std
  0.3), so the hole's mean colour cannot be read off the noisy latent.

Why (measured on the held-out scenes, ``tools/inspect_models.py`` prints the "first
step" line): SD2's schedule leaves sqrt(alphas_cumprod) = 0.068 of the clean latent in x_t
at t = 999 (0.19 at t = 801, where SD2's ``leading`` spacing starts 5 steps). A model
trained on that schedule alone (blocks (64, 128, 128), 600 steps) learnt to take the
hole's colour from that residue, not from the context: fed the pure noise sampling starts
from, at t = 801, its implied clean latent in the hole had channel means [0.17, 0.08,
-0.12, 0.15] against the truth's [-1.05, 0.40, 1.09, -0.79] (forward scene; MSE 1.73,
where the context's mean latent scores 0.69), i.e. the data set's mean latent, which
decodes to olive green (0.37, 0.40, 0.24): purple rooms were filled with green texture,
11.8 / 14.8 dB in the mask against 14.3 / 18.0 for the ring-mean fill. Given x_t WITH
the residue (as in training) its hole means moved towards the truth, and seeding the start
noise with the residue of the ring-mean colour raised its fills by 1.3-1.5 dB. With the
two choices above and the smaller UNet below (4x the steps in the same time) the shipped
model's first-step hole means are [-1.16, 0.69, 1.09, -1.11] (MSE 0.86) and its fills
have the background's colours (13.6 / 16.9 dB).

ILA (In-N-Out's stage 4) makes each target view attend to the base view's self-attention
keys and values. SD2's attention was trained on web images, where attending to similar
content is how texture is propagated; a small model trained for minutes need not learn
that by itself. So a fraction ``ila_fraction`` of the steps trains exactly the way the
workflow uses the model: pairs of views of one scene, both with their object-removal
masks, at the same timestep; the base view runs through the UNet in RECORD mode (with
gradient: ``ila_base_gradient``, below) and the target in SHARE mode with a lambda drawn
from ``ila_lambda``, through the same :class:`innout.ila.ILAAttnProcessor` the workflow
installs. The other steps train plain (independent) inpainting, which the base view, the
candidates and the ``independent``/``ela`` variants use.

Those pairs alone do not teach ILA (``tools/probe_ila_training.py``; every measurement is in
``docs/ila-training.md``): the hidden background is predicted as well from the target's own
context as from the base, and the base's keys and values were computed without gradient, so
no loss could shape what the base offers. The default recipe (the "lesson") adds three
options, which together, for 4800 steps, brought the demo's ``ila`` to 0.80-0.90 x
``independent`` (0.847-0.898 for the two sets this command trained; README "Models trained
here"; 2400 steps: 0.94): ``ila_base_gradient`` runs the base with gradient and keeps its
keys/values in the graph (:attr:`innout.ila.ILAController.keep_graph`; an ILA step then
costs two backward passes);
``pattern_fraction`` of the steps train on hidden-pattern pairs
(:mod:`innout.training.hidden_pattern`), whose hole content only the base shows
(``pattern_mean`` ``background``: only the pattern's detail is hidden, the hole keeps its
context's mean colour); and ``ila_attention_weight`` adds, in the ILA and hidden-pattern
steps, a cross-entropy that tells the target's attention to the base where each token's
counterpart is (from the generator's geometry: :mod:`innout.training.counterparts`), which
no epsilon loss taught. What a run gives varies with its seed (the same recipe at
``--seed 0`` gave the demo's ``ila`` 0.89-0.90 and weaker fills), and the lesson costs the
single fills ~0.4 dB in the mask against a UNet trained without it. ``ila_self_fraction``
(off) makes some ILA pairs take the target itself, under other noise, as the base; it
taught nothing measurable.

Sizing (``tools/inspect_models.py`` measures the result; timed on the 2-core machine
while other jobs ran): blocks (32, 64, 64), GroupNorm of 8 groups, one ResNet per level,
attention (``attn1`` + ``attn2``) at the 20x15 and 10x8 latent levels and in the mid block
(5x4): 3 self-attention resolutions for ILA, 1.5 M parameters, ~19 ms per sample forward +
backward on one core; blocks (64, 128, 128) cost ~70 ms (5.8 M parameters) and gave worse
fills within the budget (fewer steps).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from innout.training.data import Views
from innout.training.loop import Loop, LoopConfig
from innout.training.masks import blob_mask, box_mask, silhouette_mask

log = logging.getLogger("innout")

OBJECT, BACKGROUND, OBJECT_CONTEXT = 0, 1, 2  # sample kinds (see module doc)


@dataclass
class UnetConfig:
    block_out_channels: tuple = (32, 64, 64)
    attention_levels: int = 2  # CrossAttn blocks at the first levels (the mid block always has one)
    head_width: int = 32  # channels per attention head
    layers_per_block: int = 1
    norm_num_groups: int = 8  # 4-8 channels per group
    masks_per_view: int = 2
    extra_hole_fraction: float = 0.3  # object masks united with a box/blob
    ila_fraction: float = 0.5  # steps trained with ILA on view pairs
    ila_lambda: tuple = (0.1, 0.5)  # lambda drawn uniformly in this range for those steps
    ila_self_fraction: float = 0.0  # ILA pairs whose base is the target itself (fresh noise): copying by position
    loss_weighting: str = "v"  # v | min_snr | uniform (see loss_weights)
    timestep_sampling: str = "uniform"  # uniform | weighted: t drawn in proportion to its loss weight (see train_unet)
    min_snr_gamma: float = 5.0
    hole_noise_offset: float = 0.3  # std of a per-sample, per-channel constant added to the noise in the hole (module doc)
    start_fraction: float = 0.125  # samples per batch trained at the sampler's first step, from pure noise (module doc)
    timestep_spacing: str = "trailing"  # the saved scheduler's (leading: SD2's; trailing: sampling starts at t = 999)
    hole_weight: float = 1.0  # weight of the hole's latent pixels in the MSE (context pixels: 1)
    ila_base_gradient: bool = True  # ILA steps run the base with gradient: the target's loss trains its keys/values
    pattern_fraction: float = 0.4  # steps trained on hidden-pattern ILA pairs (innout.training.hidden_pattern)
    pattern_amplitude: float = 0.15  # the painted pattern's std, in [0, 1] colour units
    pattern_mean: str = "background"  # random: + an unpredictable tint | background: the hole's mean colour unchanged
    pattern_references: int = 2  # reference (base) views per scene
    pattern_min_covered: float = 0.2  # a target needs this fraction of its hole painted
    pattern_same_t: float = 0.5  # fraction of pattern pairs with the base at the target's timestep (else below it)
    ila_attention_weight: float = 0.05  # ILA/pattern steps: + this x cross-entropy of the attention to the base vs the counterparts
    ila_attention_sigma: float = 0.6  # width (tokens) of the counterpart's Gaussian (innout.training.counterparts)
    encode_batch: int = 16
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=4800, lr=1e-3, batch=16, warmup=50, ema=0.995))


def build_unet(cfg: UnetConfig, cross_attention_dim: int, seed: int):
    from diffusers import UNet2DConditionModel

    channels = tuple(int(c) for c in cfg.block_out_channels)
    n = len(channels)
    if not 1 <= cfg.attention_levels <= n:
        raise ValueError(f"unet.attention_levels must be in 1..{n}")
    down = tuple("CrossAttnDownBlock2D" if i < cfg.attention_levels else "DownBlock2D" for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if i < cfg.attention_levels else "UpBlock2D" for i in reversed(range(n)))
    heads = tuple(max(1, c // int(cfg.head_width)) for c in channels)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=16, in_channels=9, out_channels=4, down_block_types=down, up_block_types=up,
            block_out_channels=channels, layers_per_block=int(cfg.layers_per_block), norm_num_groups=int(cfg.norm_num_groups),
            cross_attention_dim=int(cross_attention_dim), attention_head_dim=heads, use_linear_projection=True,
            flip_sin_to_cos=True, freq_shift=0,
        )


def build_text_encoder(seed: int):
    """The frozen text tower (random weights, as the ``tiny`` set's) and the tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from innout.model_presets import TINY_TEXT, tiny_tokenizer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    return encoder.eval().requires_grad_(False), tiny_tokenizer()


def assemble_pipeline(unet, vae, text_encoder, tokenizer, timestep_spacing: str = "leading"):
    """A ``StableDiffusionInpaintPipeline`` with the SD2 scheduler (what is saved); its
    noise schedule is SD2's, ``timestep_spacing`` where the sampler's steps fall."""
    from innout.model_presets import SD2_SCHEDULER, _assemble, _scheduler

    return _assemble(unet, vae, text_encoder, tokenizer, _scheduler({**SD2_SCHEDULER, "timestep_spacing": timestep_spacing}))


# --------------------------------------------------------------------------- samples

def _object_context_mask(rng: np.random.Generator, silhouette: np.ndarray) -> np.ndarray | None:
    """A box/blob hole that avoids the (dilated) object; None when too little is left."""
    h, w = silhouette.shape
    for _ in range(4):
        mask = (box_mask if rng.random() < 0.5 else blob_mask)(rng, h, w) & ~silhouette
        if mask.mean() >= 0.03:
            return mask
    return None


def draw_masks(views: Views, cfg: UnetConfig, seed: int) -> list[tuple[int, int, np.ndarray]]:
    """``(view, kind, mask)`` for every sample: ``masks_per_view`` per view, the first of
    each view an object-removal mask (the ILA pairs use those)."""
    rng = np.random.default_rng(seed)
    h, w = views.rgb.shape[1:3]
    samples = []
    for i in range(len(views)):
        silhouette = silhouette_mask(views.coverage[i])
        obj = silhouette.copy()
        if rng.random() < cfg.extra_hole_fraction:
            obj |= (box_mask if rng.random() < 0.5 else blob_mask)(rng, h, w)
        samples.append((i, OBJECT, obj))
        for _ in range(int(cfg.masks_per_view) - 1):
            mask = _object_context_mask(rng, silhouette) if rng.random() < 0.5 else None
            if mask is not None:
                samples.append((i, OBJECT_CONTEXT, mask))
            else:
                samples.append((i, BACKGROUND, (box_mask if rng.random() < 0.5 else blob_mask)(rng, h, w)))
    return samples


@torch.no_grad()
def build_samples(pipe, views: Views, cfg: UnetConfig, seed: int, progress=None) -> dict:
    """Latent training samples: ``target`` (N, 4, h, w) latents of the target image,
    ``mask`` (N, 1, h, w) and ``masked`` (N, 4, h, w) exactly as the pipeline conditions
    (:func:`innout.diffusion.prepare_views`), ``view``, ``kind``, ``scene`` (N,)."""
    from innout.diffusion import prepare_views

    samples = draw_masks(views, cfg, seed)
    h, w = views.rgb.shape[1:3]
    resolution = min(h, w)
    n = int(cfg.encode_batch)
    none = np.zeros((h, w), bool)

    def encode(images, masks):
        out = prepare_views(pipe, images, masks, resolution, batch_size=n)
        return out["mask"], out["masked_latents"]

    # latents of every whole image once (targets), then the masked inputs in batches
    target_of = {}
    needed = sorted({(i, "rgb" if kind == OBJECT_CONTEXT else "background") for i, kind, _ in samples})
    for start in range(0, len(needed), n):
        chunk = needed[start:start + n]
        _, latents = encode([getattr(views, which)[i] for i, which in chunk], [none] * len(chunk))
        target_of.update({key: lat for key, lat in zip(chunk, latents)})
        if progress:
            progress("targets", start + len(chunk), len(needed))
    masks, masked = [], []
    for start in range(0, len(samples), n):
        chunk = samples[start:start + n]
        images = [(views.background if kind == BACKGROUND else views.rgb)[i] for i, kind, _ in chunk]
        lat_mask, lat_masked = encode(images, [m for _, _, m in chunk])
        masks.append(lat_mask)
        masked.append(lat_masked)
        if progress:
            progress("masked inputs", start + len(chunk), len(samples))
    return {  # on the CPU whatever the pipeline's device: they are cached as a file
        "target": torch.stack([target_of[(i, "rgb" if kind == OBJECT_CONTEXT else "background")] for i, kind, _ in samples]).cpu(),
        "mask": torch.cat(masks).cpu(),
        "masked": torch.cat(masked).cpu(),
        "view": torch.tensor([i for i, _, _ in samples]),
        "kind": torch.tensor([kind for _, kind, _ in samples]),
        "scene": torch.from_numpy(views.scene[[i for i, _, _ in samples]].astype(np.int64)),
    }


# --------------------------------------------------------------------------- training

def loss_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, kind: str, gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights of the epsilon MSE at timesteps ``t``.

    ``v``: 1 + 1/SNR, normalised to mean 1 over uniform timesteps: the epsilon MSE so
    weighted is the MSE of the v-parameterisation (Salimans & Ho 2022), which counts the
    error of the implied clean latent x0 at low SNR instead of ignoring it. ``min_snr``:
    min(SNR, gamma) / SNR (Hang et al. 2023). ``uniform``: 1."""
    snr_all = alphas_cumprod / (1 - alphas_cumprod)
    snr = snr_all[t]
    if kind == "v":
        return (1 + 1 / snr) / (1 + 1 / snr_all).mean()
    if kind == "min_snr":
        return torch.clamp(snr, max=gamma) / snr
    if kind == "uniform":
        return torch.ones_like(snr)
    raise ValueError(f"unet.loss_weighting must be v, min_snr or uniform, got {kind!r}")


def noisy_inputs(data: dict, index: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                 gen: torch.Generator, hole_noise_offset: float = 0.0, pure_first: int = 0):
    """``(unet input (B, 9, h, w), epsilon target, hole mask)`` of samples ``index`` at
    timesteps ``t``. The hole's noise gets a per-channel constant of std
    ``hole_noise_offset``; the first ``pure_first`` samples start from pure noise, as the
    sampler's first step does, their target the epsilon from which the scheduler's
    x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) is the true clean latent (see the module doc)."""
    x0 = data["target"][index]
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)  # drawn on the CPU on every device
    hole = data["mask"][index]
    if hole_noise_offset > 0:
        offset = torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen).to(x0.device)
        noise = noise + float(hole_noise_offset) * offset * hole
    ab = alphas_cumprod[t.to(alphas_cumprod.device)].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    if pure_first:
        k = int(pure_first)
        x_t = torch.cat([noise[:k], x_t[k:]])  # no trace of x0
        noise = torch.cat([(noise[:k] - ab[:k].sqrt() * x0[:k]) / (1 - ab[:k]).sqrt(), noise[k:]])
    return torch.cat([x_t, hole, data["masked"][index]], dim=1), noise, hole


class PairSampler:
    """Object-removal samples and, for each, another view of the same scene (its base), or
    in ``self_fraction`` of the pairs the sample itself (noised apart: the easiest pair to
    copy from, the base's content sits where the target's is)."""

    def __init__(self, data: dict, self_fraction: float = 0.0):
        obj = torch.nonzero(data["kind"] == OBJECT).flatten()
        scenes = data["scene"][obj]
        self.objects = obj
        self.by_scene = {int(s): obj[scenes == s] for s in torch.unique(scenes)}
        self.usable = torch.tensor([len(self.by_scene[int(s)]) > 1 for s in scenes])
        if not bool(self.usable.any()):
            raise ValueError("ILA training needs two or more views per scene")
        self.candidates = obj[self.usable]
        self.scene_of = data["scene"]
        self.self_fraction = float(self_fraction)

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        targets = self.candidates[torch.randint(0, len(self.candidates), (batch,), generator=gen)]
        bases = []
        for t in targets.tolist():
            pool = self.by_scene[int(self.scene_of[t])]
            pick = pool[torch.randint(0, len(pool) - 1, (1,), generator=gen)]
            bases.append(int(pick) if int(pick) != t else int(pool[-1]))  # any other view of the scene
        bases = torch.tensor(bases)
        if self.self_fraction > 0:  # (no draw when off: the same seed trains what it trained before)
            bases = torch.where(torch.rand(batch, generator=gen) < self.self_fraction, targets, bases)
        return targets, bases


def eps_with_base(unet, controller, base_in: torch.Tensor, t_base: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor,
                  lam: float, prompt: torch.Tensor, base_gradient: bool = False,
                  attention: list | None = None) -> torch.Tensor:
    """The targets' predicted noise with ILA at ``lam`` on the base's keys and values: the
    base in RECORD mode (:class:`innout.ila.ILAController`), then the targets in SHARE
    mode. With ``base_gradient`` the base's keys and values keep their graph, so the
    target's loss also trains what the base offers (the controller's ``keep_graph``).
    ``attention``: a list that receives every layer's attention probabilities to the base."""
    with torch.set_grad_enabled(bool(base_gradient)):
        controller.record()
        unet(base_in, t_base.to(base_in.device), encoder_hidden_states=prompt)
    controller.share(lam)
    controller.base_attention = attention
    try:
        eps = unet(x_in, t.to(x_in.device), encoder_hidden_states=prompt).sample
    finally:
        controller.base_attention = None
    controller.clear()
    controller.off()
    return eps


def _latents_to(samples: dict | None, device: torch.device) -> dict | None:
    """``samples`` with its latents (``target``, ``mask``, ``masked``) on ``device``; the
    indices, which index CPU draws, stay where they are."""
    if samples is None:
        return None
    return {key: value.to(device) if key in ("target", "mask", "masked") else value for key, value in samples.items()}


def train_unet(pipe, data: dict, prompt_embeds: torch.Tensor, cfg: UnetConfig, seed: int, work_dir=None,
               fingerprint: str = "", pattern: dict | None = None, views: Views | None = None) -> dict:
    """Train ``pipe.unet`` on latent samples (:func:`build_samples`), and on hidden-pattern
    pairs (``pattern``: :func:`innout.training.hidden_pattern.build_pattern_samples`) in
    ``cfg.pattern_fraction`` of the steps; returns the summary. ``views`` (those the samples
    were built from) give the counterparts ``cfg.ila_attention_weight`` needs. Trains on
    ``pipe.unet``'s device: the samples' latents move there, while every random draw stays
    on the CPU (the loop's generator), so a GPU run draws the batches a CPU run draws."""
    from innout.ila import ILAController, ila_installed
    from innout.training.counterparts import Counterparts, attention_loss
    from innout.training.hidden_pattern import PatternPairs

    unet = pipe.unet
    device = unet.device
    alphas_cumprod = pipe.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    data, pattern = _latents_to(data, device), _latents_to(pattern, device)
    n_train = int(pipe.scheduler.config.num_train_timesteps)
    pairs = PairSampler(data, cfg.ila_self_fraction) if cfg.ila_fraction > 0 else None
    if cfg.pattern_fraction > 0 and pattern is None:
        raise ValueError("unet.pattern_fraction > 0 needs the hidden-pattern samples")
    pattern_pairs = PatternPairs(pattern, cfg.pattern_min_covered) if cfg.pattern_fraction > 0 else None
    controller = ILAController()
    controller.keep_graph = bool(cfg.ila_base_gradient)
    attention_weight = float(cfg.ila_attention_weight)
    counterparts = None
    if attention_weight > 0:
        if views is None:
            raise ValueError("unet.ila_attention_weight > 0 needs the training views (their cameras and depths)")
        if pattern is not None and "view" not in pattern:
            raise ValueError("unet.ila_attention_weight > 0 needs hidden-pattern samples that name their views "
                             "(rebuild them: the cached ones are older)")
        counterparts = Counterparts(views, tuple(data["target"].shape[-2:]), cfg.ila_attention_sigma)
    batch = int(cfg.loop.batch)
    lo, hi = (float(v) for v in cfg.ila_lambda)

    n_start = int(round(float(cfg.start_fraction) * batch))

    def noisy(index: torch.Tensor, t: torch.Tensor, gen: torch.Generator, pure_first: int = 0, source: dict = data):
        return noisy_inputs(source, index, t, alphas_cumprod, gen, cfg.hole_noise_offset, pure_first)

    all_t = torch.arange(n_train)
    weight_of_t = loss_weights(alphas_cumprod, all_t, cfg.loss_weighting, cfg.min_snr_gamma)
    if cfg.timestep_sampling not in ("uniform", "weighted"):
        raise ValueError(f"unet.timestep_sampling must be uniform or weighted, got {cfg.timestep_sampling!r}")
    weighted = cfg.timestep_sampling == "weighted"

    def draw_timesteps(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps and their loss weights: uniform t weighted by :func:`loss_weights`, or
        (same expected loss, less variance) t drawn in proportion to that weight, unweighted."""
        if weighted:
            t = torch.multinomial(weight_of_t, batch, replacement=True, generator=gen)
        else:
            t = torch.randint(0, n_train, (batch,), generator=gen)
        t[:n_start] = n_train - 1
        return t, torch.ones(batch) if weighted else weight_of_t[t]

    def step(_: int, gen: torch.Generator):
        t, weights = draw_timesteps(gen)
        # (no draw for the pattern when it is off: the same seed then trains what it trained before)
        use_pattern = pattern_pairs is not None and float(torch.rand(1, generator=gen)) < cfg.pattern_fraction
        use_ila = not use_pattern and pairs is not None and float(torch.rand(1, generator=gen)) < cfg.ila_fraction
        embeds = prompt_embeds.expand(batch, -1, -1)
        attention = [] if counterparts is not None else None  # filled by the ILA steps' SHARE pass
        if use_pattern:
            targets, bases = pattern_pairs.sample(batch, gen)
            lam = lo + (hi - lo) * float(torch.rand(1, generator=gen))
            same_t = torch.rand(batch, generator=gen) < float(cfg.pattern_same_t)  # as the workflow runs the base
            t_base = torch.where(same_t, t, (t.float() * torch.rand(batch, generator=gen)).long())
            base_in, _, _ = noisy(bases, t_base, gen, source=pattern)
            x_in, noise, hole = noisy(targets, t, gen, source=pattern)
            eps = eps_with_base(unet, controller, base_in, t_base, x_in, t, lam, embeds, cfg.ila_base_gradient, attention)
        elif use_ila:
            targets, bases = pairs.sample(batch, gen)
            lam = lo + (hi - lo) * float(torch.rand(1, generator=gen))
            # the base no noisier than the target (see the module doc)
            t_base = (t.float() * torch.rand(batch, generator=gen)).long()
            base_in, _, _ = noisy(bases, t_base, gen)
            x_in, noise, hole = noisy(targets, t, gen, n_start)
            eps = eps_with_base(unet, controller, base_in, t_base, x_in, t, lam, embeds, cfg.ila_base_gradient, attention)
        else:
            index = torch.randint(0, len(data["target"]), (batch,), generator=gen)
            x_in, noise, hole = noisy(index, t, gen, n_start)
            eps = unet(x_in, t.to(device), encoder_hidden_states=embeds).sample
        pixel_weight = 1 + (float(cfg.hole_weight) - 1) * hole
        per_sample = ((eps - noise).pow(2) * pixel_weight).mean(dim=(1, 2, 3)) / pixel_weight.mean(dim=(1, 2, 3))
        loss = (weights.to(device) * per_sample).mean()
        parts = {"mse": per_sample.mean().detach()}
        parts["mse_pattern" if use_pattern else "mse_ila" if use_ila else "mse_plain"] = per_sample.mean().detach()
        if attention:  # an ILA or pattern step: targets and bases index that kind's samples
            source = pattern if use_pattern else data
            cross_entropy, hit_rate = attention_loss(attention, counterparts, source["view"][targets], source["view"][bases])
            loss = loss + attention_weight * cross_entropy
            parts["attention_ce"] = cross_entropy.detach()
            parts["attention_hit"] = torch.tensor(hit_rate)
        return loss, parts

    with ila_installed(unet, controller):
        summary = Loop("unet", unet, cfg.loop, seed, work_dir, fingerprint).run(step)
    # the curve of each kind of step holds only the steps of that kind
    return summary
