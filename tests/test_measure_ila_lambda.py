"""tools/measure_ila_lambda.py: the copies it inpaints again never touch the finished runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import measure_ila_lambda  # noqa: E402


def test_the_lambda_override_replaces_the_old_one_and_keeps_the_rest():
    text = yaml.safe_dump({"method": {"model": "procedural", "overrides": ["seed=1", "inpaint.ila_lambda=0.2"]}})
    config = yaml.safe_load(measure_ila_lambda.with_lambda(text, 0.1))
    assert config["method"]["overrides"] == ["seed=1", "inpaint.ila_lambda=0.1"]
    assert config["method"]["model"] == "procedural"


def _finished_run(root: Path, lam: float) -> Path:
    scene = root / "results" / "demo"
    for stage in ("scene", "base", "inpaint", "refine", "eval"):
        (scene / stage).mkdir(parents=True)
        (scene / stage / "summary.json").write_text(json.dumps({"settings": {"ila_lambda": lam}}))
    (root / "results" / "generated" / "demo").mkdir(parents=True)
    (root / "logs" / "demo" / "inpaint").mkdir(parents=True)
    (root / "logs" / "demo" / "inpaint" / "shard-0.log").write_text("the source's log\n")
    (root / ".snakemake" / "locks").mkdir(parents=True)
    (root / "Snakefile").write_text("# workflow\n")
    return root


def test_a_copy_links_the_upstream_stages_and_leaves_the_source_untouched(tmp_path):
    source = _finished_run(tmp_path / "procedural-seed1", 0.2)
    copy = tmp_path / "copy"
    measure_ila_lambda.copy_upstream(source, copy)
    scene = copy / "results" / "demo"
    assert sorted(p.name for p in scene.iterdir()) == ["base", "scene"]  # inpaint and later: redone or unused
    assert (scene / "base" / "summary.json").stat().st_ino == (source / "results" / "demo" / "base" / "summary.json").stat().st_ino
    assert (copy / "results" / "generated" / "demo").is_dir()
    assert not (copy / ".snakemake" / "locks").exists()
    # the rerun's log is written in the copy: the source's stays as it was
    (copy / "logs" / "demo" / "inpaint" / "shard-0.log").write_text("rerun\n")
    assert (source / "logs" / "demo" / "inpaint" / "shard-0.log").read_text() == "the source's log\n"


def test_the_source_serves_its_own_lambda_and_a_copy_every_other(tmp_path):
    source = _finished_run(tmp_path / "procedural-seed1", 0.2)
    assert measure_ila_lambda.run_for(tmp_path / "out", source, "demo", 0.2) == source
    assert measure_ila_lambda.run_for(tmp_path / "out", source, "demo", 0.1) == tmp_path / "out" / "procedural-seed1-lambda0.1"


def test_unfinished_cells_are_tabled_as_missing(tmp_path, capsys):
    code = measure_ila_lambda.main(["--table-only", "--lambdas", "0.1", "--measure-dir", str(tmp_path / "none"),
                                    "--seeds-dir", str(tmp_path), "--seeds", "1", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 1
    assert "| 0.1 | n/a | n/a | n/a | n/a |" in out
    assert "PARTIAL: not measured yet: heldout-forward at 0.1" in out


def test_an_unfinished_source_is_refused_in_one_line_before_any_copy(tmp_path):
    out = tmp_path / "out"
    try:
        measure_ila_lambda.ensure_inpainted(out, tmp_path / "procedural-seed1", ["demo"], 0.1, cores=1)
    except SystemExit as refusal:
        message = str(refusal)
    else:
        raise AssertionError("an unfinished source was copied")
    assert str(tmp_path / "procedural-seed1") in message and "demo" in message and "\n" not in message
    assert not out.exists()
