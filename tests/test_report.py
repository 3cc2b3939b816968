"""The HTML report check itself, on a small report (good and broken), and the workflow's
report for a scene without ground truth (the report rules run for real on stand-ins of
the earlier stages). The demo's own report is checked in tests/test_demo_workflow.py."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from report_check import check_report, find_chromium
from test_pretrain import offline, scene, train_renders, trained  # noqa: F401  (session fixtures)
from workflow_helpers import snakemake, workflow_copy

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")

MINI = '''
rule all:
    input: "out/a.png", "out/page.html"
rule a:
    output:
        report("out/a.png", caption="cap.rst", category="c"),
        report("out/page.html", caption="cap.rst", category="c"),
    run:
        from PIL import Image
        Image.new("RGB", (40, 30), "red").save(output[0])
        open(output[1], "w").write("<html><body><table><tr><td>1</td></tr></table></body></html>")
'''


@pytest.fixture(scope="module")
def mini_report(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("mini")
    (work / "Snakefile").write_text(MINI)
    (work / "cap.rst").write_text("A picture.\n")
    for args in (("--cores", "1"), ("--report", "report.zip")):
        result = snakemake(work, *args, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    return work / "report.zip"


@needs_chromium
def test_check_sees_pictures_and_pages(mini_report):
    found = check_report(mini_report, min_images=1)
    assert found["images"] == {"out/a.png": [40, 30]}
    assert found["pages"]["out/page.html"]["tables"] == 1
    with pytest.raises(AssertionError, match="at least 2"):
        check_report(mini_report, min_images=2)


@needs_chromium
def test_check_catches_a_broken_picture(mini_report, tmp_path):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(mini_report) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"not a png" if item.filename.endswith("a.png") else data)
    with pytest.raises(AssertionError, match="did not load"):
        check_report(broken)

# The whole demo's report is checked in tests/test_demo_workflow.py (it reuses that run).


# -------------------------------------------------------------------------------------------
# A scene without ground truth (your own photos): the report still shows the removal, on
# the train views. The rules that make and show renders run for real (render_pretrain,
# render, evaluate, metrics) on stand-in outputs of the stages before them: the tiny NeRF
# of tests/test_pretrain.py as pretrained and refined NeRF, its renders as inpaintings.

STAND_IN_OUTPUTS = {  # rule -> its declared outputs (rules/*.smk), made in this order
    "scene": ["scene/summary.json", "scene/transforms.json", "scene/overview.png"],
    "pretrain": ["pretrain/summary.json", "pretrain/innout-nerfacto/config.yml", "pretrain/curves.png"],
    "base": ["base/summary.json", "base/overview.png", "base/base.png", "base/mask.png", "base/noise.pt",
             "base/depth_prior.npy", "base/nerf/innout-nerfacto/config.yml", "base/curves.png"],
    "inpaint_shard": [".shards/inpaint/0/", ".shards/inpaint/1/"],  # directory() outputs end in /
    "inpaint": ["inpaint/summary.json", "inpaint/comparison.png", "inpaint/images"],
    "refine": ["refine/summary.json", "refine/nerf/innout-nerfacto/config.yml", "refine/curves.png"],
}


def _stand_in_results(work: Path, trained: dict, renders: Path) -> str:  # noqa: F811
    """results/own/ as the stages up to refine leave it, for a scene without test views;
    returns the base view's name. Files are made (and dated) in the order of the chain."""
    import os
    import shutil
    import time

    from PIL import Image

    from innout.frames import read_scene

    own = work / "results" / "own"
    source = work / "own_photos"
    shutil.copytree(trained["scene"].parent, source)
    meta = json.loads((source / "transforms.json").read_text())
    meta["frames"] = [f for f in meta["frames"] if f.get("innout_split", "train") == "train"]  # no ground truth
    meta.pop("test_filenames", None), meta.pop("val_filenames", None)
    (source / "transforms.json").write_text(json.dumps(meta))
    shutil.copytree(source, own / "scene")
    _, _, train, test = read_scene(own / "scene" / "transforms.json")
    assert train and not test
    base = train[len(train) // 2].name
    picture = Image.new("RGB", (64, 48), "grey")
    for nerf in ("pretrain", "base/nerf", "refine/nerf"):
        shutil.copytree(trained["out_dir"] / "innout-nerfacto", own / nerf / "innout-nerfacto", dirs_exist_ok=True)
    (own / "inpaint" / "images").mkdir(parents=True)
    for f in train:
        shutil.copy2(renders / "rgb" / f"{f.name}.png", own / "inpaint" / "images" / f"{f.name}.png")
    summaries = {"base": {"winner": base, "weights": "random"}, "inpaint": {"base_view": base, "weights": "random"},
                 "refine": {"weights": "random"}, "scene": {}, "pretrain": {}}
    models = work / "resources" / "models" / "manifest.json"
    models.parent.mkdir(parents=True)
    models.write_text(json.dumps({"model_set": "tiny"}))
    stamp = time.time() - 1000
    for path in [*source.rglob("*"), source]:  # the scene rule reads the whole folder: all of it older
        os.utime(path, (stamp, stamp))
    for rule, outputs in STAND_IN_OUTPUTS.items():
        stamp += 10
        for name in outputs:
            path = own / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name.endswith("/"):
                path.mkdir(parents=True, exist_ok=True)
            elif name.endswith("summary.json"):
                path.write_text(json.dumps(summaries[rule]))
            elif name.endswith(".png") and not path.exists():
                picture.save(path)
            elif not path.exists():
                path.write_bytes(b"stand-in")
        for name in outputs:  # every file a rule left (the copied NeRF folders too) dated with it
            top = own / name.split("/")[0]
            for path in [*top.rglob("*"), top]:
                os.utime(path, (stamp, stamp))
        if rule == "pretrain":
            os.utime(models, (stamp, stamp))
    return base


@needs_chromium
def test_report_shows_the_removal_on_train_views_without_ground_truth(tmp_path, trained, train_renders, offline):  # noqa: F811
    """A scene without ground-truth test views: the report holds the train-view
    before/after sheet (input with the object, aligned inpainting, final render; base view
    first), the video, a note instead of test metrics, and every picture loads in headless
    Chromium."""
    import yaml
    from report_check import check_report

    work = workflow_copy(tmp_path / "wf")
    base = _stand_in_results(work, trained, train_renders)
    (work / "config" / "own.tsv").write_text("scene\tpath\tformat\tposes\tprompt\nown\town_photos\tnerfstudio\tprovided\t\n")
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["scenes"] = "config/own.tsv"
    config["method"]["model"] = "tiny"  # the set the stand-ins (and their models manifest) were made with
    config["method"]["overrides"] = ["render.train_views=3", "render.video_frames=4", "render.video_scale=0.5"]
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    # the stand-ins have no Snakemake metadata: only their dates say what is up to date
    result = snakemake(work, "--cores", "2", "--rerun-triggers", "mtime", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    ran = {line.split()[1].rstrip(":") for line in result.stderr.splitlines() if line.startswith(("rule ", "localrule "))}
    assert ran - {"all"} == {"render_pretrain", "render", "evaluate", "metrics"}, ran  # the stand-ins are up to date
    result = snakemake(work, "--report", "report.zip", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = check_report(work / "report.zip", min_images=4)
    sheet = "results/own/render/train_views.png"
    assert sheet in found["images"], sorted(found["images"])
    width, height = found["images"][sheet]
    assert width == 3 * 240 and height > 3 * 100  # three columns, one row per view
    assert found["results"][sheet]["rule"] == "render" and "input photo" in found["results"][sheet]["caption"]
    render = json.loads((work / "results" / "own" / "render" / "summary.json").read_text())
    assert render["train_views"][0] == base and render["n_test_views"] == 0
    videos = [p for p in found["pages"].values() if p and p["videos"]]
    assert videos
    metrics = json.loads((work / "results" / "own" / "eval" / "metrics.json").read_text())
    assert metrics["psnr"] is None and "no ground-truth" in metrics["reason"]
