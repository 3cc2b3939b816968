"""Refinement: the building blocks (view subset, patch and pixel samplers, patch/GAN
losses) and the stage (one step, its batches, a killed run that resumes), the latter on
the tiny NeRF trained once per session by ``tests/test_pretrain.py``'s fixture."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lpips
import numpy as np
import pytest
import torch
from test_pretrain import offline, scene, train_renders, trained  # noqa: F401  (session fixtures shared with the pretrain tests)

from innout.cameras import Camera, Intrinsics, look_at
from innout.discriminator import Discriminator, minibatch_stddev
from innout.patch_losses import (
    PatchLossWeights,
    discriminator_loss,
    discriminator_step,
    extract_tiles,
    lpips_distance,
    make_discriminator,
    make_discriminator_optimizer,
    patch_loss,
)
from innout.patch_sampling import (
    Patch,
    PatchSampler,
    UnmaskedPixelSampler,
    mask_bbox,
    pixel_rays,
    sample_unmasked_pixels,
)
from innout.patch_views import GROUP_IDS, select_patch_views

K = Intrinsics(60.0, 60.0, 32.0, 24.0, 64, 48)


@pytest.fixture(scope="module")
def lpips_vgg():
    """LPIPS with its linear heads from the package and a random VGG trunk: no network."""
    return lpips.LPIPS(net="vgg", pnet_rand=True, pretrained=True, verbose=False).eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


def _tiny_cfg(**kw):
    base = dict(
        disc_channels=8, disc_tile=16, disc_max_channels=16, disc_mbstd_group=4, disc_equalized_lr=True,
        disc_optimizer="adam", disc_lr=2e-3, r1_gamma=1.0, r1_every=1, disc_tiles="random", tiles_per_patch=2,
        l1_weight=1.0, lpips_weight=1.0, adv_weight=1.0, lambda_patch=0.01,
    )
    base.update(kw)
    return SimpleNamespace(**base)


# -------------------------------------------------------------------------- view subset


def _cloud(rng, n=40, spread=(2.0, 1.5, 1.0)) -> dict[str, Camera]:
    """A base camera at the origin looking down -z at the scene, and ``n`` jittered
    cameras around it, all looking at the same point with some random extra yaw."""
    target = np.array([0.0, 0.0, -6.0])
    up = np.array([0.0, 1.0, 0.0])
    cams = {"base": Camera(look_at(np.zeros(3), target, up), K)}
    for i in range(n):
        eye = rng.normal(0.0, 1.0, 3) * np.array(spread)
        tgt = target + rng.normal(0.0, 0.7, 3)
        cams[f"v{i:02d}"] = Camera(look_at(eye, tgt, up), K)
    return cams


def test_view_groups_definition_and_selection():
    rng = np.random.default_rng(3)
    cams = _cloud(rng)
    sel = select_patch_views(cams, "base", keep_fraction=0.5)
    assert tuple(sel["groups"]) == GROUP_IDS and len(GROUP_IDS) == 12 == len(set(GROUP_IDS))
    others = [k for k in cams if k != "base"]
    members = [n for g in GROUP_IDS for n in sel["groups"][g]]
    assert sorted(members) == sorted(others)  # every non-base view in exactly one group
    # independent recomputation of the group of every view
    base = cams["base"].c2w
    d = {k: base[:3, :3].T @ (cams[k].center - base[:3, 3]) for k in others}
    by_z = sorted(others, key=lambda k: (d[k][2], k))
    for rank, k in enumerate(by_z):
        gid = sel["group_of"][k]
        assert gid[1] == ("+" if d[k][0] >= 0 else "-") and gid[3] == ("+" if d[k][1] >= 0 else "-")
        assert gid[5] == str(3 * rank // len(others))
        assert k in sel["groups"][gid]
    tercile_sizes = [sum(sel["group_of"][k].endswith(f"z{t}") for k in others) for t in range(3)]
    assert max(tercile_sizes) - min(tercile_sizes) <= 1
    # z0 is in front of the base camera (towards the scene, -z), z2 behind it
    z_mean = [np.mean([d[k][2] for k in others if sel["group_of"][k].endswith(f"z{t}")]) for t in range(3)]
    assert z_mean[0] < z_mean[1] < z_mean[2]
    # per non-empty group: ceil(50 %), the most similar ones
    for g in GROUP_IDS:
        grp = sel["groups"][g]
        kept = sel["kept"][g]
        assert len(kept) == (math.ceil(len(grp) / 2) if grp else 0)
        sims = [sel["similarity"][k] for k in grp]
        assert sims == sorted(sims, reverse=True)
        assert kept == grp[: len(kept)]
    assert sorted(sel["selected"]) == sorted(n for g in GROUP_IDS for n in sel["kept"][g])
    assert sel["selected"] == [k for k in cams if k in set(sel["selected"])]  # input order
    # the view most similar to the base is always selected; the base only when asked
    nearest = max(others, key=lambda k: sel["similarity"][k])
    assert nearest in sel["selected"] and "base" not in sel["selected"]
    assert all(0.0 <= s <= 1.0 for s in sel["similarity"].values())
    with_base = select_patch_views(cams, "base", include_base=True)
    assert with_base["selected"] == ["base", *sel["selected"]]
    # keep_fraction 1 keeps everything
    assert sorted(select_patch_views(cams, "base", keep_fraction=1.0)["selected"]) == sorted(others)


def _one_quadrant(rng):
    """A base camera and 12 views up and right of it (one x/y quadrant, so 3 groups of 4
    by z tercile), all facing -z; in each group the two nearest views got noise as their
    fill and the two farthest the base's own fill: pose and fill similarity disagree."""
    from innout.patch_views import subset_scores  # noqa: F401  (imported by the callers)

    cams = {"base": Camera(np.eye(4), K)}
    base_image = np.zeros((48, 48, 3), np.uint8)
    yy, xx = np.mgrid[0:48, 0:48]
    base_image[..., 0] = (127 + 120 * np.sin(xx / 3.0)).astype(np.uint8)
    base_image[..., 1] = (127 + 120 * np.cos(yy / 5.0)).astype(np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[8:40, 10:42] = True
    fills, masks, good = {}, {}, set()
    for i in range(12):
        name = f"v{i:02d}"
        c2w = np.eye(4)
        d = 0.1 + (i % 4) * 0.5  # nearest two of each group: i % 4 in (0, 1)
        c2w[:3, 3] = [d, d, 0.1 * i]  # z tercile: i // 4
        cams[name] = Camera(c2w, K)
        masks[name] = mask
        if i % 4 >= 2:
            fills[name] = base_image.copy()
            good.add(name)
        else:
            fills[name] = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    return cams, fills, masks, base_image, mask, good


class _L1(torch.nn.Module):
    """An LPIPS stand-in: mean absolute difference per image."""

    def forward(self, a, b):
        return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)


