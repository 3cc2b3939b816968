"""`innout` command line: the steps that need no workflow, by hand (procedural scenes, scene
import, COLMAP poses, the views worth annotating, training the `procedural` models, the
resolved config). The NeRF stages (pretrain, base, inpaint, refine, render, evaluate) run
through Snakemake, one scene at a time if you like:
`snakemake --cores all results/<scene>/eval/metrics.json`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from innout.errors import InputError, StageError


def _generate(args: argparse.Namespace, rest: list[str]) -> int:
    from innout.procedural import generate_main

    return generate_main(rest)


def _scene(args: argparse.Namespace, rest: list[str]) -> int:
    from innout.scene import import_scene

    summary = import_scene(Path(args.source), args.format, Path(args.out), downscale=args.downscale, poses=args.poses,
                           masks=args.masks)
    print(json.dumps(summary, indent=1))
    return 0


def _poses(args: argparse.Namespace, rest: list[str]) -> int:
    from innout.config import load_method_config
    from innout.poses import estimate_poses

    cfg = load_method_config(args.preset, args.override).poses
    summary = estimate_poses(
        Path(args.scene_dir), Path(args.out), max_num_features=cfg.max_num_features,
        max_image_size=cfg.max_image_size, matcher=cfg.matcher,
        min_registered_fraction=cfg.min_registered_fraction, sequential_overlap=cfg.sequential_overlap,
        camera_model=cfg.camera_model, deterministic=cfg.deterministic,
    )
    print(json.dumps(summary, indent=1))
    return 0


def _train_models(args: argparse.Namespace, rest: list[str]) -> int:
    import logging
    import shlex

    from innout.errors import StageError
    from innout.stage import setup_logging
    from innout.training import LOG_NAME, TrainConfig, apply_overrides, train_models

    try:
        cfg = apply_overrides(TrainConfig(seed=args.seed, threads=args.threads, device=args.device), args.set)
        depth_check = _depth_check(args.max_depth_error)
    except ValueError as err:
        print(f"innout train-models: error: {err}", file=sys.stderr)
        return 2
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log = setup_logging(None)
    log_file = work / LOG_NAME
    handler = logging.FileHandler(log_file, mode="a")
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().addHandler(handler)
    command = "innout " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        manifest = train_models(Path(args.out), cfg, work, command=command, log_file=log_file, **depth_check)
    except (ValueError, StageError) as err:
        print(f"innout train-models: error: {err}", file=sys.stderr)
        return 2
    log.info("wrote %s (%d files)", args.out, len(manifest["files"]))
    return 0


def _depth_check(text: str) -> dict:
    """``train_models``' keywords for ``--max-depth-error``: ``default`` keeps its threshold, ``none``
    turns the check off, a number replaces the threshold."""
    if text == "default":
        return {}
    if text.lower() == "none":
        return {"max_depth_rel_error": None}
    try:
        return {"max_depth_rel_error": float(text)}
    except ValueError:
        raise ValueError(f"--max-depth-error must be a number or none, got {text!r}") from None


def _suggest_views(args: argparse.Namespace, rest: list[str]) -> int:
    from innout.view_suggest import suggest_from_transforms

    path = Path(args.transforms)
    print(json.dumps(suggest_from_transforms(path / "transforms.json" if path.is_dir() else path, args.count), indent=1))
    return 0


def _config(args: argparse.Namespace, rest: list[str]) -> int:
    from omegaconf import OmegaConf

    from innout.config import load_method_config

    print(OmegaConf.to_yaml(load_method_config(args.preset, args.override)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="innout", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write a procedural scene with ground truth (SPIn-NeRF layout)", add_help=False)
    gen.set_defaults(func=_generate)

    scene = sub.add_parser("scene", help="import a scene into the canonical form")
    scene.add_argument("source")
    scene.add_argument("out")
    scene.add_argument("--format", default="auto", choices=["auto", "spinnerf", "nerfstudio", "colmap", "images"])
    scene.add_argument("--downscale", type=int, default=4)
    scene.add_argument("--poses", default="auto", choices=["auto", "provided", "colmap"])
    scene.add_argument("--masks", default="all", help="all | some | comma-separated annotated train views")
    scene.set_defaults(func=_scene)

    suggest = sub.add_parser("suggest-views", help="the train views worth annotating when giving masks of a few views")
    suggest.add_argument("transforms", help="a posed transforms.json (results/<scene>/scene/ or poses/), or its folder")
    suggest.add_argument("--count", "-k", type=int, nargs="+", default=[1, 2, 3], help="how many views to annotate")
    suggest.set_defaults(func=_suggest_views)
    train = sub.add_parser("train-models", help="train the `procedural` model set (inpainter + depth) on procedural scenes")
    train.add_argument("--out", required=True, help="weights folder to write (the shipped set: src/innout/weights/procedural)")
    train.add_argument("--work-dir", default=".work/train-models", help="caches, checkpoints and the log (a killed run resumes)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=2, help="torch threads (the shipped weights: 2)")
    train.add_argument("--max-depth-error", default="default", metavar="E",
                       help="refuse a depth model whose median relative error on its training views is above E "
                            "(default: the library's threshold; none: keep any, for runs of a few steps that time things)")
    train.add_argument("--device", default="cpu",
                       help="cpu (the shipped weights), cuda, cuda:N or auto; on a GPU give it a larger budget "
                            "with --set, e.g. unet.loop.steps=48000")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="a training setting, e.g. unet.loop.steps=200 (see innout.training.TrainConfig)")
    train.set_defaults(func=_train_models)

    for name, func, helptext in (("poses", _poses, "COLMAP poses of a canonical scene"), ("config", _config, "print the resolved method config")):
        p = sub.add_parser(name, help=helptext)
        if name == "poses":
            p.add_argument("scene_dir")
            p.add_argument("out")
        p.add_argument("--preset", default="smoke")
        p.add_argument("--override", "-o", action="append", default=[], help="Hydra override, e.g. pretrain.iterations=100")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["generate"]:
        args, rest = parser.parse_args(argv[:1]), argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    try:
        return args.func(args, rest)
    except (InputError, StageError) as err:
        print(f"innout: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # nerfstudio's datamanagers may spawn processes: keep the guard
    sys.exit(main())
