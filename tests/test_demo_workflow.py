"""The demo scene through the workflow, as the README runs it (slow: minutes).

One Snakemake run in a scratch copy of the workflow builds the procedural demo scene,
imports it, runs COLMAP and pre-trains the geometry NeRF with the smoke preset; the
checks are the acceptance bars of the poses and pretrain stages.
"""

from __future__ import annotations

import json

import pytest

from workflow_helpers import planned_rules, snakemake, workflow_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = workflow_copy(tmp_path_factory.mktemp("demo") / "wf")
    result = snakemake(work, "--cores", "2", "results/demo/pretrain/summary.json", timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return work


def test_demo_poses_register_with_small_error(demo_run):
    summary = json.loads((demo_run / "results/demo/poses/summary.json").read_text())
    assert summary["registered"] >= 0.95 * summary["total"]
    assert summary["rotation_error_deg_mean"] < 1.0
    assert summary["translation_error_rel_mean"] is not None


def test_demo_pretrain_reaches_psnr_outside_masks(demo_run):
    summary = json.loads((demo_run / "results/demo/pretrain/summary.json").read_text())
    assert summary["psnr_test_outside_mask"] >= 22.0, summary
    assert summary["ssim_test_outside_mask"] is not None
    assert (demo_run / "results/demo/pretrain/innout-nerfacto/config.yml").is_file()


def test_nothing_to_do_on_second_run(demo_run):
    result = snakemake(demo_run, "results/demo/pretrain/summary.json", "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert planned_rules(result) == {}, result.stdout


def test_pretrain_change_reruns_only_pretrain(demo_run):
    result = snakemake(
        demo_run, "results/demo/pretrain/summary.json", "-n",
        "--config", "method={preset: smoke, model: tiny, overrides: ['pretrain.iterations=7']}",
        "--quiet", "rules",
    )
    assert result.returncode == 0, result.stderr
    assert planned_rules(result) == {"pretrain": 1}, result.stdout
