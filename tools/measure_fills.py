#!/usr/bin/env python
"""How well inpainters fill on their own: the base stage's candidates of finished runs,
inpainted again by each given model set, scored against the generator's object-free truth.

    .venv/bin/python tools/measure_fills.py src/innout/weights/procedural OTHER_SET ... \\
        --run results-measure/bilinear
    ... --set inpaint.steps=20    # the same candidates inpainted with other method settings

The base stage inpaints every candidate view alone, from one seed's noise, with the
workflow's settings (``smoke`` preset); the winner's fill becomes the base view that ELA
and ILA carry to every other view, so a set whose single fills are off in colour moves
every aligned fill, and the final NeRF, the same way. For each weights folder (one with
``inpainter/``) and each procedural scene found under a ``--run`` (a workflow checkout
whose ``results/<scene>/base`` is finished and whose ``results/generated/<scene>`` holds
the generator's metadata), this redoes exactly those inpaintings
(:func:`innout.base.inpaint_candidates`, same seed, no cache) and prints the PSNR inside
each candidate's mask against the generator's render of the view without the object,
averaged over the candidates: one markdown row per folder, one column per scene (per run and
scene when several runs are given: other method seeds pick other candidates). A second table
gives the mean colour in the masks of the fills, of the truth and of the truth passed through
the set's VAE, so a colour error can be told the denoiser's or the autoencoder's. Neither the
runs nor the folders are changed.
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
    """The candidates' train views (image, mask, camera), their object-free truth (with its
    RGB as floats in 0-1, the fills' scale), and the method seed the run inpainted them with."""
    views = {v.name: v for v in load_train_views(scene_transforms(run, scene))}
    summary = json.loads((run / "results" / scene / "base" / "summary.json").read_text())
    names = summary["candidates"]
    truth = true_background(run, scene, names)
    truth_rgb = {name: truth[name]["rgb"] / 255.0 for name in names}
    return {"views": views, "names": names, "truth": truth, "truth_rgb": truth_rgb, "seed": int(summary["seed"])}


def fill_scores(pipe, scene: dict, settings: dict) -> dict:
    """PSNR in the mask, and the mean colour there of the fills and of the truth through the
    set's VAE (encode, decode): a fill off in colour while the VAE's reconstruction is not
    points at the denoiser."""
    images, _, _ = inpaint_candidates(pipe, scene["views"], scene["names"], "", settings, scene["seed"], None, None)
    fills = {name: images[name] / 255.0 for name in scene["names"]}
    truths = scene["truth_rgb"]
    psnr = np.mean([_psnr(fills[name], truths[name], scene["views"][name].mask) for name in scene["names"]])
    through = {name: through_vae(pipe, scene["truth"][name]["rgb"]) for name in scene["names"]}
    return {"psnr": float(psnr), "fill": mean_colour(fills, scene), "vae": mean_colour(through, scene)}


def mean_colour(images: dict, scene: dict) -> np.ndarray:
    """Mean RGB inside each candidate's mask, averaged over the candidates."""
    return np.mean([images[name][scene["views"][name].mask.astype(bool)].mean(0) for name in scene["names"]], 0)


def through_vae(pipe, rgb_u8: np.ndarray) -> np.ndarray:
    """``rgb_u8`` (H, W, 3 uint8) encoded to its posterior mode and decoded by the pipeline's
    own decoder (:func:`innout.diffusion.decode`), as RGB in 0-1."""
    import torch

    from innout.diffusion import decode
    from innout.training.vae import to_signed

    vae = pipe.vae
    with torch.no_grad():
        pixels = to_signed(torch.from_numpy(np.ascontiguousarray(rgb_u8))[None]).to(vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    return decode(pipe, latents)[0]


def rgb(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", type=Path, help="model set folders, each with inpainter/")
    ap.add_argument("--run", dest="runs", action="append", type=Path,
                    help="a workflow checkout with finished base stages (repeatable; default results-measure/bilinear)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a method setting for the inpaintings (Hydra override of the smoke preset), e.g. "
                         "inpaint.steps=20; the runs' candidates and seeds stay theirs")
    args = ap.parse_args(argv)
    import torch

    from innout.models import load_inpainter

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    for folder in args.weights:
        if not (folder / "inpainter" / "model_index.json").is_file():
            ap.error(f"{folder}: no inpainter/model_index.json")
    cfg = load_method_config("smoke", args.overrides, model="procedural")
    settings = {key: cfg.inpaint[key] for key in BASE_INPAINT_KEYS}
    runs = args.runs or [REPO / "results-measure" / "bilinear"]
    scenes = {}
    for run in runs:
        for name in scenes_of(run):
            # runs of one scene with other method seeds have other candidates: a column each
            scenes[f"{run.name}/{name}" if len(runs) > 1 else name] = load_scene(run, name)
    if not scenes:
        ap.error("no finished base stage of a procedural scene under the given runs")
    print(f"PSNR (dB) inside each base-stage candidate's mask against the object-free truth, mean over the "
          f"candidates; {settings}, each run's method seed\n")
    print("| weights | " + " | ".join(scenes) + " | mean |")
    print("|---" * (len(scenes) + 2) + "|")
    truth_colour = np.mean([mean_colour(scene["truth_rgb"], scene) for scene in scenes.values()], 0)
    colours = []
    for folder in args.weights:
        t0 = time.perf_counter()
        pipe = load_inpainter(str(folder / "inpainter"), device="cpu", dtype="float32", options=cfg.models)
        scores = [fill_scores(pipe, scene, settings) for scene in scenes.values()]
        cells = " | ".join(f"{s['psnr']:.2f}" for s in scores)
        print(f"| {folder} | {cells} | {np.mean([s['psnr'] for s in scores]):.2f} |", flush=True)
        colours.append((folder, {key: np.mean([s[key] for s in scores], 0) for key in ("fill", "vae")}))
        print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print("\nMean RGB (0-1) inside the candidates' masks, mean over the columns: the fills, the truth, and the "
          "truth through the set's VAE\n")
    print("| weights | fills | truth | truth through the VAE | fills - truth |")
    print("|---|---|---|---|---|")
    for folder, mean in colours:
        print(f"| {folder} | {rgb(mean['fill'])} | {rgb(truth_colour)} | {rgb(mean['vae'])} | "
              f"{rgb(mean['fill'] - truth_colour)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
