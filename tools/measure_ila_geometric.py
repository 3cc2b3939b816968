#!/usr/bin/env python
"""What ILA could give a model set if its attention to the base view were exactly right.

ILA's target tokens attend to the base view's keys and values; its fills can only agree
with the base's if that attention lands on the tokens showing the same 3D point. This
reruns a finished workflow's inpaint stage (its config, base view, noise and NeRF) one
target at a time, with the model's own attention (what the workflow does) and with
``innout.training.counterparts.CounterpartAttention``: every token the NeRF's depth gives a
counterpart in the base attends to a Gaussian of ``--sigma`` tokens around it, the others
keep the model's attention. Then it scores both with the inpaint stage's consistency (grey
levels, lower is more consistent), next to ``independent`` and ``ela``:

    .venv/bin/python tools/measure_ila_geometric.py results/demo
    .venv/bin/python tools/measure_ila_geometric.py results/demo --weights <folder with inpainter/> --sigma 0.3
    .venv/bin/python tools/measure_ila_geometric.py results/demo --ila-lambda 0 --sigma 1e9   # uniform over the base

If the geometric attention does not bring ``ila`` well below ``independent`` either, where the
attention lands is not what limits ILA with these weights; what the keys and values carry is
(README, "Models trained here"). ``--sheet`` writes the base view and
three targets: input, ``independent``, ``ila`` with the model's / the geometric attention,
``ela_ila`` with each. ~3 min for the demo on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from innout.consistency import consistency_error  # noqa: E402
from innout.diffusion import inpaint_kwargs, inpaint_views, latent_size  # noqa: E402
from innout.ela import align_noise_views, fresh_noise, view_seed  # noqa: E402
from innout.depth_prior import ray_cosines  # noqa: E402
from innout.inpaint import ela_kwargs, load_views, masked_depth, read_base, strided  # noqa: E402
from innout.models import load_inpainter  # noqa: E402
from innout.provenance import weights_provenance  # noqa: E402
from innout.renderer import NerfRenderer  # noqa: E402
from innout.training.counterparts import CounterpartAttention  # noqa: E402
from innout.viz import contact_sheet, overlay_mask, with_weights_banner  # noqa: E402

SHIPPED = REPO / "src" / "innout" / "weights" / "procedural"
# (initial noise, attention): None = no ILA
VARIANTS = {"independent": ("fresh", None), "ila": ("fresh", "model"), "ila geometric": ("fresh", "geometric"),
            "ela": ("ela", None), "ela_ila": ("ela", "model"), "ela_ila geometric": ("ela", "geometric")}


@dataclass
class Run:
    """A finished scene's inpaint stage, ready to be rerun."""

    config: object
    cameras: dict
    views: dict
    base: object  # innout.inpaint.BaseInputs
    targets: list[str]
    inpaint: dict  # inpaint_views keyword arguments, lambda aside
    ila_lambda: float
    latent_hw: tuple[int, int]
    renderer: NerfRenderer
    pipe: object


def read_run(results: Path, weights: Path, ila_lambda: float | None) -> Run:
    cfg = OmegaConf.load(results / "inpaint" / "config.yaml")
    transforms = next(p for p in (results / "poses" / "transforms.json", results / "scene" / "transforms.json")
                      if p.exists())
    cameras, _ = load_views(transforms, names=[])
    names = sorted(cameras)
    k0 = cameras[names[0]].intrinsics
    inpaint = inpaint_kwargs(cfg.inpaint)
    run_lambda = inpaint.pop("ila_lambda")
    latent_hw = latent_size(k0.width, k0.height, inpaint["resolution"])
    base = read_base(results / "base", names, (k0.width, k0.height), latent_hw)
    _, views = load_views(transforms, names)
    inpaint.update(progress=False, prompt=base.prompt)  # as the inpaint stage passes them
    return Run(cfg, cameras, views, base, [n for n in names if n != base.name], inpaint,
               run_lambda if ila_lambda is None else ila_lambda, latent_hw,
               NerfRenderer.from_config(base.nerf_dir, device="cpu"),
               load_inpainter(str(weights / "inpainter"), device="cpu", dtype="float32", options=cfg.models))


def nerf_distances(run: Run, started: float) -> dict[str, np.ndarray]:
    """The NeRF's distance along every ray of every view (the counterparts and the score need it)."""
    distance, last_report = {}, time.perf_counter()
    for name, camera in run.cameras.items():
        k = camera.intrinsics
        distance[name] = masked_depth(run.renderer, camera, np.ones((k.height, k.width), bool), 1)
        if time.perf_counter() - last_report > 10:
            print(f"  NeRF depth: {len(distance)}/{len(run.cameras)} views, {time.perf_counter() - started:.0f} s", flush=True)
            last_report = time.perf_counter()
    return distance


def initial_noises(run: Run) -> dict[str, dict[str, torch.Tensor]]:
    """Per target, the inpaint stage's fresh noise and ELA's aligned noise."""
    seed, base = int(run.config.seed), run.base
    aligned = align_noise_views(run.renderer, run.cameras[base.name], base.noise,
                                {n: run.cameras[n] for n in run.targets}, {n: run.views[n].mask for n in run.targets},
                                seed=seed, **ela_kwargs(run.config))
    return {"fresh": {n: fresh_noise(tuple(base.noise.shape), view_seed(n, seed), "cpu") for n in run.targets},
            "ela": {n: result.noise for n, result in aligned.items()}}


