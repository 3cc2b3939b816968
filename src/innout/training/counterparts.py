"""Where each token of a target view's self-attention has its counterpart in the base view,
and how far ILA's attention to the base is from it.

ILA (In-N-Out's stage 4) lets a target view attend to the base view's keys and values. It
can only align the fills if a target token's attention lands on the base tokens that show
the same 3D point. SD2 learnt such matching from web-scale data; the small UNets trained
here do not learn it from the epsilon loss alone (``tools/probe_ila_training.py`` and the
README's "Models trained here" hold the measurements). The procedural scenes know their
geometry, so the lesson can be given directly (``unet.ila_attention_weight``, off by
default): a cross-entropy between the target's attention over the base's tokens (mean of
the heads, so heads may specialise) and a Gaussian of ``sigma`` tokens around the point
where the target token's object-free surface point projects into the base view.

Token grids: a UNet level ``k`` holds the latent grid downsampled ``k`` times by stride-2
convolutions (``ceil`` sizes: 15 x 20 -> 8 x 10 -> 4 x 5), so its token ``(r, c)`` is
centred on latent pixel ``(r 2^k, c 2^k)``, i.e. image pixel ``((c 2^k + 0.5) f, (r 2^k + 0.5) f)``
with ``f`` the image-to-latent factor. A token has no counterpart (it is left out of the
loss) when its point falls outside the base image, behind the base camera, or where the
base sees another surface (object-free depths disagree by more than ``DEPTH_TOLERANCE``).

:class:`CounterpartAttention` puts the same Gaussians in place of the attention at inference,
given a depth for both views (the NeRF's): what ILA gives when its attention to the base lands
exactly where geometry says (``tools/measure_ila_geometric.py``). Not a strict bound: a model's
own attention, spread over several tokens and differing per head, can do better.
"""

from __future__ import annotations

import numpy as np
import torch

from innout.cameras import Camera
from innout.ila import ILAController, attention_probabilities
from innout.training.data import Views
from innout.training.hidden_pattern import DEPTH_TOLERANCE, unproject

MAX_LEVELS = 6  # token grids searched for a given token count


def token_grid(latent_h: int, latent_w: int, tokens: int) -> tuple[int, int, int]:
    """``(stride, rows, cols)`` of the UNet level whose grid has ``tokens`` tokens."""
    for level in range(MAX_LEVELS):
        stride = 2 ** level
        rows, cols = -(-latent_h // stride), -(-latent_w // stride)
        if rows * cols == tokens:
            return stride, rows, cols
    raise ValueError(f"no UNet level of a {latent_h}x{latent_w} latent has {tokens} tokens")


def counterpart_positions(target: Camera, target_depth: np.ndarray, base: Camera, base_depth: np.ndarray,
                          latent_hw: tuple[int, int], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position (L, 2), has counterpart (L,))`` for the ``L = tokens`` tokens of one level:
    where (row, column, in that level's token units) each target token's object-free surface
    point falls in the base view."""
    height, width = target_depth.shape
    latent_h, latent_w = latent_hw
    factor = height / latent_h
    stride, rows, cols = token_grid(latent_h, latent_w, tokens)
    grid_r, grid_c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pixel_u = np.minimum(((grid_c * stride + 0.5) * factor).astype(int), width - 1).reshape(-1)
    pixel_v = np.minimum(((grid_r * stride + 0.5) * factor).astype(int), height - 1).reshape(-1)
    points = unproject(target, target_depth)[pixel_v, pixel_u]
    uv, depth_in_base = base.project(points)
    with np.errstate(invalid="ignore"):
        inside = (np.isfinite(uv).all(1) & (depth_in_base > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width)
                  & (uv[:, 1] >= 0) & (uv[:, 1] < height))
    uv = np.where(inside[:, None], uv, 0.0)
    seen = base_depth[uv[:, 1].astype(int), uv[:, 0].astype(int)]
    with np.errstate(invalid="ignore"):
        valid = inside & (np.abs(seen - depth_in_base) < DEPTH_TOLERANCE * np.abs(depth_in_base))
    position = np.stack([(uv[:, 1] / factor - 0.5) / stride, (uv[:, 0] / factor - 0.5) / stride], axis=1)
    return torch.from_numpy(position.astype(np.float32)), torch.from_numpy(valid)


def gaussian_targets(position: torch.Tensor, rows: int, cols: int, sigma: float) -> torch.Tensor:
    """``(..., L, rows * cols)``: per target token a Gaussian of ``sigma`` tokens over the base's
    tokens around its counterpart's ``position`` (``(..., L, 2)``, row and column), summing to 1."""
    grid_r, grid_c = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                                    indexing="ij")
    dist2 = ((position[..., 0:1] - grid_r.reshape(-1)) ** 2 + (position[..., 1:2] - grid_c.reshape(-1)) ** 2)
    weights = torch.exp(-dist2 / (2.0 * float(sigma) ** 2))
    return weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)