def test_subset_ranked_by_phash_or_lpips_not_pose_when_they_disagree():
    from innout.patch_views import subset_scores

    cams, fills, masks, base_image, mask, good = _one_quadrant(np.random.default_rng(5))
    by_pose = select_patch_views(cams, "base", 0.5, scores=subset_scores("pose", fills, masks, base_image, mask))
    assert {len(v) for v in by_pose["groups"].values() if v} == {4}
    assert set(by_pose["selected"]) == {f"v{i:02d}" for i in range(12) if i % 4 < 2}  # the nearest
    for by, module in (("phash", None), ("lpips", _L1())):
        scores = subset_scores(by, fills, masks, base_image, mask, module)
        chosen = select_patch_views(cams, "base", 0.5, scores=scores)
        assert set(chosen["selected"]) == good, by  # the fills like the base's, though farther
        assert chosen["score"] == scores and max(scores.values()) == 0.0  # identical crops: distance 0
    with pytest.raises(ValueError, match="subset_by"):
        subset_scores("nearest", fills, masks, base_image, mask)
    with pytest.raises(ValueError, match="lpips"):
        subset_scores("lpips", fills, masks, base_image, mask, None)


def test_reset_fields_gives_a_fresh_nerf(stage_inputs):  # noqa: F811
    """refine.reset_fields: the tuner's NeRF is a fresh nerfacto of the same config (the
    same for the same seed), not the base stage's; its schedules restart at step 0."""
    from innout.config import load_method_config
    from innout.finetune import NerfTuner

    nerf = stage_inputs["base_dir"] / "nerf"
    kept = NerfTuner(nerf, device="cpu")
    fresh = [NerfTuner(nerf, device="cpu", reset_seed=0) for _ in range(2)]
    # every learnt tensor (nerfstudio's device_indicator_param is a constant marker)
    names = [n for n, _ in kept.model.named_parameters() if n != "device_indicator_param"]
    a, b, c = (dict(t.model.named_parameters()) for t in (kept, *fresh))
    assert all(torch.equal(b[n], c[n]) for n in names)  # seeded
    changed = [n for n in names if not torch.equal(a[n], b[n])]
    assert len(changed) == len(names), set(names) - set(changed)
    assert kept.start_step > 0 and fresh[0].start_step == 0
    paper = load_method_config("paper").refine
    assert paper.subset_by == "phash" and paper.reset_learning_rate == 1e-2


def test_reset_fields_on_a_virtual_gpu_matches_the_cpu(stage_inputs, monkeypatch):  # noqa: F811
    """On a GPU the reset forks CUDA's RNG too; the fresh NeRF is drawn on the CPU (nerfacto
    builds its torch fields there) and loaded onto the GPU, so the same seed gives the CPU's
    reset (with tiny-cuda-nn's fields, which initialise themselves, it would not). On a
    virtual GPU (tests/virtual_gpu.py): the parameters on the GPU, equal to the CPU reset,
    and a batch of rays forward and backward there."""
    from virtual_gpu import on_gpu, pretend_cuda, virtual_gpu

    from innout.finetune import NerfTuner

    nerf = stage_inputs["base_dir"] / "nerf"
    on_cpu = dict(NerfTuner(nerf, device="cpu", reset_seed=0).model.named_parameters())
    pretend_cuda(monkeypatch)
    with virtual_gpu():
        tuner = NerfTuner(nerf, device="cuda", reset_seed=0)
        params = dict(tuner.model.named_parameters())
        assert all(on_gpu(p) for p in params.values())
        assert all(torch.equal(params[n].cpu(), on_cpu[n]) for n in on_cpu)
        origins = torch.zeros(64, 3).to("cuda")
        directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1).to("cuda")
        out = tuner.forward(origins, directions)
        out["rgb"].mean().backward()
        assert on_gpu(out["rgb"]) and tuner.start_step == 0


