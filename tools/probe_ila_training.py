#!/usr/bin/env python
"""Does an inpainter use the base view through ILA, and can more ILA training teach it to?

ILA only makes the targets' fills agree with the base view's if a target's attention to
the base's keys and values carries content. This probe measures that on latent samples
of procedural scenes that no training run uses (seeds ``--probe-seed`` on, disjoint from
the training scenes and from ``innout.training.data.RESERVED_SEEDS``): for object-removal
samples at t >= 500 (where the fill's content is decided), the error of the implied clean
latent inside the hole, x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), MSE per latent channel,

* ``alone``: the target by itself (ILA off);
* ``same scene``: ILA at lambda 0.2 (the workflow's default) with another view of the
  same scene as the base, noised at the same timestep (as in the workflow);
* ``other scene``: ILA with a view of another scene as the base;
* ``itself``: ILA with the target itself as the base, under other noise: its content
  sits at the very positions the target needs it, the easiest base to copy from.

First, how far attention can move the output at all (``attention reach``), and where it
looks: the fraction of target tokens whose strongest attention to another view of the scene
falls on their counterpart (``counterpart attention``, :mod:`innout.training.counterparts`;
chance is a few per cent). A model that
takes content from the base scores ``same scene`` below ``alone``; one whose
attention to the base is only a disturbance scores both alike, and ``other scene`` worse.
All three with the base at the target's timestep (as in the workflow) and at a third of it
(a less noisy base: with ``itself`` there, an attention that can copy gains a lot).

The same three on **hidden-pattern** samples (:mod:`innout.training.hidden_pattern`: a random
colour pattern painted in 3D behind a reference view's object, which only that reference,
the base, shows in full): there a model that reads the base through ILA scores ``ref base``
well below ``alone``. Measured with the base at the target's timestep (as the workflow runs
it) and at a third of it (a less noisy base: an upper bound of what the base can give).

Then (``--steps N``) it continues training a copy of the model the project's own way
(:func:`innout.training.inpainter.train_unet`, on the shipped training scenes) with ILA
pairs in ``--ila-fraction`` of the steps (``--self-fraction`` of them with the target as its
own base), hidden-pattern pairs in ``--pattern-fraction``,
the base with gradient (``--base-gradient``) and the hole's pixels weighted
``--hole-weight``, and measures again; or (``--fresh-unet``) trains a new UNet by the shipped
recipe with another ILA fraction and the changes ``--set unet.KEY=VALUE`` names (as
``innout train-models --set``: another architecture, self pairs from the first step). Nothing
is saved unless ``--save``.

    .venv/bin/python tools/probe_ila_training.py                       # the shipped procedural set, 1200 steps
    .venv/bin/python tools/probe_ila_training.py --steps 0             # measure only
    .venv/bin/python tools/probe_ila_training.py --steps 4000 --pattern-fraction 0.4 --ila-fraction 0.5 \
        --base-gradient --lr 5e-4 --ila-lambda 0 0.3 --hole-weight 2 --save /tmp/ila-ft   # the README's run
    .venv/bin/python tools/probe_ila_training.py --steps 1500 --ila-fraction 0.7 --self-fraction 0.5 \
        --lr 3e-4 --ila-lambda 0 0.3 --hole-weight 2 --save /tmp/ila-self                  # with the target as its own base
    .venv/bin/python tools/probe_ila_training.py --fresh-unet --steps 2400 --ila-fraction 0 --save /tmp/no-ila
                                                       # the shipped recipe without ILA steps
    .venv/bin/python tools/probe_ila_training.py --fresh-unet --steps 2400 --ila-fraction 0.5 \
        --set unet.ila_self_fraction=0.5 --save /tmp/fresh-self     # a new UNet taught to copy from the start
    .venv/bin/python tools/probe_ila_training.py --fresh-unet --steps 2400 --ila-fraction 0.5 \
        --set unet.ila_self_fraction=0.5 --set unet.attention_levels=3 --set unet.layers_per_block=2 \
        --set unet.head_width=16 --save /tmp/fresh-heavy                     # the same with twice the attention
    .venv/bin/python tools/probe_ila_training.py --fresh-unet --steps 2400 --ila-fraction 1.0 \
        --set unet.ila_self_fraction=1.0 --set "unet.ila_lambda=[0.0,0.0]" \
        --save /tmp/fresh-copy                            # only the base's keys/values, always itself
    .venv/bin/python tools/probe_ila_training.py --weights /tmp/fresh-copy --steps 4800 --lr 1e-3 \
        --ila-fraction 1.0 --self-fraction 1.0 --ila-lambda 0 0 --hole-weight 1.0   # the same lesson, 3x the steps
    .venv/bin/python tools/probe_ila_training.py --fresh-unet --steps 2400 --ila-fraction 1.0 \
        --set unet.ila_self_fraction=1.0 --set "unet.ila_lambda=[0.0,0.0]" \
        --set unet.ila_base_gradient=true --save /tmp/fresh-copy-kv      # the same lesson, keys/values trained
    .venv/bin/python tools/probe_ila_training.py --steps 3000 --lr 3e-4 --ila-fraction 0.5 --pattern-fraction 0.4 \
        --base-gradient --ila-lambda 0 0 --hole-weight 1 --attention-weight 0.05 \
        --save /tmp/ila-counterparts           # the attention also told where each token's counterpart is
    .venv/bin/python tools/probe_ila_training.py --fresh-unet --steps 2400 --ila-fraction 0.5 \
        --set unet.ila_attention_weight=0.05 --set unet.pattern_fraction=0.4 --set unet.ila_base_gradient=true \
        --save /tmp/fresh-counterparts         # the same lesson from a new UNet's first step
"""

