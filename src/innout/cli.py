"""`innout` command line: the library's stages outside Snakemake (one scene, by hand)."""

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
        camera_model=cfg.camera_model,
    )
    print(json.dumps(summary, indent=1))
    return 0


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
