#!/usr/bin/env python
"""What the shipped models do: the workflow on the demo and on procedural scenes used
nowhere in training, with the trained model set, with ELA's nearest noise reads, and with
random weights; one markdown table and a picture sheet per scene.

    nice -n 10 .venv/bin/python tools/measure_models.py              # run what is missing, print the table
    .venv/bin/python tools/measure_models.py --table-only            # reprint it from the finished runs

A configuration or scene that has not finished (``--runs`` ran only some, or a run was cut
short) leaves its cells ``n/a`` and its bars "not measured yet": the table is printed all
the same, marked PARTIAL, and the exit status is 1.

Every configuration is a copy of this checkout's workflow under ``--out`` (default
``results-measure/``, ignored by git) that runs ``snakemake --cores 2 --configfile
config/measure.yaml``; a rerun reuses every finished stage. The configurations:

``bilinear`` / ``nearest``
    the trained model set (``--model``, default ``procedural``) with
    ``inpaint.ela_interpolation`` bilinear / nearest;
``random``
    the ``tiny`` random-weight set, everything else the default.

They share the scenes, poses, pre-trained NeRFs and their "before" renders (hard links
from the first run that finished them), which depend on no model. Scenes (``SCENES``):
the demo (its config: seed 0, COLMAP poses) and two procedural scenes of the reserved
seeds no training scene uses (1000 forward-facing, 1001 360-degree; the generator's
poses), at the demo's size.

The table (rows: measures, columns: scenes):

* ``consistency`` of the four inpainting variants (``inpaint/summary.json``, grey levels,
  lower is more consistent) with the default interpolation, and each over ``independent``;
* ELA nearest vs bilinear: consistency of ``ela`` and ``ela_ila``, and the box PSNR/SSIM
  of the final renders (after refinement) against the ground-truth test views;
* box PSNR/SSIM of the final renders after / before (the pre-trained NeRF, object still in
  it) / with random weights (SPIn-NeRF protocol, ``eval/metrics.json``);
* the depth prior: median relative error of the aligned prior (``base/depth_prior.npy``)
  against the generator's true object-free distance along each ray, inside the base
  view's mask (where the prior is used) and over the whole view, with the generator's
  world mapped into the scene's frame by a similarity fitted on all camera centres; and
  the base stage's plausibility verdict.

Then the issue's bars on the demo. Picture sheets (``--sheets``, default
``docs/measurements/<scene>.jpg``): for the base view and two other train views, the input
with its mask, the aligned fill (``inpaint/images``), the final render with the trained
models and with random weights, and the generator's ground truth without the object.
Timings are wall-clock seconds of this machine (shared cores are slower).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from innout.cameras import Camera, umeyama_similarity  # noqa: E402
from innout.config import load_method_config  # noqa: E402
from innout.frames import read_scene  # noqa: E402
from innout.images import to_u8  # noqa: E402
from innout.procedural import ProceduralScene  # noqa: E402
from innout.viz import contact_sheet, overlay_mask, with_weights_banner  # noqa: E402

WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "profiles", "envs")
DEMO_SIZE = dict(n_train=60, n_test=40, width=640, height=480, downscales=[2, 4])
# name -> generator spec and the sheet row's poses (the demo's as in config/config.yaml)
SCENES = {
    "demo": dict(variant="forward", seed=0, poses="colmap"),
    "heldout-forward": dict(variant="forward", seed=1000, poses="provided"),
    "heldout-360": dict(variant="360", seed=1001, poses="provided"),
}
VARIANTS = ("independent", "ela", "ila", "ela_ila")


def runs(model: str) -> dict[str, dict]:
    """Configuration name -> (model set, Hydra overrides)."""
    return {
        "random": {"model": "tiny", "overrides": []},
        "bilinear": {"model": model, "overrides": ["inpaint.ela_interpolation=bilinear"]},
        "nearest": {"model": model, "overrides": ["inpaint.ela_interpolation=nearest"]},
    }


# --------------------------------------------------------------------------- running

def prepare_workdir(workdir: Path, run: dict, scenes: list[str]) -> None:
    """This checkout's workflow files in ``workdir`` (refreshed), its scene sheet and config."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src, dst = REPO / name, workdir / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    rows = ["scene\tpath\tformat\tposes\tprompt"]
    rows += [f"{s}\tresults/generated/{s}\tspinnerf\t{SCENES[s]['poses']}\t" for s in scenes]
    (workdir / "config" / "measure-scenes.tsv").write_text("\n".join(rows) + "\n")
    config = {
        "scenes": "config/measure-scenes.tsv",
        "generated": {s: {"variant": SCENES[s]["variant"], "seed": SCENES[s]["seed"], **DEMO_SIZE,
                          "downscales": list(DEMO_SIZE["downscales"])} for s in scenes},
        "inpaint_shards": 2,
        "method": {"preset": "smoke", "model": run["model"], "overrides": list(run["overrides"])},
    }
    (workdir / "config" / "measure.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


MODEL_FREE_STAGES = ("scene", "poses", "pretrain", "render_pretrain")  # no model set reaches them (render_pretrain: the "before")


def seed_upstream(source: Path, workdir: Path, scenes: list[str]) -> None:
    """Hard links of the model-free stages (``MODEL_FREE_STAGES``) that ``source``'s runs
    finished (their ``summary.json`` is written last), so another configuration does not
    recompute them: Snakemake finds them up to date (checked with ``snakemake -n``)."""
    for scene in scenes:
        if not (source / "results" / scene / "pretrain" / "summary.json").is_file():
            continue
        pairs = [(source / "results" / "generated" / scene, workdir / "results" / "generated" / scene)]
        pairs += [(source / "results" / scene / stage, workdir / "results" / scene / stage) for stage in MODEL_FREE_STAGES
                  if (source / "results" / scene / stage / "summary.json").is_file()]
        for src, dst in pairs:
            if src.is_dir() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, dst, copy_function=os.link)


