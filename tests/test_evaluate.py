"""Evaluation metrics (SPIn-NeRF protocol): boxes, PSNR/SSIM by hand and against skimage,
LPIPS/FID with offline random weights (built with the network switched off), the real
weights' cache paths, the per-scene evaluation inside the mask's box, the TSV table."""

from __future__ import annotations

import math
import socket
import urllib.request
from pathlib import Path

import lpips as lpips_package
import numpy as np
import pytest
import torch
import torchvision
from skimage.metrics import structural_similarity

from innout import evaluate as ev
from innout import fid_metric as fm
from innout import image_metrics as im
from innout import lpips_metric as lp
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
        lpips = lp.LpipsMetric("random")
        fid = fm.FidMetric(random_weights=True)
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
    assert im.psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert im.psnr(gt, gt) == math.inf
    with pytest.raises(ValueError, match="outside"):
        im.psnr(gt + 0.2, gt)
    u8 = np.full((4, 4, 3), 255, np.uint8)
    assert im.psnr(u8, np.zeros((4, 4, 3))) == pytest.approx(0.0)


def test_ssim_by_hand():
    rng = np.random.default_rng(2)
    x = rng.random((16, 16, 3))
    assert im.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.5, 0.25, 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert im.ssim(np.full((12, 12, 3), a), np.full((12, 12, 3), b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shape", [(24, 31), (7, 9)])  # an ordinary crop and one narrower than the window
def test_ssim_matches_skimage(shape):
    rng = np.random.default_rng(3)
    x = rng.random((*shape, 3))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    reference = structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, win_size=im.ssim_window(*shape))
    assert im.ssim(x, y) == pytest.approx(reference, abs=1e-4)
    assert im.ssim_window(*shape) == (11 if min(shape) >= 11 else 7)
    with pytest.raises(ValueError, match="too small"):
        im.ssim(x[:2], y[:2])


# ----------------------------------------------------------------------- LPIPS, FID

def test_random_metrics_built_offline(offline):
    assert offline["lpips"].random_weights and "RANDOM" in offline["lpips"].description
    assert offline["fid"].random_weights and "RANDOM" in offline["fid"].description
    assert offline["first"] > 0
    assert offline["features"]["a"].shape == (2, fm.FID_DIMS)


def test_lpips_random(offline):
    lpips = offline["lpips"]
    a, b = offline["sets"]["a"][0], offline["sets"]["b"][0]
    assert lpips(a, a) == 0.0
    assert lpips(a, b) == pytest.approx(offline["first"])  # deterministic
    assert lpips(a[:7, :9], b[:7, :9]) > 0  # tiny crops are enlarged for the VGG trunk
    again = lp.LpipsMetric("random")  # same seed, same weights
    assert all(torch.equal(p, q) for p, q in zip(lpips.model.parameters(), again.model.parameters()))


def test_fid_random(offline, monkeypatch):
    fa, fb = offline["features"]["a"], offline["features"]["b"]
    monkeypatch.setattr(offline["fid"], "network", _no_network)  # seen images: from the feature cache
    assert np.array_equal(offline["fid"].features(offline["sets"]["a"][::-1]), fa[::-1])
    assert fm.frechet_distance_from_features(fa, fa) == pytest.approx(0.0, abs=1e-9)
    assert fm.frechet_distance_from_features(fa, fb) > 1e-3
    with pytest.raises(ValueError, match="at least 2"):
        offline["fid"].score(offline["sets"]["a"][:1], offline["sets"]["b"])


@pytest.mark.parametrize("n", [5, 40])  # fewer and more samples than dimensions
def test_fid_formula_matches_sqrtm(n):
    rng = np.random.default_rng(n)
    f1, f2 = rng.normal(size=(n, 16)), rng.normal(0.3, 1.5, size=(n + 3, 16))
    moments = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2)]
    reference = fm.frechet_distance(*moments[0], *moments[1])
    assert fm.frechet_distance_from_features(f1, f2) == pytest.approx(reference, rel=1e-6)


