"""refine.reset_fields on or off, on one finished scene: refine both ways, render the
ground-truth test cameras, score them with the evaluate stage's metrics (inside each test
view's mask box). Prints one row per setting (and writes <out>/bench-reset.json).

Run from the workflow's folder on a scene whose base and inpaint stages are done, with
the method settings the workflow used:

    .venv/bin/python tools/bench_reset.py --scene demo --preset smoke --model tiny --out /tmp/bench-reset
    .venv/bin/python tools/bench_reset.py --scene spinnerf_1 --preset paper --model sd2 --out /tmp/bench-reset

The two runs share everything but the switch (seed, inputs, iterations), so the rows
compare the choice alone. Timings depend on the machine's load: compare them within one
run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without an install

import numpy as np  # noqa: E402

from innout.config import load_method_config  # noqa: E402
from innout.provenance import weights_provenance  # noqa: E402


def posed_transforms(results: Path) -> Path:
    """COLMAP's poses when the scene used them, else the scene's own."""
    colmap = results / "poses" / "transforms.json"
    return colmap if colmap.is_file() else results / "scene" / "transforms.json"


def score(nerf: Path, transforms: Path, cfg) -> dict:
    """The evaluate stage's metrics of a NeRF's renders of the test cameras."""
    from innout.boxes import read_object_mask
    from innout.evaluate import _read_rgb, evaluate_views, metrics_from_config
    from innout.frames import read_scene
    from innout.image_metrics import image_pair, psnr_masked
    from innout.renderer import NerfRenderer

    _, _, _, test = read_scene(transforms)
    renderer = NerfRenderer.from_config(nerf, device=cfg.device)
    renders, gts, masks = {}, {}, {}
    for f in test:
        gt = _read_rgb(f.image)
        mask = read_object_mask(f.object_mask, f.name, gt.shape[:2])
        if not mask.any():
            continue
        out = renderer.render_camera(f.camera, return_samples=False)
        renders[f.name] = np.clip(out["rgb"].cpu().numpy(), 0.0, 1.0)
        gts[f.name], masks[f.name] = gt, mask
    lpips, fid = metrics_from_config(cfg.models, cfg.evaluate, cfg.device)
    result = evaluate_views(renders, gts, masks, lpips, fid if len(gts) >= 2 else None)
    # the box rewards blur: the rest of the view says whether the NeRF kept the scene
    outside = [psnr_masked(*image_pair(renders[n], gts[n]), ~masks[n]) for n in renders]  # both in [0, 1]
    return {**{k: result[k] for k in ("lpips", "fid", "psnr", "ssim", "n_views")},
            "psnr_outside_mask": float(np.mean(outside)), "weights": weights_provenance(cfg.models)}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", required=True, help="scene name: results/<scene>/ holds its finished stages")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides the workflow used")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = args.results / args.scene
    transforms = posed_transforms(results)
    rows = []
    for reset in (False, True):
        cfg = load_method_config(args.preset, [*args.overrides, f"refine.reset_fields={str(reset).lower()}"], args.model)
        from innout.refine import run_refine

        folder = args.out / ("reset" if reset else "continue")
        t0 = time.perf_counter()
        summary = run_refine(transforms, results / "base", results / "inpaint", folder / "refine", folder / "work", cfg)
        seconds = time.perf_counter() - t0
        metrics = score(folder / "refine" / "nerf", transforms, cfg)
        before = score(results / "base" / "nerf", transforms, cfg) if not rows else rows[0]["base_nerf"]
        rows.append({"reset_fields": reset, "iterations": summary["iterations"], "refine_seconds": round(seconds, 1),
                     "learning_rate": summary["learning_rate"], **metrics, "base_nerf": before})
        print(f"reset_fields={str(reset).lower():5s} iterations {summary['iterations']} lr {summary['learning_rate']:g} "
              f"refine {seconds:.0f} s | LPIPS {metrics['lpips']:.4f} PSNR {metrics['psnr']:.2f} dB SSIM {metrics['ssim']:.4f} "
              f"FID {metrics['fid'] if metrics['fid'] is None else round(metrics['fid'], 2)} ({metrics['n_views']} test views, "
              f"inside the mask boxes); PSNR outside the masks {metrics['psnr_outside_mask']:.2f} dB" + ("  [RANDOM weights]" if metrics["weights"] == "random" else ""), flush=True)
    b = rows[0]["base_nerf"]
    print(f"(the base stage's NeRF before refinement: LPIPS {b['lpips']:.4f} PSNR {b['psnr']:.2f} dB SSIM {b['ssim']:.4f}; "
          f"outside the masks {b['psnr_outside_mask']:.2f} dB)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-reset.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
