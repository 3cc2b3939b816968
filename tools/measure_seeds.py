#!/usr/bin/env python
"""How much of the demo's bars is luck: the demo with several method seeds, each with the
trained model set and with random weights; one markdown row per seed and the bars' tally.

    nice -n 10 .venv/bin/python tools/measure_seeds.py --seeds 0 1 2     # run what is missing, print
    .venv/bin/python tools/measure_seeds.py --seeds 0 1 2 --table-only   # reprint from finished runs
    ... --sheet docs/measurements/demo-seeds.jpg    # and the picture: one test view per seed

The method seed (Hydra ``seed``) draws the pre-trained NeRF's initialisation and rays, the
inpainting noise and refinement; the demo scene (generator seed 0) and its COLMAP poses stay
the same. The "before" NeRF is trained without the masked pixels, so what it shows where the
object was is whatever it extrapolates there: that is the figure a seed moves most, and with
it the bar "box PSNR after >= before". Each (model set, seed) is a copy of this checkout's
workflow under ``--out`` (default ``results-seeds/``, ignored by git), run as
``tools/measure_models.py`` runs its configurations (``snakemake --cores 2 --configfile
config/measure.yaml``); the random-weight run of a seed shares that seed's scene, poses and
pre-trained NeRF (hard links), so its "before" is the same NeRF. ``--share-from DIR``
(another ``--out`` of finished runs, e.g. the shipped set's when a candidate set is
measured from another checkout) takes its finished random-weight runs whole, and links
each seed's scene, poses and pre-trained NeRF too; Snakemake redoes those ("code has
changed": the links carry no metadata), which on one machine gives the same bytes, so the
candidate meets the same "before" and random figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools"))

from measure_models import DEMO_SIZE, VARIANTS, bar_checks, prepare_workdir, run_workflow, seed_upstream  # noqa: E402
from PIL import Image  # noqa: E402

from innout.viz import BANNER_COLOURS, with_banner, with_weights_banner  # noqa: E402

SCENE = "demo"


def run_dir(out: Path, model: str, seed: int) -> Path:
    return out / f"{model}-seed{seed}"


def finished(out: Path, model: str, seed: int) -> bool:
    """Whether that run got as far as its metrics."""
    return (run_dir(out, model, seed) / "results" / SCENE / "eval" / "metrics.json").is_file()


def ensure_run(out: Path, model: str, seed: int, cores: int, share_with: Path | None) -> float | None:
    """Run the demo with ``model`` and method seed ``seed`` unless it is finished; returns
    the wall seconds, or None when nothing ran."""
    workdir = run_dir(out, model, seed)
    if finished(out, model, seed):
        return None
    prepare_workdir(workdir, {"model": model, "overrides": [f"seed={seed}"]}, [SCENE])
    if share_with is not None:
        seed_upstream(share_with, workdir, [SCENE])
    print(f"{workdir.name}: model {model}, seed {seed}", flush=True)
    return run_workflow(workdir, cores)


def share_finished(source: Path, out: Path, model: str, seed: int) -> None:
    """``source``'s model-free stages of ``seed`` for ``out``'s ``model`` run (unless that
    run exists) and ``source``'s finished random-weight run of ``seed`` (hard links)."""
    trained, rnd = run_dir(out, model, seed), run_dir(out, "tiny", seed)
    if not trained.exists():
        seed_upstream(run_dir(source, model, seed), trained, [SCENE])
    if not rnd.exists() and finished(source, "tiny", seed):
        shutil.copytree(run_dir(source, "tiny", seed), rnd, copy_function=os.link, symlinks=True)


def read_result(out: Path, m: str, seed: int, rel: str) -> dict:
    """A finished run's JSON file ``rel`` under its scene's results."""
    return json.loads((run_dir(out, m, seed) / "results" / SCENE / rel).read_text())


def seed_figures(out: Path, model: str, seed: int) -> dict:
    """One seed's figures in the shape :func:`measure_models.bars` reads."""
    trained, rnd = read_result(out, model, seed, "eval/metrics.json"), read_result(out, "tiny", seed, "eval/metrics.json")
    box = {"trained": trained, "before": trained["before"], "random": rnd}
    return {"consistency": read_result(out, model, seed, "inpaint/summary.json")["consistency"],
            "box": {k: {"psnr": m["psnr"], "ssim": m["ssim"]} for k, m in box.items()}}


def table(figures: dict[int, dict]) -> str:
    lines = ["| seed | consistency " + " / ".join(f"`{v}`" for v in VARIANTS) + " (/ independent) "
             "| box PSNR / SSIM after | before | random weights | after - before | after - random |",
             "|---" * 7 + "|"]
    for seed, f in figures.items():
        c, box = f["consistency"], f["box"]
        ratios = " / ".join(f"{c[v]:.2f}" for v in VARIANTS) + " (" + " / ".join(f"{c[v] / c['independent']:.3f}" for v in VARIANTS[1:]) + ")"
        cells = [f"{box[k]['psnr']:.2f} / {box[k]['ssim']:.3f}" for k in ("trained", "before", "random")]
        gains = [box["trained"]["psnr"] - box[k]["psnr"] for k in ("before", "random")]
        lines.append(f"| {seed} | {ratios} | " + " | ".join(cells) + " | " + " | ".join(f"{g:+.2f}" for g in gains) + " |")
    return "\n".join(lines)


