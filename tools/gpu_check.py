"""GPU check: the paper settings with random SD2 weights on a procedural scene at SPIn-NeRF
size, stage by stage, with seconds and peak GPU memory (run by tools/gpu-check.sh).

    python tools/gpu_check.py --size spinnerf --out /tmp/gpu-check    # one GPU, <= 10 min
    python tools/gpu_check.py --size tiny --out /tmp/gpu-check        # CPU, a minute (tests)

The library's stage functions run directly (no Snakemake: the GPU machine has none):

1. ``generate``: a procedural forward-facing scene in the SPIn-NeRF layout, 1008 x 567,
   60 train views with masks + 40 ground-truth test views;
2. ``scene``: its import (masks dilated as SPIn-NeRF's loader does);
3. ``models``: the ``sd2-random`` set (SD2-inpainting architecture, random weights);
4. ``pretrain``: nerfacto at the paper's settings (4096 rays, 256/96/48 samples, 2^19
   hash tables) for ``--pretrain-steps`` steps with ``implementation torch`` and, where
   tiny-cuda-nn imports, again with ``tcnn`` (steps/s of both); the stage also renders
   every train and test view (its rays/s);
5. ``base``: 5 candidate inpaintings (512 px, 20 steps, fp16 on a GPU), pHash vote, depth
   prior, ``--prior-steps`` steps of the prior fit;
6. ``inpaint``: shard 0 of ``--shards`` of the inpaint stage (ELA + ILA at 512 px, 20
   steps, fp16, batches of 4 targets, all four variants), with the projection to all
   60 views (shards x shard seconds: every shard recomputes the base trajectory);
7. ``refine``: ``--refine-steps`` steps at the paper's settings (256 px patches, LPIPS on
   the patch, discriminator on 64 px tiles) on the views shard 0 inpainted;
8. ``train-models``: ``innout train-models --device`` the check's device with the shipped
   recipe's models and data, ``--train-steps`` UNet steps (the VAE and depth model a
   fraction of theirs): each model's steps/s, and the seconds the recipe's full steps would
   take there (what a larger budget on that GPU costs). The weights it writes are not kept.

Numbers are printed as each stage ends (a killed run keeps what it printed) and written
to ``<out>/gpu-check.json``. Outputs are made with RANDOM weights: they measure speed and
memory only. ``--budget`` seconds: optional stages (the tcnn run, refine) are skipped
when the run is already past 70 % of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without an install

import torch  # noqa: E402

from innout.config import load_method_config  # noqa: E402

SIZES = {
    # the check the README reports: SPIn-NeRF's working size and view counts, paper settings
    "spinnerf": dict(width=1008, height=567, n_train=60, n_test=40, preset="paper", model="sd2-random",
                     pretrain_steps=1000, prior_steps=200, shards=5, refine_steps=200, workers=16, overrides=[],
                     train_steps=400, train_overrides=[]),
    # the same code path at a size a CPU runs in a minute (tests/test_gpu_check.py)
    "tiny": dict(width=64, height=48, n_train=9, n_test=4, preset="smoke", model="tiny",
                 pretrain_steps=150, prior_steps=4, shards=2, refine_steps=3, workers=2,
                 overrides=["inpaint.resolution=48", "inpaint.steps=2", "inpaint.batch_size=4", "base.n_candidates=2",
                            "pretrain.rays_per_batch=256", "base.rays_per_batch=256", "base.prior_rays_per_batch=64",
                            "pretrain.eval_rays_per_chunk=4096", "refine.patch_size=16", "refine.disc_tile=8",
                            "refine.disc_channels=4", "refine.disc_max_channels=8", "refine.rays_per_batch=128",
                            "refine.prior_rays_per_batch=64"],
                 train_steps=3, train_overrides=["data.scenes=2", "data.views_per_scene=3", "data.width=64", "data.height=48",
                                                 "data.supersample=1", "data.first_seed=50000", "vae.crop=32",
                                                 "vae.loop.batch=2", "unet.loop.batch=4", "unet.encode_batch=4",
                                                 "depth.input_size=56", "depth.loop.batch=2"]),
}


class Check:
    """Runs stages, timing each and reading its peak GPU memory; prints as it goes."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.t0 = out, budget, time.perf_counter()
        self.cuda = torch.cuda.is_available()
        self.results: dict = {"environment": environment(), "stages": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self, share: float = 0.7) -> bool:
        return self.elapsed() > share * self.budget

    def stage(self, name: str, fn, *args, **kwargs):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            value = fn(*args, **kwargs)
        except BaseException as err:
            self.results["stages"][name] = {"error": f"{err.__class__.__name__}: {err}", "seconds": round(time.perf_counter() - t, 2)}
            say(f"{name}: FAILED after {time.perf_counter() - t:.1f} s: {err.__class__.__name__}: {err}")
            self.save()
            raise
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        reserved = torch.cuda.max_memory_reserved() / 2**30 if self.cuda else None
        record = {"seconds": round(seconds, 2), "peak_gpu_gib": _round(peak), "peak_gpu_reserved_gib": _round(reserved),
                  "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
        self.results["stages"][name] = record
        memory = f"peak GPU memory {peak:.2f} GiB (reserved {reserved:.2f})" if self.cuda else "no GPU"
        say(f"{name}: {seconds:.1f} s, {memory}")
        self.save()
        return value

    def note(self, name: str, **values) -> None:
        self.results["stages"].setdefault(name, {}).update(values)
        say(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        self.save()

    def save(self) -> None:
        self.results["elapsed_seconds"] = round(self.elapsed(), 1)
        (self.out / "gpu-check.json").write_text(json.dumps(self.results, indent=1) + "\n")


def _round(x):
    return None if x is None else round(float(x), 2)


def say(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment() -> dict:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "diffusers", "transformers", "nerfstudio", "accelerate", "huggingface_hub"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "versions": versions, "torch_cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
            "cpu_count": os.cpu_count()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="spinnerf")
    parser.add_argument("--out", type=Path, required=True, help="working folder (emptied first)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds the whole check should fit in")
    for key in ("pretrain_steps", "prior_steps", "shards", "refine_steps", "train_steps"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    args = parser.parse_args(argv)
    # the stages' own progress lines (every few seconds) on stderr; library deprecation noise off
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("innout").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    size = dict(SIZES[args.size])
    for key in ("pretrain_steps", "prior_steps", "shards", "refine_steps", "train_steps"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    check = Check(args.out, args.budget)
    env = check.results["environment"]
    say(f"{args.size}: {size['width']}x{size['height']}, {size['n_train']} train + {size['n_test']} test views, "
        f"preset {size['preset']}, model {size['model']} (RANDOM weights: speed and memory only) on {env['device']}; "
        f"torch {env['versions']['torch']} (CUDA {env['torch_cuda']}), diffusers {env['versions']['diffusers']}, "
        f"nerfstudio {env['versions']['nerfstudio']}")
    check.results["size"] = {k: v for k, v in size.items() if k != "overrides"} | {"name": args.size}
    run(check, args, size)
    say(f"done in {check.elapsed():.0f} s; {args.out / 'gpu-check.json'}")
    check.save()
    return check.results


def run(check: Check, args, size: dict) -> None:
    from innout.inpaint import run_inpaint_shard
    from innout.models import fetch_models
    from innout.nerf import tcnn_available
    from innout.pretrain import run_pretrain
    from innout.procedural import write_spinnerf_scene
    from innout.scene import import_scene

    out = args.out
    overrides = [f"device={args.device}", f"models.cache_dir={out / 'models'}", f"pretrain.iterations={size['pretrain_steps']}",
                 f"pretrain.steps_per_checkpoint={size['pretrain_steps']}", f"base.prior_iterations={size['prior_steps']}",
                 f"refine.iterations={max(1, size['refine_steps'])}", *size["overrides"]]
    cfg = load_method_config(size["preset"], overrides, size["model"])

    check.stage("generate", write_spinnerf_scene, out / "source", seed=0, n_train=size["n_train"], n_test=size["n_test"],
                width=size["width"], height=size["height"], downscales=(1,), supersample=1, workers=size["workers"],
                progress=False)
    check.stage("scene", import_scene, out / "source", "spinnerf", out / "scene", downscale=1, poses="provided")
    transforms = out / "scene" / "transforms.json"
    check.stage("models", fetch_models, cfg.models, out / "models", device=args.device)
    manifest = out / "models" / "manifest.json"

    # ---- pretrain: torch, and tcnn where it imports -------------------------------------
    implementations = ["torch"] + (["tcnn"] if check.cuda and tcnn_available() else [])
    if len(implementations) == 1:
        check.note("pretrain", tcnn="not importable here (tiny-cuda-nn is not installed): torch only")
    for impl in implementations:
        if impl != "torch" and check.over_budget(0.3):
            check.note(f"pretrain-{impl}", skipped=f"past 30 % of the {args.budget:.0f} s budget")
            continue
        stage_cfg = load_method_config(size["preset"], [*overrides, f"pretrain.implementation={impl}"], size["model"])
        folder = out / ("pretrain" if impl == "torch" else f"pretrain-{impl}")
        summary = check.stage(f"pretrain-{impl}", run_pretrain, transforms, folder, out / "work" / folder.name, stage_cfg)
        check.note(f"pretrain-{impl}", steps=summary["iterations"], train_seconds=summary["seconds"],
                   steps_per_second=round(summary["iterations"] / max(summary["seconds"], 1e-9), 2),
                   train_rays_per_second=summary["rays_per_second"], quality_patch_seconds=summary["quality_seconds"],
                   views=summary["n_train_views"] + summary["n_test_views"], implementation=summary["implementation"])

    # ---- base view, prior fit ---------------------------------------------------------------
    from innout.base import run_base

    base = check.stage("base", run_base, transforms, out / "pretrain", manifest, out / "base", out / "work" / "base", cfg)
    check.note("base", candidates=len(base["candidates"]) if "candidates" in base else None,
               prior_fit_steps=base["prior_fit"]["iterations"], prior_fit_seconds=round(base["prior_fit"]["seconds"], 2),
               latent=base["inpainting"]["latent_size"])

    # ---- inpaint: shard 0 of N ----------------------------------------------------------------
    shard_dir = out / "inpaint-shard-0"
    shard = check.stage("inpaint-shard-0", run_inpaint_shard, transforms, out / "base", shard_dir, cfg, 0, size["shards"],
                        manifest=manifest)
    n_views = len(shard["views"])
    shard_seconds = check.results["stages"]["inpaint-shard-0"]["seconds"]
    check.note("inpaint-shard-0", views=n_views, targets=len(shard["targets"]), shards=size["shards"],
               ela_seconds=round(shard["ela_seconds"], 2), variants_seconds={k: round(v, 2) for k, v in shard["inpaint_seconds"].items()},
               depth_seconds=round(shard["depth_seconds"], 2), dtype=shard["dtype"], latent=shard["latent_size"],
               projected_stage_gpu_seconds=round(shard_seconds * size["shards"], 1))

    refine_stage(check, args, size, transforms, cfg, shard_dir)
    train_stage(check, args, size)


def refine_stage(check: Check, args, size: dict, transforms: Path, cfg, shard_dir: Path) -> None:
    """A few refine steps on the views shard 0 inpainted."""
    out = args.out
    if size["refine_steps"] <= 0:
        return
    if check.over_budget():
        check.note("refine", skipped=f"past 70 % of the {args.budget:.0f} s budget")
        return
    from innout.refine import run_refine

    inpaint_dir = out / "inpaint"
    shutil.copytree(shard_dir / "images", inpaint_dir / "images")
    (inpaint_dir / "summary.json").write_text(json.dumps({"weights": "random", "note": "shard 0 only (gpu check)"}))
    refine = check.stage("refine", run_refine, transforms, out / "base", inpaint_dir, out / "refine", out / "work" / "refine", cfg)
    check.note("refine", steps=refine["iterations"], train_seconds=refine["seconds"],
               steps_per_second=round(refine["iterations"] / max(refine["seconds"], 1e-9), 2),
               patch_size=refine["patch_size"], patch_views=len(refine["patch_views"]))


def train_stage(check: Check, args, size: dict) -> None:
    """``train-models`` on the check's device: the shipped recipe's sizes, short loops."""
    from innout.training import TrainConfig, apply_overrides, train_models

    if size["train_steps"] <= 0:
        return
    if check.over_budget():
        check.note("train-models", skipped=f"past 70 % of the {args.budget:.0f} s budget")
        return
    recipe = TrainConfig()
    full = {name: getattr(recipe, name).loop.steps for name in ("vae", "unet", "depth")}
    steps = {"unet": size["train_steps"]}
    for name in ("vae", "depth"):  # the same share of each model's recipe as the UNet's
        steps[name] = max(2, round(full[name] * size["train_steps"] / full["unet"]))
    cfg = apply_overrides(TrainConfig(seed=0, threads=os.cpu_count() or 1, device=args.device),
                          [f"data.workers={size['workers']}", *size["train_overrides"],
                           *(f"{name}.loop.steps={n}" for name, n in steps.items())])
    manifest = check.stage("train-models", train_models, args.out / "procedural", cfg, args.out / "work" / "train-models",
                           max_depth_rel_error=None)  # a few steps cannot learn: no refusal
    results, phases = manifest["results"], manifest["phase_seconds"]
    per_step = {name: results[name]["seconds"] / max(results[name]["steps"], 1) for name in full}
    # (the short loops' first steps, with the GPU's warm-up, weigh more than in a long run: an upper bound)
    projected = sum(full[name] * per_step[name] for name in full) + phases["data"] + phases["samples"]
    rates = {name: round(1 / max(per_step[name], 1e-9), 2) for name in full}
    check.note("train-models", device=manifest["device"], steps=steps, steps_per_second=rates,
               phase_seconds=phases, projected_recipe_seconds=round(projected, 1))
    shutil.rmtree(args.out / "procedural", ignore_errors=True)


if __name__ == "__main__":
    main()
