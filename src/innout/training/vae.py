"""The small ``AutoencoderKL``: Stable Diffusion's latent geometry (down-sampling factor
8, 4 latent channels) at a size two CPU cores train in minutes.

Objective: L1 reconstruction + ``edge_weight`` x L1 of the image gradients (finite
differences; a cheap stand-in for the perceptual loss SD's VAE used, which keeps texture
edges from washing out) + ``colour_weight`` x L1 of 8x8 block means (the colour each
latent pixel stands for) + ``kl_weight`` x KL to the unit Gaussian (summed over latent
elements, averaged over the batch, as in LDM; SD's weight is 1e-6), decoding a sample of
the posterior (the decoder learns to tolerate latent noise, which the diffusion model's
outputs carry). A fraction of the crops has a random hole set to 0 (mid grey in [-1, 1]):
the inpainting pipeline encodes exactly such masked images as its conditioning.

Sizing (``torch.utils.flop_counter``; timed on the 2-core machine while other jobs ran):
a VAE's cost is its full-resolution layers (the decoder's last block runs
``layers_per_block + 1`` ResNets at the image size): 1169 kFLOP per pixel forward +
backward for channels (32, 64, 64, 64), 458 kFLOP for (16, 32, 64, 64), ~11 us per pixel
on one core. So the VAE trains on 64x64 crops (a fifth of a view's pixels; convolutions
of textured crops carry over to the full 160x120 views, checked by the full-size PSNR
:func:`evaluate_vae` reports) with 16 channels at full resolution, and without the
mid-block attention (its token count changes between crop and view).

Three choices were measured on held-out views (decoded colours looked at, not only PSNR):

* ``norm_num_groups=1``. The encoder's and decoder's last GroupNorm normalise each group
  over the whole crop, so a group can only pass the crop's colour on as contrasts between
  its own channels; with 4 groups the reconstructions kept luminance and lost hue (a
  pink/orange room came back purple/olive after 1200 steps), with one group (LayerNorm
  over channels and pixels: every channel contrast survives) hues were right by 600.
* learning rate 2e-4: 2e-3 and 5e-4 left colours grey for hundreds of steps (colour
  term 0.17 and 0.11 after 100 steps on a fixed batch, 0.08 at 2e-4).
* the posterior starts narrow (log std -3): with the default 0 the sampled latent is noise
  around means of std ~0.1, and the first steps go to shrinking it.

After training, :func:`standardise_latents` makes every latent channel zero-mean and
unit-variance (folded into the 1x1 convolutions around the latent, decoded images
unchanged), and the ``scaling_factor`` is then measured as SD's was: 1 / std of the
posterior means of training views (about 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from innout.training.data import Views
from innout.training.loop import Loop, LoopConfig
from innout.training.masks import blob_mask, box_mask

log = logging.getLogger("innout")

INITIAL_LOG_STD = -3.0


@dataclass
class VaeConfig:
    block_out_channels: tuple = (16, 32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 1  # see the module doc: colour
    crop: int = 64
    masked_fraction: float = 0.25  # crops with a grey hole, as the pipeline's masked images
    kl_weight: float = 1e-6
    edge_weight: float = 0.5
    colour_weight: float = 1.0
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=1500, lr=2e-4, batch=8, warmup=20))


def build_vae(cfg: VaeConfig, seed: int):
    """A randomly initialised ``AutoencoderKL`` of this config (identical for the same seed)."""
    from diffusers import AutoencoderKL

    channels = tuple(int(c) for c in cfg.block_out_channels)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
            up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=channels,
            layers_per_block=int(cfg.layers_per_block), latent_channels=4, norm_num_groups=int(cfg.norm_num_groups),
            sample_size=128, scaling_factor=1.0, mid_block_add_attention=False,
        )
    # Start with a narrow posterior (std e^-3): with the default log-variance 0 the sampled
    # latent is noise of std 1 around means of std ~0.1, and the first thousand steps
    # go to learning to shrink it (measured: 600 steps reached 18.3 dB, colours washed out).
    with torch.no_grad():
        vae.quant_conv.bias[vae.config.latent_channels:] = 2 * INITIAL_LOG_STD
    return vae


def to_signed(images_u8: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` -> ``(B, 3, H, W)`` float in [-1, 1] (the pipeline's range)."""
    return images_u8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def mask_bank(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """``n`` box / blob masks ``(n, H, W) bool`` from ``seed`` (crops of them make holes)."""
    rng = np.random.default_rng(seed)
    return np.stack([(box_mask if i % 2 else blob_mask)(rng, height, width) for i in range(n)])


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_losses(recon: torch.Tensor, target: torch.Tensor) -> dict:
    """L1, L1 of the image gradients (edges) and L1 of 8x8 block means (colour: the
    latent's own resolution)."""
    l1 = (recon - target).abs().mean()
    (rx, ry), (tx, ty) = _edges(recon), _edges(target)
    edge = 0.5 * ((rx - tx).abs().mean() + (ry - ty).abs().mean())
    colour = (F.avg_pool2d(recon, 8) - F.avg_pool2d(target, 8)).abs().mean()
    return {"l1": l1, "edge": edge, "colour": colour}


class CropSampler:
    """Random ``crop x crop`` patches of the views (with or without the object), flipped
    half the time, a fraction with a grey hole."""

    def __init__(self, views: Views, crop: int, masked_fraction: float, seed: int):
        self.images = torch.from_numpy(np.concatenate([views.rgb, views.background]))  # (2N, H, W, 3) uint8
        _, self.h, self.w, _ = self.images.shape
        if crop > min(self.h, self.w) or crop % 8:
            raise ValueError(f"vae.crop must be a multiple of 8 no larger than the views ({self.w}x{self.h}), got {crop}")
        self.crop, self.masked_fraction = int(crop), float(masked_fraction)
        self.masks = torch.from_numpy(mask_bank(64, self.h, self.w, seed))

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        c = self.crop
        idx = torch.randint(0, len(self.images), (batch,), generator=gen)
        ys = torch.randint(0, self.h - c + 1, (batch,), generator=gen)
        xs = torch.randint(0, self.w - c + 1, (batch,), generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.5
        holed = torch.rand(batch, generator=gen) < self.masked_fraction
        which = torch.randint(0, len(self.masks), (batch,), generator=gen)
        crops = torch.stack([self.images[i, y:y + c, x:x + c] for i, y, x in zip(idx.tolist(), ys.tolist(), xs.tolist())])
        x = to_signed(crops)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        holes = torch.stack([self.masks[m, y:y + c, x_:x_ + c] for m, y, x_ in zip(which.tolist(), ys.tolist(), xs.tolist())])
        holes = holes[:, None] & holed[:, None, None, None]
        return x * (~holes)


def train_vae(views: Views, cfg: VaeConfig, seed: int, work_dir=None, fingerprint: str = "",
              device: str | torch.device = "cpu") -> tuple:
    """Train the VAE on ``device``; returns ``(vae, summary)`` with ``scaling_factor`` set in
    its config. Batches and noise are drawn on the CPU (the loop's generator) on every
    device, so a GPU run sees the batches a CPU run sees."""
    vae = build_vae(cfg, seed).to(device)
    sampler = CropSampler(views, cfg.crop, cfg.masked_fraction, seed + 1)

    def step(_: int, gen: torch.Generator):
        x = sampler.sample(cfg.loop.batch, gen).to(device)
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
        z = posterior.mean + posterior.std * noise  # a posterior sample drawn from the loop's generator
        recon = vae.decode(z).sample
        parts = reconstruction_losses(recon, x)
        kl = posterior.kl().mean()
        loss = parts["l1"] + cfg.edge_weight * parts["edge"] + cfg.colour_weight * parts["colour"] + cfg.kl_weight * kl
        return loss, {**{k: v.detach() for k, v in parts.items()}, "kl": kl.detach()}

    summary = Loop("vae", vae, cfg.loop, seed + 2, work_dir, fingerprint).run(step)
    summary["latent_mean"], summary["latent_std"] = standardise_latents(vae, views)
    vae.register_to_config(scaling_factor=float(measure_scaling_factor(vae, views)))
    summary["scaling_factor"] = vae.config.scaling_factor
    summary.update(evaluate_vae(vae, views))
    log.info("vae: scaling_factor %.4f (1 / std of the latents), full-size reconstruction PSNR %.2f dB",
             summary["scaling_factor"], summary["psnr_full_size"])
    return vae, summary


@torch.no_grad()
def standardise_latents(vae, views: Views, n: int = 128) -> tuple[list, list]:
    """Make each latent channel zero-mean and unit-variance over the training views, by
    folding the affine map into the VAE's 1x1 ``quant_conv`` (encoder side) and its
    inverse into ``post_quant_conv`` (decoder side): decoded images do not change.

    Why: the trained latents' channels had means up to 1.5 and stds from 0.4 to 1.2 (one
    global ``scaling_factor`` cannot fix that), while the diffusion model starts from unit
    Gaussian noise; the inpainter trained on them generated hole latents with channel
    means near 0 instead of the data's, i.e. the wrong colours (green instead of purple,
    measured on the held-out scenes). Returns the per-channel ``(mean, std)`` removed."""
    latents = _posterior_means(vae, views, n)
    mean = latents.mean(dim=(0, 2, 3))
    std = latents.std(dim=(0, 2, 3)).clamp_min(1e-6)
    c = vae.config.latent_channels
    q, pq = vae.quant_conv, vae.post_quant_conv
    # encoder: z' = (z - mean) / std on the mean half; log-variance shifts by -2 log std
    q.weight[:c] /= std.view(-1, 1, 1, 1)
    q.bias[:c] = (q.bias[:c] - mean) / std
    q.bias[c:] -= 2 * torch.log(std)
    # decoder: post(z) = W z + b = W (std z' + mean) + b
    pq.bias += pq.weight[:, :, 0, 0] @ mean
    pq.weight *= std.view(1, -1, 1, 1)
    return mean.tolist(), std.tolist()


def _posterior_means(vae, views: Views, n: int) -> torch.Tensor:
    idx = np.linspace(0, len(views) - 1, min(n, len(views))).round().astype(int)
    images = np.concatenate([views.rgb[idx[::2]], views.background[idx[1::2]]])
    return torch.cat([vae.encode(to_signed(torch.from_numpy(images[i:i + 16])).to(vae.device)).latent_dist.mode()
                      for i in range(0, len(images), 16)])


@torch.no_grad()
def measure_scaling_factor(vae, views: Views, n: int = 128) -> float:
    """1 / std of the posterior means (mode) of up to ``n`` full-size training views, as
    Stable Diffusion's 0.18215 was measured (close to 1 after :func:`standardise_latents`)."""
    return 1.0 / float(_posterior_means(vae, views, n).std())


@torch.no_grad()
def evaluate_vae(vae, views: Views, n: int = 32) -> dict:
    """Reconstruction PSNR (dB, posterior mode) of up to ``n`` full-size views."""
    idx = np.linspace(0, len(views) - 1, min(n, len(views))).round().astype(int)
    x = to_signed(torch.from_numpy(views.background[idx])).to(vae.device)
    recon = torch.cat([vae.decode(vae.encode(x[i:i + 8]).latent_dist.mode()).sample for i in range(0, len(x), 8)])
    mse = ((recon.clamp(-1, 1) - x) / 2).pow(2).mean(dim=(1, 2, 3))
    return {"psnr_full_size": float((-10 * torch.log10(mse)).mean())}
