"""The Snakemake workflow itself: lint, config and sheet validation, DAG shape, errors."""

from __future__ import annotations

import pytest

from innout.config import load_method_config, stage_params
from workflow_helpers import REPO, files_under, planned_rules, snakemake, workflow_copy


def test_lint_is_clean():
    result = snakemake(REPO, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "good condition" in result.stdout + result.stderr


def test_default_target_chains_every_stage_of_the_demo(tmp_path):
    work = workflow_copy(tmp_path / "wf")
    result = snakemake(work, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert planned_rules(result) == {
        "generate": 1, "scene": 1, "poses": 1, "pretrain": 1, "models": 1, "base": 1, "inpaint_shard": 2,
        "inpaint": 1, "refine": 1, "render": 1, "evaluate": 1, "metrics": 1, "all": 1,
    }


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
    assert not (work / "results").exists()


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
    result = snakemake(work, "-n", "--quiet", "all", "--config", f"scenes={sheet}")
    assert result.returncode == 0, result.stderr
    assert "results/mine/scene/summary.json" in result.stdout + result.stderr or "scene" in result.stdout


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
