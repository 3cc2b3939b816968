"""The Snakemake workflow itself: lint, config and sheet validation, DAG shape, errors."""

from __future__ import annotations

import re
import subprocess

import pytest

from innout.config import load_method_config, stage_params
from workflow_helpers import REPO, SNAKEMAKE, files_under, planned_rules, snakemake, workflow_copy


def test_lint_is_clean():
    result = snakemake(REPO, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "good condition" in result.stdout + result.stderr


def test_snakefmt_is_clean():
    """The Snakefile and every rule file are formatted as snakefmt writes them (the
    catalog's convention); `snakefmt Snakefile rules/` fixes them."""
    snakefmt = SNAKEMAKE.with_name("snakefmt")
    result = subprocess.run([str(snakefmt), "--check", "Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rules").glob("*.smk"))],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_catalog_file_describes_the_usage():
    """.snakemake-workflow-catalog.yml: the usage section the Snakemake workflow catalog reads."""
    import yaml

    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert usage["report"] is True and usage["software-stack-deployment"]["conda"] is True


def test_default_target_chains_every_stage_of_the_demo(tmp_path):
    work = workflow_copy(tmp_path / "wf")
    result = snakemake(work, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert planned_rules(result) == {
        "generate": 1, "scene": 1, "poses": 1, "pretrain": 1, "models": 1, "base": 1, "inpaint_shard": 2,
        "inpaint": 1, "refine": 1, "render_pretrain": 1, "render": 1, "evaluate": 1, "metrics": 1, "all": 1,
    }


def test_user_camera_paths_add_one_video_job_each(tmp_path):
    """config camera_paths: each file of a scene is one render_camera_path job (its name
    from the file); a scene that is not in the sheet is a one-line error."""
    work = workflow_copy(tmp_path / "wf")
    (work / "orbit.json").write_text("{}")
    (work / "dolly.json").write_text("{}")
    result = snakemake(work, "-n", "--quiet", "rules", "--config", "camera_paths={demo: [orbit.json, dolly.json]}")
    assert result.returncode == 0, result.stderr
    assert planned_rules(result)["render_camera_path"] == 2
    result = snakemake(work, "-n", "--config", "camera_paths={nosuch: orbit.json}")
    assert result.returncode != 0 and "camera_paths: 'nosuch' is not a scene" in result.stdout + result.stderr


def test_train_models_runs_only_when_asked(tmp_path):
    """Retraining the procedural set is its own target: the demo never waits for it."""
    work = workflow_copy(tmp_path / "wf")
    result = snakemake(work, "train_models", "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert planned_rules(result) == {"train_models": 1}


def _write_sheet(work, rows):
    lines = ["scene\tpath\tformat\tposes\tprompt"] + ["\t".join(r) for r in rows]
    (work / "config" / "scenes.tsv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", ["../evil", "x;rm"])
def test_unsafe_scene_name_fails_with_one_line(tmp_path, name):
    work = workflow_copy(tmp_path / "wf")
    _write_sheet(work, [(name, str(tmp_path), "images", "auto", "")])
    result = snakemake(work, "-n")
    assert result.returncode != 0
    lines = [l for l in (result.stdout + result.stderr).splitlines() if "scenes.tsv" in l and ("unsafe" in l or "pattern" in l or "name" in l)]
    assert lines, result.stdout + result.stderr
    # refused while the sheet is read, before Snakemake plans any job
    assert "Building DAG of jobs" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_config_with_unknown_key_is_rejected(tmp_path):
    work = workflow_copy(tmp_path / "wf")
    result = snakemake(work, "-n", "--config", "no_such_key=1")
    assert result.returncode != 0
    assert "no_such_key" in result.stdout + result.stderr


def test_scene_sheet_override_from_command_line(tmp_path):
    work = workflow_copy(tmp_path / "wf")
    (tmp_path / "other").mkdir()
    sheet = tmp_path / "mine.tsv"
    sheet.write_text(f"scene\tpath\tformat\tposes\tprompt\nmine\t{tmp_path / 'other'}\timages\tauto\t\n")
    result = snakemake(work, "-n", "--config", f"scenes={sheet}")
    assert result.returncode == 0, result.stderr
    plan = result.stdout + result.stderr
    # the plan is the sheet's scene, and only it: the default sheet's demo is gone
    assert "output: results/mine/scene/transforms.json" in plan or "results/mine/scene/summary.json" in plan, plan
    assert "results/mine/eval/metrics.json" in plan, plan
    assert "results/demo/" not in plan, plan


def test_bad_input_fails_with_one_line_and_leaves_nothing(tmp_path):
    """A scene whose mask is missing: the scene rule fails naming the file, results/bad/ stays empty."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "bad"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(src / "images" / f"v{i}.png")
    for i in range(2):  # v2 has no mask
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(src / "masks" / f"v{i}.png")
    work = workflow_copy(tmp_path / "wf")
    _write_sheet(work, [("bad", str(src), "images", "auto", "")])
    result = snakemake(work, "--cores", "1", "results/bad/scene/summary.json")
    assert result.returncode != 0
    errors = [l for l in result.stderr.splitlines() if l.startswith("innout scene: error:")]
    assert len(errors) == 1, result.stderr
    assert "v2" in errors[0]
    assert files_under(work / "results" / "bad") == []


def test_presets_compose_and_differ():
    smoke, paper = load_method_config("smoke"), load_method_config("paper")
    assert paper.pretrain.iterations == 10000 and paper.pretrain.rays_per_batch == 4096
    assert smoke.pretrain.iterations < paper.pretrain.iterations
    tuned = load_method_config("smoke", ["pretrain.iterations=7"])
    assert tuned.pretrain.iterations == 7


def test_stage_params_hold_only_their_section():
    base = load_method_config("smoke")
    changed = load_method_config("smoke", ["pretrain.iterations=7"])
    # a pretrain change leaves the poses rule's params alone (so it does not rerun)
    assert stage_params(base, "poses") == stage_params(changed, "poses")
    assert stage_params(base, "pretrain") != stage_params(changed, "pretrain")


def _planned_jobs(result) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a dry run prints."""
    jobs, rule = [], None
    for line in (result.stdout + result.stderr).splitlines():
        header = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if header:
            rule = header.group(1)
        elif rule and line.strip().startswith("resources:"):
            pairs = [p.split("=", 1) for p in line.strip()[len("resources:"):].split(",")]
            jobs.append((rule, {k.strip(): v.strip() for k, v in pairs}))
            rule = None
    return jobs


GPU_RULES = {"pretrain", "base", "inpaint_shard", "refine", "render_pretrain", "render", "evaluate"}


def test_paper_config_plans_every_gpu_stage_on_a_gpu(tmp_path):
    """`snakemake -n --configfile config/paper.yaml` on a two-scene sheet: every stage is
    planned, each job of a GPU stage asks for one GPU, no other job does."""
    work = workflow_copy(tmp_path / "wf")
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
    sheet = tmp_path / "two.tsv"
    sheet.write_text("scene\tpath\tformat\tposes\tprompt\n"
                     "sa\t{data_root}/a\tspinnerf\tprovided\t\nsb\t{data_root}/b\tspinnerf\tprovided\t\n")
    result = snakemake(work, "-n", "--configfile", "config/paper.yaml", "--config", f"scenes={sheet}",
                       f"data_root={tmp_path / 'data'}")
    assert result.returncode == 0, result.stderr
    jobs = _planned_jobs(result)
    counts = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    assert counts == {"models": 1, "scene": 2, "pretrain": 2, "base": 2, "inpaint_shard": 8, "inpaint": 2,
                      "refine": 2, "render_pretrain": 2, "render": 2, "evaluate": 2, "metrics": 1, "all": 1}
    for rule, resources in jobs:
        assert resources.get("gpu") == ("1" if rule in GPU_RULES else None), (rule, resources)
    assert "results/sa/scene/summary.json" in result.stdout and str(tmp_path / "data" / "a") not in result.stderr
    paper = load_method_config("paper", ["device=cuda"], model="sd2")
    assert paper.device == "cuda" and paper.models.eval_lpips_backbone == "alex"


def test_data_root_placeholder_needs_data_root(tmp_path):
    work = workflow_copy(tmp_path / "wf")
    result = snakemake(work, "-n", "--config", "scenes=config/spinnerf.tsv")
    assert result.returncode != 0
    lines = [l for l in (result.stdout + result.stderr).splitlines() if "spinnerf.tsv" in l and "data_root" in l]
    assert lines, result.stdout + result.stderr


def test_scene_named_mean_is_refused(tmp_path):
    from innout.evaluate import MEAN_ROW

    work = workflow_copy(tmp_path / "wf")
    _write_sheet(work, [(MEAN_ROW, str(tmp_path), "images", "auto", "")])
    result = snakemake(work, "-n")
    assert result.returncode != 0
    assert any("scenes.tsv" in l and "mean row" in l for l in (result.stdout + result.stderr).splitlines())


CAPTIONS_WITH_MODELS = ("base", "inpaint", "refine", "render", "render_train", "camera_path", "curves", "evaluate", "metrics", "models")


def _captions(method) -> dict[str, str]:
    """Every caption of a rule that uses models, rendered as Snakemake renders it (Jinja,
    then reStructuredText to HTML) with that rule's kind of params for ``method``."""
    from types import SimpleNamespace

    from docutils.core import publish_parts
    from jinja2 import Environment
    from omegaconf import OmegaConf

    from innout.provenance import report_weights

    params = SimpleNamespace(method=OmegaConf.to_container(method, resolve=True), weights=report_weights(method.models),
                             prompt="", scenes=["demo"])
    snakemake_ = SimpleNamespace(params=params, wildcards=SimpleNamespace(scene="demo"),
                                 input=SimpleNamespace(camera_path="camera_paths/mine.json"))
    out = {}
    for name in CAPTIONS_WITH_MODELS:
        text = Environment().from_string((REPO / "workflow" / "report" / f"{name}.rst").read_text()).render(snakemake=snakemake_)
        out[name] = publish_parts(text, writer="html")["body"]
    return out


def test_captions_carry_the_weights_label(procedural_like):
    """Random weights: every caption of a stage with models warns. A trained set: each
    carries its label and says "random" only in the LPIPS/FID backbone notes."""
    from provenance_check import text_mentions_random

    from innout.config import load_method_config
    from innout.provenance import METRIC_BACKBONES_NOTE, PROCEDURAL_LABEL, RANDOM_WEIGHTS_WARNING

    for name, html in _captions(load_method_config("smoke", model="tiny")).items():
        assert RANDOM_WEIGHTS_WARNING in html and PROCEDURAL_LABEL not in html, name
    allowed = (METRIC_BACKBONES_NOTE, "LPIPS backbone:\nrandom", "LPIPS backbone: random", "FID backbone: random",
               "The LPIPS term of the patch loss runs on a random backbone")
    for name, html in _captions(load_method_config("smoke", procedural_like, model="tiny")).items():
        assert PROCEDURAL_LABEL in html and "RANDOM" not in html, name
        assert not text_mentions_random(html, allowed), (name, html)


def test_a_scene_with_some_masks_plans_the_masks_rule(tmp_path):
    """A sheet row that lists annotated views adds one masks job before pretrain, and every
    stage from pretrain on reads the masks rule's transforms; the default demo plans none
    (test_default_target_chains_every_stage_of_the_demo)."""
    work = workflow_copy(tmp_path / "wf")
    (work / "config" / "scenes.tsv").write_text(
        "scene\tpath\tformat\tposes\tprompt\tmasks\ndemo\tresults/generated/demo\tspinnerf\tcolmap\t\timg_095,img_099\n")
    result = snakemake(work, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert planned_rules(result) == {
        "generate": 1, "scene": 1, "poses": 1, "masks": 1, "pretrain": 1, "models": 1, "base": 1, "inpaint_shard": 2,
        "inpaint": 1, "refine": 1, "render_pretrain": 1, "render": 1, "evaluate": 1, "metrics": 1, "all": 1,
    }
    shown = snakemake(work, "-n", "results/demo/pretrain/summary.json")
    text = shown.stdout + shown.stderr
    pretrain_job = text[text.index("rule pretrain:"):]
    assert "results/demo/masks/transforms.json" in pretrain_job.split("output:")[0]
    masks_job = text[text.index("rule masks:"):]
    assert "results/demo/poses/transforms.json" in masks_job.split("output:")[0]