def test_similarity_and_empty_groups():
    up = np.array([0.0, 1.0, 0.0])
    tgt = np.array([0.0, 0.0, -5.0])
    cams = {"base": Camera(look_at(np.zeros(3), tgt, up), K)}
    # every view to the right of and above the base: the x- and y- groups stay empty
    for i, (x, y, z) in enumerate([(0.1, 0.1, 0.0), (1.0, 0.5, 0.3), (2.0, 1.0, -0.3), (0.5, 2.0, 0.1), (3.0, 3.0, 0.2), (0.2, 0.3, -0.2)]):
        cams[f"v{i}"] = Camera(look_at(np.array([x, y, z]), tgt, up), K)
    # a pure translation of the base (same orientation): angle 0
    shifted = cams["base"].c2w.copy()
    shifted[:3, 3] += [0.3, 0.2, 0.0]
    cams["shift"] = Camera(shifted, K)
    sel = select_patch_views(cams, "base")
    assert sel["angle_deg"]["shift"] == pytest.approx(0.0, abs=1e-6)
    assert all(not sel["groups"][g] for g in GROUP_IDS if g.startswith("x-") or "y-" in g)
    assert sum(bool(v) for v in sel["groups"].values()) == 3  # x+y+z0, x+y+z1, x+y+z2
    # the farthest, most rotated view has similarity 0, and v0 (closest) is kept
    assert sel["similarity"]["v4"] == pytest.approx(0.0)
    assert "v0" in sel["selected"]
    with pytest.raises(KeyError):
        select_patch_views(cams, "nope")
    with pytest.raises(ValueError):
        select_patch_views(cams, "base", keep_fraction=0.0)
    # the base alone: nothing to group
    alone = select_patch_views({"base": cams["base"]}, "base")
    assert alone["selected"] == [] and all(not v for v in alone["groups"].values())


# -------------------------------------------------------------------------- samplers


