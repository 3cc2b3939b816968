"""tools/measure_seeds.py: the per-seed table and the bars' tally from finished runs' files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import measure_seeds  # noqa: E402


def _finished_run(root: Path, name: str, after: float, before: float, consistency: dict | None = None) -> None:
    results = root / name / "results" / "demo"
    (results / "eval").mkdir(parents=True)
    (results / "inpaint").mkdir(parents=True)
    metrics = {"psnr": after, "ssim": 0.1, "before": {"psnr": before, "ssim": 0.1}}
    (results / "eval" / "metrics.json").write_text(json.dumps(metrics))
    consistency = consistency or {"independent": 20.0, "ela": 9.0, "ila": 16.0, "ela_ila": 8.0}
    (results / "inpaint" / "summary.json").write_text(json.dumps({"consistency": consistency}))


def test_table_and_tally_count_each_seed(tmp_path, capsys):
    # seed 0: after loses to before by 0.5 dB; seed 1: wins by 2 dB; random 1.5 / 3 dB lower
    _finished_run(tmp_path, "procedural-seed0", after=15.0, before=15.5)
    _finished_run(tmp_path, "tiny-seed0", after=13.5, before=15.5)
    _finished_run(tmp_path, "procedural-seed1", after=16.0, before=14.0,
                  consistency={"independent": 20.0, "ela": 9.0, "ila": 19.0, "ela_ila": 9.5})
    _finished_run(tmp_path, "tiny-seed1", after=15.5, before=14.0)
    assert measure_seeds.main(["--seeds", "0", "1", "--out", str(tmp_path), "--table-only"]) == 0
    out = capsys.readouterr().out
    assert "| 0 | 20.00 / 9.00 / 16.00 / 8.00 (0.450 / 0.800 / 0.400) | 15.00 / 0.100 | 15.50 / 0.100 | 13.50 / 0.100 | -0.50 | +1.50 |" in out
    assert "| 1 |" in out and "| +2.00 | +0.50 |" in out
    assert "- box PSNR after >= before: holds on 1 of 2 seeds" in out
    assert "- box PSNR after >= random + 1 dB: holds on 1 of 2 seeds" in out
    assert "- consistency.ila <= 0.85 x independent: holds on 1 of 2 seeds" in out
    assert "- ela_ila the lowest of the four: holds on 1 of 2 seeds" in out
    assert "- box PSNR after - before: mean +0.75 dB, min -0.50, max +2.00" in out


def test_missing_run_is_reported_not_tabled(tmp_path, capsys):
    _finished_run(tmp_path, "procedural-seed0", after=15.0, before=15.5)
    assert measure_seeds.main(["--seeds", "0", "--out", str(tmp_path), "--table-only"]) == 1
    assert "tiny-seed0" in capsys.readouterr().out


def test_share_from_links_the_same_before_and_random_run(tmp_path):
    """A candidate set measured from another checkout meets the very same pre-trained NeRF
    and random-weight run (hard links), and its own stages are left to run."""
    source, out = tmp_path / "shipped", tmp_path / "candidate"
    _finished_run(source, "tiny-seed3", after=13.5, before=15.5)
    pretrain = source / "procedural-seed3" / "results" / "demo" / "pretrain"
    pretrain.mkdir(parents=True)
    (pretrain / "summary.json").write_text("{}")
    (source / "procedural-seed3" / "results" / "generated" / "demo").mkdir(parents=True)
    measure_seeds.share_finished(source, out, "procedural", 3)
    linked = out / "procedural-seed3" / "results" / "demo" / "pretrain" / "summary.json"
    assert linked.stat().st_ino == (pretrain / "summary.json").stat().st_ino
    assert not (out / "procedural-seed3" / "results" / "demo" / "eval").exists()
    random_metrics = out / "tiny-seed3" / "results" / "demo" / "eval" / "metrics.json"
    assert random_metrics.stat().st_ino == (source / "tiny-seed3" / "results" / "demo" / "eval" / "metrics.json").stat().st_ino


def test_seed_sheet_names_the_lpips_backbones(tmp_path, monkeypatch):
    """The sheet crops the evaluate stage's comparisons, banners included; the note that
    LPIPS ran on random backbones must come back over the LPIPS captions it keeps."""
    note = "LPIPS/FID on random backbones: not comparable with published numbers"
    for name in ("procedural-seed0", "tiny-seed0"):
        _finished_run(tmp_path, name, after=15.0, before=15.5)
        metrics = tmp_path / name / "results" / "demo" / "eval" / "metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "metrics_note": note}))
        height = measure_seeds.COMPARISON_TOP + 6 * measure_seeds.COMPARISON_ROW
        Image.new("RGB", (3 * measure_seeds.TILE_WIDTH, height), "grey").save(metrics.with_name("comparison.png"))
    banners = []
    real_banner = measure_seeds.with_banner
    monkeypatch.setattr(measure_seeds, "with_banner", lambda image, text, *a: banners.append(text) or real_banner(image, text, *a))
    measure_seeds.seed_sheet(tmp_path, "procedural", [0], tmp_path / "sheet.jpg")
    assert (tmp_path / "sheet.jpg").is_file()
    assert sum(note in text for text in banners) == 1, banners