def test_real_weights_missing_is_one_line_error(tmp_path):
    with pytest.raises(StageError, match="vgg16-397923af.pth") as err:
        lp.LpipsMetric("vgg", cache_dir=tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(StageError, match="weights-inception-2015-12-05-6726825d.pth"):
        fm.FidMetric(random_weights=False, cache_dir=tmp_path)
    with pytest.raises(StageError, match="cache_dir"):
        lp.LpipsMetric("alex", cache_dir=None)


def test_real_weights_load_from_cache(tmp_path, offline):
    """The real path reads torchvision-format / torch-fidelity checkpoints from the cache
    (here: random weights saved in those formats) and the lpips package's heads."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    with torch.device("meta"):  # torchvision's own names and shapes (the classifier is left out: 0.5 GB)
        layout = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items() if k.startswith("features.")}
    generator = torch.Generator().manual_seed(7)
    state = {k: torch.randn(shape, generator=generator) for k, shape in layout.items()}
    torch.save(state, checkpoints / lp.BACKBONE_FILES["vgg"])
    torch.save(offline["fid"].network.state_dict(), checkpoints / fm.INCEPTION_FILE)

    lpips = lp.LpipsMetric("vgg", cache_dir=tmp_path)
    assert not lpips.random_weights
    convs = {name.rsplit(".", 1)[1]: m for name, m in lpips.model.net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert len(convs) == 13 and all(torch.equal(m.weight, state[f"features.{i}.weight"]) for i, m in convs.items())
    shipped = torch.load(Path(lpips_package.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu")
    loaded = lpips.model.state_dict()
    assert shipped and all(torch.equal(loaded[key], value) for key, value in shipped.items())
    fid = fm.FidMetric(random_weights=False, cache_dir=tmp_path)
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
    assert result["n_views"] == 2 and result["lpips_backbone"] == "random" and result["fid_backbone"] == "random"
    assert "LPIPS/FID on random backbones" in result["metrics_note"]


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
    result = {"lpips": 0.51234567, "fid": 130.9, "psnr": math.inf, "ssim": 0.8, "weights": "random",
              "lpips_backbone": "random", "fid_backbone": "random"}
    row = ev.scene_row("book", result, {"lpips": 0.7, "fid": None, "psnr": 20.0, "ssim": float("nan")})
    text = ev.metrics_table([row, {"scene": "trash", "lpips": 0.4, "extra": "x"}])
    lines = [line.split("\t") for line in text.splitlines()]
    assert text.endswith("\n") and lines[0] == [*ev.METRICS_COLUMNS, "extra"]
    assert lines[1] == ["book", "0.512346", "130.9", "inf", "0.8", "0.7", "NA", "20", "NA", "random", "random", "random", "NA"]
    assert lines[2] == ["trash", "0.4", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "NA", "x"]
    with pytest.raises(ValueError, match="tab"):
        ev.metrics_table([{"scene": "a\tb"}])


def test_mean_row_in_the_table_and_the_page(tmp_path):
    """results/metrics.tsv ends with the mean over scenes (the paper's table), per metric
    over the scenes that have it; the page shows it as its last, bold row."""
    import json

    scenes = {"1": {"lpips": 0.4, "fid": 100.0, "psnr": 20.0, "ssim": 0.5, "weights": "procedural", "lpips_backbone": "alex"},
              "2": {"lpips": 0.6, "fid": 200.0, "psnr": 24.0, "ssim": 0.7, "weights": "procedural", "lpips_backbone": "alex"},
              "3": {"lpips": None, "fid": None, "psnr": None, "ssim": None, "weights": "random",  # no ground truth
                    "lpips_backbone": "random"}}
    files = {}
    for name, metrics in scenes.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({**metrics, "before": {"lpips": 0.8, "fid": None, "psnr": 15.0, "ssim": 0.2},
                                           "metrics": {"lpips": "LPIPS v0.1, alex trunk"}}))
    rows = ev.write_metrics_table(files, tmp_path / "metrics.tsv", tmp_path / "metrics.html")
    assert [r["scene"] for r in rows] == ["1", "2", "3"]
    lines = [line.split("\t") for line in (tmp_path / "metrics.tsv").read_text().splitlines()]
    header, last = lines[0], dict(zip(lines[0], lines[-1]))
    assert len(lines) == 5 and header == list(ev.METRICS_COLUMNS)
    assert last == {"scene": "mean", "lpips": "0.5", "fid": "150", "psnr": "22", "ssim": "0.6", "lpips_before": "0.8",
                    "fid_before": "NA", "psnr_before": "15", "ssim_before": "0.2", "weights": "random",
                    "lpips_backbone": "mixed", "fid_backbone": "NA"}
    page = (tmp_path / "metrics.html").read_text()
    assert '<tr id="mean"' in page and page.index('id="mean"') > page.index("<td>3</td>")
    assert "lpips 2" in page and "of 3" in page and "alex trunk" in page
    assert ev.mean_row([])["lpips"] is None


def test_evaluation_scores_alexnet_lpips_and_refine_keeps_vgg(tmp_path, offline):
    """The real model set: the evaluate stage's LPIPS is AlexNet (the published numbers'),
    read from the models cache; the refine loss's is VGG."""
    from innout.config import load_method_config
    from innout.lpips_metric import make_lpips_module

    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    generator = torch.Generator().manual_seed(3)
    for net, build in (("alex", torchvision.models.alexnet), ("vgg", torchvision.models.vgg16)):
        with torch.device("meta"):
            layout = {k: v.shape for k, v in build(weights=None).state_dict().items() if k.startswith("features.")}
        torch.save({k: torch.randn(s, generator=generator) for k, s in layout.items()}, checkpoints / lp.BACKBONE_FILES[net])
    torch.save(offline["fid"].network.state_dict(), checkpoints / fm.INCEPTION_FILE)
    cfg = load_method_config("paper", [f"models.cache_dir={tmp_path}"], model="sd2")
    lpips, fid = ev.metrics_from_config(cfg.models, cfg.evaluate)
    assert lpips.backbone == "alex" and "alex trunk (alexnet-owt-7be5be79.pth)" in lpips.description
    assert not lpips.random_weights and not fid.random_weights
    assert type(lpips.model.net).__name__ == "alexnet"
    _, refine_description, _ = make_lpips_module(cfg.models, "cpu")
    assert "vgg trunk" in refine_description


def test_config_section(tmp_path):
    assert MethodConfig().evaluate == EvaluateConfig()
    models = {"lpips_backbone": "random", "eval_lpips_backbone": "random", "fid_backbone": "random", "cache_dir": str(tmp_path)}
    lpips, fid = ev.metrics_from_config(models, {"fid": False, "lpips_min_side": 40})
    assert lpips.random_weights and lpips.min_side == 40 and fid is None


# ----------------------------------------------------------------------- by hand, small

def test_ssim_by_hand_on_a_small_image():
    """SSIM of a 13 x 12 image pair from its definition, with explicit loops: the 11 x 11
    Gaussian window (sigma 1.5) at each of the 3 x 2 positions where it fits, weighted
    means, population variances and covariance, the SSIM formula, then the mean over
    positions and channels."""
    rng = np.random.default_rng(7)
    x = rng.random((13, 12, 3))
    y = np.clip(0.6 * x + 0.3 * rng.random((13, 12, 3)), 0, 1)
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for c in range(3):
        for top in range(13 - 11 + 1):
            for left in range(12 - 11 + 1):
                a, b = x[top:top + 11, left:left + 11, c], y[top:top + 11, left:left + 11, c]
                ma, mb = (window * a).sum(), (window * b).sum()
                va, vb = (window * (a - ma) ** 2).sum(), (window * (b - mb) ** 2).sum()
                cov = (window * (a - ma) * (b - mb)).sum()
                values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    assert len(values) == 3 * 3 * 2
    assert im.ssim(x, y) == pytest.approx(float(np.mean(values)), abs=1e-12)


def test_scene_psnr_and_box_by_hand(offline):
    """One view: the render is off by 0.1 inside the mask's box and by 0.5 outside; the
    scene's PSNR is that of the box alone, 10 log10(1 / 0.01) = 20 dB."""
    gt = np.full((30, 40, 3), 0.2)
    mask = np.zeros((30, 40), bool)
    mask[8, 11] = mask[19, 30] = mask[12, 20] = True  # box rows 8..19, cols 11..30
    render = gt + 0.5
    render[8:20, 11:31] = gt[8:20, 11:31] + 0.1
    result = ev.evaluate_views({"v": render}, {"v": gt}, {"v": mask}, None, None)
    assert result["views"]["v"]["bbox"] == [8, 20, 11, 31]
    assert result["psnr"] == pytest.approx(20.0, abs=1e-9)
    # constant crops: SSIM = (2ab + C1) / (a^2 + b^2 + C1) with a = 0.3, b = 0.2
    assert result["ssim"] == pytest.approx((2 * 0.3 * 0.2 + 1e-4) / (0.09 + 0.04 + 1e-4), rel=1e-9)


# ----------------------------------------------------------------------- the stage

def _write_scene(root: Path, n_test: int, rng) -> Path:
    """A scene folder of the canonical layout (transforms.json, images/, masks/) with two
    train views and ``n_test`` ground-truth test views of 32 x 24 px."""
    import json

    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    frames = []
    names = [f"t{i}" for i in range(n_test)] + ["a", "b"]
    for i, name in enumerate(names):
        split = "test" if i < n_test else "train"
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        mask = np.zeros((24, 32), np.uint8)
        mask[5 + i % 3:15, 6:20 + i % 4] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        c2w = np.eye(4)
        c2w[0, 3] = 0.1 * i
        frames.append({"file_path": f"images/{name}.png", "innout_object_mask": f"masks/{name}.png",
                       "innout_split": split, "transform_matrix": c2w.tolist()})
    meta = {"fl_x": 30.0, "fl_y": 30.0, "cx": 16.0, "cy": 12.0, "w": 32, "h": 24, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root / "transforms.json"


def _stage_cfg(tmp_path):
    from innout.config import load_method_config

    return load_method_config("smoke", ["device=cpu", f"models.cache_dir={tmp_path / 'models'}"], model="tiny")


def _write_box_renders(folder: Path, images: dict, masks: dict) -> None:
    """Renders of each view's evaluation box as innout.render writes them."""
    from PIL import Image

    from innout.boxes import write_boxes

    boxes = {name: ev.mask_bbox(masks[name]) for name in images}
    for name, image in images.items():
        (folder / "rgb").mkdir(parents=True, exist_ok=True)
        Image.fromarray(ev.crop(image, boxes[name])).save(folder / "rgb" / f"{name}.png")
    write_boxes(folder, boxes, {name: (image.shape[1], image.shape[0]) for name, image in images.items()})


def _scene_images(root: Path, n: int) -> tuple[dict, dict]:
    from PIL import Image

    names = [f"t{i}" for i in range(n)]
    return ({k: np.asarray(Image.open(root / "images" / f"{k}.png")) for k in names},
            {k: np.asarray(Image.open(root / "masks" / f"{k}.png")) > 0 for k in names})


def test_run_evaluate_writes_the_protocol(tmp_path, offline):
    """Perfect final renders (PSNR inf, LPIPS 0 in every box), noisy "before" renders;
    metrics.json carries both, per view, with the weights' provenance; the TSV row and the
    comparison picture follow. The renders hold the boxes only (innout.render)."""
    import json

    from PIL import Image

    rng = np.random.default_rng(11)
    transforms = _write_scene(tmp_path / "scene", 3, rng)
    photos, masks = _scene_images(tmp_path / "scene", 3)
    noisy = {k: np.clip(v.astype(int) + rng.integers(-40, 41, v.shape), 0, 255).astype(np.uint8) for k, v in photos.items()}
    after, before = tmp_path / "after", tmp_path / "before"
    _write_box_renders(after, photos, masks)
    _write_box_renders(before, noisy, masks)
    out = tmp_path / "eval" / "metrics.json"
    metrics = ev.run_evaluate(transforms, after, before, out, _stage_cfg(tmp_path), comparison_png=tmp_path / "eval" / "cmp.png")
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(metrics))
    assert stored["psnr"] == math.inf and stored["lpips"] == 0.0 and stored["ssim"] == pytest.approx(1.0)
    assert stored["fid"] == pytest.approx(0.0, abs=1e-6)
    assert set(stored["per_view"]) == {"t0", "t1", "t2"} and stored["per_view"]["t1"]["bbox"] == [6, 15, 6, 21]
    assert stored["weights"] == "random" and stored["warning"] and stored["reason"] is None
    assert stored["lpips_backbone"] == stored["fid_backbone"] == "random" and stored["metrics_note"]
    b = stored["before"]
    assert 0 < b["lpips"] and b["psnr"] < 25 and b["ssim"] < 0.99 and b["fid"] > 0 and set(b["per_view"]) == {"t0", "t1", "t2"}
    assert "without the masked pixels" in b["what"]
    assert Image.open(tmp_path / "eval" / "cmp.png").size[0] == 3 * 240
    rows = ev.write_metrics_table({"s": out}, tmp_path / "metrics.tsv", tmp_path / "metrics.html")
    assert rows[0]["psnr"] == math.inf and rows[0]["psnr_before"] == b["psnr"]
    line = (tmp_path / "metrics.tsv").read_text().splitlines()[1].split("\t")
    assert line[0] == "s" and line[1] == "0" and line[3] == "inf" and line[-3:] == ["random", "random", "random"]
    page = (tmp_path / "metrics.html").read_text()
    assert "RANDOM" in page and "<td>mean</td>" in page


def test_box_renders_of_other_boxes_are_refused(tmp_path, offline):
    """Renders made for other masks (a stale render folder) are a one-line input error."""
    from innout.boxes import write_boxes
    from innout.errors import InputError

    transforms = _write_scene(tmp_path / "scene", 2, np.random.default_rng(0))
    photos, masks = _scene_images(tmp_path / "scene", 2)
    _write_box_renders(tmp_path / "r", photos, masks)
    write_boxes(tmp_path / "r", {"t0": (0, 24, 0, 32), "t1": ev.mask_bbox(masks["t1"])}, {"t0": (32, 24), "t1": (32, 24)})
    with pytest.raises(InputError, match=r"boxes\.json: final NeRF: view t0 was rendered at box"):
        ev.run_evaluate(transforms, tmp_path / "r", tmp_path / "r", tmp_path / "m.json", _stage_cfg(tmp_path))


def test_mean_row_over_the_scenes_with_a_value():
    row = ev.mean_row([{"scene": "a", "psnr": 20.0, "lpips": None, "weights": "procedural"},
                       {"scene": "b", "psnr": 30.0, "lpips": None, "weights": "random"}])
    assert row["scene"] == "mean" and row["psnr"] == 25.0 and row["lpips"] is None and row["weights"] == "random"


def _evaluate_with(root: Path, overrides: list[str], upstream_weights: str) -> dict:
    """run_evaluate on a small scene (perfect renders) with a model set and the provenance
    an upstream (render) summary records; metrics.json, the picture, the table and page."""
    import json

    from PIL import Image

    from innout.config import load_method_config

    transforms = _write_scene(root / "scene", 2, np.random.default_rng(12))
    renders = root / "renders"
    _write_box_renders(renders, *_scene_images(root / "scene", 2))  # perfect renders of each box
    (root / "render.json").write_text(json.dumps({"weights": upstream_weights}))
    # no FID here (its random Inception takes seconds to build): test_run_evaluate_writes_the_protocol names it
    cfg = load_method_config("smoke", ["device=cpu", "evaluate.fid=false", f"models.cache_dir={root / 'models'}", *overrides],
                             model="tiny")
    out = root / "eval" / "metrics.json"
    ev.run_evaluate(transforms, renders, renders, out, cfg, comparison_png=root / "eval" / "comparison.png",
                    upstream_summary=root / "render.json")
    ev.write_metrics_table({"s": out}, root / "metrics.tsv", root / "metrics.html")
    return {"metrics": json.loads(out.read_text()), "picture": Image.open(root / "eval" / "comparison.png").convert("RGB"),
            "row": dict(zip(*[line.split("\t") for line in (root / "metrics.tsv").read_text().splitlines()[:2]])),  # header, the scene
            "page": (root / "metrics.html").read_text()}


def test_metrics_of_trained_weights_carry_their_label_and_name_only_the_random_metric_backbones(tmp_path, offline,
                                                                                                procedural_like):
    from provenance_check import random_mentions, text_mentions_random

    from innout.provenance import BANNER_COLOURS, METRIC_BACKBONES_NOTE, PROCEDURAL_LABEL

    got = _evaluate_with(tmp_path, procedural_like, "procedural")
    m = got["metrics"]
    assert m["weights"] == "procedural" and m["weights_label"] == PROCEDURAL_LABEL and m["warning"] is None
    assert random_mentions(m) == [], random_mentions(m)
    # LPIPS and FID ran on random backbones: they say so, by name
    assert m["lpips_backbone"] == "random" and m["fid_backbone"] is None and m["metrics_note"] == METRIC_BACKBONES_NOTE
    assert "RANDOM" in m["metrics"]["lpips"]
    assert got["picture"].getpixel((1, 1)) == BANNER_COLOURS["procedural"]
    assert got["row"]["weights"] == "procedural" and got["row"]["lpips_backbone"] == "random"
    assert PROCEDURAL_LABEL in got["page"] and METRIC_BACKBONES_NOTE in got["page"]
    # the page names the LPIPS network it ran (random backbone) and nothing else random
    assert not text_mentions_random(got["page"], (METRIC_BACKBONES_NOTE, "<td>random</td>", m["metrics"]["lpips"]))


def test_metrics_of_random_weights_carry_the_warning(tmp_path, offline, procedural_like):
    from innout.provenance import BANNER_COLOURS, RANDOM_WEIGHTS_WARNING

    tiny = _evaluate_with(tmp_path / "tiny", [], "random")
    assert tiny["metrics"]["weights"] == "random" and tiny["metrics"]["warning"] == RANDOM_WEIGHTS_WARNING
    assert tiny["picture"].getpixel((1, 1)) == BANNER_COLOURS["random"]
    assert tiny["row"]["weights"] == "random" and RANDOM_WEIGHTS_WARNING in tiny["page"]
    # renders of a NeRF refined on random-weight inpaintings stay random whatever set scores them
    mixed = _evaluate_with(tmp_path / "mixed", procedural_like, "random")
    assert mixed["metrics"]["weights"] == "random" and mixed["metrics"]["warning"] == RANDOM_WEIGHTS_WARNING


def test_run_evaluate_without_ground_truth(tmp_path, offline):
    import json

    transforms = _write_scene(tmp_path / "scene", 0, np.random.default_rng(0))
    out = tmp_path / "metrics.json"
    ev.run_evaluate(transforms, tmp_path / "none", tmp_path / "none", out, _stage_cfg(tmp_path), comparison_png=tmp_path / "c.png")
    stored = json.loads(out.read_text())
    assert all(stored[k] is None for k in ("lpips", "psnr", "ssim", "fid"))
    assert "no ground-truth test views" in stored["reason"] and stored["before"]["psnr"] is None
    assert (tmp_path / "c.png").is_file()
    line = ev.metrics_table([ev.scene_row("x", stored, stored["before"])]).splitlines()[1].split("\t")
    assert line[1:9] == ["NA"] * 8


def test_run_evaluate_missing_render_is_one_line(tmp_path, offline):
    from innout.errors import InputError

    transforms = _write_scene(tmp_path / "scene", 2, np.random.default_rng(0))
    photos, masks = _scene_images(tmp_path / "scene", 2)
    _write_box_renders(tmp_path / "r", photos, masks)
    (tmp_path / "r" / "rgb" / "t0.png").unlink()
    with pytest.raises(InputError, match=r"t0\.png: render not found"):
        ev.run_evaluate(transforms, tmp_path / "r", tmp_path / "r", tmp_path / "m.json", _stage_cfg(tmp_path))
    assert not (tmp_path / "m.json").exists()
