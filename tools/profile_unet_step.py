#!/usr/bin/env python
"""Where a UNet training step's time goes on a device: the CPU side (drawing the batch,
launching kernels) against the device's own work, per kind of step.

    .venv/bin/python tools/profile_unet_step.py --device cpu --threads 2
    python3 tools/profile_unet_step.py --device cuda --threads 16 --batch 64   # on a GPU (tools/gpu-wheels.sh first)

It runs the real `train_models` on a few training scenes (4 by default) with short depth and
VAE loops, then 60 UNet steps of the recipe's mix. Each step is timed in two halves with
the device synchronised at both ends: `fwd` (the batch drawn on the CPU, the forward
passes, the losses) and `rest` (backward, clipping, AdamW, EMA, the loss history); the
medians per kind of step (plain, ILA pair, hidden-pattern pair) are printed. Then 12 steps
run under `torch.profiler`: the busiest operations by CPU time, and on a GPU by device
time, and per step the device's busy milliseconds against the CPU's. On the H200
(2026-12-04) the GPU was busy 53 ms of a 264-ms step: bound by kernel launches.

Timings are the machine's of the moment: compare figures from one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_train import step_kind  # the kind of a UNet step from its loss parts (tools/ is on the path)

TIMED_FROM, PROFILED_FROM, PROFILED_STEPS, UNET_STEPS = 5, 44, 12, 60
SHORT_LOOPS = {"vae": 40, "depth": 30}  # steps of the loops before the UNet (speed only)
KINDS = ("pattern", "ila", "plain")


class StepProfiler:
    """Wraps the UNet loop's ``Loop.run``: synchronised halves of every step, and a
    ``torch.profiler`` trace of steps ``PROFILED_FROM`` to ``PROFILED_FROM + PROFILED_STEPS``."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.rows: list[dict] = []
        self.profile = None

    def _sync(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def __enter__(self):
        from innout.training import loop as loop_module

        self._loop_class, self._original = loop_module.Loop, loop_module.Loop.run
        original, probe = self._original, self

        def run(loop, step_fn):
            if loop.name != "unet":
                return original(loop, step_fn)
            ended = [None]
            profiler = None

            def timed_step(step, generator):
                nonlocal profiler
                start = probe._sync()
                if ended[0] is not None:
                    probe.rows[-1]["rest"] = start - ended[0]
                if step == PROFILED_FROM:
                    activities = [torch.profiler.ProfilerActivity.CPU]
                    if probe.cuda:
                        activities.append(torch.profiler.ProfilerActivity.CUDA)
                    profiler = torch.profiler.profile(activities=activities)
                    profiler.__enter__()
                elif step == PROFILED_FROM + PROFILED_STEPS and profiler is not None:
                    profiler.__exit__(None, None, None)
                    probe.profile, profiler = profiler, None
                loss, parts = step_fn(step, generator)
                ended[0] = probe._sync()
                kind = step_kind(parts)
                probe.rows.append({"step": step, "kind": kind, "fwd": ended[0] - start})
                return loss, parts

            return original(loop, timed_step)

        self._loop_class.run = run
        return self

    def __exit__(self, *exc):
        self._loop_class.run = self._original
        return False

    def medians(self) -> dict[str, dict]:
        """Median milliseconds of each half per kind, over the steps before the profiled ones."""
        timed = [r for r in self.rows if TIMED_FROM <= r["step"] < PROFILED_FROM - 1 and "rest" in r]
        out = {}
        for kind in KINDS:
            rows = [r for r in timed if r["kind"] == kind]
            if rows:
                out[kind] = {"steps": len(rows), "fwd_ms": 1000 * statistics.median(r["fwd"] for r in rows),
                             "rest_ms": 1000 * statistics.median(r["rest"] for r in rows)}
        return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="UNet batch (the recipe's: 16)")
    parser.add_argument("--scenes", type=int, default=4, help="training scenes to render (a few: speed only)")
    parser.add_argument("--json", help="also write the medians and per-step totals here")
    args = parser.parse_args(argv)

    from innout.stage import setup_logging
    from innout.training import TrainConfig, apply_overrides, train_models

    setup_logging(None)
    sets = [f"data.scenes={args.scenes}", f"data.workers={args.threads}",
            *(f"{name}.loop.steps={steps}" for name, steps in SHORT_LOOPS.items()), f"unet.loop.steps={UNET_STEPS}", f"unet.loop.batch={args.batch}", "unet.loop.checkpoint_every=1000"]
    cfg = apply_overrides(TrainConfig(seed=1, threads=args.threads, device=args.device), sets)
    with StepProfiler(args.device) as probe, tempfile.TemporaryDirectory(prefix="profile-unet-") as tmp:
        # a few short loops: the depth check would refuse their model
        train_models(Path(tmp) / "out", cfg, Path(tmp) / "work", command="profile_unet_step", max_depth_rel_error=None)

    medians = probe.medians()
    print(f"\nUNet step on {args.device}, {args.threads} threads, batch {args.batch} (median ms; fwd = batch, "
          f"forward passes and losses; rest = backward, clipping, AdamW, EMA, history)")
    for kind, row in medians.items():
        print(f"  {kind:8s} {row['steps']:3d} steps  fwd {row['fwd_ms']:7.1f}  rest {row['rest_ms']:7.1f}  "
              f"total {row['fwd_ms'] + row['rest_ms']:7.1f}")
    result = {"device": args.device, "threads": args.threads, "batch": args.batch, "medians": medians}
    if probe.profile is not None:
        averages = probe.profile.key_averages()
        print(averages.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
        cpu_ms = sum(e.self_cpu_time_total for e in averages) / 1000 / PROFILED_STEPS
        result["cpu_ms_per_step"] = cpu_ms
        if probe.cuda:
            print(averages.table(sort_by="self_device_time_total", row_limit=20, max_name_column_width=60))
            device_ms = sum(e.self_device_time_total for e in averages) / 1000 / PROFILED_STEPS
            result["device_busy_ms_per_step"] = device_ms
            print(f"per profiled step: device busy {device_ms:.1f} ms (its kernels), CPU {cpu_ms:.1f} ms; "
                  f"ratio busy / CPU = {device_ms / cpu_ms:.2f}")
        else:
            print(f"per profiled step: CPU {cpu_ms:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
