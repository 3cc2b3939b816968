"""ELA: explicit initial-latent alignment (In-N-Out, stage 4).

A target view's initial diffusion noise is composited, like colour, from the base
view's initial noise ``z_T^p`` along rays through the NeRF::

    z_T(r) = sum_i w_i z_T^p(pi_base(tau_i))

with one ray per *latent* pixel of the target (its intrinsics scaled to the latent
resolution with :meth:`Intrinsics.scaled_to`), ``tau_i`` and ``w_i`` the NeRF's sample
positions and volume-rendering weights ``T_i (1 - exp(-sigma_i delta_i))``, and
``z_T^p(.)`` the base noise sampled bilinearly at the projection of ``tau_i`` into the
base camera (also at latent resolution). Samples behind the base camera or projecting
outside its image contribute nothing.

Restoring a unit Gaussian (the choice this module defends)
----------------------------------------------------------
The diffusion model expects ``z_T ~ N(0, I)``. The composite is a *linear combination
of the base noise pixels*: bilinear sampling puts weights ``b_ik`` on four base pixels
``p_ik`` for every sample, so

    z(r) = sum_p c_p Z_p,   c_p = sum_{i,k : p_ik = p} w_i b_ik,

and, the ``Z_p`` being i.i.d. unit Gaussians per channel, ``Var z(r) = sum_p c_p^2``
*exactly*. Dividing by ``sqrt(sum_p c_p^2)`` therefore gives an exactly unit-variance
Gaussian for every ray, whatever the NeRF's weight distribution and wherever the
samples land between pixel centres. The textbook ``sqrt(sum_i w_i^2)`` is wrong both
ways: for a sharp surface (one sample, ``w = 1``) landing between pixel centres it
divides by 1 and leaves the variance at ``sum_k b_k^2`` (down to 0.25 at a pixel
corner); for a NeRF's blurred weights whose samples all land on the same base pixel
(the base camera itself, or a ray along the base's line of sight) the samples are
perfectly correlated, the true variance is ``(sum_i w_i)^2``, and dividing by
``sqrt(sum_i w_i^2)`` inflates it. The released code's "top up with fresh noise to std
0.9" leaves the variance at 0.81 on purpose. With the exact normalisation a target
identical to the base camera gets the base noise back (the coefficients are one-hot),
and a sharp surface gives the bilinear sample of the base noise, standardised.

Partial coverage: let ``a = W_in / W_tot`` be the share of the ray's weight carried by
samples that land in the base view. The out-of-view share has no base noise to inherit;
it is modelled as independent fresh noise, and the two unit-variance parts are mixed
variance-preservingly (the same interpolation as the forward diffusion process)::

    z = sqrt(a) * z_aligned + sqrt(1 - a) * z_fresh

so ``z`` stays exactly N(0, 1) and its correlation with the aligned part is
``sqrt(a)``. Rays with ``a < min_visible`` (default 0.5) or almost no weight at all
(``W_tot < min_accumulation``: empty space) get fresh noise entirely (``a := 0``).

What is *not* restored: the joint distribution. A bilinear read at a sub-pixel offset
mixes neighbouring base pixels, and neighbouring target pixels then share base pixels
(all the more where the target is magnified relative to the base), so every pixel's
marginal is N(0, 1) but the field is smoother than white noise: ``stats
['neighbour_correlation']`` (0 for white noise) measures about 0.25 on the procedural
scenes (docs/ela.md). ``interpolation="nearest"`` reads the containing base pixel
instead: the field stays nearly white (0.02 to 0.08 on forward scenes) at the cost of
half-a-latent-pixel alignment error. Occlusion is not tested, as in the paper: a sample
hidden from the base view takes the noise of what the base sees in front of it.

Region: the paper aligns the whole latent, and so does the default ``region="all"``:
outside the mask the pre-trained NeRF is reliable (it was trained on those pixels), the
aligned noise there is as correct as inside, and it keeps the target's whole latent
(and therefore the self-attention keys ILA mixes with the base's) in correspondence
with the base. ``region="mask"`` uses aligned noise only inside the target's mask
(downsampled to latent resolution by "any pixel of the 8x8 block", dilated by
``mask_dilation`` latent pixels) and fresh noise elsewhere, like the released code.
``aligned_fraction`` is always measured inside that latent mask.

``method="splat"`` is the released code's alternative: forward-splat every base latent
pixel, unprojected with the base's rendered depth, into the target (nearest pixel, a
z-buffer keeps the closest); pixels that receive a splat get that base value (a single
unit Gaussian, so no restoration is needed and the field stays white), the holes get
fresh noise. ``method="off"`` returns fresh noise (the "without ELA" ablation).

Determinism: the fresh noise is always drawn first, as one full ``(C, h, w)`` tensor
from ``generator`` (a ``torch.Generator`` or an int seed), and used where needed, so
the result depends only on the geometry, the base noise and the seed.

The base noise must be the *unit* Gaussian ``z_T^p`` (before any scheduler's
``init_noise_sigma`` scaling).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import Camera

METHODS = ("composite", "splat", "off")
REGIONS = ("all", "mask")
INTERPOLATIONS = ("bilinear", "nearest")


@runtime_checkable
class RaySampler(Protocol):
    """What ELA needs from a NeRF: render a camera with its per-ray samples.

    ``render_camera(camera)`` returns a mapping with at least
    ``positions`` (H, W, S, 3) sample positions in the scene frame and
    ``weights`` (H, W, S) (or (H, W, S, 1)) volume-rendering weights; ``depth`` (H, W),
    the expected distance along the unit ray, is needed by ``method="splat"`` when no
    base depth is given; ``accumulation`` (H, W) is used by it when present.
    Arrays may be numpy or torch.
    """

    def render_camera(self, camera: Camera) -> Mapping[str, Any]: ...


@dataclass
class ELAResult:
    """The aligned noise of one target view."""

    noise: torch.Tensor  # (C, h, w), unit Gaussian
    share: torch.Tensor  # (h, w) in [0, 1]: variance share of the noise inherited from the base
    latent_mask: torch.Tensor  # (h, w) bool: the target's mask at latent resolution (dilated)
    stats: dict = field(default_factory=dict)


def latent_camera(camera: Camera, width: int, height: int) -> Camera:
    """The camera at latent resolution (e.g. W/8 x H/8)."""
    return camera.with_intrinsics(camera.intrinsics.scaled_to(width, height))


def latent_mask(mask: Any, height: int, width: int, dilation: int = 1, device: Any = "cpu") -> torch.Tensor:
    """A pixel mask (H, W) at latent resolution: a latent pixel is masked when any image
    pixel of its block is, then the result is dilated by ``dilation`` latent pixels."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    m = m.to(device=device, dtype=torch.float32)
    if m.ndim != 2:
        raise ValueError(f"a mask is (H, W), got shape {tuple(m.shape)}")
    m = F.adaptive_max_pool2d(m[None, None], (height, width))
    if dilation > 0:
        m = F.max_pool2d(m, 2 * dilation + 1, stride=1, padding=dilation)
    return m[0, 0] > 0.5


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(generator, (int, np.integer)):
        return torch.Generator(device="cpu").manual_seed(int(generator))
    return generator