def run_workflow(workdir: Path, cores: int, targets: list[str] | tuple = ()) -> float:
    """``snakemake`` in ``workdir`` (every target, or ``targets``); its output goes to
    ``snakemake.log`` there, its progress lines to stdout. Returns the wall seconds."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # targets before --configfile, which takes every value after it
    command = [str(Path(sys.executable).with_name("snakemake")), "--cores", str(cores), *targets,
               "--configfile", "config/measure.yaml"]
    t0 = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if re.search(r"steps \(\d+%\) done|^rule |Error|Nothing to be done", line):
                print(f"  [{workdir.name} {time.perf_counter() - t0:6.0f} s] {line.rstrip()}", flush=True)
        code = proc.wait()
    if code != 0:
        raise SystemExit(workflow_failure(workdir, code, (workdir / "snakemake.log").read_text()))
    return time.perf_counter() - t0


def workflow_failure(workdir: Path, code: int, log_text: str) -> str:
    """The one-line error for a failed run. A run that was killed leaves Snakemake's lock
    behind, and the next run stops on it: say how to lift it rather than only "failed"."""
    if "LockException" in log_text:
        return (
            f"{workdir}: locked by a Snakemake run that is still running or was killed; if none is running there, "
            f"lift it with (cd {workdir} && snakemake --unlock --cores 1 --configfile config/measure.yaml) and rerun"
        )
    return f"{workdir}: snakemake failed (exit {code}); see {workdir / 'snakemake.log'}"


# --------------------------------------------------------------------------- measuring

def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def generator_cameras(generated: Path) -> tuple[ProceduralScene, dict[str, Camera]]:
    """The generator's scene and its cameras (full resolution) by view name."""
    meta = _json(generated / "innout_generator.json")
    scene = ProceduralScene(meta["variant"], meta["seed"])
    w, h, focal = meta["width"], meta["height"], meta["focal"]
    cams = scene.cameras(meta["n_test"], w, h, "test", focal) + scene.cameras(meta["n_train"], w, h, "train", focal)
    names = [Path(n).stem for n in meta["names"]["test"] + meta["names"]["train"]]
    return scene, dict(zip(names, cams))


def scene_transforms(workdir: Path, scene: str) -> Path:
    """The posed scene a run's stages read: COLMAP's poses, or the importer's own."""
    return workdir / "results" / scene / ("poses" if SCENES[scene]["poses"] == "colmap" else "scene") / "transforms.json"


