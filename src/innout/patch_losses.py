"""The refine stage's patch loss: L1, LPIPS and adversarial on patches, and the
discriminator's own loss and step.

Losses
    Images are float tensors in [0, 1], patches ``(N, 3, S, S)``. LPIPS is given an
    ``lpips.LPIPS``-like module (called as ``module(a, b)`` on images in [-1, 1], which
    this module maps to); building it (and its backbone) is the caller's business, so
    nothing is downloaded here. Adversarial: a StyleGAN2-style :class:`Discriminator`
    on ``tile`` x ``tile`` tiles of the patches (:func:`extract_tiles`), non-saturating
    losses (generator ``softplus(-D(fake))``; discriminator ``softplus(D(fake)) +
    softplus(-D(real))``) with the INPAINTED patches as "real" and the NeRF's renders as
    "fake", and an R1 penalty ``gamma / 2 * E ||grad_x D(x_real)||^2`` with the gradient
    taken with respect to the image in [-1, 1] (StyleGAN2's convention, so published
    gammas transfer), optionally lazy (every ``r1_every`` steps, scaled by it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from innout.discriminator import Discriminator, frozen


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)``, ``(N, H, W, 3)``, ``(3, H, W)`` or ``(N, 3, H, W)`` -> ``(N, 3, H, W)``."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected an image or a batch of images, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


def _torch_rng(generator: torch.Generator | int | None) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(int(generator))
    return g


def extract_tiles(
    patches: torch.Tensor | Sequence[torch.Tensor],
    tile: int,
    mode: str = "grid",
    count: int = 1,
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """Discriminator inputs ``(M, 3, tile, tile)`` from patches ``(N, 3, S, S)`` (or a list
    of such batches, e.g. of different sizes).

    A patch smaller than ``tile`` is resized (bilinear) to one tile. Otherwise ``grid``
    cuts it into its ``(S // tile)^2`` non-overlapping tiles (the grid shifted by a random
    offset when ``tile`` does not divide ``S``) and ``random`` takes ``count`` random
    crops per patch. Offsets come from ``generator`` (a CPU torch.Generator or a seed)."""
    if not isinstance(patches, torch.Tensor):
        return torch.cat([extract_tiles(p, tile, mode, count, generator) for p in patches], dim=0)
    if mode not in ("grid", "random"):
        raise ValueError(f"tile mode is grid or random, got {mode!r}")
    x = to_nchw(patches)
    n, c, h, w = x.shape
    if min(h, w) < tile:
        return F.interpolate(x, size=(tile, tile), mode="bilinear", align_corners=False)
    gen = _torch_rng(generator)

    def offset(limit: int, k: int) -> torch.Tensor:
        return torch.randint(0, limit + 1, (k,), generator=gen) if limit > 0 else torch.zeros(k, dtype=torch.long)

    if mode == "grid":
        ny, nx = h // tile, w // tile
        oy, ox = int(offset(h - ny * tile, 1)), int(offset(w - nx * tile, 1))
        x = x[:, :, oy : oy + ny * tile, ox : ox + nx * tile]
        x = x.unfold(2, tile, tile).unfold(3, tile, tile)  # (n, c, ny, nx, tile, tile)
        return x.permute(0, 2, 3, 1, 4, 5).reshape(n * ny * nx, c, tile, tile)
    oys, oxs = offset(h - tile, n * count), offset(w - tile, n * count)
    tiles = [x[i // count, :, oy : oy + tile, ox : ox + tile] for i, (oy, ox) in enumerate(zip(oys.tolist(), oxs.tolist()))]
    return torch.stack(tiles, dim=0)


@dataclass
class PatchLossWeights:
    """Weights of L_patch and how D sees the patches. ``total = lambda_patch * (l1 * L1 +
    lpips * LPIPS + adv * L_adv)``."""

    l1: float = 1.0
    lpips: float = 1.0
    adv: float = 1.0
    lambda_patch: float = 0.01
    tile_mode: str = "grid"
    tiles_per_patch: int = 4

    @classmethod
    def from_config(cls, cfg: Any) -> "PatchLossWeights":
        """From a RefineConfig (dataclass, DictConfig or mapping)."""
        get = (lambda k, d: cfg.get(k, d)) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else (lambda k, d: getattr(cfg, k, d))
        return cls(
            l1=float(get("l1_weight", 1.0)),
            lpips=float(get("lpips_weight", 1.0)),
            adv=float(get("adv_weight", 1.0)),
            lambda_patch=float(get("lambda_patch", 0.01)),
            tile_mode=str(get("disc_tiles", "grid")),
            tiles_per_patch=int(get("tiles_per_patch", 4)),
        )


def lpips_distance(lpips_module: Any, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS of image batches in [0, 1] (the module gets them in [-1, 1]). The
    module's own parameters get no gradient; the images do."""
    with frozen(lpips_module):
        d = lpips_module(to_nchw(pred) * 2.0 - 1.0, to_nchw(target) * 2.0 - 1.0)
    return d.mean()