class Counterparts:
    """The counterparts of pairs of training views: positions computed once per pair and level
    (a few KB each; the targets, L x L, are made per batch)."""

    def __init__(self, views: Views, latent_hw: tuple[int, int], sigma: float):
        self.views, self.latent_hw, self.sigma = views, tuple(int(v) for v in latent_hw), float(sigma)
        self.cache: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def of(self, target: int, base: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (int(target), int(base), int(tokens))
        if key not in self.cache:
            views = self.views
            self.cache[key] = counterpart_positions(views.camera(key[0]), views.background_depth[key[0]],
                                                    views.camera(key[1]), views.background_depth[key[1]],
                                                    self.latent_hw, key[2])
        return self.cache[key]

    def batch(self, targets: torch.Tensor, bases: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(targets (B, L, L), has counterpart (B, L))`` of the pairs ``targets[i] -> bases[i]``."""
        pairs = [self.of(t, b, tokens) for t, b in zip(targets.tolist(), bases.tolist())]
        _, rows, cols = token_grid(*self.latent_hw, tokens)
        position = torch.stack([p[0] for p in pairs])
        return gaussian_targets(position, rows, cols, self.sigma), torch.stack([p[1] for p in pairs])


def attention_loss(probabilities: list[torch.Tensor], counterparts: Counterparts, targets: torch.Tensor,
                   bases: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the head-mean attention to the base against the counterparts,
    averaged over the layers (each: ``(B, heads, L, L)``, as
    :attr:`innout.ila.ILAController.base_attention` collects them) and over the tokens that
    have one; and the fraction of those tokens whose strongest base token is a counterpart
    (its target weight > 0.1: within ~1.3 sigma)."""
    losses, hits, counted = [], 0.0, 0.0
    # the layers of one UNet level share its token grid, so their targets (B x L x L Gaussians)
    # are made once per grid: the 7 layers have 3 grids
    targets_of: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for probs in probabilities:
        attention = probs.mean(dim=1)
        tokens = attention.shape[-1]
        if tokens not in targets_of:
            targets_of[tokens] = tuple(x.to(attention.device) for x in counterparts.batch(targets, bases, tokens))
        wanted, valid = targets_of[tokens]
        valid = valid.float()
        cross_entropy = -(wanted * torch.log(attention + 1e-8)).sum(-1)
        losses.append((cross_entropy * valid).sum() / valid.sum().clamp(min=1.0))
        hit = wanted.gather(-1, attention.detach().argmax(-1, keepdim=True)).squeeze(-1) > 0.1
        hits += float((hit.float() * valid).sum())
        counted += float(valid.sum())
    if not losses:
        raise RuntimeError("no attention probabilities were collected: is ILA installed and in SHARE mode?")
    return torch.stack(losses).mean(), hits / max(counted, 1.0)


class CounterpartAttention(ILAController):
    """ILA whose attention to the base is the counterparts' Gaussians (a diagnostic, see the module
    doc): tokens with a counterpart attend to the base around it, the others keep the model's own
    attention. The pair is set per denoising call with :meth:`pair`; every row of a target batch is
    taken to be that one target (inpaint one target at a time)."""

    def __init__(self, ila_lambda: float, latent_hw: tuple[int, int], sigma: float):
        super().__init__(ila_lambda)
        self.latent_hw, self.sigma = tuple(int(v) for v in latent_hw), float(sigma)
        self.cameras_and_depths: tuple | None = None
        self.positions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.placed, self.tokens = 0, 0  # tokens given a counterpart / tokens seen, over every layer and step

    def pair(self, target: Camera, target_depth: np.ndarray, base: Camera, base_depth: np.ndarray) -> None:
        """The target view denoised next and the base, with their z-depths."""
        self.cameras_and_depths = (target, target_depth, base, base_depth)
        self.positions = {}

    def attend_base(self, layer: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.cameras_and_depths is None:
            raise RuntimeError("CounterpartAttention: call pair(...) before denoising a target")
        tokens = q.shape[2]
        if tokens not in self.positions:
            self.positions[tokens] = counterpart_positions(*self.cameras_and_depths, self.latent_hw, tokens)
        position, valid = self.positions[tokens]
        _, rows, cols = token_grid(*self.latent_hw, tokens)
        wanted = gaussian_targets(position, rows, cols, self.sigma).to(device=q.device, dtype=q.dtype)
        learned = attention_probabilities(q, k, attention_mask)
        probabilities = torch.where(valid.to(q.device)[:, None], wanted, learned)  # (L, L) over (B, heads, L, L)
        self.placed += int(valid.sum()) * q.shape[0]
        self.tokens += tokens * q.shape[0]
        return probabilities @ v
