#!/usr/bin/env python
"""How well inpainters fill on their own: the base stage's candidates of finished runs,
inpainted again by each given model set, scored against the generator's object-free truth.

    .venv/bin/python tools/measure_fills.py src/innout/weights/procedural OTHER_SET ... \\
        --run results-measure/bilinear

The base stage inpaints every candidate view alone, from one seed's noise, with the
workflow's settings (``smoke`` preset); the winner's fill becomes the base view that ELA
and ILA carry to every other view, so a set whose single fills are off in colour moves
every aligned fill, and the final NeRF, the same way. For each weights folder (one with
``inpainter/``) and each procedural scene found under a ``--run`` (a workflow checkout
whose ``results/<scene>/base`` is finished and whose ``results/generated/<scene>`` holds
the generator's metadata), this redoes exactly those inpaintings
(:func:`innout.base.inpaint_candidates`, same seed, no cache) and prints the PSNR inside
each candidate's mask against the generator's render of the view without the object,
averaged over the candidates: one markdown row per folder, one column per scene.
Neither the runs nor the folders are changed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools"))

from measure_models import SCENES, scene_transforms, true_background  # noqa: E402

from innout.base import _psnr, inpaint_candidates, load_train_views  # noqa: E402
from innout.config import load_method_config  # noqa: E402
from innout.rule_params import BASE_INPAINT_KEYS  # noqa: E402


def scenes_of(run: Path) -> list[str]:
    """The procedural scenes of ``run`` whose base stage is finished."""
    return [name for name in SCENES
            if (run / "results" / name / "base" / "summary.json").is_file()
            and (run / "results" / "generated" / name / "innout_generator.json").is_file()]


def load_scene(run: Path, scene: str) -> dict:
    """The candidates' train views (image, mask, camera) and their object-free truth."""
    views = {v.name: v for v in load_train_views(scene_transforms(run, scene))}
    names = json.loads((run / "results" / scene / "base" / "summary.json").read_text())["candidates"]
    truth = true_background(run, scene, names)
    return {"views": views, "names": names, "truth": truth}


def fill_psnr(pipe, scene: dict, settings: dict, seed: int) -> float:
    images, _, _ = inpaint_candidates(pipe, scene["views"], scene["names"], "", settings, seed, None, None)
    # (PSNR is scale-free: uint8 images over 255 score as they would in 0-255)
    return float(np.mean([_psnr(images[n] / 255.0, scene["truth"][n]["rgb"] / 255.0, scene["views"][n].mask)
                          for n in scene["names"]]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", type=Path, help="model set folders, each with inpainter/")
    ap.add_argument("--run", dest="runs", action="append", type=Path,
                    help="a workflow checkout with finished base stages (repeatable; default results-measure/bilinear)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    from innout.models import load_inpainter

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    for folder in args.weights:
        if not (folder / "inpainter" / "model_index.json").is_file():
            ap.error(f"{folder}: no inpainter/model_index.json")
    cfg = load_method_config("smoke", [], model="procedural")
    settings = {key: cfg.inpaint[key] for key in BASE_INPAINT_KEYS}
    scenes = {}
    for run in args.runs or [REPO / "results-measure" / "bilinear"]:
        for name in scenes_of(run):
            scenes.setdefault(name, load_scene(run, name))
    if not scenes:
        ap.error("no finished base stage of a procedural scene under the given runs")
    print(f"PSNR (dB) inside each base-stage candidate's mask against the object-free truth, mean over the "
          f"candidates; {settings}, seed {int(cfg.seed)}\n")
    print("| weights | " + " | ".join(scenes) + " | mean |")
    print("|---" * (len(scenes) + 2) + "|")
    for folder in args.weights:
        t0 = time.perf_counter()
        pipe = load_inpainter(str(folder / "inpainter"), device="cpu", dtype="float32", options=cfg.models)
        scores = [fill_psnr(pipe, scene, settings, int(cfg.seed)) for scene in scenes.values()]
        cells = " | ".join(f"{s:.2f}" for s in scores)
        print(f"| {folder} | {cells} | {np.mean(scores):.2f} |", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