def _random_mask(rng, h, w) -> np.ndarray:
    """Random unions of rectangles, often touching or crossing the image border."""
    m = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = int(rng.integers(-h // 4, h)), int(rng.integers(-w // 4, w))
        hh, ww = int(rng.integers(1, h // 2 + 2)), int(rng.integers(1, w // 2 + 2))
        m[max(y0, 0) : max(y0 + hh, 0), max(x0, 0) : max(x0 + ww, 0)] = True
    if rng.random() < 0.3:  # a one-pixel blob in a corner
        m[rng.choice([0, h - 1]), rng.choice([0, w - 1])] = True
    if not m.any():
        m[rng.integers(0, h), rng.integers(0, w)] = True
    return m


def test_patch_sampler_inside_image_and_around_bbox():
    rng = np.random.default_rng(0)
    for trial in range(40):
        h, w = int(rng.integers(12, 80)), int(rng.integers(12, 80))
        masks = {f"m{i}": _random_mask(rng, h, w) for i in range(3)}
        masks["empty"] = np.zeros((h, w), bool)
        patch_size = int(rng.choice([8, 16, 32, 64, 256]))
        sampler = PatchSampler(masks, patch_size=patch_size, seed=trial)
        assert sampler.skipped == ["empty"] and "empty" not in sampler.views
        for p in sampler.sample_many(60):
            ya, yb, xa, xb = mask_bbox(masks[p.name])
            assert p.size == min(patch_size, h, w)
            assert 0 <= p.y0 and p.y0 + p.size <= h and 0 <= p.x0 and p.x0 + p.size <= w
            # overlaps the mask's bounding box
            assert p.y0 <= yb and p.y0 + p.size - 1 >= ya and p.x0 <= xb and p.x0 + p.size - 1 >= xa
            # an unclamped patch is centred on a pixel of the bounding box
            if 0 < p.y0 < h - p.size:
                assert ya <= p.y0 + p.size // 2 <= yb
            if 0 < p.x0 < w - p.size:
                assert xa <= p.x0 + p.size // 2 <= xb
            pix = p.pixels()
            assert pix.shape == (p.size * p.size, 2)
            assert pix[:, 0].min() >= 0 and pix[:, 0].max() < h and pix[:, 1].min() >= 0 and pix[:, 1].max() < w
    # pixel coordinates, crop and nerfstudio ray indices agree
    img = np.arange(20 * 30).reshape(20, 30)
    p = Patch("a", 3, 5, 7)
    assert np.array_equal(img[p.pixels()[:, 0], p.pixels()[:, 1]], p.crop(img).reshape(-1))
    assert p.ray_indices(4)[:, 0].eq(4).all() and p.ray_indices(4)[0, 1:].tolist() == [3, 5]
    # centres spread over the whole bounding box, not one point
    m = np.zeros((200, 200), bool)
    m[50:150, 60:140] = True
    s = PatchSampler({"a": m}, patch_size=16, seed=1)
    cy = np.array([q.y0 + 8 for q in s.sample_many(400)])
    assert cy.min() < 60 and cy.max() > 140
    with pytest.raises(ValueError):
        PatchSampler({"e": np.zeros((8, 8), bool)})


def test_patch_sampler_reproducible_and_resumable():
    rng = np.random.default_rng(5)
    masks = {f"m{i}": _random_mask(rng, 40, 50) for i in range(4)}
    a, b = PatchSampler(masks, 16, seed=7), PatchSampler(masks, 16, seed=7)
    assert a.sample_many(10) == b.sample_many(10)
    state = a.state_dict()
    first = a.sample_many(5)
    a.load_state_dict(state)
    assert a.sample_many(5) == first
    only = PatchSampler(masks, 16, seed=0, views=["m2"])
    assert {p.name for p in only.sample_many(20)} == {"m2"}


def test_unmasked_pixels_never_masked():
    rng = np.random.default_rng(1)
    paths = set()
    for trial in range(25):
        h, w = int(rng.integers(4, 60)), int(rng.integers(4, 60))
        masks = {f"v{i}": _random_mask(rng, h, w) for i in range(4)}
        masks["full"] = np.ones((h, w), bool)  # never sampled
        masks["almost"] = np.ones((h, w), bool)
        masks["almost"][rng.integers(0, h), :] = False
        if trial % 2:
            masks["free"] = np.zeros((h, w), bool)
        if trial % 3 == 0:  # a view of another size
            masks["other"] = _random_mask(rng, h + 7, w + 3)
        if trial % 4 == 0:  # mostly masked pixels overall: the index-list path
            masks.update({f"full{j}": np.ones((h, w), bool) for j in range(30)})
        sampler = UnmaskedPixelSampler(masks)
        assert (sampler._free_index is None) == (sampler.free_fraction >= 0.25)
        paths.add(sampler._free_index is None)
        idx = sample_unmasked_pixels(masks, 500, np.random.default_rng(trial))
        assert idx.shape == (500, 3) and idx.dtype == torch.long
        names = list(masks)
        for row in idx.numpy():
            v, y, x = (int(c) for c in row)
            m = masks[names[v]]
            assert 0 <= y < m.shape[0] and 0 <= x < m.shape[1]
            assert not m[y, x]
        assert not (idx[:, 0] == names.index("full")).any()
    assert paths == {True, False}  # both the rejection and the index-list path ran
    # uniform over the pooled unmasked pixels: views in proportion to their free pixels
    m1 = np.ones((10, 10), bool)
    m1[:1, :] = False  # 10 free
    m2 = np.zeros((10, 10), bool)
    m2[:7, :] = True  # 30 free
    sampler = UnmaskedPixelSampler({"a": m1, "b": m2})
    v = sampler.sample(20000, 0)[:, 0].numpy()
    assert abs(v.mean() - 0.75) < 0.02
    # the same through the index-list path (90 % of all pixels masked)
    m3 = np.ones((10, 10), bool)
    m3[0, :3] = False  # 3 free
    m4 = np.ones((10, 30), bool)
    m4[5, :] = False  # 30 free... and one wider view
    few = UnmaskedPixelSampler({"a": m3, "b": m4})
    assert few._free_index is not None
    idx = few.sample(20000, 2).numpy()
    assert abs(idx[:, 0].mean() - 30 / 33) < 0.01
    assert (idx[idx[:, 0] == 1, 1] == 5).all() and set(idx[idx[:, 0] == 0, 2].tolist()) == {0, 1, 2}
    with pytest.raises(ValueError):
        UnmaskedPixelSampler({"a": np.ones((3, 3), bool)})


def test_pixel_rays_match_camera_rays():
    cam = Camera(look_at(np.array([1.0, 2.0, 3.0]), np.zeros(3)), K)
    o, d = cam.rays()
    ys, xs = np.array([0, 5, 47]), np.array([0, 63, 10])
    po, pd = pixel_rays(cam, ys, xs)
    assert np.allclose(pd, d[ys, xs]) and np.allclose(po, o[ys, xs])


# -------------------------------------------------------------------------- losses and D


def test_extract_tiles():
    x = torch.rand(2, 3, 32, 32)
    grid = extract_tiles(x, 16, "grid")
    assert grid.shape == (8, 3, 16, 16)
    assert torch.equal(grid[0], x[0, :, :16, :16]) and torch.equal(grid[3], x[0, :, 16:, 16:])
    assert torch.equal(grid[5], x[1, :, :16, 16:])
    rnd = extract_tiles(x, 16, "random", count=3, generator=0)
    assert rnd.shape == (6, 3, 16, 16)
    # each random tile is a crop of its patch
    t = rnd[4]
    found = any(torch.equal(t, x[1, :, i : i + 16, j : j + 16]) for i in range(17) for j in range(17))
    assert found
    small = extract_tiles(torch.rand(3, 3, 10, 10), 16)
    assert small.shape == (3, 3, 16, 16)
    assert extract_tiles([torch.rand(1, 3, 20, 20), torch.rand(2, 3, 16, 16)], 16, "grid", generator=1).shape == (3, 3, 16, 16)


def test_discriminator_shapes_and_mbstd():
    d = Discriminator(channels=8, tile=32, max_channels=16)
    assert len(d.blocks) == 3  # 32 -> 16 -> 8 -> 4
    assert d(torch.rand(6, 3, 32, 32)).shape == (6,)
    assert d(torch.rand(1, 3, 32, 32)).shape == (1,)
    with pytest.raises(ValueError):
        d(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError):
        Discriminator(tile=48)
    x = torch.randn(6, 4, 2, 2)
    y = minibatch_stddev(x, 4)  # group 3 (largest divisor of 6 <= 4)
    assert y.shape == (6, 5, 2, 2)
    g = x.reshape(3, 2, 4, 2, 2)
    expect = (g.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    assert torch.allclose(y[:, 4, 0, 0], expect.repeat(3), atol=1e-6)
    plain = Discriminator(channels=8, tile=16, max_channels=8, equalized=False)
    assert torch.isfinite(plain(torch.rand(2, 3, 16, 16))).all()


def test_lpips_identical_patches_is_zero(lpips_vgg):
    x = torch.rand(2, 3, 32, 32)
    assert all(not p.requires_grad for p in lpips_vgg.net.parameters())  # the trunk is frozen by lpips
    assert float(lpips_distance(lpips_vgg, x, x)) == pytest.approx(0.0, abs=1e-7)
    assert float(lpips_distance(lpips_vgg, x, torch.rand(2, 3, 32, 32))) > 0.0
    out = patch_loss(x.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1), lpips_vgg, None, PatchLossWeights())
    assert float(out["l1"]) == 0.0 and float(out["lpips"]) == pytest.approx(0.0, abs=1e-7) and float(out["total"]) == pytest.approx(0.0, abs=1e-9)


def test_generator_and_discriminator_step(lpips_vgg):
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    disc = make_discriminator(cfg)
    opt = make_discriminator_optimizer(disc, cfg)
    target = torch.rand(2, 3, 24, 24)  # inpainted patches ("real")
    render = torch.nn.Parameter(torch.rand(2, 3, 24, 24))  # stands in for the NeRF's patch renders
    w = PatchLossWeights.from_config(cfg)
    assert w.lambda_patch == 0.01 and w.tile_mode == "random"
    out = patch_loss(render, target, lpips_vgg, disc, w, generator=0)
    for k in ("l1", "lpips", "adv", "patch", "total"):
        assert torch.isfinite(out[k]), k
    assert float(out["lpips"]) > 0 and float(out["adv"]) > 0
    assert torch.allclose(out["total"], 0.01 * (out["l1"] + out["lpips"] + out["adv"]))
    out["total"].backward()
    assert render.grad is not None and torch.isfinite(render.grad).all() and render.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())  # the generator step leaves D alone
    assert all(p.grad is None for p in lpips_vgg.parameters())  # ... and LPIPS's heads
    assert all(p.requires_grad for p in disc.parameters())  # ... and unfreezes it after
    before = [p.detach().clone() for p in disc.parameters()]
    stats = discriminator_step(disc, opt, target, render, cfg, step=0, generator=1)
    assert stats["skipped"] == 0.0 and all(math.isfinite(v) for v in stats.values())
    assert stats["r1"] > 0.0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, disc.parameters()))
    # the real-only case (base-view patches) and the ablations
    assert math.isfinite(discriminator_step(disc, opt, target, None, cfg, step=1)["total"])
    abl = patch_loss(render, target, None, None, PatchLossWeights(lpips=0.0, adv=0.0))
    assert float(abl["lpips"]) == 0.0 and float(abl["adv"]) == 0.0 and float(abl["patch"]) == pytest.approx(float(abl["l1"]))


def test_r1_penalty_and_lazy_schedule():
    torch.manual_seed(1)
    disc = Discriminator(channels=8, tile=16, max_channels=16)
    real, fake = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    full = discriminator_loss(disc, real, fake, r1_gamma=2.0, r1_every=1, step=0)
    assert float(full["r1"]) > 0 and torch.isfinite(full["total"])
    # R1 = gamma / 2 * E||grad||^2 w.r.t. the image in [-1, 1]
    x = (real * 2 - 1).requires_grad_(True)
    (g,) = torch.autograd.grad(disc((x + 1) / 2).sum(), x)
    assert float(full["r1"]) == pytest.approx(float(g.square().sum(dim=(1, 2, 3)).mean()), rel=1e-4)
    lazy_on = discriminator_loss(disc, real, fake, r1_gamma=2.0, r1_every=4, step=8)
    lazy_off = discriminator_loss(disc, real, fake, r1_gamma=2.0, r1_every=4, step=9)
    assert float(lazy_on["r1"]) == pytest.approx(4 * float(full["r1"]), rel=1e-5)
    assert float(lazy_off["r1"]) == 0.0
    assert float(lazy_off["real"]) == pytest.approx(float(full["real"]), rel=1e-5)
    # gradient of the penalty reaches D's weights
    full["r1"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    rms = make_discriminator_optimizer(disc, _tiny_cfg(disc_optimizer="rmsprop"))
    assert isinstance(rms, torch.optim.RMSprop)


def test_refine_config_presets():
    from innout.config import load_method_config

    smoke = load_method_config("smoke").refine
    paper = load_method_config("paper").refine
    assert paper.patch_size == 256 and paper.lambda_patch == 0.01 and paper.iterations == 5000
    assert paper.keep_fraction == 0.5 and paper.disc_tile == 64
    assert smoke.patch_size < 64 and smoke.iterations <= 200
    d = make_discriminator(smoke)
    assert d.tile == smoke.disc_tile
    k = smoke.r1_every  # lazy R1: StyleGAN2's k / (k + 1) learning-rate correction
    assert make_discriminator_optimizer(d, smoke).param_groups[0]["lr"] == pytest.approx(smoke.disc_lr * (k / (k + 1) if k > 1 else 1))


# -------------------------------------------------------------------------- the stage
#
# The refine stage on the session's tiny trained NeRF (tests/test_pretrain.py) with
# synthetic base/ and inpaint/ folders of the layouts those stages write: the base view's
# "inpainting" and the other views' are the pre-trained NeRF's renders (object-free
# enough for a loss to be computed), the depth prior is its rendered depth.

STAGE_OVERRIDES = [
    "refine.rays_per_batch=256", "refine.prior_rays_per_batch=64", "refine.patch_size=16",
    "refine.disc_tile=8", "refine.disc_channels=4", "refine.disc_max_channels=8",
    "refine.steps_per_checkpoint=3", "refine.log_every_steps=1", "models.lpips_backbone=random",
    "models.provenance=random",
]


def make_stage_inputs(root, trained, renders) -> dict:
    """``root/base`` and ``root/inpaint`` as the base and inpaint stages write them."""
    import json
    import shutil

    from PIL import Image

    from innout.frames import read_scene

    _, _, train, _ = read_scene(trained["scene"])
    base = train[len(train) // 2]
    base_dir, inpaint_dir = root / "base", root / "inpaint"
    (base_dir / "nerf").mkdir(parents=True)
    shutil.copytree(trained["out_dir"] / "innout-nerfacto", base_dir / "nerf" / "innout-nerfacto")
    shutil.copy2(renders / "rgb" / f"{base.name}.png", base_dir / "base.png")
    shutil.copy2(base.object_mask, base_dir / "mask.png")
    np.save(base_dir / "depth_prior.npy", np.load(renders / "depth" / f"{base.name}.npy"))
    (base_dir / "summary.json").write_text(json.dumps({"winner": base.name, "weights": "random"}))
    (inpaint_dir / "images").mkdir(parents=True)
    (inpaint_dir / "variants" / "independent").mkdir(parents=True)
    for f in train:
        img = Image.open(renders / "rgb" / f"{f.name}.png")
        img.save(inpaint_dir / "images" / f"{f.name}.png")
        img.transpose(Image.FLIP_LEFT_RIGHT).save(inpaint_dir / "variants" / "independent" / f"{f.name}.png")
    (inpaint_dir / "summary.json").write_text(json.dumps({"weights": "random", "base_view": base.name}))
    return {"base_dir": base_dir, "inpaint_dir": inpaint_dir, "base": base.name, "transforms": trained["scene"]}


_STAGE: dict = {}


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, trained, train_renders):  # noqa: F811
    if "inputs" not in _STAGE:
        _STAGE["inputs"] = make_stage_inputs(tmp_path_factory.mktemp("refine_inputs"), trained, train_renders)
    return _STAGE["inputs"]


def stage_cfg(*extra: str):
    from innout.config import load_method_config

    return load_method_config("smoke", ["device=cpu", *STAGE_OVERRIDES, *extra], model="tiny")


def _refiner(stage_inputs, cfg):
    from innout.finetune import NerfTuner
    from innout.lpips_metric import make_lpips_module
    from innout.refine import Refiner, load_refine_inputs

    inputs = load_refine_inputs(stage_inputs["transforms"], stage_inputs["base_dir"], stage_inputs["inpaint_dir"])
    tuner = NerfTuner(stage_inputs["base_dir"] / "nerf", device="cpu", learning_rate=1e-3, lr_final=1e-4, decay_steps=10, stage="refine")
    lp, _, backbone = make_lpips_module(cfg.models, "cpu")
    assert backbone == "random"
    return Refiner(tuner, inputs, cfg, lp), inputs


def test_one_refine_step_is_finite_and_trains_both_players(stage_inputs, offline):  # noqa: F811
    refiner, _ = _refiner(stage_inputs, stage_cfg())
    nerf_before = [p.detach().clone() for p in refiner.tuner.parameters()]
    d_before = [p.detach().clone() for p in refiner.discriminator.parameters()]
    losses = refiner.step()
    assert set(losses) >= {"loss", "rec", "prior_rgb", "prior_depth", "l1", "lpips", "adv", "d_real", "d_fake"}
    for key, value in losses.items():
        assert math.isfinite(value), (key, losses)
    # every term was computed (none of them silently zero)
    for key in ("rec", "prior_rgb", "prior_depth", "l1", "lpips", "adv", "d_real", "d_fake"):
        assert losses[key] > 0, (key, losses)
    assert any(not torch.equal(a, b) for a, b in zip(nerf_before, refiner.tuner.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, refiner.discriminator.parameters()))


def test_refine_batches_respect_masks_and_image(stage_inputs, offline):  # noqa: F811
    """Over many steps' batches: L_rec pixels never lie inside an object mask, L_prior
    pixels always inside the base view's mask, patches inside the image and the patch
    view's mask box; the vectorised rays are pixel_rays'."""
    from innout.refine import CameraRays

    refiner, inputs = _refiner(stage_inputs, stage_cfg("refine.patches_per_step=3"))
    h, w = inputs.images.shape[1:3]
    masks = np.stack([inputs.object_masks[n] for n in inputs.names])
    base_i = inputs.names.index(inputs.base)
    assert inputs.base not in refiner.patch_targets  # supervised by L_prior already
    seen_views = set()
    for _ in range(60):
        b = refiner._batch()
        rec = b["rec"].numpy()
        assert ((rec[:, 1] >= 0) & (rec[:, 1] < h) & (rec[:, 2] >= 0) & (rec[:, 2] < w)).all()
        assert not masks[rec[:, 0], rec[:, 1], rec[:, 2]].any()
        seen_views.update(rec[:, 0].tolist())
        prior = b["prior"].numpy()
        assert (prior[:, 0] == base_i).all() and inputs.base_mask[prior[:, 1], prior[:, 2]].all()
        for p, idx in zip(b["patches"], b["patch_idx"]):
            assert p.name in refiner.patch_targets
            assert 0 <= p.y0 and p.y0 + p.size <= h and 0 <= p.x0 and p.x0 + p.size <= w
            ys, xs = np.nonzero(inputs.object_masks[p.name])
            assert p.y0 <= ys.max() and p.y0 + p.size > ys.min() and p.x0 <= xs.max() and p.x0 + p.size > xs.min()
            assert idx[:, 0].eq(inputs.names.index(p.name)).all()
        torch.testing.assert_close(b["rec_rgb"], torch.from_numpy(inputs.images[rec[:, 0], rec[:, 1], rec[:, 2]]))
    assert len(seen_views) > len(inputs.names) // 2
    rays = CameraRays([inputs.cameras[n] for n in inputs.names])
    o, d = rays(b["rec"])
    for k in range(0, len(rec), 37):
        po, pd = pixel_rays(inputs.cameras[inputs.names[rec[k, 0]]], [rec[k, 1]], [rec[k, 2]])
        np.testing.assert_allclose(o[k].numpy(), po[0], atol=1e-12)
        np.testing.assert_allclose(d[k].numpy(), pd[0], atol=1e-12)


class _Killed(Exception):
    pass


def test_run_refine_resumes_after_a_kill_to_the_same_result(stage_inputs, tmp_path, offline):  # noqa: F811
    """A run killed after its step-3 checkpoint and rerun ends exactly where an
    uninterrupted run ends; the output is a NeRF folder the renderer loads, with the
    training curves (TensorBoard scalars of every step once, curves.png)."""
    import json

    from test_training_log import _scalars

    from innout.frames import read_scene
    from innout.refine import run_refine
    from innout.renderer import NerfRenderer

    cfg = stage_cfg("refine.iterations=6", "refine.tensorboard=true")
    args = (stage_inputs["transforms"], stage_inputs["base_dir"], stage_inputs["inpaint_dir"])

    def kill(step):
        if step == 3:  # step 4 done, the checkpoint after step 3 is there
            raise _Killed

    with pytest.raises(_Killed):
        run_refine(*args, tmp_path / "a" / "refine", tmp_path / "a" / "work", cfg, on_step=kill)
    assert not (tmp_path / "a" / "refine").exists()
    resumed = run_refine(*args, tmp_path / "a" / "refine", tmp_path / "a" / "work", cfg)
    straight = run_refine(*args, tmp_path / "b" / "refine", tmp_path / "b" / "work", cfg)
    assert resumed["resumed_from_step"] == 3 and resumed["steps_this_run"] == 3
    assert straight["resumed_from_step"] is None and straight["steps_this_run"] == 6
    assert resumed["losses"]["loss"]["values"] == straight["losses"]["loss"]["values"]
    ckpt = lambda root: torch.load(next((root / "refine/nerf/innout-nerfacto/nerfstudio_models").glob("*.ckpt")), weights_only=False)  # noqa: E731
    a, b = ckpt(tmp_path / "a"), ckpt(tmp_path / "b")
    assert a["step"] == b["step"]
    for key in a["pipeline"]:
        assert torch.equal(a["pipeline"][key], b["pipeline"][key]), key
    summary = json.loads((tmp_path / "a" / "refine" / "summary.json").read_text())
    assert summary["weights"] == "random" and summary["lpips_backbone"] == "random"
    assert summary["patch_view_ranking"]["by"] == "phash" and summary["reset_fields"] is False
    _, _, train_views, _ = read_scene(stage_inputs["transforms"])
    assert set(summary["patch_view_ranking"]["score"]) == {f.name for f in train_views} - {stage_inputs["base"]}
    assert summary["iterations"] == 6 and summary["patch_views"] and summary["base_view"] == stage_inputs["base"]
    scalars = _scalars(tmp_path / "a" / "refine" / "tensorboard")
    assert [step for step, _ in scalars["loss/loss"]] == list(range(1, 7)) and "lr" in scalars and "psnr_rec" in scalars
    assert (tmp_path / "a" / "refine" / "curves.png").is_file() and summary["tensorboard"] == "tensorboard"
    renderer = NerfRenderer.from_config(tmp_path / "a" / "refine" / "nerf", device="cpu")
    _, _, train, _ = read_scene(stage_inputs["transforms"])
    out = renderer.render_camera(train[0].camera, return_samples=False)
    assert torch.isfinite(out["rgb"]).all()


def test_a_gpu_run_starts_over_from_a_cpu_checkpoint_and_resumes_its_gpus_generator(stage_inputs, tmp_path, monkeypatch,
                                                                                      offline):  # noqa: F811
    """Killed on the CPU, rerun on a GPU: the GPU run starts over (other kernels). Killed there
    and rerun: it resumes, and the GPU's generator (nerfacto's stratified samples are drawn on
    it) continues from the checkpoint's state. On a virtual GPU (tests/virtual_gpu.py), whose
    generator state is a placeholder that only a restore changes."""
    from virtual_gpu import pretend_cuda, virtual_gpu

    from test_pretrain import Interrupted, _record_and_stop_at

    from innout.refine import run_refine

    args = (stage_inputs["transforms"], stage_inputs["base_dir"], stage_inputs["inpaint_dir"])
    out, work = tmp_path / "refine", tmp_path / "work"
    cfg = stage_cfg("refine.iterations=4", "refine.steps_per_checkpoint=2")

    with pytest.raises(Interrupted):  # the CPU's checkpoint after 2 steps
        run_refine(*args, out, work, cfg, on_step=_record_and_stop_at(1))
    pretend_cuda(monkeypatch)
    gpu_cfg = stage_cfg("refine.iterations=4", "refine.steps_per_checkpoint=2", "device=cuda")
    seen = []
    with virtual_gpu(), pytest.raises(Interrupted):
        run_refine(*args, out, work, gpu_cfg, on_step=_record_and_stop_at(1, seen))
    assert seen == [0, 1], seen  # started over
    saved = torch.load(next((work / "checkpoints").glob("*.ckpt")), weights_only=False)["rng"]["cuda_device"]
    torch.cuda.set_rng_state(torch.full_like(saved, 7))  # what the rerun's GPU holds before it resumes
    with virtual_gpu():
        resumed = run_refine(*args, out, work, gpu_cfg)
    assert resumed["resumed_from_step"] == 2
    assert torch.equal(torch.cuda.get_rng_state(), saved)


def _restated(stage_inputs, root, base_summary: dict, inpaint_summary: dict) -> dict:
    """The stage inputs with other base / inpaint summaries (the files are shared)."""
    import json
    import shutil

    out = dict(stage_inputs)
    for key, extra in (("base_dir", base_summary), ("inpaint_dir", inpaint_summary)):
        folder = root / key
        shutil.copytree(stage_inputs[key], folder, symlinks=True)
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, **extra}))
        out[key] = folder
    return out