from __future__ import annotations

import argparse
import logging
import dataclasses
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from innout.ila import ILAController, ila_installed  # noqa: E402
from innout.models import dtype_keyword  # noqa: E402
from innout.training.counterparts import Counterparts, attention_loss  # noqa: E402
from innout.training.data import DataConfig, Views, render_views  # noqa: E402
from innout.training.hidden_pattern import PatternPairs, build_pattern_samples  # noqa: E402
from innout.training import TrainConfig, apply_overrides, save_half, sub_seed  # noqa: E402
from innout.training.inpainter import (PairSampler, UnetConfig, build_samples, build_unet, eps_with_base,  # noqa: E402
                                       noisy_inputs, train_unet)
from innout.training.loop import LoopConfig  # noqa: E402

WORKFLOW_LAMBDA = 0.2  # inpaint.ila_lambda's default
HOLE_NOISE_OFFSET = UnetConfig().hole_noise_offset


def load_pipe(weights: Path):
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline.from_pretrained(weights / "inpainter", safety_checker=None,
                                                          requires_safety_checker=False, **{dtype_keyword(): torch.float32})


def latent_samples(pipe, data_cfg: DataConfig, seed: int, pattern_amplitude: float,
                   pattern_mean: str = "random") -> tuple[dict, dict, Views]:
    """Plain samples (as ``innout train-models`` builds them), hidden-pattern samples and the views."""
    t0 = time.perf_counter()
    views = render_views(data_cfg)
    cfg = UnetConfig()
    samples = build_samples(pipe, views, cfg, seed)
    pattern = build_pattern_samples(pipe, views, pattern_amplitude, cfg.pattern_references, seed + 1, mean=pattern_mean)
    print(f"  {len(views)} views of {data_cfg.scenes} scenes (seeds {data_cfg.first_seed}-"
          f"{data_cfg.first_seed + data_cfg.scenes - 1}) -> {len(samples['target'])} samples, "
          f"{len(pattern['target'])} hidden-pattern samples in {time.perf_counter() - t0:.0f} s", flush=True)
    return samples, pattern, views


