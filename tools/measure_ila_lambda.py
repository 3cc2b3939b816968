#!/usr/bin/env python
"""How much ILA's lambda moves the fills with the trained models: the inpaint stage of
finished runs redone at other lambdas (``inpaint.ila_lambda``; 1 = a view's own attention
only, 0 = the base view's keys and values only; the paper's and the workflow's 0.2).

    nice -n 10 .venv/bin/python tools/measure_ila_lambda.py                 # ~1-2 min per run and lambda
    .venv/bin/python tools/measure_ila_lambda.py --table-only               # reprint from finished runs

Sources (finished runs, nothing in them is changed): ``tools/measure_models.py``'s
``bilinear`` run (the two held-out scenes and the demo, method seed 0) and
``tools/measure_seeds.py``'s trained runs of the other method seeds (the demo). For each
source and lambda other than the source's own, ``--out/<source>-lambda<lambda>`` holds a
copy of the source up to the inpaint stage (results hard-linked; the stages after it left
out) whose ``config/measure.yaml`` adds the override, and Snakemake redoes only the inpaint
stage there (its params changed; everything upstream is up to date).

Two tables, a column per scene and seed, a row per lambda:

* ``ila`` and ``ela_ila`` consistency over ``independent`` (the inpaint stage's score,
  lower is more consistent);
* the PSNR of the ``ila`` and ``ela_ila`` fills inside the mask against the generator's
  render of the view without the object (``measure_models.true_background``), over every
  third target view: a lambda that made the fills consistent by copying the base view
  where it does not belong would lose here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools"))

from inspect_models import psnr_in  # noqa: E402
from measure_models import run_workflow, true_background  # noqa: E402

LAMBDAS = (0.2, 0.1, 0.0)
LATER_STAGES = ("inpaint", "refine", "render", "eval")  # left out of a copy: redone or not needed
FILLS = {"ila": "variants/ila", "ela_ila": "images"}  # variant -> its fills under inpaint/
VIEW_STRIDE = 3  # every third target view is scored against the generator's truth


def sources(measure_dir: Path, seeds_dir: Path, seeds: list[int]) -> dict[str, tuple[Path, str]]:
    """Column label -> (finished run, scene)."""
    columns = {scene: (measure_dir, scene) for scene in ("heldout-forward", "heldout-360")}
    columns["demo seed 0"] = (measure_dir, "demo")
    columns.update({f"demo seed {s}": (seeds_dir / f"procedural-seed{s}", "demo") for s in seeds if s != 0})
    return columns


def inpaint_summary(run: Path, scene: str) -> dict | None:
    path = run / "results" / scene / "inpaint" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_for(out: Path, source: Path, scene: str, lam: float) -> Path:
    """The run that holds ``scene`` inpainted at ``lam``: the source itself at its own lambda."""
    summary = inpaint_summary(source, scene)
    if summary is not None and float(summary["settings"]["ila_lambda"]) == lam:
        return source
    return out / f"{source.name}-lambda{lam:g}"


def with_lambda(config_text: str, lam: float) -> str:
    """A measure.yaml whose method overrides set ``inpaint.ila_lambda`` to ``lam`` (replacing
    any value it set)."""
    config = yaml.safe_load(config_text)
    method = config.setdefault("method", {})
    overrides = [o for o in method.get("overrides") or [] if not o.startswith("inpaint.ila_lambda=")]
    method["overrides"] = overrides + [f"inpaint.ila_lambda={lam:g}"]
    return yaml.safe_dump(config, sort_keys=False)


def copy_upstream(source: Path, workdir: Path) -> None:
    """``source`` without its later stages: results and resources as hard links (Snakemake
    removes an output before it rewrites it, so the source's files are never written), the
    rest (workflow files, logs, Snakemake's records) copied."""
    def skip_later(folder: str, names: list[str]) -> list[str]:
        in_scene = Path(folder).parent.name == "results" and Path(folder).name != "generated"
        return [n for n in names if in_scene and n in LATER_STAGES] + [n for n in names if n == "locks"]

    workdir.mkdir(parents=True)
    for entry in source.iterdir():
        dst = workdir / entry.name
        if entry.name in ("results", "resources"):
            shutil.copytree(entry, dst, copy_function=os.link, ignore=skip_later, symlinks=True)
        elif entry.is_dir():
            shutil.copytree(entry, dst, ignore=skip_later, symlinks=True)
        else:
            shutil.copy2(entry, dst)


def ensure_inpainted(out: Path, source: Path, scenes: list[str], lam: float, cores: int) -> float | None:
    """Inpaint ``scenes`` of ``source`` at ``lam`` unless done; returns the wall seconds run."""
    unfinished = [s for s in scenes if inpaint_summary(source, s) is None]
    if unfinished:
        raise SystemExit(f"{source}: the inpaint stage of {', '.join(unfinished)} is not finished "
                         "(run tools/measure_models.py and tools/measure_seeds.py first)")
    workdir = run_for(out, source, scenes[0], lam)
    todo = [s for s in scenes if inpaint_summary(workdir, s) is None]
    if not todo:
        return None
    if not workdir.exists():
        tmp = workdir.with_name(workdir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        copy_upstream(source, tmp)
        config = tmp / "config" / "measure.yaml"
        config.write_text(with_lambda(config.read_text(), lam))
        tmp.rename(workdir)
    print(f"{workdir.name}: inpaint {', '.join(todo)} at lambda {lam:g}", flush=True)
    return run_workflow(workdir, cores, [f"results/{s}/inpaint/summary.json" for s in todo])


def fill_psnr(run: Path, scene: str, base_view: str) -> dict[str, float]:
    """Mean PSNR inside the mask of every ``VIEW_STRIDE``-th target view's fill, per variant
    of ``FILLS``, against the generator's object-free render."""
    inpaint = run / "results" / scene / "inpaint"
    names = [p.stem for p in sorted((inpaint / "images").glob("*.png")) if p.stem != base_view][::VIEW_STRIDE]
    truth = true_background(run, scene, names)
    values: dict[str, list[float]] = {variant: [] for variant in FILLS}
    for name in names:
        mask = np.asarray(Image.open(run / "results" / scene / "scene" / "masks" / f"{name}.png").convert("L")) > 127
        for variant, folder in FILLS.items():
            fill = np.asarray(Image.open(inpaint / folder / f"{name}.png").convert("RGB"))
            values[variant].append(psnr_in(mask, fill, truth[name]["rgb"]))
    return {variant: float(np.mean(v)) for variant, v in values.items()}


def figures(run: Path, scene: str) -> dict | None:
    summary = inpaint_summary(run, scene)
    if summary is None:
        return None
    c = summary["consistency"]
    return {"ratio": {v: c[v] / c["independent"] for v in FILLS}, "psnr": fill_psnr(run, scene, summary["base_view"])}


def tables(cells: dict[float, dict[str, dict | None]]) -> str:
    columns = list(next(iter(cells.values())))
    head = "| lambda | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|"
    out = []
    for key, title, digits in (("ratio", "`ila` / `ela_ila` consistency over `independent` (lower: more consistent)", 3),
                               ("psnr", "PSNR (dB) of the `ila` / `ela_ila` fills in the mask against the object-free truth", 2)):
        rows = [f"| {lam:g} | " + " | ".join(
            "n/a" if f is None else " / ".join(f"{f[key][v]:.{digits}f}" for v in FILLS) for f in row.values()) + " |"
            for lam, row in cells.items()]
        out.append(f"{title}:\n\n{head}\n" + "\n".join(rows))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    ap.add_argument("--measure-dir", type=Path, default=REPO / "results-measure" / "bilinear",
                    help="tools/measure_models.py's finished bilinear run")
    ap.add_argument("--seeds-dir", type=Path, default=REPO / "results-seeds", help="tools/measure_seeds.py's --out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="the demo's other method seeds")
    ap.add_argument("--out", type=Path, default=REPO / "results-lambda", help="scratch folder of the copies")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--table-only", action="store_true", help="only reprint from finished runs")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    columns = sources(args.measure_dir, args.seeds_dir, args.seeds)
    if not args.table_only:
        by_source: dict[Path, list[str]] = {}
        for source, scene in columns.values():
            by_source.setdefault(source, []).append(scene)
        for lam in args.lambdas:
            for source, scenes in by_source.items():
                ensure_inpainted(args.out, source, scenes, lam, args.cores)
    cells = {lam: {label: figures(run_for(args.out, source, scene, lam), scene) for label, (source, scene) in columns.items()}
             for lam in args.lambdas}
    print(f"\nILA's lambda (inpaint.ila_lambda), model set of the source runs, `smoke` preset; "
          f"fills: one target view in {VIEW_STRIDE}.\n")
    print(tables(cells))
    missing = [f"{label} at {lam:g}" for lam, row in cells.items() for label, f in row.items() if f is None]
    if missing:
        print(f"\nPARTIAL: not measured yet: {', '.join(missing)}")
    print(f"Total time: {time.perf_counter() - t0:.0f} s")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
