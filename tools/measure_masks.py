#!/usr/bin/env python
"""Reprint the masks stage's IoU table (README, "Masks from a few annotated views").

For each procedural scene (``variant:seed``; the demo is ``forward:0``), generated with
the demo's settings (60 train views, 640x480, imported at 1/4) and with every mask known:

1. train the masks stage's whole-scene NeRF once (``innout.masks.train_scene_nerf``,
   the ``smoke`` preset, every pixel) and render every train view's surface;
2. for 1, 2 and 3 annotated views, the ones ``innout.view_suggest`` suggests, carve and
   clean exactly as the stage does (``innout.masks.carve_views``);
3. score the IoU of each propagated mask (before dilation) against the scene's own mask
   of that view, over the train views that were not annotated.

The NeRF is trained once per scene and reused by every row; a rerun reuses the
finished work (checkpoints under ``--out``). Prints a table and writes
``<out>/table-<geometry>.json`` and, per scene and row, the masks stage's overview picture
(``<out>/<variant>-<seed>/overview-<geometry>-<k>views.png``: the annotated views, then a
sample of the others with missed pixels green and extra ones blue). Example (the README's figures)::

    nice -n 10 .venv/bin/python tools/measure_masks.py --scenes forward:0 360:0 forward:1 360:1

``--depth median expected`` adds rows with the NeRF's expected depth as the surface;
``--geometry exact`` replaces the NeRF by the procedural renderer's true surfaces (what the
carving itself loses, apart from the NeRF; minutes instead of a NeRF per scene).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from innout.carving import ViewGeometry
from innout.config import load_method_config
from innout.frames import read_scene
from innout.masks import carve_views, iou, render_surfaces, train_scene_nerf
from innout.procedural import write_spinnerf_scene
from innout.scene import import_scene
from innout.view_suggest import suggest_views
from innout.viz import masks_overview

DEMO = {"n_train": 60, "n_test": 40, "width": 640, "height": 480, "downscales": (2, 4)}  # config.yaml: generated.demo


def prepare(variant: str, seed: int, out: Path, log: logging.Logger):
    """(cameras, true masks) of the scene's train views, generating and importing it once."""
    src = out / f"{variant}-{seed}" / "source"
    scene = out / f"{variant}-{seed}" / "scene"
    if not (src / "innout_generator.json").is_file():
        write_spinnerf_scene(src, variant, seed, DEMO["n_train"], DEMO["n_test"], DEMO["width"], DEMO["height"],
                             DEMO["downscales"], overwrite=True, progress=False)
    if not (scene / "transforms.json").is_file():
        # one annotated view: every other train mask lands, undilated, in reference_masks/
        first = json.loads((src / "innout_generator.json").read_text())["names"]["train"][0]
        import_scene(src, "spinnerf", scene, downscale=4, masks=[Path(first).stem], log=log)
    meta, frames, train, _ = read_scene(scene / "transforms.json", allow_missing_masks=True)
    truth = {}
    for f in train:
        key = f.raw.get("innout_annotation") or f.raw.get("innout_reference_mask")
        truth[f.name] = np.asarray(Image.open(scene / key).convert("L")) > 127
    return meta, scene, {f.name: f.camera for f in train}, truth


def exact_geometry(variant: str, seed: int, cameras: dict) -> dict[str, dict[str, np.ndarray]]:
    """True surfaces (distance along the pixel-centre rays) from the procedural renderer."""
    from innout.procedural import ProceduralScene

    scene = ProceduralScene(variant, seed)
    out = {}
    for name, cam in cameras.items():
        distance = scene.render(cam, supersample=1)["distance"].astype(np.float64)
        out[name] = {"median": distance, "expected": distance}
    return out