def fill_targets(run: Run, noise: dict, depth: dict, geometric: CounterpartAttention, started: float) -> dict:
    """Every variant's fill of every target, one target at a time (the geometric attention needs
    to know which target it is denoising)."""
    base, base_view = run.base, run.views[run.base.name]
    fills, last_report = {variant: {} for variant in VARIANTS}, time.perf_counter()
    for i, name in enumerate(run.targets):
        view = run.views[name]
        geometric.pair(run.cameras[name], depth[name], run.cameras[base.name], depth[base.name])
        for variant, (start, attention) in VARIANTS.items():
            init = noise[start][name]
            if attention is None:
                fill = inpaint_views(run.pipe, [view.image], [view.mask], init[None], ila_lambda=None, **run.inpaint)[0]
            else:
                fill = inpaint_views(run.pipe, [base_view.image, view.image], [base.mask, view.mask],
                                     torch.stack([base.noise, init]), ila_lambda=run.ila_lambda, base_index=0,
                                     controller=geometric if attention == "geometric" else None, **run.inpaint)[1]
            fills[variant][name] = fill
        if time.perf_counter() - last_report > 10 or i == len(run.targets) - 1:
            print(f"  {i + 1}/{len(run.targets)} targets, {time.perf_counter() - started:.0f} s", flush=True)
            last_report = time.perf_counter()
    return fills


def consistency(run: Run, base_fill: np.ndarray, fills: dict, distance: dict) -> dict[str, float]:
    """Each variant's consistency with the base fill, as the inpaint stage scores it."""
    stride, base = int(run.config.inpaint.consistency_stride), run.base
    scores = {}
    for variant in VARIANTS:
        items = [(fills[variant][n], run.views[n].mask & np.isfinite(distance[n]), run.cameras[n],
                  np.where(strided(run.views[n].mask, stride), distance[n], np.nan), n) for n in run.targets]
        scores[variant] = consistency_error(base_fill, run.cameras[base.name], items, base_mask=base.mask,
                                            base_depth=distance[base.name])["mean"]
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a finished scene's results folder (poses/ or scene/, base/, inpaint/)")
    ap.add_argument("--weights", type=Path, default=SHIPPED, help="a model set folder holding inpainter/")
    ap.add_argument("--sigma", type=float, default=0.6, help="the geometric attention's width, in tokens")
    ap.add_argument("--ila-lambda", type=float, help="ILA's lambda (default: the run's inpaint.ila_lambda)")
    ap.add_argument("--sheet", type=Path, help="write the picture sheet here (JPEG)")
    ap.add_argument("--json", type=Path, help="write the scores here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    run = read_run(args.results, args.weights, args.ila_lambda)
    base = run.base
    print(f"{args.results}: base view {base.name}, {len(run.targets)} targets, lambda {run.ila_lambda}, "
          f"sigma {args.sigma} tokens, weights {args.weights}", flush=True)
    distance = nerf_distances(run, started)
    depth = {n: distance[n] * ray_cosines(run.cameras[n]) for n in distance}  # z-depth, as the counterparts take it
    geometric = CounterpartAttention(run.ila_lambda, run.latent_hw, args.sigma)
    base_fill = inpaint_views(run.pipe, [run.views[base.name].image], [base.mask], base.noise[None], ila_lambda=None,
                              **run.inpaint)[0]
    fills = fill_targets(run, initial_noises(run), depth, geometric, started)
    scores = consistency(run, base_fill, fills, distance)

    placed = geometric.placed / max(geometric.tokens, 1)
    workflow = json.loads((args.results / "inpaint" / "summary.json").read_text()).get("consistency", {})
    print(f"\nconsistency (grey levels; / independent), geometric attention on {placed:.1%} of the tokens "
          f"(the others have no counterpart in the base and keep the model's):")
    print("| variant | consistency | / independent | the workflow's run (its weights) |\n|---|---|---|---|")
    for variant, value in scores.items():
        shown = workflow.get(variant)
        print(f"| {variant} | {value:.2f} | {value / scores['independent']:.3f} | "
              f"{'' if shown is None else f'{shown:.2f}'} |")
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"results": str(args.results), "weights": str(args.weights), "sigma": args.sigma,
                                         "ila_lambda": run.ila_lambda, "geometric_token_share": placed,
                                         "consistency": scores, "workflow_consistency": workflow}, indent=2) + "\n")
    if args.sheet:
        model_set = str(run.config.models.name) if args.weights.resolve() == SHIPPED.resolve() else args.weights.name
        write_sheet(args.sheet, run.views, base.name, base_fill, run.targets, fills, weights_provenance(run.config.models),
                    model_set)
        print(f"sheet: {args.sheet}")
    return 0


def write_sheet(path: Path, views: dict, base_name: str, base_fill: np.ndarray, targets: list[str], fills: dict,
                provenance: str, model_set: str) -> None:
    shown = ["independent", "ila", "ila geometric", "ela_ila", "ela_ila geometric"]
    picked = [targets[i] for i in sorted(set(np.linspace(0, len(targets) - 1, 3).round().astype(int)))]
    tiles = [(overlay_mask(views[base_name].image, views[base_name].mask), f"{base_name} (base): input")]
    tiles += [(base_fill, "base fill (every variant)")] + [(np.full_like(base_fill, 255), "")] * (len(shown) - 1)
    for name in picked:
        tiles.append((overlay_mask(views[name].image, views[name].mask), f"{name}: input"))
        tiles += [(fills[variant][name], variant) for variant in shown]
    sheet = with_weights_banner(contact_sheet(tiles, columns=1 + len(shown), tile_width=160), provenance, model_set)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.convert("RGB").save(path, quality=88)


if __name__ == "__main__":
    sys.exit(main())
