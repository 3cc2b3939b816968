"""The inpaint stage's driver: sharded ELA + ILA inpainting of every train view, gathered.

Uses the tiny NeRF trained once per session by ``tests/test_pretrain.py`` (64x48 views,
40 train views) as the NeRF after the prior fit, and builds a base stage's folder by hand
(the tiny inpainter's inpainting of one view, from a known z_T^p).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrain import SCENE, offline, scene, trained  # noqa: F401  (session fixtures shared with the pretrain tests)

from innout.errors import InputError
from innout.inpaint import VARIANTS, gather_inpaint, load_views, run_inpaint_shard, shard_plan

STEPS = 3
BATCH = 4
N_TRAIN = 13  # the base view + 3 batches of 4 targets
OVERRIDES = [f"inpaint.steps={STEPS}", f"inpaint.batch_size={BATCH}", f"inpaint.resolution={SCENE['height'] // 2}",
             "inpaint.consistency_stride=1", "device=cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


@pytest.fixture(scope="module")
def cfg():
    from innout.config import load_method_config

    return load_method_config("smoke", OVERRIDES, "tiny")


@pytest.fixture(scope="module")
def pipe(one_thread):
    from innout.model_presets import build_tiny_inpainter

    return build_tiny_inpainter()


def make_base(root: Path, transforms: Path, nerf_out: Path, cfg, pipe, winner: str | None = None, seed: int = 11) -> Path:
    """A base stage's folder: summary, the winner's inpainting from a known z_T^p, its mask,
    the noise and the NeRF (the pre-trained one stands in for the prior-fitted one)."""
    from innout.diffusion import inpaint_kwargs, inpaint_single, latent_size

    cameras, _ = load_views(transforms, names=[])
    winner = winner or sorted(cameras)[len(cameras) // 2]
    _, views = load_views(transforms, [winner])
    view = views[winner]
    kw = inpaint_kwargs(cfg.inpaint)
    h, w = latent_size(view.image.shape[1], view.image.shape[0], kw["resolution"])
    noise = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))
    image = inpaint_single(pipe, view.image, view.mask, noise, "", steps=kw["steps"], guidance_scale=kw["guidance_scale"],
                           resolution=kw["resolution"], scheduler=kw["scheduler"])
    base = root / "base"
    base.mkdir(parents=True)
    Image.fromarray(image).save(base / "base.png")
    Image.fromarray(view.mask.astype(np.uint8) * 255).save(base / "mask.png")
    torch.save(noise, base / "noise.pt")
    shutil.copytree(nerf_out / "innout-nerfacto", base / "nerf" / "innout-nerfacto")
    (base / "summary.json").write_text(json.dumps({"winner": winner, "weights": "random", "prompt": "", "seed": seed}))
    return base


def run_stage(root: Path, transforms: Path, base: Path, cfg, pipe, shards: int) -> Path:
    dirs = [root / "shards" / str(i) for i in range(shards)]
    for i, d in enumerate(dirs):
        run_inpaint_shard(transforms, base, d, cfg, i, shards, pipe=pipe)
    out = root / "inpaint"
    gather_inpaint(transforms, base, dirs, out, cfg)
    return out


def subset_scene(scene_json: Path, out: Path, n_train: int) -> Path:
    """A transforms.json of the first ``n_train`` train views (absolute paths): the stage
    processes every train view, and 13 are enough to fill three shards of whole batches."""
    meta = json.loads(scene_json.read_text())
    keep = sorted(Path(f).stem for f in meta["train_filenames"])[:n_train]
    for frame in meta["frames"]:
        for key in ("file_path", "mask_path", "innout_object_mask"):
            if frame.get(key):
                frame[key] = str((scene_json.parent / frame[key]).resolve())
    meta["frames"] = [f for f in meta["frames"] if f.get("innout_split") != "train" or Path(f["file_path"]).stem in keep]
    meta["train_filenames"] = [f["file_path"] for f in meta["frames"] if Path(f["file_path"]).stem in keep]
    out.mkdir(parents=True)
    (out / "transforms.json").write_text(json.dumps(meta))
    return out / "transforms.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained, cfg, pipe):  # noqa: F811
    """The stage run unsharded, sharded in 3, and unsharded again (same seed)."""
    root = tmp_path_factory.mktemp("inpaint")
    transforms = subset_scene(trained["scene"], root / "scene", N_TRAIN)
    base = make_base(root, transforms, trained["out_dir"], cfg, pipe)
    return {
        "transforms": transforms, "base": base,
        "one": run_stage(root / "one", transforms, base, cfg, pipe, 1),
        "three": run_stage(root / "three", transforms, base, cfg, pipe, 3),
        "again": run_stage(root / "again", transforms, base, cfg, pipe, 1),
    }


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".png", ".npy")}


def test_shard_plan_cuts_whole_batches():
    names = [f"v{i:02d}" for i in range(23)]
    plan = shard_plan(names, "v05", 4, 3)
    targets = sorted(n for n in names if n != "v05")
    assert [n for shard in plan for n in shard] == targets  # contiguous, in name order, each once
    assert [len(s) for s in plan] == [8, 8, 6]  # 6 batches (the last one of 2) dealt 2, 2, 2
    assert all(len(s) % 4 == 0 for s in plan[:-1])
    assert shard_plan(names, "v05", 4, 1) == [targets]
    many = shard_plan(names, "v05", 4, 8)
    assert [len(s) for s in many] == [4, 4, 4, 4, 4, 2, 0, 0]
    with pytest.raises(ValueError):
        shard_plan(names, "v05", 4, 0)


def test_shards_give_identical_files(runs):
    one, three = _files(runs["one"]), _files(runs["three"])
    assert len(one) == len(three) > 0
    assert one.keys() == three.keys()
    differing = [k for k in one if one[k] != three[k]]
    assert not differing, differing[:5]
    s1 = json.loads((runs["one"] / "summary.json").read_text())
    s3 = json.loads((runs["three"] / "summary.json").read_text())
    assert s1["consistency"] == s3["consistency"] and s3["shards"] == 3


def test_same_seed_same_files(runs):
    assert _files(runs["one"]) == _files(runs["again"])


def test_every_train_view_gets_an_image_and_noise(runs):
    cameras, _ = load_views(runs["transforms"], names=[])
    names = sorted(cameras)
    out = runs["one"]
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == names
    assert sorted(p.stem for p in (out / "noise").glob("*.npy")) == names
    for variant in VARIANTS:
        if variant != "ela_ila":
            assert sorted(p.stem for p in (out / "variants" / variant).glob("*.png")) == names
    summary = json.loads((out / "summary.json").read_text())
    # the base view keeps z_T^p; targets got noise of its latent size, unit Gaussian overall
    base_noise = torch.load(runs["base"] / "noise.pt")[0].numpy()
    np.testing.assert_array_equal(np.load(out / "noise" / f"{summary['base_view']}.npy"), base_noise)
    allnoise = np.stack([np.load(out / "noise" / f"{n}.npy") for n in names])
    assert allnoise.shape[1:] == base_noise.shape
    assert abs(allnoise.mean()) < 0.1 and abs(allnoise.std() - 1) < 0.1


def test_outside_the_mask_the_output_is_the_input(runs):
    _, views = load_views(runs["transforms"])
    out = runs["one"]
    for name, view in views.items():
        for path in [out / "images" / f"{name}.png", *[out / "variants" / v / f"{name}.png" for v in ("independent", "ila")]]:
            img = np.asarray(Image.open(path).convert("RGB"))
            assert img.shape == view.image.shape
            np.testing.assert_array_equal(img[~view.mask], view.image[~view.mask])
            assert (img[view.mask] != view.image[view.mask]).any()  # and inside, it was inpainted


def test_summary(runs):
    s = json.loads((runs["one"] / "summary.json").read_text())
    assert s["weights"] == "random" and "RANDOM" in s["warning"]
    assert set(s["consistency"]) == {"independent", "ela", "ila", "ela_ila"}
    assert all(isinstance(v, float) and 0 <= v <= 255 for v in s["consistency"].values()), s["consistency"]
    assert "grey levels" in s["consistency_unit"]
    assert s["consistency_views"] > 0 and s["shards"] == 1
    cov = s["ela_coverage"]
    assert len(cov["per_view"]) == s["views"] - 1 and 0 < cov["mean"] <= 1
    assert set(s["inpaint_seconds"]) == set(VARIANTS) and s["ela_seconds"] > 0
    # this stage's base trajectory reproduces the base stage's inpainting (same settings)
    assert s["base_output_vs_base_stage"]["mean_abs_diff_in_mask"] == 0.0
    # every variant starts the base view from z_T^p: its base output is base.png, so all four
    # are scored against the same fill and differ only by what they do to the targets
    base_png = np.asarray(Image.open(runs["base"] / "base.png"))
    for variant in ("independent", "ela", "ila"):
        np.testing.assert_array_equal(np.asarray(Image.open(runs["one"] / "variants" / variant / f"{s['base_view']}.png")), base_png)
    assert (runs["one"] / "comparison.png").is_file() and (runs["one"] / "consistency.json").is_file()
    # an empty prompt: guidance would change nothing, so it was skipped (one UNet batch)
    assert s["guidance"] == "skipped" and "identical" in s["guidance_note"]


def test_summary_of_trained_weights_carries_their_label_never_random(runs, tmp_path, procedural_like):
    """The same shards gathered for a procedural-like model set (a base stage that says
    procedural): the label, no "random" anywhere, the label's banner on the picture; a
    random base stage makes the result random whatever the set."""
    from provenance_check import random_mentions_in

    from innout.config import load_method_config
    from innout.provenance import BANNER_COLOURS, PROCEDURAL_LABEL

    cfg = load_method_config("smoke", [*OVERRIDES, *procedural_like], "tiny")
    shards = [runs["one"].parent / "shards" / "0"]
    base = tmp_path / "base"
    shutil.copytree(runs["base"], base, symlinks=True)
    summary = json.loads((base / "summary.json").read_text())
    (base / "summary.json").write_text(json.dumps({**summary, "weights": "procedural"}))
    s = gather_inpaint(runs["transforms"], base, shards, tmp_path / "inpaint", cfg)
    assert s["weights"] == "procedural" and s["weights_label"] == PROCEDURAL_LABEL and s["warning"] is None
    assert random_mentions_in(tmp_path / "inpaint" / "summary.json") == []
    assert Image.open(tmp_path / "inpaint" / "comparison.png").convert("RGB").getpixel((1, 1)) == BANNER_COLOURS["procedural"]
    assert Image.open(runs["one"] / "comparison.png").convert("RGB").getpixel((1, 1)) == BANNER_COLOURS["random"]
    (base / "summary.json").write_text(json.dumps({**summary, "weights": "random"}))
    again = gather_inpaint(runs["transforms"], base, shards, tmp_path / "again", cfg)
    assert again["weights"] == "random" and "RANDOM" in again["warning"]


def _broken_base(runs, tmp_path, what: str) -> tuple[Path, str]:
    base = tmp_path / "base"
    shutil.copytree(runs["base"], base, symlinks=True)
    if what == "noise missing":
        (base / "noise.pt").unlink()
        return base, "noise.pt"
    if what == "noise shape":
        torch.save(torch.zeros(4, 3, 3), base / "noise.pt")
        return base, "noise.pt"
    if what == "noise corrupt":
        (base / "noise.pt").write_bytes(b"not a tensor")
        return base, "noise.pt"
    if what == "winner":
        (base / "summary.json").write_text(json.dumps({"winner": "no_such_view"}))
        return base, "summary.json"
    if what == "summary missing":
        (base / "summary.json").unlink()
        return base, "summary.json"
    if what == "image size":
        Image.new("RGB", (10, 10)).save(base / "base.png")
        return base, "base.png"
    if what == "nerf":
        shutil.rmtree(base / "nerf")
        return base, "nerf"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["noise missing", "noise shape", "noise corrupt", "winner", "summary missing", "image size", "nerf"])
def test_bad_base_input_fails_in_one_line_naming_the_file(runs, tmp_path, cfg, pipe, what):
    base, filename = _broken_base(runs, tmp_path, what)
    out = tmp_path / "shard"
    with pytest.raises(InputError) as err:
        run_inpaint_shard(runs["transforms"], base, out, cfg, 0, 1, pipe=pipe)
    message = str(err.value)
    assert "\n" not in message and str(base / filename) in message, message
    assert not out.exists()


def _shard_copy(runs, dest: Path) -> list[Path]:
    dirs = [dest / str(i) for i in range(3)]
    for i, d in enumerate(dirs):
        shutil.copytree(runs["three"].parent / "shards" / str(i), d)
    return dirs


def _nudge(png: Path, delta: int, every: int = 1) -> None:
    """Add ``delta`` grey levels to every ``every``-th pixel row of an image (clipped)."""
    image = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    image[::every] = np.clip(image[::every] + delta, 0, 255)
    Image.fromarray(image.astype(np.uint8)).save(png)


def test_gather_tolerates_a_tiny_base_trajectory_difference(runs, tmp_path, cfg):
    """Two GPUs' kernels give base trajectories a few bits apart: the gather accepts them,
    reports the largest difference, and the method's files are unchanged."""
    dirs = _shard_copy(runs, tmp_path / "shards")
    assert sorted(p.name for p in (dirs[1] / "base").iterdir()) == ["ela_ila.png", "ila.png"]  # ILA variants' base output
    _nudge(dirs[1] / "base" / "ela_ila.png", 1, every=3)
    out = tmp_path / "inpaint"
    summary = gather_inpaint(runs["transforms"], runs["base"], dirs, out, cfg)
    report = summary["shard_base_difference"]
    assert report["max_abs"] == 1 and 0 < report["mean_abs"] < 1 and report["identical"] is False
    assert report["worst"]["variant"] == "ela_ila" and report["worst"]["shards"] == [0, 1] and report["compared"] == 4
    assert _files(out) == _files(runs["three"])
    untouched = json.loads((runs["three"] / "summary.json").read_text())["shard_base_difference"]
    assert untouched["identical"] is True and untouched["max_abs"] == 0 and untouched["devices"] == ["cpu"]


def test_gather_refuses_a_real_mismatch(runs, tmp_path, cfg):
    """A large difference (beyond inpaint.shard_tolerance), or a shard run with other
    settings or inputs: one-line errors, nothing written."""
    from innout.errors import StageError

    dirs = _shard_copy(runs, tmp_path / "far")
    _nudge(dirs[2] / "base" / "ila.png", 40)
    with pytest.raises(StageError, match=r"variant ila: shard 2's base trajectory differs from shard 0's by [0-9.]+ grey "
                                         r"levels .* inpaint.shard_tolerance=2") as err:
        gather_inpaint(runs["transforms"], runs["base"], dirs, tmp_path / "out", cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()

    dirs = _shard_copy(runs, tmp_path / "other")
    manifest = json.loads((dirs[1] / "shard.json").read_text())
    manifest["inputs"]["settings"] = "0" * 16  # e.g. inpaint.steps changed between the shards' runs
    manifest["inputs"]["base_noise"] = "1" * 16
    (dirs[1] / "shard.json").write_text(json.dumps(manifest))
    with pytest.raises(StageError, match=r"shard 1 ran with other inputs than shard 0 \(base_noise, settings differ\)"):
        gather_inpaint(runs["transforms"], runs["base"], dirs, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
