#!/usr/bin/env python
"""Cost of aligned (ILA) inpainting against independent inpainting, from one run.

The same synthetic views are inpainted three ways, on the same loaded model:

* ``ila``: the base view plus ``--targets`` targets, ILA on (the base's trajectory is
  computed once per step and its K/V reused by every target batch);
* ``independent targets``: the targets alone, ILA off;
* ``independent all``: base and targets, ILA off (the same views as ``ila``).

and the script prints the denoising-loop times and the ratios ``ila / independent``
(goal: <= 1.3 against the targets alone). The released In-N-Out code re-denoises the
base beside every target, i.e. about twice the independent cost.

CPU (random SD2 architecture at reduced resolution)::

    python tools/bench_ila.py --model sd2-random --resolution 256 --steps 4 --targets 3

GPU, the paper's setting::

    python tools/bench_ila.py --model sd2-random --device cuda --resolution 512 --steps 20 --targets 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from innout.diffusion import denoise, initial_noise, prepare_views  # noqa: E402
from innout.ila import ILAController  # noqa: E402
from innout.models import load_inpainter, resolve_device  # noqa: E402
from innout.provenance import RANDOM_WEIGHTS_WARNING  # noqa: E402


def synthetic_views(n: int, size: int, seed: int = 0):
    """Smooth random images (low-frequency noise, upsampled) with a box mask each."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        coarse = rng.random((8, 8, 3)).astype(np.float32)
        img = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(size, size), mode="bicubic")
        images.append((img[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8))
        m = np.zeros((size, size), bool)
        a, b = size // 4 + i % 4, 3 * size // 4 - i % 3
        m[a:b, a:b] = True
        masks.append(m)
    return images, masks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | sd2-random | a local folder | a hub id in --cache-dir")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ila-lambda", type=float, default=0.2)
    ap.add_argument("--guidance-scale", type=float, default=7.5)
    ap.add_argument("--scheduler", default="pipeline")
    ap.add_argument("--repeats", type=int, default=1, help="timed repetitions of each mode (the minimum is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    pipe = load_inpainter(args.model, device=device, dtype=args.dtype, cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0

    n = args.targets + 1
    images, masks = synthetic_views(n, args.resolution)
    views = prepare_views(pipe, images, masks, args.resolution, args.batch_size)
    lat_hw = tuple(views["masked_latents"].shape[2:])
    init = initial_noise(n, lat_hw, seed=0)
    common = dict(steps=args.steps, guidance_scale=args.guidance_scale, batch_size=args.batch_size,
                  scheduler=args.scheduler, progress=False)
    targets = list(range(1, n))

    def run(mode: str) -> tuple[float, float, ILAController]:
        ctl = ILAController()
        idx = targets if mode == "independent targets" else list(range(n))
        kwargs = dict(common, controller=ctl)
        if mode == "ila":
            kwargs.update(ila_lambda=args.ila_lambda, base_index=0)
        else:
            kwargs.update(ila_lambda=None)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        denoise(pipe, views["mask"][idx], views["masked_latents"][idx], init[idx], **kwargs)
        _sync(device)
        return time.perf_counter() - start, time.process_time() - cpu_start, ctl

    # warm-up (first calls allocate and pick kernels), one step each way
    denoise(pipe, views["mask"][:2], views["masked_latents"][:2], init[:2], **dict(common, steps=1), ila_lambda=args.ila_lambda, base_index=0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    modes = ["independent targets", "ila", "independent all"]
    times = {m: [] for m in modes}
    cpu_times = {m: [] for m in modes}
    store = 0
    peak_mem = {}
    for _ in range(args.repeats):
        for m in modes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, cpu_seconds, ctl = run(m)
            times[m].append(seconds)
            cpu_times[m].append(cpu_seconds)
            store = max(store, ctl.peak_bytes)
            if device.type == "cuda":
                peak_mem[m] = max(peak_mem.get(m, 0), torch.cuda.max_memory_allocated(device))
    best = {m: min(v) for m, v in times.items()}
    best_cpu = {m: min(v) for m, v in cpu_times.items()}
    result = {
        "model": args.model, "device": str(device), "dtype": str(pipe.unet.dtype).replace("torch.", ""),
        "resolution": args.resolution, "latent": list(lat_hw), "steps": args.steps, "targets": args.targets,
        "batch_size": args.batch_size, "ila_lambda": args.ila_lambda, "threads": torch.get_num_threads(),
        "scheduler": type(pipe.scheduler).__name__ if args.scheduler == "pipeline" else args.scheduler,
        "load_s": round(load_s, 2), "seconds": {m: round(s, 3) for m, s in best.items()},
        "ratio_vs_independent_targets": round(best["ila"] / best["independent targets"], 3),
        "ratio_vs_independent_same_views": round(best["ila"] / best["independent all"], 3),
        "cpu_seconds": {m: round(s, 3) for m, s in best_cpu.items()},
        "cpu_ratio_vs_independent_targets": round(best_cpu["ila"] / best_cpu["independent targets"], 3),
        "cpu_ratio_vs_independent_same_views": round(best_cpu["ila"] / best_cpu["independent all"], 3),
        "base_kv_store_MiB": round(store / 2**20, 2),
    }
    if peak_mem:
        result["peak_gpu_MiB"] = {m: round(b / 2**20) for m, b in peak_mem.items()}
    print(f"model {args.model} on {device} ({result['dtype']}, {result['threads']} threads), "
          f"{args.resolution}px (latent {lat_hw[0]}x{lat_hw[1]}), {args.steps} steps, {args.targets} targets, batch {args.batch_size}")
    for m in modes:
        extra = f"  peak GPU {result['peak_gpu_MiB'][m]} MiB" if peak_mem else ""
        print(f"  {m:<20} {best[m]:8.2f} s wall  {best_cpu[m]:8.2f} s CPU{extra}")
    print(f"  ILA / independent (targets only): {result['ratio_vs_independent_targets']:.3f} wall, "
          f"{result['cpu_ratio_vs_independent_targets']:.3f} CPU   (goal <= 1.3)")
    print(f"  ILA / independent (same views):   {result['ratio_vs_independent_same_views']:.3f} wall, "
          f"{result['cpu_ratio_vs_independent_same_views']:.3f} CPU")
    if device.type == "cpu":
        print("  (on a shared CPU the process CPU time is the steadier measure; on a GPU use wall time)")
    print(f"  base K/V store (one step, all attn1 layers): {result['base_kv_store_MiB']} MiB")
    if args.model in ("tiny", "sd2-random"):
        print(f"  ({RANDOM_WEIGHTS_WARNING}: timings only)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