def other_scene_views(pairs: PairSampler, scene_of: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each target, an object-removal sample of another scene (drawn until it is one)."""
    picks = []
    for target in targets.tolist():
        while True:
            pick = int(pairs.candidates[torch.randint(0, len(pairs.candidates), (1,), generator=gen)])
            if int(scene_of[pick]) != int(scene_of[target]):
                picks.append(pick)
                break
    return torch.tensor(picks)


@torch.no_grad()
def x0_errors(pipe, data: dict, embeds: torch.Tensor, draw, names: tuple[str, ...], base_t_fraction: float = 1.0,
              batches: int = 16, batch: int = 16, seed: int = 123) -> dict:
    """Mean x0 MSE in the hole per latent channel at t in [500, 1000): the target alone, and
    with each of the bases ``draw(batch, gen) -> (targets, (bases, other bases, ...))`` gives
    (ILA at the workflow's lambda, the base at ``base_t_fraction`` x the target's t)."""
    unet = pipe.unet.eval()
    alphas = pipe.scheduler.alphas_cumprod.to(torch.float32)
    controller = ILAController()
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(("alone", *names), 0.0)
    prompt = embeds.expand(batch, -1, -1)
    with ila_installed(unet, controller):
        for _ in range(batches):
            t = torch.randint(500, 1000, (batch,), generator=gen)
            t_base = (t.float() * base_t_fraction).long()
            targets, bases = draw(batch, gen)
            x_in, noise, hole = noisy_inputs(data, targets, t, alphas, gen, HOLE_NOISE_OFFSET)
            to_x0 = ((1 - alphas[t]) / alphas[t]).view(-1, 1, 1, 1)  # eps error -> x0 error, squared

            def error(eps: torch.Tensor) -> float:
                return float(((eps - noise) ** 2 * to_x0 * hole).sum() / (hole.sum() * eps.shape[1]))

            controller.off()
            sums["alone"] += error(unet(x_in, t, encoder_hidden_states=prompt).sample)
            base_gen_state = gen.get_state()
            for name, chosen in zip(names, bases):
                gen.set_state(base_gen_state)  # every base gets the same noise draw
                base_in, _, _ = noisy_inputs(data, chosen, t_base, alphas, gen, HOLE_NOISE_OFFSET)
                sums[name] += error(eps_with_base(unet, controller, base_in, t_base, x_in, t, WORKFLOW_LAMBDA, prompt))
    unet.train()
    return {k: v / batches for k, v in sums.items()}


def hole_x0_errors(pipe, data: dict, embeds: torch.Tensor, base_t_fraction: float = 1.0) -> dict:
    """Plain pairs: another view of the same scene as the base, a view of another scene, or
    the target itself (its own clean latent under other noise: content at the very pixels
    the target needs it, the easiest base there is to copy from)."""
    pairs = PairSampler(data)

    def draw(batch: int, gen: torch.Generator):
        targets, same = pairs.sample(batch, gen)
        return targets, (same, other_scene_views(pairs, data["scene"], targets, gen), targets)

    return x0_errors(pipe, data, embeds, draw, ("same scene", "other scene", "itself"), base_t_fraction)


def pattern_x0_errors(pipe, data: dict, embeds: torch.Tensor, base_t_fraction: float = 1.0) -> dict:
    """Hidden-pattern targets (half their hole painted or more): their reference as the base,
    or the reference of another pattern (another scene's, or the same scene's other one)."""
    pairs = PatternPairs(data, 0.5)

    def draw(batch: int, gen: torch.Generator):
        targets, bases = pairs.sample(batch, gen)
        others = []
        for target in targets.tolist():
            while True:
                pick = int(data["base"][int(pairs.targets[torch.randint(0, len(pairs.targets), (1,), generator=gen)])])
                if int(data["group"][pick]) != int(data["group"][target]):
                    others.append(pick)
                    break
        return targets, (bases, torch.tensor(others))

    return x0_errors(pipe, data, embeds, draw, ("ref base", "other pattern"), base_t_fraction, seed=321)


@torch.no_grad()
def attention_reach(pipe, data: dict, embeds: torch.Tensor, batch: int = 16, seed: int = 99) -> tuple[float, float]:
    """How far the self-attention paths can move the output: the mean change of the predicted
    noise, relative to its mean magnitude, when every ``attn1`` takes another sample's keys and
    values (ILA at lambda 0; object-removal samples at t >= 500), and the same with the
    sample's own (must be 0: ILA's plumbing)."""
    unet = pipe.unet.eval()
    alphas = pipe.scheduler.alphas_cumprod.to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    index = PairSampler(data).candidates[:batch]
    t = torch.randint(500, 1000, (len(index),), generator=gen)
    x_in, _, _ = noisy_inputs(data, index, t, alphas, gen, HOLE_NOISE_OFFSET)
    prompt = embeds.expand(len(index), -1, -1)
    controller = ILAController()
    with ila_installed(unet, controller):
        controller.off()
        alone = unet(x_in, t, encoder_hidden_states=prompt).sample

        def change(base_in: torch.Tensor, t_base: torch.Tensor) -> float:
            eps = eps_with_base(unet, controller, base_in, t_base, x_in, t, 0.0, prompt)
            return float((eps - alone).abs().mean() / alone.abs().mean())

        reach = change(x_in.roll(1, 0), t.roll(1, 0)), change(x_in, t)
    unet.train()
    return reach


@torch.no_grad()
def counterpart_hits(pipe, data: dict, views: Views, embeds: torch.Tensor, batches: int = 4, batch: int = 16,
                     seed: int = 77) -> float:
    """Fraction of target tokens (with a counterpart in the base) whose strongest attention to
    the base (head mean, ILA at lambda 0, another view of the scene at the same t >= 500)
    lands on their counterpart (:mod:`innout.training.counterparts`)."""
    unet = pipe.unet.eval()
    alphas = pipe.scheduler.alphas_cumprod.to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    pairs, controller = PairSampler(data), ILAController()
    counterparts = Counterparts(views, tuple(data["target"].shape[-2:]), UnetConfig().ila_attention_sigma)
    prompt = embeds.expand(batch, -1, -1)
    rates = []
    with ila_installed(unet, controller):
        for _ in range(batches):
            t = torch.randint(500, 1000, (batch,), generator=gen)
            targets, bases = pairs.sample(batch, gen)
            base_in, _, _ = noisy_inputs(data, bases, t, alphas, gen, HOLE_NOISE_OFFSET)
            x_in, _, _ = noisy_inputs(data, targets, t, alphas, gen, HOLE_NOISE_OFFSET)
            kept: list = []
            eps_with_base(unet, controller, base_in, t, x_in, t, 0.0, prompt, attention=kept)
            rates.append(attention_loss(kept, counterparts, data["view"][targets], data["view"][bases])[1])
    unet.train()
    return sum(rates) / len(rates)


def report(label: str, pipe, probe: dict, pattern: dict, embeds: torch.Tensor, views: Views) -> None:
    other, own = attention_reach(pipe, probe, embeds)
    print(f"{label} attention reach: another sample's keys/values in every attn1 (lambda 0) move the predicted "
          f"noise by {other:.1%} of its mean magnitude (its own: {own:.1%})", flush=True)
    print(f"{label} counterpart attention: {counterpart_hits(pipe, probe, views, embeds):.1%} of the target tokens attend "
          "most to their counterpart in another view (head mean, lambda 0, same t)", flush=True)
    print_errors(f"{label} plain pairs, base at t", hole_x0_errors(pipe, probe, embeds))
    print_errors(f"{label} plain pairs, base at t/3", hole_x0_errors(pipe, probe, embeds, 1 / 3))
    print_errors(f"{label} hidden pattern, base at t", pattern_x0_errors(pipe, pattern, embeds))
    print_errors(f"{label} hidden pattern, base at t/3", pattern_x0_errors(pipe, pattern, embeds, 1 / 3))


def print_errors(label: str, errors: dict) -> None:
    alone = errors["alone"]
    cells = ", ".join(f"{k} {v:.4f} (x{v / alone:.3f})" for k, v in errors.items())
    print(f"{label}: hole x0 MSE {cells}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=REPO / "src" / "innout" / "weights" / "procedural")
    ap.add_argument("--steps", type=int, default=1200, help="further training steps (0: measure only)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ila-fraction", type=float, default=0.7)
    ap.add_argument("--ila-lambda", type=float, nargs=2, default=(0.1, 0.3))
    ap.add_argument("--hole-weight", type=float, default=4.0)
    ap.add_argument("--self-fraction", type=float, default=0.0, help="ILA pairs whose base is the target itself")
    ap.add_argument("--pattern-fraction", type=float, default=0.0, help="steps on hidden-pattern pairs")
    ap.add_argument("--pattern-amplitude", type=float, default=UnetConfig().pattern_amplitude)
    ap.add_argument("--base-gradient", action="store_true", help="ILA steps train the base's keys and values too")
    ap.add_argument("--attention-weight", type=float, default=0.0,
                    help="weight of the cross-entropy that teaches the attention to the base where each token's "
                         "counterpart is (unet.ila_attention_weight)")
    ap.add_argument("--probe-seed", type=int, default=20_000, help="first seed of the probe's 8 scenes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fresh-unet", action="store_true",
                    help="train a new UNet by the shipped recipe (innout train-models' unet settings and seed; the "
                         "probe's own draw of training masks) instead, taking only --steps, --ila-fraction and --set from the "
                         "command line")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="unet.KEY=VALUE",
                    help="with --fresh-unet: change the recipe as innout train-models --set does (repeatable), "
                         "e.g. unet.attention_levels=3 unet.ila_self_fraction=0.5")
    ap.add_argument("--save", type=Path, help="write the further-trained inpainter here (a diffusers folder)")
    args = ap.parse_args(argv)
    if args.overrides and not args.fresh_unet:
        ap.error("--set goes with --fresh-unet (a trained UNet keeps its architecture)")
    if any(not item.startswith("unet.") for item in args.overrides):
        ap.error("--set takes unet.KEY=VALUE only (the probe trains the UNet alone)")
    try:  # a wrong key fails here, not after the first measurement
        recipe = apply_overrides(TrainConfig(), args.overrides).unet
    except ValueError as err:
        ap.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the training loop's progress lines
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    pipe = load_pipe(args.weights)
    embeds = pipe.encode_prompt("", torch.device("cpu"), 1, False)[0].detach()
    print("probe scenes:", flush=True)
    probe, probe_pattern, probe_views = latent_samples(pipe, DataConfig(scenes=8, first_seed=args.probe_seed),
                                                       args.seed + 1, args.pattern_amplitude)
    report("before", pipe, probe, probe_pattern, embeds, probe_views)
    if args.steps <= 0:
        return 0

    print("training scenes (those of innout train-models):", flush=True)
    # the probe scenes keep the random-mean patterns (figures comparable across lessons); the
    # training scenes take the recipe's (--set unet.pattern_mean=background: only the detail hidden)
    train, train_pattern, train_views = latent_samples(pipe, DataConfig(), args.seed + 2, args.pattern_amplitude,
                                                       recipe.pattern_mean if args.fresh_unet else "random")
    if args.fresh_unet:  # the recipe of the shipped set, but for the ILA fraction, the steps and --set
        cfg = dataclasses.replace(recipe, ila_fraction=args.ila_fraction, loop=dataclasses.replace(recipe.loop, steps=args.steps))
        seed = sub_seed(args.seed, "unet")
        pipe.unet = build_unet(cfg, pipe.text_encoder.config.hidden_size, seed)
        print(f"a fresh UNet of {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f} M parameters: "
              f"{cfg.block_out_channels} channels, attention at {cfg.attention_levels} levels and the mid block, "
              f"{cfg.layers_per_block} layers per block, heads {cfg.head_width} wide", flush=True)
    else:
        cfg = dataclasses.replace(recipe, ila_fraction=args.ila_fraction, ila_lambda=tuple(args.ila_lambda),
                                  ila_self_fraction=args.self_fraction,
                                  hole_weight=args.hole_weight, pattern_fraction=args.pattern_fraction,
                                  pattern_amplitude=args.pattern_amplitude, ila_base_gradient=args.base_gradient,
                                  ila_attention_weight=args.attention_weight,
                                  loop=LoopConfig(steps=args.steps, lr=args.lr, batch=16, warmup=20, ema=0.99))
        seed = args.seed
    t0 = time.perf_counter()
    summary = train_unet(pipe, train, embeds, cfg, seed, None, pattern=train_pattern, views=train_views)
    losses = summary.get("final_losses", {})
    print(f"trained {'a fresh UNet ' if args.fresh_unet else ''}{args.steps} {'' if args.fresh_unet else 'more '}steps "
          f"in {time.perf_counter() - t0:.0f} s "
          f"(hidden-pattern steps {cfg.pattern_fraction:.0%}, ILA {cfg.ila_fraction:.0%} of the others "
          f"({cfg.ila_self_fraction:.0%} of them with the target itself as base), lambda {cfg.ila_lambda[0]}-{cfg.ila_lambda[1]}, "
          f"base gradient {cfg.ila_base_gradient}, counterpart attention weight {cfg.ila_attention_weight}, "
          f"hole weight {cfg.hole_weight}, lr {cfg.loop.lr}); final MSE "
          + ", ".join(f"{k[4:]} {v:.4f}" for k, v in losses.items() if k.startswith("mse_"))
          + "".join(f", {k} {v:.3f}" for k, v in losses.items() if k.startswith("attention_")),
          flush=True)
    report("after ", pipe, probe, probe_pattern, embeds, probe_views)
    if args.save:
        save_half(pipe, args.save / "inpainter")
        print("saved", args.save / "inpainter")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
