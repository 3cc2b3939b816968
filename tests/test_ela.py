"""ELA: explicit initial-latent alignment on a procedural scene with known geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from innout.cameras import Camera, Intrinsics, look_at
from innout.ela import (
    RaySampler,
    align_noise,
    align_noise_views,
    composite_noise,
    latent_camera,
    latent_mask,
    view_seed,
)
from innout.procedural import ProceduralScene

LATENT = 64  # 512 x 512 images -> 64 x 64 latents
SEED = 7


class GeometrySampler:
    """A stand-in NeRF built from the generator's true distances: ``n_samples`` samples
    along each ray around the true surface, with all the weight on the surface sample
    (``blur=0``) or a Gaussian over the relative distance (``blur`` > 0), like a NeRF's
    soft density. Renders are cached by camera."""

    def __init__(self, scene: ProceduralScene, blur: float = 0.0, n_samples: int = 9, accumulation: float = 0.98):
        self.scene, self.blur, self.n, self.acc = scene, blur, n_samples, accumulation
        self._cache: dict = {}
        self.distance_cache: dict = {}

    def distance(self, cam: Camera) -> np.ndarray:
        key = (cam.c2w.tobytes(), cam.intrinsics)
        if key not in self.distance_cache:
            self.distance_cache[key] = self.scene.render(cam, with_object=False, supersample=1)["distance"].astype(np.float64)
        return self.distance_cache[key]

    def render_camera(self, cam: Camera) -> dict:
        key = (cam.c2w.tobytes(), cam.intrinsics)
        if key not in self._cache:
            d = self.distance(cam)
            origins, dirs = cam.rays()
            rel = np.linspace(-0.08, 0.08, self.n)
            rel[self.n // 2] = 0.0
            t = d[..., None] * (1.0 + rel)
            if self.blur == 0:
                w = (np.arange(self.n) == self.n // 2).astype(float)
            else:
                w = np.exp(-0.5 * (rel / self.blur) ** 2)
                w /= w.sum()
            w = np.broadcast_to(w * self.acc, t.shape)
            pos = origins[..., None, :] + dirs[..., None, :] * t[..., None]
            self._cache[key] = {
                "positions": torch.from_numpy(pos).float(),
                "weights": torch.from_numpy(np.ascontiguousarray(w)).float(),
                "depth": torch.from_numpy(d).float(),
                "accumulation": torch.full(d.shape, self.acc),
            }
        return self._cache[key]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small tensors: one intra-op thread is faster, and far faster on a busy machine
    (two spinning threads on shared cores slowed the compositing 25-fold)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scene():
    return ProceduralScene("forward", 0)


@pytest.fixture(scope="module")
def cams(scene):
    return scene.cameras(6, 512, 512, "train")


@pytest.fixture(scope="module")
def sharp(scene):
    return GeometrySampler(scene, blur=0.0)


@pytest.fixture(scope="module")
def blurred(scene, sharp):
    s = GeometrySampler(scene, blur=0.02)
    s.distance_cache = sharp.distance_cache  # same geometry, render it once
    return s


@pytest.fixture(scope="module")
def base_noise():
    return torch.randn(4, LATENT, LATENT, generator=torch.Generator().manual_seed(123))


def _fresh(seed: int = SEED) -> torch.Tensor:
    return torch.randn(4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))


def _correspondence(sampler: GeometrySampler, base: Camera, target: Camera, noise: torch.Tensor):
    """For every target latent pixel: its true surface point's projection into the base
    latent camera, whether it lands in view, the bilinear sample of the base noise there
    and the sum of squared bilinear weights (its variance)."""
    c, h, w = noise.shape
    bl, tl = latent_camera(base, w, h), latent_camera(target, w, h)
    d = sampler.distance(tl)
    o, dirs = tl.rays()
    uv, z = bl.project((o + dirs * d[..., None]).reshape(-1, 3))
    vis = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    grid = torch.from_numpy(np.stack([2 * uv[:, 0] / w - 1, 2 * uv[:, 1] / h - 1], -1)).float()
    ref = F.grid_sample(noise[None], grid[None, None], align_corners=False, padding_mode="border")[0, :, 0]
    fx, fy = (uv[:, 0] - 0.5) % 1.0, (uv[:, 1] - 0.5) % 1.0
    var = ((1 - fx) ** 2 + fx**2) * ((1 - fy) ** 2 + fy**2)
    interior = vis & (uv[:, 0] > 0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] > 0.5) & (uv[:, 1] < h - 0.5)
    shape = (h, w)
    return ref.reshape(c, h, w), torch.from_numpy(vis.reshape(shape)), torch.from_numpy(var.reshape(shape)).float(), torch.from_numpy(interior.reshape(shape))


def test_sampler_protocol(sharp):
    assert isinstance(sharp, RaySampler)


def test_identical_camera_gives_back_the_base_noise(sharp, blurred, cams, base_noise):
    for sampler in (sharp, blurred):
        res = align_noise(sampler, cams[0], base_noise, cams[0], generator=SEED)
        assert torch.allclose(res.noise, base_noise, atol=1e-4), float((res.noise - base_noise).abs().max())
        assert res.stats["aligned_fraction"] == 1.0
        assert float(res.share.min()) == 1.0


def test_corresponding_pixels_carry_the_base_noise(sharp, blurred, cams, base_noise):
    ref, vis, var, interior = _correspondence(sharp, cams[0], cams[3], base_noise)
    assert 0.6 < float(vis.float().mean()) < 1.0  # a real test: most, not all, land in the base view
    res = align_noise(sharp, cams[0], base_noise, cams[3], generator=SEED)
    used = vis & (res.share > 0)
    assert float(used.float().sum()) >= 0.98 * float(vis.float().sum())
    corr = np.corrcoef(res.noise[:, used].flatten(), ref[:, used].flatten())[0, 1]
    assert corr >= 0.95, corr
    # a sharp surface gives exactly the bilinear sample divided by its standard deviation
    # (off by the 2 % of the weight lost to the accumulation only in the share: none here)
    expected = ref / var.sqrt()
    assert torch.allclose(res.noise[:, interior], expected[:, interior], atol=2e-3)
    # a NeRF-like blurred weight distribution still aligns
    res_b = align_noise(blurred, cams[0], base_noise, cams[3], generator=SEED)
    corr_b = np.corrcoef(res_b.noise[:, used].flatten(), ref[:, used].flatten())[0, 1]
    assert corr_b >= 0.9, corr_b


def test_aligned_noise_is_unit_gaussian(blurred, cams, base_noise):
    for target in (cams[3], cams[4]):
        res = align_noise(blurred, cams[0], base_noise, target, generator=SEED)
        assert res.noise.shape == (4, LATENT, LATENT)
        assert abs(res.stats["mean"]) < 0.05 and abs(res.stats["std"] - 1) < 0.05, res.stats
        assert abs(float(res.noise.mean()) - res.stats["mean"]) < 1e-6
        # Kolmogorov-Smirnov distance to N(0, 1)
        x = torch.sort(res.noise.flatten().double()).values
        cdf = torch.special.ndtr(x)
        n = x.numel()
        i = torch.arange(1, n + 1, dtype=torch.float64)
        ks = float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())
        assert ks < 0.03, ks
        assert res.stats["aligned_fraction"] > 0.6


def test_variance_restoration_is_exact_for_any_weights_and_offsets():
    """Monte Carlo over 4000 independent base noises (as channels): every ray's composite
    has unit variance, although samples straddle pixels and share them."""
    gen = torch.Generator().manual_seed(0)
    cam = Camera(look_at(np.array([0.0, -3.0, 0.0]), np.zeros(3)), Intrinsics(8.0, 8.0, 4.0, 4.0, 8, 8))
    n_rays, n_samples = 64, 6
    # sample points in front of the camera projecting anywhere in the 8 x 8 image,
    # several per ray close together (sharing base pixels)
    uv = torch.rand(n_rays, 1, 2, generator=gen) * 8 + torch.randn(n_rays, n_samples, 2, generator=gen) * 0.4
    uv = uv.clamp(0.01, 7.99)
    depth = 2.0 + torch.rand(n_rays, n_samples, generator=gen)
    x = (uv[..., 0] - 4.0) / 8.0 * depth
    y = -(uv[..., 1] - 4.0) / 8.0 * depth
    cam_pts = torch.stack([x, y, -depth], -1).double().numpy()
    world = cam_pts @ cam.c2w[:3, :3].T + cam.c2w[:3, 3]
    weights = torch.rand(n_rays, n_samples, generator=gen) ** 3
    noise = torch.randn(4000, 8, 8, generator=gen)
    out, var, w_in, w_tot = composite_noise(torch.from_numpy(world).float(), weights, cam, noise)
    emp = out.var(dim=0)
    assert abs(float(emp.mean()) - 1) < 0.02 and float((emp - 1).abs().max()) < 0.15, emp
    assert torch.allclose(w_in, w_tot)
    # the textbook normalisation by sqrt(sum w_i^2) would not be unit variance
    naive = out * var.sqrt() / weights.square().sum(1).sqrt()
    assert float((naive.var(dim=0) - 1).abs().mean()) > 0.2


def test_rays_leaving_the_base_view_get_fresh_noise(sharp, cams, base_noise):
    base = cams[0]
    # the base camera turned 25 degrees to the side: a third of its view is new
    c2w = base.c2w.copy()
    a = np.radians(25.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    c2w[:3, :3] = c2w[:3, :3] @ rot
    turned = Camera(c2w, base.intrinsics)
    ref, vis, _, _ = _correspondence(sharp, base, turned, base_noise)
    res = align_noise(sharp, base, base_noise, turned, generator=SEED)
    out = ~vis
    assert 0.15 < float(out.float().mean()) < 0.6
    fresh = _fresh()
    assert torch.equal(res.noise[:, out], fresh[:, out])
    assert float(res.share[out].max()) == 0.0
    # visible rays are aligned; aligned_fraction (whole latent: no mask) counts them
    assert abs(res.stats["aligned_fraction"] - float(vis.float().mean())) < 0.01


def test_partial_coverage_mixes_fresh_noise_and_threshold(cams, base_noise):
    base = latent_camera(cams[0], LATENT, LATENT)
    o, dirs = base.rays()
    inside = o + dirs * 2.0  # on the pixel centres of the base itself
    behind = o - dirs * 2.0  # behind the base camera: contributes nothing
    pos = torch.from_numpy(np.stack([inside, behind], axis=2)).float()
    fresh = _fresh()
    for a in (0.7, 0.3):
        w = torch.tensor([a, 1 - a]).expand(LATENT, LATENT, 2)
        res = align_noise(None, cams[0], base_noise, cams[0], generator=SEED,
                          render={"positions": pos, "weights": w}, min_visible=0.5)
        if a >= 0.5:
            expect = np.sqrt(a) * base_noise + np.sqrt(1 - a) * fresh
            assert torch.allclose(res.share, torch.full_like(res.share, a), atol=1e-6)
        else:
            expect = fresh
            assert res.stats["aligned_fraction"] == 0.0
        assert torch.allclose(res.noise, expect, atol=1e-4)


def test_mask_region_and_aligned_fraction(sharp, cams, base_noise):
    mask = np.zeros((512, 512), bool)
    mask[200:330, 180:300] = True
    lm = latent_mask(mask, LATENT, LATENT, dilation=0)
    assert lm.sum() == (np.ceil(330 / 8) - 200 // 8) * (np.ceil(300 / 8) - 180 // 8)
    lm1 = latent_mask(mask, LATENT, LATENT, dilation=1)
    res = align_noise(sharp, cams[0], base_noise, cams[3], mask, generator=SEED, region="mask", mask_dilation=1)
    assert torch.equal(res.latent_mask, lm1)
    fresh = _fresh()
    assert torch.equal(res.noise[:, ~lm1], fresh[:, ~lm1])
    assert res.stats["aligned_fraction"] == 1.0  # the object's neighbourhood is seen by both
    assert res.stats["mask_latent_pixels"] == int(lm1.sum())
    everywhere = align_noise(sharp, cams[0], base_noise, cams[3], mask, generator=SEED, region="all")
    assert torch.allclose(everywhere.noise[:, lm1], res.noise[:, lm1])
    assert everywhere.stats["aligned_fraction_all"] > res.stats["aligned_fraction_all"]


def test_deterministic_given_the_seed(sharp, cams, base_noise):
    a = align_noise(sharp, cams[0], base_noise, cams[3], generator=SEED)
    b = align_noise(sharp, cams[0], base_noise, cams[3], generator=torch.Generator().manual_seed(SEED))
    c = align_noise(sharp, cams[0], base_noise, cams[3], generator=SEED + 1)
    assert torch.equal(a.noise, b.noise)
    assert not torch.equal(a.noise, c.noise)
    views = align_noise_views(sharp, cams[0], base_noise, {"b": cams[3], "a": cams[0]}, seed=3)
    alone = align_noise(sharp, cams[0], base_noise, cams[3], generator=view_seed("b", 3))
    assert torch.equal(views["b"].noise, alone.noise)


def test_splat_and_off(sharp, cams, base_noise):
    same = align_noise(sharp, cams[0], base_noise, cams[0], generator=SEED, method="splat")
    assert torch.equal(same.noise, base_noise)
    other = align_noise(sharp, cams[0], base_noise, cams[3], generator=SEED, method="splat")
    assert abs(other.stats["std"] - 1) < 0.05 and abs(other.stats["mean"]) < 0.05
    assert other.stats["aligned_fraction"] > 0.6
    off = align_noise(None, cams[0], base_noise, cams[3], generator=SEED, method="off")
    assert torch.equal(off.noise, _fresh()) and off.stats["aligned_fraction"] == 0.0
    half = align_noise(sharp, cams[0], base_noise.half(), cams[3], generator=SEED)
    assert half.noise.dtype == torch.float16
    full = align_noise(sharp, cams[0], base_noise.half().float(), cams[3], generator=SEED)
    assert torch.allclose(half.noise.float(), full.noise, atol=1e-2)
    with pytest.raises(ValueError):
        align_noise(sharp, cams[0], base_noise, cams[3], method="warp")
