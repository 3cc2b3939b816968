"""Look at a trained model set on held-out procedural scenes (never trained on).

For each measurement scene (``innout.training.data.MEASUREMENT_SCENES``: forward seed
1000, 360 seed 1001) it renders views at the demo's working size (160x120) with their
object, the object-free ground truth and the true depth, and:

* inpaints each view's dilated object mask on its own (the workflow's
  ``innout.diffusion.inpaint_views``, PNDM, ``--steps``): PSNR inside the mask against
  the ground-truth background, next to two baselines that know nothing of the scene
  beyond the view: the mean colour of a ring around the mask, and OpenCV's Telea
  inpainting;
* inpaints the other views aligned to view 0 as the base, four ways (``independent``:
  fresh noise, no ILA; ``ila``; ``ela``: the base noise carried to each view by
  splatting along the TRUE depth, ELA's ``splat`` method, no NeRF needed; ``ela_ila``),
  and scores their consistency exactly as the inpaint stage does
  (``innout.consistency.consistency_error``) but with the true geometry;
* feeds the UNet the sampler's first step (pure noise at the scheduler's first timestep,
  each view's mask and masked-image latents) and compares the clean latent it implies in
  the hole with the truth: per-channel means and MSE, next to the MSE of the context's
  mean latent (a model that takes the hole's colour from the context beats it; one that
  reads it off the noisy latent's residue of x0 does not: see innout.training.inpainter);
* runs the depth model on the object-free views: median relative error after the
  scale/shift alignment (in disparity) against the true depth.

Writes ``contact_sheet.png`` (per view: input, mask, fill, ground truth, ring baseline,
Telea), ``ila_sheet.png`` (base and targets under the four variants), ``inspect.json``.

    .venv/bin/python tools/inspect_models.py --weights src/innout/weights/procedural --out /tmp/inspect
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from innout.consistency import consistency_error
from innout.depth_prior import monocular_depth
from innout.diffusion import encode_prompt, initial_noise, inpaint_views, latent_size, make_scheduler, prepare_views
from innout.ela import align_noise, view_seed
from innout.procedural import ProceduralScene
from innout.training.data import MEASUREMENT_SCENES, DataConfig, render_scene_views
from innout.training.depth import aligned_depth_error
from innout.training.masks import silhouette_mask

RESOLUTION = 120  # the smoke preset's inpaint.resolution (160x120 views, 20x15 latents)


def psnr_in(mask: np.ndarray, image: np.ndarray, truth: np.ndarray) -> float:
    err = (image[mask].astype(np.float64) - truth[mask].astype(np.float64)) ** 2
    return float(10 * np.log10(255.0 ** 2 / max(err.mean(), 1e-12)))


def ring_fill(image: np.ndarray, mask: np.ndarray, width: int = 4) -> np.ndarray:
    """The hole filled with the mean colour of a ``width``-pixel ring around it."""
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=width).astype(bool) & ~mask
    out = image.copy()
    out[mask] = image[ring].mean(0).round().astype(np.uint8)
    return out


def telea_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return cv2.inpaint(image, mask.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)


def labelled(image: np.ndarray, text: str, scale: int = 2) -> np.ndarray:
    im = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, im.width, 12], fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 255))
    return np.asarray(im)


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[mask] = (0.4 * out[mask] + 0.6 * np.array([255, 0, 255])).astype(np.uint8)
    return out


def latent_distance(scene: ProceduralScene, camera, hw: tuple[int, int]) -> torch.Tensor:
    """The object-free scene's distance map at latent resolution (ELA's splat input)."""
    h, w = hw
    cam = camera.with_intrinsics(camera.intrinsics.scaled_to(w, h))
    return torch.from_numpy(scene.render(cam, with_object=False, supersample=1)["distance"])


@torch.no_grad()
def first_step(pipe, views, masks, seed: int) -> dict:
    """The clean latent the UNet implies at the sampler's first step, in the hole."""
    cond = prepare_views(pipe, list(views.rgb), masks, RESOLUTION)
    truth = prepare_views(pipe, list(views.background), [np.zeros_like(m) for m in masks], RESOLUTION)["masked_latents"]
    hole, masked = cond["mask"], cond["masked_latents"]
    scheduler = make_scheduler(pipe)
    scheduler.set_timesteps(5)
    t = int(scheduler.timesteps[0])
    ab = pipe.scheduler.alphas_cumprod[t]
    x_t = initial_noise(len(masks), tuple(hole.shape[2:]), seed)
    _, embeds = encode_prompt(pipe, "", "", cfg=False)
    eps = pipe.unet(torch.cat([x_t, hole, masked], 1), t, encoder_hidden_states=embeds.expand(len(masks), -1, -1)).sample
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    inside = hole.bool().expand_as(x0)
    context = 1 - hole
    context_mean = (masked * context).sum((2, 3), keepdim=True) / context.sum((2, 3), keepdim=True)
    return {"timestep": t, "x0_hole_mean": [float(x0[:, c][hole[:, 0].bool()].mean()) for c in range(4)],
            "true_hole_mean": [float(truth[:, c][hole[:, 0].bool()].mean()) for c in range(4)],
            "x0_mse_in_hole": float((x0 - truth)[inside].pow(2).mean()),
            "context_mean_mse_in_hole": float((context_mean.expand_as(truth) - truth)[inside].pow(2).mean())}