def fresh_noise(shape: Sequence[int], generator: torch.Generator | int | None, device: Any, dtype=torch.float32) -> torch.Tensor:
    """Unit Gaussian noise drawn on the generator's device, then moved to ``device``."""
    gen = _generator(generator)
    gen_device = gen.device if gen is not None else "cpu"
    return torch.randn(tuple(shape), generator=gen, device=gen_device, dtype=torch.float32).to(device=device, dtype=dtype)


def _w2c(camera: Camera, device: Any, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    w2c = camera.world_to_opencv()
    return (torch.as_tensor(w2c[:3, :3], device=device, dtype=dtype), torch.as_tensor(w2c[:3, 3], device=device, dtype=dtype))


def project_points(points: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of :meth:`Camera.project`: pixel coordinates (..., 2) and depth (...)
    (positive in front of the camera) of world points (..., 3)."""
    rot, trans = _w2c(camera, points.device, points.dtype)
    cam = points @ rot.T + trans
    z = cam[..., 2]
    k = camera.intrinsics
    safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    uv = torch.stack([k.fx * cam[..., 0] / safe + k.cx, k.fy * cam[..., 1] / safe + k.cy], dim=-1)
    return uv, z


def bilinear_taps(uv: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices (..., 4) and weights (..., 4) of bilinear sampling at continuous
    pixel coordinates ``uv`` (pixel (j, i) centred at (j + 0.5, i + 0.5)), with border
    replication (taps outside the image are clamped onto the edge pixels, so the weights
    always sum to 1, as ``grid_sample(..., align_corners=False, padding_mode="border")``)."""
    x = uv[..., 0] - 0.5
    y = uv[..., 1] - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = x - x0f, y - y0f
    x0, y0 = x0f.long(), y0f.long()
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1).clamp(0, width - 1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1).clamp(0, height - 1)
    wts = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
    return ys * width + xs, wts


def nearest_taps(uv: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index (..., 1) and weight (..., 1) of the base pixel containing ``uv``."""
    x = uv[..., 0].floor().long().clamp(0, width - 1)
    y = uv[..., 1].floor().long().clamp(0, height - 1)
    return (y * width + x)[..., None], torch.ones_like(uv[..., :1])


def composite_noise(
    positions: torch.Tensor,
    weights: torch.Tensor,
    base_camera_latent: Camera,
    base_noise: torch.Tensor,
    *,
    min_depth: float = 1e-6,
    interpolation: str = "bilinear",
    chunk: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The density-composited base noise of R rays.

    ``positions`` (R, S, 3), ``weights`` (R, S); ``base_camera_latent`` at the base
    noise's resolution. Returns ``(aligned, variance, w_in, w_tot)``: ``aligned`` (C, R)
    the composite divided by its exact standard deviation (zero where nothing landed),
    ``variance`` (R,) the composite's variance before that, sum over base pixels of the
    squared total coefficient, ``w_in`` (R,) the weight landing in the base view and
    ``w_tot`` (R,) the total weight. ``interpolation``: how the base noise is read at a
    sample's projection, ``bilinear`` (the paper's z_T(tau_i)) or ``nearest``.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"ELA interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    taps = bilinear_taps if interpolation == "bilinear" else nearest_taps
    c, h, w = base_noise.shape
    flat = base_noise.reshape(c, h * w)
    n_rays = positions.shape[0]
    out = torch.zeros(c, n_rays, device=base_noise.device, dtype=base_noise.dtype)
    var = torch.zeros(n_rays, device=base_noise.device, dtype=base_noise.dtype)
    w_in = torch.zeros_like(var)
    w_tot = torch.zeros_like(var)
    rows_per_chunk = max(1, chunk // max(1, positions.shape[1]))
    for start in range(0, n_rays, rows_per_chunk):
        sl = slice(start, min(n_rays, start + rows_per_chunk))
        pos = positions[sl].to(device=base_noise.device, dtype=torch.float32)
        wts = weights[sl].to(device=base_noise.device, dtype=torch.float32).clamp_min(0)
        uv, z = project_points(pos, base_camera_latent)
        inside = (z > min_depth) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
        inside &= torch.isfinite(uv).all(-1)
        uv = torch.where(inside[..., None], uv, torch.full_like(uv, 0.5))
        w_eff = wts * inside
        idx, bil = taps(uv, w, h)  # (r, S, 4) or (r, S, 1)
        coef = (w_eff[..., None] * bil).reshape(pos.shape[0], -1)  # (r, K)
        idx = idx.reshape(pos.shape[0], -1)
        # Exact variance of sum_k coef_k Z_{idx_k}: merge coefficients sharing a pixel.
        sorted_idx, order = torch.sort(idx, dim=1)
        sorted_coef = torch.gather(coef, 1, order)
        new_seg = torch.ones_like(sorted_idx, dtype=torch.bool)
        new_seg[:, 1:] = sorted_idx[:, 1:] != sorted_idx[:, :-1]
        seg = torch.cumsum(new_seg.long(), dim=1) - 1
        merged = torch.zeros_like(sorted_coef).scatter_add_(1, seg, sorted_coef)
        v = (merged.to(torch.float64) ** 2).sum(1).to(base_noise.dtype)
        vals = (flat[:, idx] * coef.to(base_noise.dtype)).sum(-1)  # (C, r)
        std = v.sqrt()
        ok = std > 1e-12
        out[:, sl] = torch.where(ok, vals / torch.where(ok, std, torch.ones_like(std)), torch.zeros_like(vals))
        var[sl] = v
        w_in[sl] = w_eff.sum(1).to(base_noise.dtype)
        w_tot[sl] = wts.sum(1).to(base_noise.dtype)
    return out, var, w_in, w_tot


def splat_noise(
    base_camera_latent: Camera,
    base_noise: torch.Tensor,
    base_distance: torch.Tensor,
    target_camera_latent: Camera,
    *,
    base_valid: torch.Tensor | None = None,
    min_depth: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-splat the base noise into the target (nearest pixel, z-buffer).

    ``base_distance`` (h, w): distance along the unit ray of every base latent pixel.
    Returns ``(noise (C, ht, wt), hit (ht, wt) bool)``; pixels without a hit are zero.
    """
    c, h, w = base_noise.shape
    dev = base_noise.device
    origins, dirs = base_camera_latent.rays()
    o = torch.as_tensor(np.ascontiguousarray(origins), device=dev, dtype=torch.float32).reshape(-1, 3)
    d = torch.as_tensor(dirs, device=dev, dtype=torch.float32).reshape(-1, 3)
    dist = torch.as_tensor(base_distance, device=dev, dtype=torch.float32).reshape(-1)
    pts = o + d * dist[:, None]
    kt = target_camera_latent.intrinsics
    uv, z = project_points(pts, target_camera_latent)
    ok = torch.isfinite(dist) & (dist > 0) & (z > min_depth) & torch.isfinite(uv).all(-1)
    ok &= (uv[:, 0] >= 0) & (uv[:, 0] < kt.width) & (uv[:, 1] >= 0) & (uv[:, 1] < kt.height)
    if base_valid is not None:
        ok &= torch.as_tensor(base_valid, device=dev).reshape(-1).bool()
    src = torch.nonzero(ok).squeeze(1)
    n_t = kt.width * kt.height
    noise = torch.zeros(c, n_t, device=dev, dtype=base_noise.dtype)
    hit = torch.zeros(n_t, dtype=torch.bool, device=dev)
    if src.numel():
        tgt = (uv[src, 1].floor().long().clamp(0, kt.height - 1) * kt.width + uv[src, 0].floor().long().clamp(0, kt.width - 1))
        zs = z[src]
        zmin = torch.full((n_t,), float("inf"), device=dev).scatter_reduce(0, tgt, zs, reduce="amin")
        win = zs <= zmin[tgt]
        big = torch.full((n_t,), h * w, device=dev, dtype=torch.long)
        cand = torch.where(win, src, torch.full_like(src, h * w))
        chosen = big.scatter_reduce(0, tgt, cand, reduce="amin")
        hit = chosen < h * w
        noise[:, hit] = base_noise.reshape(c, -1)[:, chosen[hit]]
    return noise.reshape(c, kt.height, kt.width), hit.reshape(kt.height, kt.width)


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    return torch.as_tensor(np.asarray(x))


def _neighbour_correlation(noise: torch.Tensor) -> float:
    a = noise[:, :, :-1].reshape(-1).double()
    b = noise[:, :, 1:].reshape(-1).double()
    a, b = a - a.mean(), b - b.mean()
    den = (a.square().sum() * b.square().sum()).sqrt()
    return float((a * b).sum() / den) if den > 0 else 0.0


def align_noise(
    sampler: RaySampler | None,
    base_camera: Camera,
    base_noise: torch.Tensor,
    target_camera: Camera,
    target_mask: Any = None,
    *,
    generator: torch.Generator | int | None = None,
    method: str = "composite",
    min_visible: float = 0.5,
    region: str = "all",
    mask_dilation: int = 1,
    min_accumulation: float = 1e-3,
    interpolation: str = "bilinear",
    base_depth: Any = None,
    render: Mapping[str, Any] | None = None,
) -> ELAResult:
    """Aligned initial noise of one target view (see the module docstring).

    ``base_camera`` / ``target_camera`` at any image resolution (they are scaled to the
    latent resolution, the base noise's (h, w)); ``base_noise`` (C, h, w) unit Gaussian;
    ``target_mask`` (H, W) bool at image resolution or None (then the whole latent
    counts as the mask). ``render``: the sampler's output for the target's latent
    camera, when the caller has it already (then ``sampler`` may be None for
    ``composite``). ``base_depth`` (h, w): the base's distance map at latent
    resolution for ``splat`` (rendered with the sampler when None).
    """
    if method not in METHODS:
        raise ValueError(f"ELA method must be one of {METHODS}, got {method!r}")
    if region not in REGIONS:
        raise ValueError(f"ELA region must be one of {REGIONS}, got {region!r}")
    if base_noise.ndim != 3:
        raise ValueError(f"base noise is (C, h, w), got shape {tuple(base_noise.shape)}")
    c, h, w = base_noise.shape
    out_dtype = base_noise.dtype
    base_noise = base_noise.float()  # composite in float32 whatever the pipeline's dtype
    dev, dtype = base_noise.device, base_noise.dtype
    fresh = fresh_noise((c, h, w), generator, dev, dtype)
    base_lat = latent_camera(base_camera, w, h)
    tgt_lat = latent_camera(target_camera, w, h)
    if target_mask is None:
        lmask = torch.ones(h, w, dtype=torch.bool, device=dev)
    else:
        lmask = latent_mask(target_mask, h, w, mask_dilation, device=dev)

    share = torch.zeros(h, w, device=dev, dtype=dtype)
    aligned = torch.zeros(c, h, w, device=dev, dtype=dtype)
    if method == "composite":
        out = render if render is not None else sampler.render_camera(tgt_lat)
        pos = _as_tensor(out["positions"])
        wts = _as_tensor(out["weights"])
        if wts.ndim == pos.ndim:  # nerfstudio's (..., S, 1)
            wts = wts[..., 0]
        if tuple(pos.shape[:2]) != (h, w):
            raise ValueError(f"the sampler rendered {tuple(pos.shape[:2])} rays for a {h}x{w} latent camera")
        al, _var, w_in, w_tot = composite_noise(pos.reshape(h * w, -1, 3), wts.reshape(h * w, -1), base_lat, base_noise,
                                             interpolation=interpolation)
        frac = torch.where(w_tot > min_accumulation, w_in / w_tot.clamp_min(1e-12), torch.zeros_like(w_in))
        frac = torch.where(frac >= min_visible, frac.clamp(max=1.0), torch.zeros_like(frac))
        share = frac.reshape(h, w)
        aligned = al.reshape(c, h, w)
    elif method == "splat":
        valid = None
        if base_depth is None:
            bout = sampler.render_camera(base_lat)
            base_depth = _as_tensor(bout["depth"]).reshape(h, w)
            if "accumulation" in bout:
                valid = _as_tensor(bout["accumulation"]).reshape(h, w) > 0.5
        al, hit = splat_noise(base_lat, base_noise, _as_tensor(base_depth).reshape(h, w), tgt_lat, base_valid=valid)
        share = hit.to(dtype)
        aligned = al
    if region == "mask":
        share = torch.where(lmask, share, torch.zeros_like(share))
    noise = share.sqrt() * aligned + (1 - share).sqrt() * fresh

    m = lmask
    inside = noise[:, m]
    stats = {
        "method": method,
        "region": region,
        "interpolation": interpolation if method == "composite" else None,
        "aligned_fraction": float((share[m] > 0).float().mean()) if m.any() else 0.0,
        "aligned_share_mean": float(share[m].mean()) if m.any() else 0.0,
        "aligned_fraction_all": float((share > 0).float().mean()),
        "mean": float(noise.mean()),
        "std": float(noise.std()),
        "mask_mean": float(inside.mean()) if inside.numel() else float("nan"),
        "mask_std": float(inside.std()) if inside.numel() > 1 else float("nan"),
        "neighbour_correlation": _neighbour_correlation(noise),
        "latent_size": [h, w],
        "mask_latent_pixels": int(m.sum()),
    }
    return ELAResult(noise=noise.to(out_dtype), share=share, latent_mask=lmask, stats=stats)


def view_seed(name: str, seed: int) -> int:
    """A stable per-view seed: the same view gets the same fresh noise whatever other
    views are aligned beside it."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)


def align_noise_views(
    sampler: RaySampler,
    base_camera: Camera,
    base_noise: torch.Tensor,
    targets: Mapping[str, Camera],
    masks: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, ELAResult]:
    """:func:`align_noise` for several views, each with fresh noise from
    :func:`view_seed` (its name and ``seed``)."""
    results = {}
    for name in sorted(targets):
        mask = None if masks is None else masks.get(name)
        results[name] = align_noise(sampler, base_camera, base_noise, targets[name], mask, generator=view_seed(name, seed), **kwargs)
    return results