def test_an_implausible_depth_prior_is_left_out_of_refinement(stage_inputs, tmp_path, offline):  # noqa: F811
    """The base stage found the prior implausible (depth_prior.used false): refinement's
    L_prior is colour only. With a huge depth weight the loss shows whether the term is in."""
    cfg = stage_cfg("refine.prior_depth_weight=1e6")
    used, _ = _refiner(stage_inputs, cfg)
    assert used.prior_depth_weight == 1e6 and used.step()["loss"] > 1e3
    unused_inputs = _restated(stage_inputs, tmp_path, {"depth_prior": {"plausible": False, "used": False}}, {})
    unused, inputs = _refiner(unused_inputs, cfg)
    assert not inputs.depth_prior_used and unused.prior_depth_weight == 0.0
    losses = unused.step()
    assert losses["loss"] < 10 and losses["prior_depth"] > 0  # computed (logged), not trained on


def test_refine_summary_of_trained_weights_carries_their_label(stage_inputs, tmp_path, offline, procedural_like):  # noqa: F811
    from provenance_check import random_mentions

    from innout.provenance import PROCEDURAL_LABEL
    from innout.refine import run_refine

    inputs = _restated(stage_inputs, tmp_path, {"weights": "procedural"}, {"weights": "procedural"})
    cfg = stage_cfg("refine.iterations=2", *procedural_like)
    summary = run_refine(inputs["transforms"], inputs["base_dir"], inputs["inpaint_dir"], tmp_path / "refine",
                         tmp_path / "work", cfg)
    assert summary["weights"] == "procedural" and summary["weights_label"] == PROCEDURAL_LABEL and summary["warning"] is None
    assert summary["lpips_backbone"] == "random" and summary["metrics_note"]  # the patch loss's LPIPS, by name
    assert random_mentions(summary) == [], random_mentions(summary)
    assert summary["depth_prior_used"] is True