def true_background(workdir: Path, scene: str, names: list[str]) -> dict[str, dict]:
    """Per train view: the generator's object-free colour (uint8) and distance along each
    ray, at the working resolution, the distance in the scene's units."""
    transforms = scene_transforms(workdir, scene)
    _, frames, train, _ = read_scene(transforms)
    generator, cams = generator_cameras(workdir / "results" / "generated" / scene)
    common = [f.name for f in frames if f.name in cams]
    # the generator's world -> the scene's frame (COLMAP's, or the importer's normalisation)
    scale, _, _ = umeyama_similarity(np.stack([cams[n].center for n in common]),
                                     np.stack([next(f for f in frames if f.name == n).camera.center for n in common]))
    out = {}
    by_name = {f.name: f for f in train}
    for name in names:
        k = by_name[name].camera.intrinsics
        cam = Camera(cams[name].c2w, cams[name].intrinsics.scaled_to(k.width, k.height))
        truth = generator.render(cam, with_object=False, supersample=2)
        out[name] = {"rgb": to_u8(truth["rgb"]),
                     "distance": truth["distance"].astype(np.float64) * scale}
    return out


def depth_prior_errors(workdir: Path, scene: str) -> dict:
    """Median relative error of the aligned depth prior against the true distance, inside
    the base view's mask and over the view; and the base stage's verdict."""
    base = workdir / "results" / scene / "base"
    summary = _json(base / "summary.json")
    winner = summary["winner"]
    prior = np.load(base / "depth_prior.npy").astype(np.float64)
    mask = np.asarray(Image.open(base / "mask.png").convert("L")) > 127
    truth = true_background(workdir, scene, [winner])[winner]["distance"]
    ok = np.isfinite(truth) & (truth > 0) & np.isfinite(prior)
    rel = np.abs(prior - truth) / np.where(ok, truth, 1.0)
    verdict = summary.get("depth_prior", {})
    return {"mask": float(np.median(rel[ok & mask])), "all": float(np.median(rel[ok])),
            "plausible": verdict.get("plausible"), "used": verdict.get("used"), "nerf_rel_error": verdict.get("rel_error")}


def _json_or_none(path: Path) -> dict | None:
    """A finished stage's JSON, or None while its run has not got there."""
    return _json(path) if Path(path).is_file() else None


def measure(root: Path, scenes: list[str], default_interp: str) -> dict:
    """Every figure of the table, by scene; a configuration that has not finished a stage
    leaves its figures None (the table says n/a), so a partial run still prints."""
    figures = {}
    for scene in scenes:
        f = {}
        inpaint = {r: _json_or_none(root / r / "results" / scene / "inpaint" / "summary.json") for r in ("bilinear", "nearest")}
        f["consistency_by_interp"] = {r: (s or {}).get("consistency") for r, s in inpaint.items()}
        f["consistency"] = f["consistency_by_interp"][default_interp]
        metrics = {r: _json_or_none(root / r / "results" / scene / "eval" / "metrics.json") for r in ("bilinear", "nearest", "random")}
        f["box"] = {r: m and {"psnr": m["psnr"], "ssim": m["ssim"]} for r, m in metrics.items()}
        before = next((m["before"] for m in metrics.values() if m and "before" in m), None)
        f["box"]["before"] = before and {"psnr": before["psnr"], "ssim": before["ssim"]}
        finished_base = (root / default_interp / "results" / scene / "base" / "depth_prior.npy").is_file()
        f["depth"] = depth_prior_errors(root / default_interp, scene) if finished_base else None
        figures[scene] = f
    return figures


def missing_runs(root: Path, configurations, scenes: list[str]) -> list[str]:
    """The configuration/scene pairs whose evaluation has not finished."""
    return [f"{r}/{s}" for r in configurations for s in scenes
            if not (root / r / "results" / s / "eval" / "metrics.json").is_file()]


# --------------------------------------------------------------------------- table

