"""Evaluation metrics (SPIn-NeRF protocol): boxes, PSNR/SSIM by hand and against skimage,
LPIPS/FID with offline random weights (built with the network switched off), the real
weights' cache paths, the per-scene evaluation inside the mask's box, the TSV table."""

from __future__ import annotations

import math
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import lpips as lpips_package
import torch
import torchvision
from skimage.metrics import structural_similarity

from innout import evaluate as ev
from innout.config import EvaluateConfig, MethodConfig
from innout.errors import StageError


def _no_network(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.fixture(scope="module")
def offline():
    """LPIPS and FID with random weights, built and run once with every way out blocked."""
    rng = np.random.default_rng(0)
    sets = {name: [rng.random((20, 24, 3)) ** power for _ in range(2)] for name, power in (("a", 1.0), ("b", 3.0))}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(urllib.request, "urlopen", _no_network)
        mp.setattr(torch.hub, "download_url_to_file", _no_network)
        mp.setattr(torch.hub, "load_state_dict_from_url", _no_network)
        with pytest.raises(AssertionError, match="network"):
            socket.socket().connect(("127.0.0.1", 9))  # the block is in force
        lpips = ev.LpipsMetric("random")
        fid = ev.FidMetric(random_weights=True)
        first = lpips(sets["a"][0], sets["b"][0])
        features = {name: fid.features(images) for name, images in sets.items()}
    return {"lpips": lpips, "fid": fid, "first": first, "features": features, "sets": sets}


def _scene(rng, n=2, shape=(48, 64)):
    """Ground truths, masks (a different box per view) and noisy renders."""
    gts, masks, renders = {}, {}, {}
    for i in range(n):
        name = f"view{i:02d}"
        gts[name] = rng.random((*shape, 3))
        mask = np.zeros(shape, bool)
        mask[10 + i:30 + i, 12 + 2 * i:44] = True
        masks[name] = mask
        renders[name] = np.clip(gts[name] + rng.normal(0, 0.05, gts[name].shape), 0, 1)
    return gts, masks, renders


# ----------------------------------------------------------------------- boxes, PSNR, SSIM

def test_mask_bbox_and_crop():
    mask = np.zeros((6, 8), np.uint8)
    mask[1, 2] = 1
    mask[3, 5] = 1
    assert ev.mask_bbox(mask) == (1, 4, 2, 6)  # half-open
    assert ev.mask_bbox(np.stack([mask] * 3, axis=2).astype(bool)) == (1, 4, 2, 6)
    img = np.arange(6 * 8).reshape(6, 8)
    assert ev.crop(img, (1, 4, 2, 6)).tolist() == [[10, 11, 12, 13], [18, 19, 20, 21], [26, 27, 28, 29]]
    with pytest.raises(ValueError, match="view07 mask.*empty"):
        ev.mask_bbox(np.zeros((4, 4), bool), "view07 mask")


def test_psnr_by_hand():
    gt = np.random.default_rng(1).random((10, 12, 3)) * 0.9
    assert ev.psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert ev.psnr(gt, gt) == math.inf
    with pytest.raises(ValueError, match="outside"):
        ev.psnr(gt + 0.2, gt)
    u8 = np.full((4, 4, 3), 255, np.uint8)
    assert ev.psnr(u8, np.zeros((4, 4, 3))) == pytest.approx(0.0)


def test_ssim_by_hand():
    rng = np.random.default_rng(2)
    x = rng.random((16, 16, 3))
    assert ev.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.5, 0.25, 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ev.ssim(np.full((12, 12, 3), a), np.full((12, 12, 3), b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(24, 31), (7, 9)])  # an ordinary crop and one narrower than the window
def test_ssim_matches_skimage(shape):
    rng = np.random.default_rng(3)
    x = rng.random((*shape, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    reference = structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, win_size=ev.ssim_window(*shape))
    assert ev.ssim(x, y) == pytest.approx(reference, abs=1e-4)
    assert ev.ssim_window(*shape) == (11 if min(shape) >= 11 else 7)
    with pytest.raises(ValueError, match="too small"):
        ev.ssim(x[:2], y[:2])


# ----------------------------------------------------------------------- LPIPS, FID

def test_random_metrics_built_offline(offline):
    assert offline["lpips"].random_weights and "RANDOM" in offline["lpips"].description
    assert offline["fid"].random_weights and "RANDOM" in offline["fid"].description
    assert offline["first"] > 0
    assert offline["features"]["a"].shape == (2, ev.FID_DIMS)


def test_lpips_random(offline):
    lpips = offline["lpips"]
    a, b = offline["sets"]["a"][0], offline["sets"]["b"][0]
    assert lpips(a, a) == 0.0
    assert lpips(a, b) == pytest.approx(offline["first"])  # deterministic
    assert lpips(a[:7, :9], b[:7, :9]) > 0  # tiny crops are enlarged for the VGG trunk
    again = ev.LpipsMetric("random")  # same seed, same weights
    assert all(torch.equal(p, q) for p, q in zip(lpips.model.parameters(), again.model.parameters()))


def test_fid_random(offline, monkeypatch):
    fa, fb = offline["features"]["a"], offline["features"]["b"]
    monkeypatch.setattr(offline["fid"], "network", _no_network)  # seen images: from the feature cache
    assert np.array_equal(offline["fid"].features(offline["sets"]["a"][::-1]), fa[::-1])
    assert ev.frechet_distance_from_features(fa, fa) == pytest.approx(0.0, abs=1e-9)
    assert ev.frechet_distance_from_features(fa, fb) > 1e-3
    with pytest.raises(ValueError, match="at least 2"):
        offline["fid"].score(offline["sets"]["a"][:1], offline["sets"]["b"])


@pytest.mark.parametrize("n", [5, 40])  # fewer and more samples than dimensions
def test_fid_formula_matches_sqrtm(n):
    rng = np.random.default_rng(n)
    f1, f2 = rng.normal(size=(n, 16)), rng.normal(0.3, 1.5, size=(n + 3, 16))
    moments = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    reference = ev.frechet_distance(*moments[0], *moments[1])
    assert ev.frechet_distance_from_features(f1, f2) == pytest.approx(reference, rel=1e-6)


def test_real_weights_missing_is_one_line_error(tmp_path):
    with pytest.raises(StageError, match="vgg16-397923af.pth") as err:
        ev.LpipsMetric("vgg", cache_dir=tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(StageError, match="weights-inception-2015-12-05-6726825d.pth"):
        ev.FidMetric(random_weights=False, cache_dir=tmp_path)
    with pytest.raises(StageError, match="cache_dir"):
        ev.LpipsMetric("alex", cache_dir=None)


def test_real_weights_load_from_cache(tmp_path, offline):
    """The real path reads torchvision-format / torch-fidelity checkpoints from the cache
    (here: random weights saved in those formats) and the lpips package's heads."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    with torch.device("meta"):  # torchvision's own names and shapes (the classifier is left out: 0.5 GB)
        layout = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items() if k.startswith("features.")}
    generator = torch.Generator().manual_seed(7)
    state = {k: torch.randn(shape, generator=generator) for k, shape in layout.items()}
    torch.save(state, checkpoints / ev.BACKBONE_FILES["vgg"])
    torch.save(offline["fid"].network.state_dict(), checkpoints / ev.INCEPTION_FILE)

    lpips = ev.LpipsMetric("vgg", cache_dir=tmp_path)
    assert not lpips.random_weights
    convs = {name.rsplit(".", 1)[1]: m for name, m in lpips.model.net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert len(convs) == 13 and all(torch.equal(m.weight, state[f"features.{i}.weight"]) for i, m in convs.items())
    shipped = torch.load(Path(lpips_package.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu")
    loaded = lpips.model.state_dict()
    assert shipped and all(torch.equal(loaded[key], value) for key, value in shipped.items())
    fid = ev.FidMetric(random_weights=False, cache_dir=tmp_path)
    assert not fid.random_weights
    assert all(torch.equal(p, q) for p, q in zip(fid.network.state_dict().values(), offline["fid"].network.state_dict().values()))


# ----------------------------------------------------------------------- a scene

def test_perfect_render_inside_the_box(offline):
    rng = np.random.default_rng(4)
    gts, masks, renders = {}, {}, {}
    for i, inside in enumerate(offline["sets"]["a"]):  # crops the FID network has seen: no forward pass
        name, (y0, x0) = f"view{i}", (5 + i, 7 + 3 * i)
        masks[name] = np.zeros((40, 50), bool)
        masks[name][y0:y0 + 20, x0 + 2:x0 + 24] = True
        masks[name][y0 + 3, x0] = True  # the box, not the mask: 20 x 24
        gts[name], renders[name] = rng.random((40, 50, 3)), rng.random((40, 50, 3))  # differ outside the box
        gts[name][y0:y0 + 20, x0:x0 + 24] = renders[name][y0:y0 + 20, x0:x0 + 24] = inside
    result = ev.evaluate_views(renders, gts, masks, offline["lpips"], offline["fid"])
    assert result["psnr"] == math.inf and result["lpips"] == 0.0 and result["ssim"] == pytest.approx(1.0)
    assert result["fid"] == pytest.approx(0.0, abs=1e-9)
    assert result["views"]["view1"]["bbox"] == [6, 26, 10, 34]
    assert result["n_views"] == 2 and result["random_weights"] and result["warning"]


def test_metrics_ignore_pixels_outside_the_box(offline):
    rng = np.random.default_rng(5)
    gts, masks, renders = _scene(rng, n=2)
    before = ev.evaluate_views(renders, gts, masks, offline["lpips"], None)
    changed_r, changed_g = {}, {}
    for name in gts:
        outside = ~np.zeros(masks[name].shape, bool)
        y0, y1, x0, x1 = ev.mask_bbox(masks[name])
        outside[y0:y1, x0:x1] = False
        changed_r[name], changed_g[name] = renders[name].copy(), gts[name].copy()
        changed_r[name][outside] = 1.0
        changed_g[name][outside] = 0.0
    after = ev.evaluate_views(changed_r, changed_g, masks, offline["lpips"], None)
    assert after["views"] == before["views"]
    assert 0 < before["lpips"] and before["psnr"] < 40 and before["ssim"] < 1
    assert before["fid"] is None
    with pytest.raises(ValueError, match="missing in masks: view01"):
        ev.evaluate_views(renders, gts, {k: v for k, v in masks.items() if k != "view01"}, None, None)


# ----------------------------------------------------------------------- table, config

def test_metrics_table():
    result = {"lpips": 0.51234567, "fid": 130.9, "psnr": math.inf, "ssim": 0.8, "random_weights": True}
    row = ev.scene_row("book", result, {"lpips": 0.7, "fid": None, "psnr": 20.0, "ssim": float("nan")})
    text = ev.metrics_table([row, {"scene": "trash", "lpips": 0.4, "extra": "x"}])
    lines = [line.split("\t") for line in text.splitlines()]
    assert text.endswith("\n") and lines[0] == [*ev.METRICS_COLUMNS, "extra"]
    assert lines[1] == ["book", "0.512346", "130.9", "inf", "0.8", "0.7", "NA", "20", "NA", "true", "NA"]
    assert lines[2] == ["trash", "0.4", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "x"]
    with pytest.raises(ValueError, match="tab"):
        ev.metrics_table([{"scene": "a\tb"}])


def test_config_section(tmp_path):
    assert MethodConfig().evaluate == EvaluateConfig()
    models = {"lpips_backbone": "random", "random_weights": True, "cache_dir": str(tmp_path)}
    lpips, fid = ev.metrics_from_config(models, {"fid": False, "lpips_min_side": 40})
    assert lpips.random_weights and lpips.min_side == 40 and fid is None