def geometry(meta: dict, scene: Path, cameras: dict, folder: Path, cfg, log) -> dict[str, dict[str, np.ndarray]]:
    """Every train view's surfaces (median and expected depth) from the whole-scene NeRF,
    cached in ``folder/surfaces.npz`` (delete it, or the folder, to measure again)."""
    cache = folder / "surfaces.npz"
    if cache.is_file():
        data = np.load(cache)
        return {n: {"median": data[f"{n}/median"], "expected": data[f"{n}/expected"]} for n in cameras}
    nerf = train_scene_nerf(meta, scene, set(cameras), folder / "work", cfg, log)
    surfaces = render_surfaces(nerf, cameras, str(cfg.device), log)
    np.savez_compressed(cache, **{f"{n}/{k}": both[k] for n, both in surfaces.items() for k in ("median", "expected")})
    return surfaces


def suffix(depth: str) -> str:
    return "" if depth == "median" else f"-{depth}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="+", default=["forward:0", "360:0"], help="variant:seed (forward:0 is the demo)")
    ap.add_argument("--views", nargs="+", type=int, default=[1, 2, 3], help="numbers of annotated views")
    ap.add_argument("--depth", nargs="+", default=["median"], choices=["median", "expected"])
    ap.add_argument("--geometry", default="nerf", choices=["nerf", "exact"], help="surfaces from the NeRF or the true ones")
    ap.add_argument("--out", default="results/measure-masks", help="work folder (scenes, NeRFs, table.json)")
    ap.add_argument("--override", "-o", action="append", default=[], help="Hydra override, e.g. masks.visibility_tolerance=0.05")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("measure_masks")
    cfg = load_method_config("smoke", ["device=cpu", *args.override], "tiny")
    out = Path(args.out).resolve()
    rows = []
    for spec in args.scenes:
        variant, seed = spec.split(":")
        t0 = time.perf_counter()
        meta, scene, cameras, truth = prepare(variant, int(seed), out, log)
        if args.geometry == "exact":
            surfaces = exact_geometry(variant, int(seed), cameras)
        else:
            surfaces = geometry(meta, scene, cameras, out / f"{variant}-{seed}", cfg, log)
        geometry_s = time.perf_counter() - t0
        names = list(cameras)
        images = {n: scene / "images" / f"{n}.png" for n in names}
        for k in args.views:
            suggestion = suggest_views([cameras[n] for n in names], names, k)
            annotated = {n: truth[n] for n in suggestion.views}
            for depth in args.depth:
                views = [ViewGeometry(n, cameras[n], surfaces[n][depth]) for n in names]
                t1 = time.perf_counter()
                result, _ = carve_views(views, annotated, None, cfg.masks, images=images)
                carving_s = time.perf_counter() - t1
                scores = [iou(result.masks[n], truth[n]) for n in names if n not in annotated]
                masks_overview(images, result.masks, truth, suggestion.views,
                               out / f"{variant}-{seed}" / f"overview-{args.geometry}-{k}views{suffix(depth)}.png")
                rows.append({"scene": spec, "geometry": args.geometry, "views": k, "annotated": suggestion.views,
                             "spread_deg": round(suggestion.spread_deg, 1), "depth": depth,
                             "iou_mean": round(float(np.mean(scores)), 4), "iou_min": round(float(np.min(scores)), 4),
                             "n_scored": len(scores), "carving_s": round(carving_s, 1),
                             "geometry_s": round(geometry_s, 1)})
                log.info("%s", rows[-1])
    (out / f"table-{args.geometry}.json").write_text(json.dumps({"rows": rows, "overrides": args.override}, indent=1))
    print(f"geometry: {args.geometry}; overrides: {args.override or 'none'}")
    print("| scene | annotated views | spread | surface | mean IoU | min IoU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        surface = "exact" if r["geometry"] == "exact" else f"NeRF, {r['depth']} depth"
        print(f"| {r['scene']} | {r['views']} ({', '.join(r['annotated'])}) | {r['spread_deg']} deg | {surface} | "
              f"{r['iou_mean']:.3f} | {r['iou_min']:.3f} |")
    return 0


if __name__ == "__main__":  # nerfstudio's datamanagers may spawn processes
    sys.exit(main())
