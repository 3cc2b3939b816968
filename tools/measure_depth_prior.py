#!/usr/bin/env python
"""How well depth priors of known quality align to a pre-trained NeRF: the figures behind
``base.depth_prior_max_rel_error`` (the plausibility threshold of the base stage).

On the pre-trained NeRFs of ``tools/measure_models.py``'s scenes (the demo and the two
held-out procedural scenes), for the base stage's candidate views (the train views nearest
the centroid of the cameras), the script aligns several monocular maps to the NeRF's depth
exactly as the base stage does (:func:`innout.depth_prior.align_depth`: disparity, robust
fit on the unmasked pixels the NeRF renders opaquely, ray cosines) and prints the median
relative error of the aligned map against the NeRF's depth on those pixels (``rel_error``,
what :func:`innout.depth_prior.check_plausible` judges) and the sign of the fitted scale:

``true``        the generator's true disparity: a perfect depth model (the floor set by
                the NeRF's own depth errors);
``true@98px``   the same seen at 98 px and resized back (bicubic), as a small depth
                model's input resolution blurs it;
``<model>``     the trained model set's depth model (``--model``, skipped when the set is
                not there) and ``tiny`` (random weights) on each view's photo;
``reversed``    the true z-depth given as disparity (near and far swapped);
``noise``       a positive random map unrelated to the scene.

    nice -n 10 .venv/bin/python tools/measure_depth_prior.py --workdir results-measure/random

Nothing is asserted; the numbers go into the README ("Depth prior plausibility").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tools"))

from measure_models import SCENES, generator_cameras, scene_transforms  # noqa: E402

from innout.base import candidate_views, load_train_views  # noqa: E402
from innout.cameras import Camera, umeyama_similarity  # noqa: E402
from innout.config import load_method_config  # noqa: E402
from innout.depth_prior import align_depth, monocular_depth, ray_cosines  # noqa: E402
from innout.frames import read_scene  # noqa: E402
from innout.models import load_depth_model  # noqa: E402
from innout.renderer import NerfRenderer  # noqa: E402


def _at_98px(disparity: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(disparity)[None, None]
    small = F.interpolate(t, size=(98, round(98 * disparity.shape[1] / disparity.shape[0])), mode="area")
    return F.interpolate(small, size=disparity.shape, mode="bicubic", align_corners=False)[0, 0].numpy()


def depth_models(model: str, cache: Path) -> dict:
    """name -> (model, processor): ``tiny`` and the trained set's depth model if it exists."""
    models = {"tiny": load_depth_model("tiny", cache)}
    try:
        spec = str(load_method_config("smoke", model=model).models.depth)
        models[model] = load_depth_model(spec, cache)
    except Exception as err:  # the set is not there (yet): say so, measure the others
        print(f"(no depth model of model set {model!r}: {err.__class__.__name__}: {str(err).splitlines()[0][:120]})")
    return models


def measure_scene(workdir: Path, scene: str, models: dict, n_views: int, log_every: float = 10.0) -> dict[str, list[tuple]]:
    """prior name -> [(rel_error, scale, rel_error of a constant map), ...] over the candidate views."""
    transforms = scene_transforms(workdir, scene)
    views = load_train_views(transforms)
    _, frames, _, _ = read_scene(transforms)
    generator, gen_cams = generator_cameras(workdir / "results" / "generated" / scene)
    common = [f for f in frames if f.name in gen_cams]
    scale, _, _ = umeyama_similarity(np.stack([gen_cams[f.name].center for f in common]), np.stack([f.camera.center for f in common]))
    renderer = NerfRenderer.from_config(workdir / "results" / scene / "pretrain", device="cpu")
    names = candidate_views({v.name: v.camera for v in views if v.mask.any()}, n_views)
    rng = np.random.default_rng(0)
    out: dict[str, list[tuple]] = {}
    t_last = time.perf_counter()
    for i, name in enumerate(names):
        view = next(v for v in views if v.name == name)
        render = renderer.render_camera(view.camera, return_samples=False)
        nerf_depth = render["depth"].cpu().numpy().astype(np.float64)
        valid = ~view.mask & (render["accumulation"].cpu().numpy() > 0.5)
        k = view.camera.intrinsics
        z = generator.render(Camera(gen_cams[name].c2w, gen_cams[name].intrinsics.scaled_to(k.width, k.height)),
                             with_object=False, supersample=1)["depth"].astype(np.float64) * scale
        priors = {"true": 1.0 / z, "true@98px": _at_98px(1.0 / z)}
        for model_name, (model, processor) in models.items():
            priors[model_name] = monocular_depth(model, processor, view.image)
        priors["reversed"] = z
        priors["noise"] = np.abs(rng.normal(10.0, 1.0, z.shape))
        for prior, mono in priors.items():
            _, stats = align_depth(mono, nerf_depth, valid, kind="disparity", ray_cos=ray_cosines(view.camera), seed=0)
            out.setdefault(prior, []).append((stats["rel_error"], stats["scale"], stats["rel_error_constant"]))
        if time.perf_counter() - t_last > log_every or i + 1 == len(names):
            print(f"  {scene}: {i + 1}/{len(names)} views", flush=True)
            t_last = time.perf_counter()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "results-measure" / "random",
                    help="a tools/measure_models.py run whose scenes are pre-trained")
    ap.add_argument("--model", default="procedural", help="the trained model set whose depth model to measure too")
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--views", type=int, default=5, help="candidate views per scene (the base stage's n_candidates)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    models = depth_models(args.model, args.workdir / "resources" / "models")
    results = {scene: measure_scene(args.workdir, scene, models, args.views) for scene in args.scenes}
    priors = list(next(iter(results.values())))
    print("\nMedian relative error of the aligned prior against the pre-trained NeRF's depth outside the mask "
          f"(median / max over {args.views} candidate views; in brackets the same over the error of a constant map at "
          "the median depth; fitted scale < 0 in how many):\n")
    print("| prior | " + " | ".join(args.scenes) + " |")
    print("|---" * (len(args.scenes) + 1) + "|")
    for prior in priors:
        cells = []
        for scene in args.scenes:
            errors = np.array([e for e, _, _ in results[scene][prior]])
            ratios = np.array([e / c for e, _, c in results[scene][prior]])
            negative = sum(s <= 0 for _, s, _ in results[scene][prior])
            cells.append(f"{np.median(errors):.3f} / {errors.max():.3f} (x{np.median(ratios):.2f} / x{ratios.max():.2f}), "
                         f"scale<0: {negative}")
        print(f"| {prior} | " + " | ".join(cells) + " |")
    print(f"\nTotal time: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
