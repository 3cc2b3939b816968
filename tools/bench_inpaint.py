#!/usr/bin/env python
"""Cost of the inpaint stage's two alignments, measured in one run on the same views.

On a trained NeRF and its scene (the demo's pre-trained NeRF by default), with one
loaded inpainter, the script takes a base view and ``--targets`` target views and times:

* ``ELA``: aligning the targets' initial latents to a base noise through the NeRF
  (:func:`innout.ela.align_noise_views`: latent-resolution rays with their samples,
  base-noise compositing);
* ``ILA``: inpainting the base and the targets together with ILA
  (:func:`innout.diffusion.inpaint_views`: the base trajectory once per step, its K/V
  reused by every target batch), starting from the ELA latents: the method;
* ``independent``: inpainting the same views (base and targets), fresh noise, no ILA;
* with ``--targets-only``, also ``independent targets``: the targets alone (the base's
  own trajectory is then the extra work of ILA; printed for reference),

* with ``--doubled-guidance``, also ``ILA, doubled guidance``: the same ILA inpainting with
  the classifier-free-guidance batch doubled although the empty prompt and negative prompt
  make it a no-op (``skip_identical_guidance=False``, what the loop did before it skipped it),

and prints ``ILA / independent`` on the same views (goal <= 1.3: aligning costs at most
30 % more than not aligning), ``ELA / inpainting`` (ELA time over the ILA inpainting time; goal
<= 0.05) and, with ``--doubled-guidance``, ``ILA one batch / doubled`` (the saving of skipping
a no-op guidance). Both are ratios of wall times (and of process CPU times, steadier on a shared
CPU) from the same run. Not a test: nothing is asserted.

CPU, the SD2-inpainting architecture with random weights at the demo's size (~10 min on
two cores shared with other jobs, ~7 GB of memory)::

    python tools/bench_inpaint.py --model sd2-random --resolution 120 --steps 4 --targets 3

GPU, the paper's setting (a 512 px scene and its NeRF)::

    python tools/bench_inpaint.py --model sd2-random --device cuda --resolution 512 --steps 20 --targets 8 \\
        --nerf results/SCENE/base/nerf --transforms results/SCENE/poses/transforms.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from innout.devices import resolve_device  # noqa: E402
from innout.diffusion import guidance, initial_noise, inpaint_views, latent_size  # noqa: E402
from innout.ela import align_noise_views  # noqa: E402
from innout.inpaint import load_views  # noqa: E402
from innout.models import load_inpainter  # noqa: E402
from innout.provenance import RANDOM_WEIGHTS_WARNING  # noqa: E402
from innout.renderer import NerfRenderer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall and process CPU seconds of a block (the device synchronised at both ends)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sd2-random", help="tiny | sd2-random | a local folder | a hub id in --cache-dir")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--nerf", default="results/demo/pretrain", help="a NeRF folder (NerfRenderer.from_config)")
    ap.add_argument("--transforms", default="results/demo/poses/transforms.json", help="the scene the NeRF was trained on")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--resolution", type=int, default=120)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ila-lambda", type=float, default=0.2)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--targets-only", action="store_true", help="also time independent inpainting of the targets alone")
    ap.add_argument("--doubled-guidance", action="store_true",
                    help="also time ILA with the no-op guidance's doubled batch (skip_identical_guidance=False)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cameras, _ = load_views(Path(args.transforms), names=[])
    names = sorted(cameras)
    chosen = [names[round(i * (len(names) - 1) / args.targets)] for i in range(args.targets + 1)]
    _, views = load_views(Path(args.transforms), chosen)
    base, targets = chosen[0], chosen[1:]
    renderer = NerfRenderer.from_config(args.nerf, device=device)
    t0 = time.perf_counter()
    pipe = load_inpainter(args.model, device=device, dtype=args.dtype, cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0
    width, height = views[base].image.shape[1], views[base].image.shape[0]
    lat_hw = latent_size(width, height, args.resolution)
    base_noise = initial_noise(1, lat_hw, seed=0)[0]
    common = dict(steps=args.steps, guidance_scale=args.guidance_scale, resolution=args.resolution,
                  batch_size=args.batch_size, progress=False)

    def ela():
        return align_noise_views(renderer, views[base].camera, base_noise, {n: views[n].camera for n in targets},
                                 {n: views[n].mask for n in targets}, seed=0)

    def ila(aligned, skip_identical_guidance=True):
        init = torch.stack([base_noise, *[aligned[n].noise for n in targets]])
        return inpaint_views(pipe, [views[n].image for n in chosen], [views[n].mask for n in chosen], init,
                             ila_lambda=args.ila_lambda, base_index=0, skip_identical_guidance=skip_identical_guidance,
                             **common)

    def independent(which):
        init = initial_noise(len(which), lat_hw, seed=1)
        return inpaint_views(pipe, [views[n].image for n in which], [views[n].mask for n in which], init,
                             ila_lambda=None, **common)

    # warm-up: first calls allocate memory and pick kernels
    warm = ela()
    inpaint_views(pipe, [views[base].image], [views[base].mask], base_noise[None], ila_lambda=None, **dict(common, steps=1))
    modes = ["ELA", "independent", *(["independent targets"] if args.targets_only else []), "ILA",
             *(["ILA, doubled guidance"] if args.doubled_guidance else [])]
    timers = {name: Timer(device) for name in modes}
    with timers["ELA"]:
        aligned = ela()
    with timers["independent"]:
        independent(chosen)
    if args.targets_only:
        with timers["independent targets"]:
            independent(targets)
    with timers["ILA"]:
        ila(aligned)
    if args.doubled_guidance:
        with timers["ILA, doubled guidance"]:
            ila(aligned, skip_identical_guidance=False)
    assert warm.keys() == aligned.keys()

    wall = {k: t.wall for k, t in timers.items()}
    cpu = {k: t.cpu for k, t in timers.items()}
    result = {
        "model": args.model, "device": str(device), "dtype": str(pipe.unet.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "view_size": [width, height], "resolution": args.resolution,
        "latent": list(lat_hw), "steps": args.steps, "targets": len(targets), "batch_size": args.batch_size,
        "nerf": str(args.nerf), "load_s": round(load_s, 2),
        "seconds": {k: round(v, 3) for k, v in wall.items()}, "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
        "ila_over_independent": round(wall["ILA"] / wall["independent"], 3),
        "ila_over_independent_cpu": round(cpu["ILA"] / cpu["independent"], 3),

        "ela_over_inpainting": round(wall["ELA"] / wall["ILA"], 4),
        "ela_over_inpainting_cpu": round(cpu["ELA"] / cpu["ILA"], 4),
        "ela_aligned_fraction": {n: round(aligned[n].stats["aligned_fraction"], 3) for n in targets},
    }
    print(f"model {args.model} on {device} ({result['dtype']}, {result['threads']} threads), views {width}x{height} "
          f"at resolution {args.resolution} (latent {lat_hw[0]}x{lat_hw[1]}), {args.steps} steps, base + {len(targets)} targets, "
          f"batch {args.batch_size}; NeRF {args.nerf}")
    for k in modes:
        print(f"  {k:<20} {wall[k]:8.2f} s wall  {cpu[k]:8.2f} s CPU")
    print(f"  ILA / independent (same views): {result['ila_over_independent']:.3f} wall, "
          f"{result['ila_over_independent_cpu']:.3f} CPU   (goal <= 1.3)")
    if args.targets_only:
        result["ila_over_independent_targets"] = round(wall["ILA"] / wall["independent targets"], 3)
        print(f"  ILA / independent (targets only: the base's trajectory is extra): {result['ila_over_independent_targets']:.3f} wall")
    print(f"  ELA / inpainting:               {result['ela_over_inpainting']:.4f} wall, {result['ela_over_inpainting_cpu']:.4f} CPU   (goal <= 0.05)")
    if args.doubled_guidance:
        result["guidance"] = guidance(pipe, "", "", args.guidance_scale)[1]
        result["ila_one_batch_over_doubled"] = round(wall["ILA"] / wall["ILA, doubled guidance"], 3)
        result["ila_one_batch_over_doubled_cpu"] = round(cpu["ILA"] / cpu["ILA, doubled guidance"], 3)
        print(f"  ILA one batch / doubled (guidance {result['guidance']}): {result['ila_one_batch_over_doubled']:.3f} wall, "
              f"{result['ila_one_batch_over_doubled_cpu']:.3f} CPU")
    if args.model in ("tiny", "sd2-random"):
        print(f"  ({RANDOM_WEIGHTS_WARNING}: timings only)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