def _n(x, digits=2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ratio(c: dict | None, variant: str) -> float | None:
    return None if c is None else c[variant] / c["independent"]


def _pair(a: float | None, b: float | None, digits_b: int = 2) -> str:
    return f"{_n(a)} / {_n(b, digits_b)}"


def table(figures: dict, default_interp: str) -> str:
    """Rows: measures, columns: scenes; n/a where a run has not finished the stage."""
    scenes = list(figures)
    rows: list[tuple[str, list[str]]] = []

    def get(d: dict | None, key: str):
        return None if d is None else d[key]

    for v in VARIANTS:
        rows.append((f"consistency `{v}` (grey levels; / independent)",
                     [f"{_n(get(f['consistency'], v))} ({_n(_ratio(f['consistency'], v))})" for f in figures.values()]))
    for interp in ("bilinear", "nearest"):
        rows.append((f"ELA {interp}: consistency `ela` / `ela_ila`",
                     [_pair(get(f["consistency_by_interp"][interp], "ela"), get(f["consistency_by_interp"][interp], "ela_ila"))
                      for f in figures.values()]))
        rows.append((f"ELA {interp}: box PSNR (dB) / SSIM after refine",
                     [_pair(get(f["box"][interp], "psnr"), get(f["box"][interp], "ssim"), 3) for f in figures.values()]))
    for key, label in ((default_interp, "after (trained models)"), ("before", "before (pre-trained NeRF, object in it)"),
                       ("random", "after, random weights (`tiny`)")):
        rows.append((f"box PSNR (dB) / SSIM {label}", [_pair(get(f["box"][key], "psnr"), get(f["box"][key], "ssim"), 3)
                                                      for f in figures.values()]))
    rows.append(("depth prior vs true depth: median rel. error in mask / whole view",
                 ["n/a" if f["depth"] is None else f"{_n(f['depth']['mask'], 3)} / {_n(f['depth']['all'], 3)}"
                  for f in figures.values()]))
    rows.append(("depth prior vs NeRF outside mask (base stage): rel. error, plausible",
                 ["n/a" if f["depth"] is None else f"{_n(f['depth']['nerf_rel_error'], 3)}, {f['depth']['plausible']}"
                  for f in figures.values()]))
    lines = ["| measure | " + " | ".join(scenes) + " |", "|---" * (len(scenes) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def bar_checks(demo: dict, default_interp: str) -> list[tuple[str, str, bool | None]]:
    """The issue's acceptance bars on the demo: (the bar, the bar with its figures, holds);
    holds is None where a run the bar reads has not finished."""
    c = demo["consistency"]
    after, before, rnd = ((demo["box"][k] or {}).get("psnr") for k in (default_interp, "before", "random"))
    consistency_bars = ("consistency.ila <= 0.85 x independent", "consistency.ela_ila <= 0.6 x independent",
                        "ela_ila the lowest of the four")
    if c is None:
        checks: list[tuple[str, str, bool | None]] = [(bar, bar, None) for bar in consistency_bars]
    else:
        texts_and_verdicts = (
            (f"consistency.ila {c['ila']:.2f} <= 0.85 x independent {c['independent']:.2f} = {0.85 * c['independent']:.2f}",
             c["ila"] <= 0.85 * c["independent"]),
            (f"consistency.ela_ila {c['ela_ila']:.2f} <= 0.6 x independent = {0.6 * c['independent']:.2f}",
             c["ela_ila"] <= 0.6 * c["independent"]),
            (f"ela_ila the lowest of the four ({', '.join(f'{v} {c[v]:.2f}' for v in VARIANTS)})",
             c["ela_ila"] == min(c.values())),
        )
        checks = [(bar, text, ok) for bar, (text, ok) in zip(consistency_bars, texts_and_verdicts)]
    for bar, name, other, margin in (("box PSNR after >= before", "before", before, 0.0),
                                     ("box PSNR after >= random + 1 dB", "random", rnd, 1.0)):
        if after is None or other is None:
            checks.append((bar, bar, None))
        else:
            unit = " + 1 dB" if margin else " dB"
            checks.append((bar, f"box PSNR after {after:.2f} >= {name} {other:.2f}{unit}", after >= other + margin))
    return checks


def bars(demo: dict, default_interp: str) -> list[str]:
    """The issue's acceptance bars on the demo, each with its figures and verdict."""
    verdicts = {True: ("x", "holds"), False: (" ", "DOES NOT HOLD"), None: ("?", "not measured yet (a run has not finished)")}
    return [f"- [{verdicts[ok][0]}] {text}: {verdicts[ok][1]}" for _, text, ok in bar_checks(demo, default_interp)]


# --------------------------------------------------------------------------- pictures

def _spread(names: list[str], base: str, count: int = 2) -> list[str]:
    others = [n for n in sorted(names) if n != base]
    picks = sorted(set(np.linspace(0, len(others) - 1, count + 2)[1:-1].round().astype(int))) if others else []
    return [base] + [others[i] for i in picks]


def picture_sheet(root: Path, scene: str, default_interp: str, model_set: str, out_png: Path) -> None:
    trained, rnd = root / default_interp / "results" / scene, root / "random" / "results" / scene
    base = _json(trained / "base" / "summary.json")["winner"]
    transforms = scene_transforms(root / default_interp, scene)
    _, _, train, _ = read_scene(transforms)
    frames = {f.name: f for f in train}
    # the render stage renders only a few train views (render.train_views, base first)
    rendered = [n for n in frames if (trained / "render" / "train" / "rgb" / f"{n}.png").is_file()
                and (rnd / "render" / "train" / "rgb" / f"{n}.png").is_file()]
    names = _spread(rendered, base)
    truth = true_background(root / default_interp, scene, names)
    tiles = []
    for name in names:
        image = np.asarray(Image.open(frames[name].image).convert("RGB"))
        mask = np.asarray(Image.open(frames[name].object_mask).convert("L")) > 127
        size = (image.shape[1], image.shape[0])

        def load(path: Path) -> np.ndarray:
            return np.asarray(Image.open(path).convert("RGB").resize(size, Image.BICUBIC))

        label = f"{name} (base)" if name == base else name
        tiles += [(overlay_mask(image, mask), f"{label}: input, mask"),
                  (load(trained / "inpaint" / "images" / f"{name}.png"), "aligned fill (ELA+ILA)"),
                  (load(trained / "render" / "train" / "rgb" / f"{name}.png"), "final render"),
                  (load(rnd / "render" / "train" / "rgb" / f"{name}.png"), "final render, RANDOM weights"),
                  (truth[name]["rgb"], "ground truth, no object")]
    sheet = with_weights_banner(contact_sheet(tiles, columns=5, tile_width=200), "procedural", model_set)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.convert("RGB").save(out_png, quality=88, optimize=True)  # JPEG: the sheets are committed (docs/measurements)


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "results-measure", help="scratch folder of the runs")
    ap.add_argument("--model", default="procedural", help="the trained model set (method.model)")
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--sheets", type=Path, default=REPO / "docs" / "measurements", help="where the picture sheets go")
    ap.add_argument("--runs", nargs="+", choices=["random", "bilinear", "nearest"], default=None,
                    help="run only these configurations (default: all), then print the table (n/a where a run has not finished)")
    ap.add_argument("--table-only", action="store_true", help="only reprint from finished runs")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    default_interp = str(load_method_config("smoke", model="tiny").inpaint.ela_interpolation)
    configurations = runs(args.model)
    seconds = {}
    if not args.table_only:
        for name, run in configurations.items():
            if args.runs and name not in args.runs:
                continue
            workdir = args.out / name
            prepare_workdir(workdir, run, args.scenes)
            for other in configurations:  # the model-free stages another configuration finished
                if other != name:
                    seed_upstream(args.out / other, workdir, args.scenes)
            print(f"{name}: model {run['model']}, overrides {run['overrides']}", flush=True)
            seconds[name] = run_workflow(workdir, args.cores)
    missing = missing_runs(args.out, configurations, args.scenes)
    figures = measure(args.out, args.scenes, default_interp)
    sheets = {scene: args.sheets / f"{scene}.jpg" for scene in args.scenes
              if not {f"{default_interp}/{scene}", f"random/{scene}"} & set(missing)}
    for scene, path in sheets.items():
        picture_sheet(args.out, scene, default_interp, args.model, path)
    print()
    print(f"Trained model set `{args.model}` (ELA `{default_interp}` reads where not said otherwise), `smoke` preset, "
          f"2 inpaint shards; box = SPIn-NeRF protocol on the {DEMO_SIZE['n_test']} ground-truth test views.\n")
    print(table(figures, default_interp))
    if "demo" in figures:
        print("\nBars on the demo:")
        print("\n".join(bars(figures["demo"], default_interp)))
    if sheets:
        print("\nPicture sheets: " + ", ".join(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for p in sheets.values()))
    if seconds:
        print("Workflow runs: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if missing:
        print(f"\nPARTIAL TABLE: {len(missing)} run(s) not finished ({', '.join(missing)}): their cells say n/a, "
              "and their scenes' picture sheets were not made")
    print(f"Total time: {time.perf_counter() - t0:.0f} s")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
