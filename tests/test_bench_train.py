"""tools/bench_train.py: the projection of a full train-models run from a shortened one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import bench_train  # noqa: E402
from innout.training import TrainConfig  # noqa: E402
from innout.training.loop import Loop, LoopConfig  # noqa: E402


def _clock(steps: dict) -> bench_train.StepClock:
    clock = bench_train.StepClock()
    clock.steps = steps
    return clock


def test_unet_steps_are_projected_per_kind_at_the_recipes_mix():
    """The few steps run hit the mix by chance: here mostly plain (cheap) steps, which an
    overall per-step figure would project far too low. Warm-up steps are left out."""
    warmup = [("pattern", 30.0)] * bench_train.WARMUP_STEPS
    unet = warmup + [("plain", 0.2)] * 16 + [("ila", 0.5)] * 2 + [("pattern", 1.0)] * 2
    depth = [("step", 9.0)] * bench_train.WARMUP_STEPS + [("step", 0.25)] * 3
    clock = _clock({"unet": unet, "depth": depth})
    loop_seconds = {name: sum(s for _, s in timed) for name, timed in clock.steps.items()}
    manifest = {"phase_seconds": {"data": 30.0, "depth": loop_seconds["depth"] + 5.0, "unet": loop_seconds["unet"] + 1.0},
                "wall_seconds": 30.0 + loop_seconds["depth"] + 5.0 + loop_seconds["unet"] + 1.0 + 2.0}
    mix = {"pattern": 0.4, "ila": 0.3, "plain": 0.3}
    rows = {r["phase"]: r for r in bench_train.project(manifest, clock, {"depth": 300, "unet": 4800}, mix)}
    assert rows["data"]["projected_s"] == 30.0
    assert rows["depth"]["projected_s"] == pytest.approx(5.0 + 0.25 * 300)
    assert rows["unet"]["projected_s"] == pytest.approx(1.0 + (0.4 * 1.0 + 0.3 * 0.5 + 0.3 * 0.2) * 4800)
    assert rows["unet"]["steps_run"] == len(unet)
    assert rows["unet"]["step_s"] == pytest.approx(0.4 * 1.0 + 0.3 * 0.5 + 0.3 * 0.2)  # what sizes a run
    assert rows["save"]["projected_s"] == pytest.approx(2.0)


def test_a_kind_the_recipe_uses_but_no_timed_step_had_is_refused():
    clock = _clock({"unet": [("plain", 0.2)] * 10})
    manifest = {"phase_seconds": {"unet": 2.0}, "wall_seconds": 2.0}
    with pytest.raises(SystemExit, match="no timed UNet step of kind pattern, ila"):
        bench_train.project(manifest, clock, {"unet": 4800}, {"pattern": 0.4, "ila": 0.3, "plain": 0.3})


def test_the_mix_follows_the_recipe_and_the_loops_are_cut_in_place():
    cfg = TrainConfig()
    cfg.unet.pattern_fraction, cfg.unet.ila_fraction = 0.4, 0.5
    assert bench_train.recipe_mix(cfg.unet) == pytest.approx({"pattern": 0.4, "ila": 0.3, "plain": 0.3})
    full = {name: getattr(cfg, name).loop.steps for name in bench_train.LOOPS}
    assert bench_train.shortened(cfg, 0.03, 30) == full
    for name in bench_train.LOOPS:
        assert getattr(cfg, name).loop.steps == min(full[name], max(30, -(-full[name] * 3 // 100)))


def test_the_clock_times_every_step_of_a_real_loop_with_its_kind_and_lets_go_of_it():
    model = torch.nn.Linear(3, 1)
    x = torch.ones(4, 3)

    def step(i, generator):
        loss = model(x).pow(2).mean()
        return loss, {"mse_ila" if i % 2 else "mse_plain": loss.detach()}

    original = Loop.run
    with bench_train.StepClock() as clock:
        Loop("unet", model, LoopConfig(steps=6, lr=1e-3, batch=4), 0, None).run(step)
    assert Loop.run is original
    assert [k for k, _ in clock.steps["unet"]] == ["plain", "ila"] * 3
    assert all(s > 0 for _, s in clock.steps["unet"])
