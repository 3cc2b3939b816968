#!/usr/bin/env python
"""How much ILA can move a fill with a given model set, and why.

On the two held-out procedural scenes (``innout.training.data.MEASUREMENT_SCENES``:
forward 1000, 360 1001; 4 views at the demo's working size, view 0 the base) this inpaints
the three targets from the same initial noise without ILA and with ILA at several
``lambda`` (1 = no base attention, 0 = only the base's keys and values), and prints

* the mean absolute change ILA makes to the targets' fills (grey levels, inside the mask)
  and their PSNR in the mask against the generator's object-free view;
* per self-attention layer (``attn1``), on the first denoising step: the attention's
  normalised entropy (1 = uniform over the layer's tokens) and its largest weight over the
  uniform one, and the size of the attention's output against its input (a layer whose
  output is small, or whose weights are nearly uniform, cannot carry content between views).

    .venv/bin/python tools/measure_ila.py                          # the shipped procedural set
    .venv/bin/python tools/measure_ila.py --weights <folder with inpainter/>
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools"))

from innout.diffusion import initial_noise, inpaint_views, latent_size  # noqa: E402
from innout.training.data import MEASUREMENT_SCENES, DataConfig, render_scene_views  # noqa: E402
from inspect_models import RESOLUTION, psnr_in, silhouette_mask  # noqa: E402

LAMBDAS = (0.5, 0.2, 0.0)  # the workflow's default is 0.2 (inpaint.ila_lambda)


class AttentionStats:
    """Forward hooks on every ``attn1``: entropy and peak of its softmax weights, |out|/|in|.
    Only the first call of each layer is kept (the first denoising step)."""

    def __init__(self, unet):
        self.rows: dict[str, dict] = {}
        self.handles = [module.register_forward_hook(self._hook(name))
                        for name, module in unet.named_modules() if name.endswith("attn1")]

    def _hook(self, name: str):
        def hook(attn, inputs, output):
            if name in self.rows:
                return
            x = inputs[0]
            if x.ndim == 4:  # (B, C, H, W) -> (B, HW, C)
                x = x.flatten(2).transpose(1, 2)
            q, k = attn.to_q(x), attn.to_k(x)
            heads = attn.heads
            d = q.shape[-1] // heads
            q = q.view(q.shape[0], -1, heads, d).transpose(1, 2)
            k = k.view(k.shape[0], -1, heads, d).transpose(1, 2)
            weights = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
            tokens = weights.shape[-1]
            entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1).mean() / math.log(tokens)
            change = (output - inputs[0]) if attn.residual_connection else output
            self.rows[name] = {"tokens": tokens, "entropy": float(entropy),
                               "peak_over_uniform": float(weights.amax(-1).mean() * tokens),
                               "out_over_in": float(change.abs().mean() / inputs[0].abs().mean())}
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def measure_scene(pipe, variant: str, seed: int, n_views: int, steps: int) -> dict:
    views, _ = render_scene_views(variant, seed, DataConfig(views_per_scene=n_views))
    masks = [silhouette_mask(c) for c in views.coverage]
    init = initial_noise(n_views, latent_size(160, 120, RESOLUTION), seed)
    kwargs = dict(steps=steps, guidance_scale=7.5, resolution=RESOLUTION, batch_size=4, progress=False, seed=seed)
    stats = AttentionStats(pipe.unet)
    plain = inpaint_views(pipe, list(views.rgb), masks, init, "", ila_lambda=None, base_index=None, **kwargs)
    stats.remove()
    targets = range(1, n_views)

    def psnr(fills):
        return float(np.mean([psnr_in(masks[i], fills[i], views.background[i]) for i in targets]))

    rows = {"none": {"change": 0.0, "psnr": psnr(plain)}}
    for lam in LAMBDAS:
        fills = inpaint_views(pipe, list(views.rgb), masks, init, "", ila_lambda=lam, base_index=0, **kwargs)
        change = np.mean([np.abs(fills[i].astype(np.float64) - plain[i])[masks[i]].mean() for i in targets])
        rows[f"lambda {lam}"] = {"change": float(change), "psnr": psnr(fills)}
    return {"variant": variant, "seed": seed, "fills": rows, "attention": stats.rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=REPO / "src" / "innout" / "weights" / "procedural")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5, help="denoising steps (the smoke preset: 5)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from innout.models import load_inpainter

    pipe = load_inpainter(str(args.weights / "inpainter"), device="cpu")
    print(f"weights: {args.weights}; {args.views} views per scene, view 0 the base, {args.steps} steps\n")
    for variant, seed in MEASUREMENT_SCENES:
        r = measure_scene(pipe, variant, seed, args.views, args.steps)
        print(f"{variant} {seed}: fills of the targets (mean |change| vs no ILA in grey levels, PSNR in the mask)")
        for name, row in r["fills"].items():
            print(f"  ILA {name:11s} change {row['change']:5.2f}   PSNR {row['psnr']:.2f} dB")
        print("  attn1 layer (first step)          tokens  entropy  peak/uniform  |out|/|in|")
        for name, row in r["attention"].items():
            print(f"  {name:34s} {row['tokens']:6d}  {row['entropy']:7.3f}  {row['peak_over_uniform']:12.1f}  {row['out_over_in']:10.3f}")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