def tally(figures: dict[int, dict]) -> list[str]:
    """Per bar: on how many seeds it holds; and the two PSNR gains' mean and range."""
    holds: dict[str, int] = {}
    for f in figures.values():
        for bar, _, ok in bar_checks(f, "trained"):
            holds[bar] = holds.get(bar, 0) + ok
    lines = [f"- {bar}: holds on {n} of {len(figures)} seeds" for bar, n in holds.items()]
    for key in ("before", "random"):
        gains = [f["box"]["trained"]["psnr"] - f["box"][key]["psnr"] for f in figures.values()]
        lines.append(f"- box PSNR after - {key}: mean {statistics.mean(gains):+.2f} dB, "
                     f"min {min(gains):+.2f}, max {max(gains):+.2f}")
    return lines


# the evaluate stage's comparison.png: two 22 px banners, then rows of three 240 px wide
# tiles (ground truth | before | after) over a 14 px caption
COMPARISON_TOP, TILE_WIDTH = 44, 240
COMPARISON_ROW = round(TILE_WIDTH * DEMO_SIZE["height"] / DEMO_SIZE["width"]) + 14


def metrics_notes(out: Path, model: str, seeds: list[int]) -> list[str]:
    """The evaluate stage's notes on its LPIPS/FID networks (random backbones offline) in the
    runs a seed sheet shows, each once."""
    notes = []
    for seed in seeds:
        for m in (model, "tiny"):
            note = read_result(out, m, seed, "eval/metrics.json").get("metrics_note")
            if note and note not in notes:
                notes.append(note)
    return notes


def seed_sheet(out: Path, model: str, seeds: list[int], png: Path) -> None:
    """Per seed, the first test view of the evaluate stage's comparison: ground truth,
    before, after with the trained set, and after with random weights (4th column)."""
    rows = []
    for seed in seeds:
        def first_row(m: str) -> Image.Image:
            sheet = Image.open(run_dir(out, m, seed) / "results" / SCENE / "eval" / "comparison.png").convert("RGB")
            return sheet.crop((0, COMPARISON_TOP, 3 * TILE_WIDTH, COMPARISON_TOP + COMPARISON_ROW))
        row = Image.new("RGB", (4 * TILE_WIDTH, COMPARISON_ROW), "white")
        row.paste(first_row(model), (0, 0))
        row.paste(first_row("tiny").crop((2 * TILE_WIDTH, 0, 3 * TILE_WIDTH, COMPARISON_ROW)), (3 * TILE_WIDTH, 0))
        rows.append(with_banner(row, f"method seed {seed}", (90, 90, 90)))
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    for i, row in enumerate(rows):
        sheet.paste(row, (0, sum(r.height for r in rows[:i])))
    # the crop drops the comparisons' own banners: the LPIPS captions need their backbones' note again
    for note in metrics_notes(out, model, seeds):
        sheet = with_banner(sheet, f"LPIPS in the captions: {note}", (90, 90, 90))
    sheet = with_banner(sheet, "4th column: final NeRF with RANDOM weights (tiny), not a result", BANNER_COLOURS["random"])
    png.parent.mkdir(parents=True, exist_ok=True)
    with_weights_banner(sheet, "procedural", model).convert("RGB").save(png, quality=88)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "results-seeds", help="scratch folder of the runs")
    ap.add_argument("--model", default="procedural", help="the trained model set (method.model)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--table-only", action="store_true", help="only reprint from finished runs")
    ap.add_argument("--share-from", type=Path, default=None,
                    help="another --out whose finished runs give each seed's pre-trained NeRF and random-weight run")
    ap.add_argument("--sheet", type=Path, default=None, help="also draw the per-seed picture (a .jpg) here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    seconds = {}
    if not args.table_only:
        for seed in args.seeds:
            if args.share_from:
                share_finished(args.share_from, args.out, args.model, seed)
            trained = ensure_run(args.out, args.model, seed, args.cores, None)
            rnd = ensure_run(args.out, "tiny", seed, args.cores, run_dir(args.out, args.model, seed))
            seconds.update({f"{args.model}-seed{seed}": trained, f"tiny-seed{seed}": rnd})
    missing = [str(run_dir(args.out, m, s)) for s in args.seeds for m in (args.model, "tiny") if not finished(args.out, m, s)]
    if missing:
        print(f"not every run is finished ({', '.join(missing)}): no table yet")
        return 1
    figures = {seed: seed_figures(args.out, args.model, seed) for seed in args.seeds}
    print(f"\nThe demo, `smoke` preset, model set `{args.model}` against `tiny` (random weights), by method seed; "
          f"box = SPIn-NeRF protocol on the {DEMO_SIZE['n_test']} ground-truth test views.\n")
    print(table(figures))
    print("\nThe issue's bars, per seed:")
    print("\n".join(tally(figures)))
    if args.sheet:
        seed_sheet(args.out, args.model, args.seeds, args.sheet)
        print(f"Picture: {args.sheet}")
    ran = {k: v for k, v in seconds.items() if v is not None}
    if ran:
        print("Workflow runs: " + ", ".join(f"{k} {v:.0f} s" for k, v in ran.items()))
    print(f"Total time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
