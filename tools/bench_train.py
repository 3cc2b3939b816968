#!/usr/bin/env python
"""Benchmark: how long `innout train-models` takes on this machine, against the issue's
45-minute budget, in a few minutes instead of the whole training.

    .venv/bin/python tools/bench_train.py                          # the default recipe, 2 threads
    .venv/bin/python tools/bench_train.py --seed 1 --threads 2 --set unet.loop.steps=9600
    .venv/bin/python tools/bench_train.py --views-from .work/train-models   # its cached views

It runs the real `train_models` once, with each optimisation loop (depth, VAE, UNet) cut to
a few percent of its steps, and times every step. The fixed work (the training views, the
UNet's latent and hidden-pattern samples, model building, evaluation, saving) runs in full
and counts as measured. Each loop's full length is projected from the median seconds of its
steps after the first few (allocation warm-up); the UNet's from each kind of step apart
(plain, ILA pair, hidden-pattern pair, which cost differently) weighted by the recipe's mix,
so the few steps run need not hit the mix. A fresh temporary work dir (the default) times
the views too, as a first run pays them; `--views-from` an earlier run's work dir links its
cached views in (only those: the shortened VAE makes other samples, and that dir's
checkpoints are left alone).

Prints a table per phase and the ratio projected / budget, measured in this one run. Timings
on a shared machine are noisy: compare figures from one run, and run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BUDGET_SECONDS = 45 * 60  # the issue: "the whole training fits in 45 min on 2 cores"
WARMUP_STEPS = 3  # steps left out of each loop's per-step figure (first allocations)
LOOPS = ("depth", "vae", "unet")


def step_kind(entry: dict) -> str:
    """The kind of a UNet step, from the loss parts its history entry holds (the trainer
    logs ``mse_pattern``, ``mse_ila`` or ``mse_plain``); other loops have one kind."""
    for kind in ("pattern", "ila", "plain"):
        if f"mse_{kind}" in entry:
            return kind
    return "step"


def recipe_mix(unet_cfg) -> dict[str, float]:
    """The expected fraction of each kind of UNet step, as ``train_unet`` draws them."""
    pattern = float(unet_cfg.pattern_fraction)
    ila = (1 - pattern) * float(unet_cfg.ila_fraction)
    return {"pattern": pattern, "ila": ila, "plain": 1 - pattern - ila}


class StepClock:
    """Wraps ``Loop.run`` so every step's wall seconds are kept with its kind: the time
    from one step's start to the next's covers its forward, backward, clipping, optimiser,
    EMA and any checkpoint, which is what a full run pays per step."""

    def __init__(self):
        self.steps: dict[str, list[tuple[str, float]]] = {}

    def __enter__(self):
        from innout.training import loop as loop_module

        self._loop_class, self._original = loop_module.Loop, loop_module.Loop.run
        original, clock = self._original, self

        def timed_run(loop, step_fn):
            starts: list[float] = []

            def timed_step(step, generator):
                starts.append(time.perf_counter())
                return step_fn(step, generator)

            summary = original(loop, timed_step)
            ends = starts[1:] + [time.perf_counter()]  # the last step ends with the loop (EMA copy, save)
            kinds = [step_kind(e) for e in loop.history[len(loop.history) - len(starts):]]
            clock.steps[loop.name] = [(k, end - start) for k, start, end in zip(kinds, starts, ends)]
            return summary

        self._loop_class.run = timed_run
        return self

    def __exit__(self, *exc):
        self._loop_class.run = self._original
        return False

    def seconds_per_step(self, name: str) -> dict[str, float]:
        """Median seconds per step of each kind, warm-up steps left out."""
        timed = self.steps.get(name, [])[WARMUP_STEPS:]
        kinds = dict.fromkeys(k for k, _ in timed)
        return {k: statistics.median(s for kk, s in timed if kk == k) for k in kinds}


def cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat (Linux): the share a virtual
    machine's host took back, which slows every step alike."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def shortened(cfg, fraction: float, min_steps: int) -> dict[str, int]:
    """Cut every loop of ``cfg`` to ``fraction`` of its steps (at least ``min_steps``), in
    place; returns the full step counts."""
    full = {}
    for name in LOOPS:
        loop_cfg = getattr(cfg, name).loop
        full[name] = int(loop_cfg.steps)
        loop_cfg.steps = min(full[name], max(min_steps, math.ceil(full[name] * fraction)))
    return full


def project(manifest: dict, clock: StepClock, full_steps: dict[str, int], mix: dict[str, float]) -> list[dict]:
    """One row per phase: measured seconds, and projected seconds at the full step counts."""
    phases = manifest["phase_seconds"]
    rows = []
    for phase, measured in phases.items():
        row = {"phase": phase, "measured_s": measured, "projected_s": measured}
        if phase in LOOPS:
            timed = clock.steps.get(phase, [])
            loop_seconds = sum(s for _, s in timed)
            per_step = clock.seconds_per_step(phase)
            if phase == "unet":
                missing = [k for k, share in mix.items() if share > 0 and k not in per_step]
                if missing:
                    raise SystemExit(f"bench_train: no timed UNet step of kind {', '.join(missing)}: "
                                     f"raise --fraction or --min-steps")
                step_seconds = sum(share * per_step[k] for k, share in mix.items() if share > 0)  # at the mix
            else:
                step_seconds = per_step["step"]
            row.update(steps_run=len(timed), steps_full=full_steps[phase], step_s=round(step_seconds, 5),
                       seconds_per_step={k: round(v, 4) for k, v in per_step.items()},
                       projected_s=measured - loop_seconds + step_seconds * full_steps[phase])
        rows.append(row)
    rest = manifest["wall_seconds"] - sum(phases.values())  # saving, the loss curves
    rows.append({"phase": "save", "measured_s": rest, "projected_s": rest})
    return rows


def print_table(rows: list[dict], mix: dict[str, float], kinds_run: dict[str, int], threads: int,
                steal: float | None) -> float:
    print(f"\n{'phase':<8} {'measured s':>11} {'steps run / full':>17} {'s per step (median)':<40} {'projected s':>11}")
    for row in rows:
        steps = f"{row['steps_run']} / {row['steps_full']}" if "steps_run" in row else ""
        per_step = " ".join(f"{k} {v:.3f}" for k, v in row.get("seconds_per_step", {}).items())
        print(f"{row['phase']:<8} {row['measured_s']:>11.1f} {steps:>17} {per_step:<40} {row['projected_s']:>11.1f}")
    total = sum(r["projected_s"] for r in rows)
    if steal is not None:
        print(f"CPU time stolen by the host during the run: {steal:.1%}")
    print(f"UNet step mix: recipe " + ", ".join(f"{k} {v:.0%}" for k, v in mix.items())
          + "; timed " + ", ".join(f"{k} {n}" for k, n in kinds_run.items()))
    print(f"projected train-models: {total:.0f} s ({total / 60:.1f} min) on {threads} threads; "
          f"budget {BUDGET_SECONDS} s: ratio projected / budget = {total / BUDGET_SECONDS:.2f}")
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="the recipe's seed (the shipped set: 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting, as `innout train-models --set` (repeatable)")
    parser.add_argument("--fraction", type=float, default=0.03, help="share of each loop's steps to run")
    parser.add_argument("--min-steps", type=int, default=30, help="at least this many steps per loop")
    parser.add_argument("--views-from", help="a train-models work dir whose cached views to reuse (default: none, "
                        "as a first run)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1 or args.min_steps <= WARMUP_STEPS:
        parser.error(f"--fraction must be in (0, 1] and --min-steps above {WARMUP_STEPS}")

    from innout.stage import setup_logging
    from innout.training import TrainConfig, apply_overrides, train_models

    setup_logging(None)  # the training's progress lines, every few seconds
    try:
        cfg = apply_overrides(TrainConfig(seed=args.seed, threads=args.threads, device=args.device), args.set)
    except ValueError as err:
        parser.error(str(err))
    mix = recipe_mix(cfg.unet)
    full_steps = shortened(cfg, args.fraction, args.min_steps)
    jiffies = cpu_jiffies()
    with StepClock() as clock, tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        if args.views_from:
            for views in sorted(Path(args.views_from).glob("views-*.npz")):
                (work / views.name).symlink_to(views.resolve())
        # the short depth model is not meant to pass the trained-model check
        manifest = train_models(Path(tmp) / "out", cfg, work, command="bench_train", max_depth_rel_error=None)
    steal = None
    if jiffies is not None and (now := cpu_jiffies()) is not None and now[1] > jiffies[1]:
        steal = (now[0] - jiffies[0]) / (now[1] - jiffies[1])
    rows = project(manifest, clock, full_steps, mix)
    kinds_run = Counter(kind for kind, _ in clock.steps.get("unet", []))
    total = print_table(rows, mix, kinds_run, args.threads, steal)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "projected_s": total, "budget_s": BUDGET_SECONDS,
                                               "ratio": total / BUDGET_SECONDS, "threads": args.threads,
                                               "views_from": args.views_from, "steal": steal}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