def generator_adv_loss(discriminator: nn.Module, fake_tiles: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``E softplus(-D(fake))``; D gets no gradient."""
    with frozen(discriminator):
        return F.softplus(-discriminator(fake_tiles)).mean()


def patch_loss(
    pred_patch: torch.Tensor,
    target_patch: torch.Tensor,
    lpips_module: Any,
    discriminator: Optional[nn.Module],
    weights: PatchLossWeights | Any = None,
    generator: torch.Generator | int | None = None,
) -> dict[str, torch.Tensor]:
    """L_patch of rendered patches against inpainted ones (both ``(N, 3, S, S)`` or
    ``(N, S, S, 3)``, in [0, 1]).

    Returns ``l1``, ``lpips``, ``adv`` (unweighted), ``patch`` = the weighted sum and
    ``total`` = ``lambda_patch * patch`` (lambda_patch is applied here). A term whose
    weight is 0 or whose module is None is 0 and not computed (the ablations)."""
    w = weights if isinstance(weights, PatchLossWeights) else PatchLossWeights.from_config(weights or {})
    pred, target = to_nchw(pred_patch), to_nchw(target_patch).to(pred_patch.dtype)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} patches differ")
    zero = pred.new_zeros(())
    l1 = (pred - target).abs().mean()
    lp = lpips_distance(lpips_module, pred, target) if (lpips_module is not None and w.lpips != 0) else zero
    if discriminator is not None and w.adv != 0:
        tiles = extract_tiles(pred, discriminator.tile, w.tile_mode, w.tiles_per_patch, generator)
        adv = generator_adv_loss(discriminator, tiles)
    else:
        adv = zero
    patch = w.l1 * l1 + w.lpips * lp + w.adv * adv
    return {"l1": l1, "lpips": lp, "adv": adv, "patch": patch, "total": w.lambda_patch * patch}


def r1_penalty(discriminator: nn.Module, real_tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E ||grad D(x)||^2 over the image in [-1, 1], logits)`` at real tiles in [0, 1]
    (graph kept, so the penalty can be backpropagated into D)."""
    x = real_tiles.detach().requires_grad_(True)
    logits = discriminator(x)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    # D sees 2x - 1, so d/d(2x - 1) = (d/dx) / 2 and the squared norm is a quarter
    return grad.square().sum(dim=(1, 2, 3)).mean() / 4.0, logits


def discriminator_loss(
    discriminator: nn.Module,
    real_tiles: torch.Tensor,
    fake_tiles: Optional[torch.Tensor],
    r1_gamma: float = 0.2,
    r1_every: int = 1,
    step: int = 0,
) -> dict[str, torch.Tensor]:
    """``softplus(D(fake)) + softplus(-D(real)) + R1`` with the INPAINTED tiles as real
    and the renders as fake (detached here; ``fake_tiles`` may be None: real term only).

    R1 = ``gamma / 2 * E ||grad D(real)||^2`` (gradient w.r.t. the image in [-1, 1]);
    lazy: computed when ``step % r1_every == 0`` and then multiplied by ``r1_every``."""
    if r1_every < 1:
        raise ValueError(f"r1_every must be >= 1, got {r1_every}")
    use_r1 = r1_gamma > 0 and step % r1_every == 0
    if use_r1:
        grad_sq, logits_real = r1_penalty(discriminator, real_tiles)
        r1 = 0.5 * r1_gamma * r1_every * grad_sq
    else:
        logits_real = discriminator(real_tiles.detach())
        r1 = logits_real.new_zeros(())
    real = F.softplus(-logits_real).mean()
    if fake_tiles is not None:
        logits_fake = discriminator(fake_tiles.detach())
        fake = F.softplus(logits_fake).mean()
        fake_mean = logits_fake.detach().mean()
    else:
        fake = fake_mean = logits_real.new_zeros(())
    return {
        "real": real,
        "fake": fake,
        "r1": r1,
        "total": real + fake + r1,
        "logit_real": logits_real.detach().mean(),
        "logit_fake": fake_mean,
    }


def make_discriminator(cfg: Any) -> Discriminator:
    """The discriminator a RefineConfig describes."""
    return Discriminator(
        channels=int(cfg.disc_channels),
        tile=int(cfg.disc_tile),
        max_channels=int(cfg.disc_max_channels),
        mbstd_group=int(cfg.disc_mbstd_group),
        equalized=bool(cfg.disc_equalized_lr),
    )


def make_discriminator_optimizer(discriminator: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """Adam (betas 0, 0.99; with lazy R1 the lr and betas get StyleGAN2's
    ``k / (k + 1)`` correction) or RMSprop (the released code's), at ``disc_lr``."""
    kind = str(cfg.disc_optimizer)
    lr = float(cfg.disc_lr)
    if kind == "adam":
        k = int(cfg.r1_every)
        ratio = k / (k + 1) if k > 1 else 1.0
        return torch.optim.Adam(discriminator.parameters(), lr=lr * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)
    if kind == "rmsprop":
        return torch.optim.RMSprop(discriminator.parameters(), lr=lr)
    raise ValueError(f"disc_optimizer is adam or rmsprop, got {kind!r}")


def discriminator_step(
    discriminator: nn.Module,
    optimizer: torch.optim.Optimizer,
    real_patches: torch.Tensor,
    fake_patches: Optional[torch.Tensor],
    cfg: Any,
    step: int,
    generator: torch.Generator | int | None = None,
) -> dict[str, float]:
    """One D update on the tiles of inpainted (real) and rendered (fake, detached)
    patches. Skipped (``skipped = 1``) when a gradient is not finite."""
    w = PatchLossWeights.from_config(cfg)
    gen = _torch_rng(generator)
    real = extract_tiles(to_nchw(real_patches), discriminator.tile, w.tile_mode, w.tiles_per_patch, gen)
    fake = None
    if fake_patches is not None:
        fake = extract_tiles(to_nchw(fake_patches).detach(), discriminator.tile, w.tile_mode, w.tiles_per_patch, gen)
    losses = discriminator_loss(discriminator, real, fake, float(cfg.r1_gamma), int(cfg.r1_every), step)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in discriminator.parameters())
    if finite:
        optimizer.step()
    out = {k: float(v.detach()) for k, v in losses.items()}
    out["skipped"] = 0.0 if finite else 1.0
    return out
