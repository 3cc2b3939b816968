"""tools/measure_models.py: the table from whatever runs have finished."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import measure_models  # noqa: E402


def _finished_run(root: Path, run: str, scene: str, after: float, before: float, consistency: dict | None) -> None:
    results = root / run / "results" / scene
    (results / "eval").mkdir(parents=True)
    metrics = {"psnr": after, "ssim": 0.1, "before": {"psnr": before, "ssim": 0.2}, "weights": "procedural"}
    (results / "eval" / "metrics.json").write_text(json.dumps(metrics))
    if consistency is not None:
        (results / "inpaint").mkdir(parents=True)
        (results / "inpaint" / "summary.json").write_text(json.dumps({"consistency": consistency}))


def test_partial_runs_print_a_partial_table(tmp_path, capsys):
    """Only the bilinear run of the demo finished (no base stage files, no random run): the
    table still prints its figures, n/a elsewhere, and the run is reported as partial."""
    consistency = {"independent": 20.0, "ela": 9.0, "ila": 16.0, "ela_ila": 8.0}
    _finished_run(tmp_path, "bilinear", "demo", after=16.0, before=15.0, consistency=consistency)
    code = measure_models.main(["--out", str(tmp_path), "--scenes", "demo", "--table-only", "--sheets", str(tmp_path / "sheets")])
    out = capsys.readouterr().out
    assert code == 1
    assert "| consistency `ila` (grey levels; / independent) | 16.00 (0.80) |" in out
    assert "| ELA nearest: consistency `ela` / `ela_ila` | n/a / n/a |" in out
    assert "| box PSNR (dB) / SSIM after (trained models) | 16.00 / 0.100 |" in out
    assert "| box PSNR (dB) / SSIM before (pre-trained NeRF, object in it) | 15.00 / 0.200 |" in out
    assert "| box PSNR (dB) / SSIM after, random weights (`tiny`) | n/a / n/a |" in out
    assert "| depth prior vs true depth: median rel. error in mask / whole view | n/a |" in out
    assert "- [x] consistency.ila 16.00 <= 0.85 x independent 20.00 = 17.00: holds" in out
    assert "- [x] box PSNR after 16.00 >= before 15.00 dB: holds" in out
    assert "- [?] box PSNR after >= random + 1 dB: not measured yet" in out
    assert "PARTIAL TABLE: 2 run(s) not finished (random/demo, nearest/demo)" in out
    assert not (tmp_path / "sheets").exists()


def test_bars_judge_finished_figures():
    demo = {"consistency": {"independent": 20.0, "ela": 9.0, "ila": 18.0, "ela_ila": 9.5},
            "box": {"bilinear": {"psnr": 15.0, "ssim": 0.1}, "before": {"psnr": 15.5, "ssim": 0.1},
                    "random": {"psnr": 13.9, "ssim": 0.1}}}
    verdicts = {bar: ok for bar, _, ok in measure_models.bar_checks(demo, "bilinear")}
    assert verdicts == {"consistency.ila <= 0.85 x independent": False, "consistency.ela_ila <= 0.6 x independent": True,
                        "ela_ila the lowest of the four": False, "box PSNR after >= before": False,
                        "box PSNR after >= random + 1 dB": True}


def _stage(root: Path, scene: str, stage: str, finished: bool = True) -> Path:
    folder = root / "results" / scene / stage
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(b"x")
    if finished:
        (folder / "summary.json").write_text("{}")
    return folder


def test_seed_upstream_links_only_finished_model_free_stages(tmp_path):
    """Another configuration gets the scene, poses, pre-trained NeRF and its "before" renders
    of a finished run as hard links; a stage that has not written its summary (killed) and
    every stage a model set reaches are left to run."""
    source, workdir = tmp_path / "random", tmp_path / "nearest"
    (source / "results" / "generated" / "demo").mkdir(parents=True)
    for stage in ("scene", "poses", "pretrain", "render_pretrain", "base"):
        _stage(source, "demo", stage)
    _stage(source, "heldout-forward", "pretrain")
    _stage(source, "heldout-forward", "render_pretrain", finished=False)
    measure_models.seed_upstream(source, workdir, ["demo", "heldout-forward"])
    for stage in ("scene", "poses", "pretrain", "render_pretrain"):
        linked = workdir / "results" / "demo" / stage / "data.bin"
        assert linked.stat().st_ino == (source / "results" / "demo" / stage / "data.bin").stat().st_ino
    assert (workdir / "results" / "generated" / "demo").is_dir()
    assert not (workdir / "results" / "demo" / "base").exists()
    assert (workdir / "results" / "heldout-forward" / "pretrain" / "summary.json").is_file()
    assert not (workdir / "results" / "heldout-forward" / "render_pretrain").exists()


def _one_rule_workdir(workdir: Path) -> Path:
    """A workflow of one rule, run the way run_workflow runs a configuration."""
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "measure.yaml").write_text("{}\n")
    (workdir / "Snakefile").write_text('rule all:\n    output:\n        "out.txt",\n    shell:\n        "echo done > {output}"\n')
    return workdir / "out.txt"


def test_a_killed_runs_lock_is_named_with_its_cure(tmp_path):
    """A measurement killed mid-run leaves Snakemake's lock; the rerun must say how to lift
    it (one line naming the folder), and once lifted the same call finishes the run."""
    output = _one_rule_workdir(tmp_path)
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("out.txt\n")  # what a killed run leaves (paths as the workflow names them)
    try:
        measure_models.run_workflow(tmp_path, cores=1)
    except SystemExit as failure:
        message = str(failure)
    else:
        raise AssertionError("a locked workdir ran")
    assert "snakemake --unlock" in message, message
    assert str(tmp_path) in message and "\n" not in message
    (locks / "0.output.lock").unlink()
    measure_models.run_workflow(tmp_path, cores=1)
    assert output.read_text() == "done\n"


def test_targets_build_only_themselves(tmp_path):
    """run_workflow's targets reach Snakemake as targets (put after --configfile they would be
    read as config files) and only they are built."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "measure.yaml").write_text("{}\n")
    rules = "".join(f'rule {n}:\n    output:\n        "{n}.txt",\n    shell:\n        "echo {n} > {{output}}"\n\n\n' for n in "ab")
    (tmp_path / "Snakefile").write_text('rule all:\n    input:\n        "a.txt",\n        "b.txt",\n\n\n' + rules)
    measure_models.run_workflow(tmp_path, cores=1, targets=["b.txt"])
    assert (tmp_path / "b.txt").read_text() == "b\n"
    assert not (tmp_path / "a.txt").exists()