def inspect_scene(pipe, depth_model, processor, variant: str, seed: int, n_views: int, steps: int, ila_lambda: float,
                  guidance: float) -> dict:
    views, cams = render_scene_views(variant, seed, DataConfig(views_per_scene=n_views))
    masks = [silhouette_mask(c) for c in views.coverage]
    kwargs = dict(steps=steps, guidance_scale=guidance, resolution=RESOLUTION, batch_size=4, progress=False)
    t = time.perf_counter()
    fills = inpaint_views(pipe, list(views.rgb), masks, None, "", ila_lambda=None, base_index=None, seed=seed, **kwargs)
    seconds = time.perf_counter() - t
    rows, per_view = [], []
    for i, (fill, mask) in enumerate(zip(fills, masks)):
        truth, image = views.background[i], views.rgb[i]
        ring, telea = ring_fill(image, mask), telea_fill(image, mask)
        scores = {"fill": psnr_in(mask, fill, truth), "ring": psnr_in(mask, ring, truth), "telea": psnr_in(mask, telea, truth)}
        per_view.append(scores)
        rows.append(np.concatenate([labelled(image, f"{variant} {seed} view {i}"), labelled(mask_overlay(image, mask), "mask"),
                                    labelled(fill, f"fill {scores['fill']:.1f} dB"), labelled(truth, "ground truth"),
                                    labelled(ring, f"ring mean {scores['ring']:.1f} dB"),
                                    labelled(telea, f"telea {scores['telea']:.1f} dB")], 1))

    # consistency of the four variants, view 0 as the base, with the true geometry
    h, w = latent_size(160, 120, RESOLUTION)
    base_noise = initial_noise(1, (h, w), seed)[0]
    fresh = torch.stack([base_noise] + [initial_noise(1, (h, w), view_seed(f"v{i}", seed))[0] for i in range(1, n_views)])
    base_distance = latent_distance(ProceduralScene(variant, seed), cams[0], (h, w))
    aligned = torch.stack([base_noise] + [align_noise(None, cams[0], base_noise, cams[i], masks[i], method="splat",
                                                      base_depth=base_distance, generator=view_seed(f"v{i}", seed)).noise
                                          for i in range(1, n_views)])
    variants = {}
    for name, init, lam in (("independent", fresh, None), ("ila", fresh, ila_lambda), ("ela", aligned, None),
                            ("ela_ila", aligned, ila_lambda)):
        out = inpaint_views(pipe, list(views.rgb), masks, init, "", ila_lambda=lam, base_index=0 if lam is not None else None,
                            seed=seed, **kwargs)
        if lam is None:  # the base's own fill is its plain inpainting from its noise in every variant
            out[0] = inpaint_views(pipe, [views.rgb[0]], [masks[0]], init[:1], "", ila_lambda=None, base_index=None,
                                   seed=seed, **kwargs)[0]
        score = consistency_error(out[0], cams[0], [(out[i], masks[i], cams[i], views.background_depth[i], f"v{i}")
                                                    for i in range(1, n_views)],
                                  base_mask=masks[0], base_depth=views.background_depth[0], depth_kind="z")
        variants[name] = {"consistency": score["mean"], "images": out,
                          "psnr_in_mask": float(np.mean([psnr_in(masks[i], out[i], views.background[i]) for i in range(n_views)]))}
    ila_rows = [np.concatenate([labelled(views.background[i], "truth" if i else "truth (base)")] +
                               [labelled(v["images"][i], f"{k} {v['consistency']:.1f}" if i == 0 else k) for k, v in variants.items()], 1)
                for i in range(min(n_views, 4))]

    depth_errors = [aligned_depth_error(monocular_depth(depth_model, processor, views.background[i]), views.background_depth[i])
                    for i in range(n_views)]
    return {
        "variant": variant, "seed": seed, "views": n_views,
        "psnr_in_mask": {k: float(np.mean([v[k] for v in per_view])) for k in per_view[0]},
        "per_view": per_view,
        "consistency": {k: v["consistency"] for k, v in variants.items()},
        "variant_psnr_in_mask": {k: v["psnr_in_mask"] for k, v in variants.items()},
        "depth_rel_error_median": float(np.median(depth_errors)),
        "first_step": first_step(pipe, views, masks, seed),
        "inpaint_seconds_per_view": seconds / n_views,
        "_rows": rows, "_ila_rows": ila_rows,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="src/innout/weights/procedural", help="a trained weights folder (inpainter/, depth/)")
    ap.add_argument("--out", default="results/inspect-models")
    ap.add_argument("--views", type=int, default=6, help="views per held-out scene")
    ap.add_argument("--steps", type=int, default=5, help="denoising steps (the smoke preset: 5)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--ila-lambda", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from innout.models import load_depth_model, load_inpainter

    weights = Path(args.weights)
    pipe = load_inpainter(str(weights / "inpainter"), device="cpu")
    depth_model, processor = load_depth_model(str(weights / "depth"), cache_dir=weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, rows, ila_rows = [], [], []
    for variant, seed in MEASUREMENT_SCENES:
        r = inspect_scene(pipe, depth_model, processor, variant, seed, args.views, args.steps, args.ila_lambda, args.guidance)
        rows += r.pop("_rows")
        ila_rows += r.pop("_ila_rows")
        results.append(r)
        print(f"{variant} seed {seed}: PSNR in mask fill {r['psnr_in_mask']['fill']:.2f} dB, ring mean "
              f"{r['psnr_in_mask']['ring']:.2f}, telea {r['psnr_in_mask']['telea']:.2f}; consistency "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["consistency"].items())
              + f" grey levels; depth median rel. error {r['depth_rel_error_median']:.3f}; "
              f"{r['inpaint_seconds_per_view']:.2f} s per view", flush=True)
        f = r["first_step"]
        print(f"  first step (t={f['timestep']}, pure noise): implied x0 in the hole, channel means "
              f"{[round(v, 2) for v in f['x0_hole_mean']]} vs true {[round(v, 2) for v in f['true_hole_mean']]}; "
              f"MSE {f['x0_mse_in_hole']:.2f} vs {f['context_mean_mse_in_hole']:.2f} for the context's mean latent", flush=True)
    Image.fromarray(np.concatenate(rows, 0)).save(out / "contact_sheet.png")
    Image.fromarray(np.concatenate(ila_rows, 0)).save(out / "ila_sheet.png")
    (out / "inspect.json").write_text(json.dumps({"weights": str(weights), "steps": args.steps, "scenes": results}, indent=2) + "\n")
    print(f"wrote {out / 'contact_sheet.png'}, {out / 'ila_sheet.png'}, {out / 'inspect.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
