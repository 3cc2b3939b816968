"""Render seconds against training seconds, before and after "render only what is read".

On a real-size procedural scene (SPIn-NeRF-like: 504x283, 60 train + 40 ground-truth test
views, true poses), with the ``smoke`` preset and the ``tiny`` model set, one run of this
script measures, for the code of a git ref ("before", default ``main``) and for this
checkout ("after"), the stages that render:

* ``pretrain``: training seconds, what the stage renders (before: every train and test
  view; after: a few quality patches per view) and the stage's wall time;
* ``render_pretrain`` (after only): the pre-trained NeRF at the test views' evaluation boxes;
* ``render``: the render stage on that NeRF (it stands in for the refined one: same model,
  same cost).

and prints them as ratios to the training time, and after / before. Both codes run in
subprocesses one after the other on the same scene, with ``--threads`` torch threads.

    .venv/bin/python tools/bench_render.py                      # before = main, after = this checkout
    .venv/bin/python tools/bench_render.py --before-ref HEAD~3 --work /tmp/bench
    .venv/bin/python tools/bench_render.py chain                # the whole smoke chain, through Snakemake

``--estimate`` is for a machine too loaded to render millions of rays: each code's stages
run with one training step and a renderer that only counts the rays it is asked for
(exact per-stage ray counts of each design), and the training and rendering rates of the
smoke NeRF are measured on the scene (a few training steps, one full view); seconds are
rays / rate. The table then says "estimated". The full mode measures the stages themselves.

``chain`` runs the workflow of this checkout on the same scene (``snakemake --cores 2`` to
``results/metrics.tsv``, poses provided as a SPIn-NeRF scene would have them) and prints
each rule's seconds (its ``benchmarks/`` file) and the total wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENE = {"width": 504, "height": 283, "n_train": 60, "n_test": 40, "seed": 0}


def _python() -> str:
    return sys.executable


def make_scene(work: Path) -> Path:
    """The procedural 504x283 scene (SPIn-NeRF layout) and its canonical import; returns
    the imported transforms.json."""
    src, scene = work / "src504", work / "scene504"
    if not (src / "poses_bounds.npy").is_file():
        subprocess.run([_python(), "-m", "innout.cli", "generate", str(src), "--width", str(SCENE["width"]),
                        "--height", str(SCENE["height"]), "--downscales", "1", "--n-train", str(SCENE["n_train"]),
                        "--n-test", str(SCENE["n_test"]), "--seed", str(SCENE["seed"])], check=True)
    if not (scene / "transforms.json").is_file():
        subprocess.run([_python(), "-m", "innout.cli", "scene", str(src), str(scene), "--format", "spinnerf",
                        "--downscale", "1", "--poses", "provided"], check=True, stdout=subprocess.DEVNULL)
    return scene / "transforms.json"


def checkout(ref: str, dest: Path) -> Path:
    """``src/`` of a git ref (``git archive``: no worktree is registered); returns it."""
    archive = dest / "src.tar"
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "wb") as fh:
        subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, stdout=fh)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


# ------------------------------------------------------------------ one code's stages


def run_stages(transforms: Path, out: Path, threads: int) -> dict:
    """The rendering stages of whichever innout is importable (this runs in a subprocess
    whose PYTHONPATH picks the code); seconds of each, as that code reports them."""
    import logging

    import torch

    import innout
    from innout import render
    from innout.config import load_method_config
    from innout.pretrain import run_pretrain

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    log = logging.getLogger("bench")
    cfg = load_method_config("smoke", ["device=cpu"], model="tiny")
    new_api = hasattr(render, "run_render_pretrain")
    log.info("innout from %s (%s)", Path(innout.__file__).parent, "after" if new_api else "before")
    result: dict = {"code": str(Path(innout.__file__).parent)}

    t = time.perf_counter()
    summary = run_pretrain(transforms, out / "pretrain", out / "work", cfg, log)
    result["pretrain_stage"] = time.perf_counter() - t
    result["train"] = float(summary["seconds"])
    result["pretrain_render"] = float(summary.get("render_seconds", summary.get("quality_seconds", 0.0)))
    nerf = out / "pretrain" / "innout-nerfacto" / "config.yml"
    (out / "refine.json").write_text(json.dumps({"weights": "random"}))

    if new_api:
        t = time.perf_counter()
        render.run_render_pretrain(transforms, nerf, out / "render_pretrain", cfg, log)
        result["render_pretrain"] = time.perf_counter() - t
        t = time.perf_counter()
        render.run_render(transforms, nerf, out / "render", cfg, log, upstream_summary=out / "refine.json")
    else:
        result["render_pretrain"] = 0.0
        t = time.perf_counter()
        render.run_render(transforms, nerf, out / "render", cfg, log, upstream_summary=out / "refine.json")
    result["render"] = time.perf_counter() - t
    return result


def count_rays(transforms: Path, out: Path) -> dict:
    """Rays each stage of whichever innout is importable asks the renderer for (the
    renderer only counts: the outputs are blank), training cut to one step."""
    import logging

    import torch

    from innout import render
    from innout.config import load_method_config
    from innout.pretrain import run_pretrain

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    counted = {"rays": 0}

    def blank(self, origins, directions, *args, **kwargs):
        shape = torch.broadcast_shapes(torch.as_tensor(origins).shape, torch.as_tensor(directions).shape)[:-1]
        n = int(torch.Size(shape).numel())
        counted["rays"] += n
        if kwargs.get("progress") is not None:
            kwargs["progress"](n)
        return {"rgb": torch.full((*shape, 3), 0.5), "depth": torch.ones(shape), "accumulation": torch.ones(shape)}

    render.NerfRenderer.render_rays = blank
    cfg = load_method_config("smoke", ["device=cpu", "pretrain.iterations=1"], model="tiny")
    full = load_method_config("smoke", ["device=cpu"], model="tiny").pretrain
    log = logging.getLogger("bench")
    result = {"train": int(full.iterations) * int(full.rays_per_batch)}
    run_pretrain(transforms, out / "pretrain", out / "work", cfg, log)
    result["pretrain_render"], counted["rays"] = counted["rays"], 0
    nerf = out / "pretrain" / "innout-nerfacto" / "config.yml"
    (out / "refine.json").write_text(json.dumps({"weights": "random"}))
    if hasattr(render, "run_render_pretrain"):
        render.run_render_pretrain(transforms, nerf, out / "render_pretrain", cfg, log)
    result["render_pretrain"], counted["rays"] = counted["rays"], 0
    render.run_render(transforms, nerf, out / "render", cfg, log, upstream_summary=out / "refine.json")
    result["render"] = counted["rays"]
    return result


def measure_rates(transforms: Path, out: Path, threads: int, steps: int = 40) -> dict:
    """Training and rendering rays per second of the smoke NeRF on the scene, back to
    back: ``steps`` training steps (after a warm-up step), then one full train view."""
    import logging

    import torch

    from innout.config import load_method_config
    from innout.frames import read_scene
    from innout.pretrain import run_pretrain
    from innout.renderer import NerfRenderer

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = load_method_config("smoke", ["device=cpu", f"pretrain.iterations={steps + 1}", "pretrain.eval_patches_per_view=0"],
                             model="tiny")
    times: list[float] = []
    run_pretrain(transforms, out / "pretrain", out / "work", cfg, logging.getLogger("bench"),
                 on_step=lambda step: times.append(time.perf_counter()))
    train_rate = steps * int(cfg.pretrain.rays_per_batch) / (times[-1] - times[0])
    _, _, train, _ = read_scene(transforms)
    renderer = NerfRenderer.from_config(out / "pretrain", device="cpu")
    camera = train[0].camera
    t = time.perf_counter()
    renderer.render_camera(camera, return_samples=False)
    render_rate = camera.intrinsics.width * camera.intrinsics.height / (time.perf_counter() - t)
    return {"train_rays_per_s": train_rate, "render_rays_per_s": render_rate}


def _subprocess(label: str, src: Path, args: list[str], out: Path, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    print(f"[{label}] code {src}, output {out}", flush=True)
    with open(out / "bench.log", "w") as log_file:
        done = subprocess.run([_python(), __file__, *args], env=env, cwd=out, stdout=subprocess.PIPE, stderr=log_file, text=True)
    if done.returncode != 0:
        raise SystemExit(f"[{label}] failed; see {out / 'bench.log'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def estimate(before_src: Path, transforms: Path, work: Path, threads: int) -> tuple[dict, dict]:
    """Seconds of each stage of both codes from their ray counts and the measured rates."""
    before = _subprocess("before: ray counts", before_src, ["_count", str(transforms), str(work / "before-count")],
                         work / "before-count", threads)
    after = _subprocess("after: ray counts", REPO / "src", ["_count", str(transforms), str(work / "after-count")],
                        work / "after-count", threads)
    rates = _subprocess("rates", REPO / "src", ["_rates", str(transforms), str(work / "rates"), "--threads", str(threads)],
                        work / "rates", threads)
    print(f"rays: before {before}\n      after  {after}")
    print(f"rates: training {rates['train_rays_per_s']:.0f} rays/s, rendering {rates['render_rays_per_s']:.0f} rays/s")
    out = []
    for counts in (before, after):
        seconds = {key: counts[key] / rates["render_rays_per_s"] for key in ("pretrain_render", "render_pretrain", "render")}
        seconds["train"] = counts["train"] / rates["train_rays_per_s"]
        seconds["pretrain_stage"] = seconds["train"] + seconds["pretrain_render"]  # + setup, not counted here
        out.append(seconds)
    return out[0], out[1]


def measure(label: str, src: Path, transforms: Path, out: Path, threads: int) -> dict:
    return _subprocess(label, src, ["_stages", str(transforms), str(out), "--threads", str(threads)], out, threads)


def print_table(before: dict, after: dict, load: tuple[float, float]) -> None:
    rows = [("pretrain: training", "train"), ("pretrain: rendering", "pretrain_render"), ("pretrain: whole stage", "pretrain_stage"),
            ("render_pretrain", "render_pretrain"), ("render", "render")]
    print(f"\n{'seconds':24s} {'before':>9s} {'/train':>7s} {'after':>9s} {'/train':>7s} {'after/before':>13s}")
    for name, key in rows:
        b, a = before[key], after[key]
        ratio = f"{a / b:13.3f}" if b > 0 else f"{'-':>13s}"
        print(f"{name:24s} {b:9.1f} {b / before['train']:7.2f} {a:9.1f} {a / after['train']:7.2f} {ratio}")
    total_b = before["pretrain_render"] + before["render_pretrain"] + before["render"]
    total_a = after["pretrain_render"] + after["render_pretrain"] + after["render"]
    print(f"{'all rendering':24s} {total_b:9.1f} {total_b / before['train']:7.2f} {total_a:9.1f} "
          f"{total_a / after['train']:7.2f} {total_a / total_b:13.3f}")
    print(f"\npretrain stage / its training time: before {before['pretrain_stage'] / before['train']:.2f}x, "
          f"after {after['pretrain_stage'] / after['train']:.2f}x (goal <= 2)")
    print(f"rendering of pretrain + render_pretrain + render: {total_b / total_a:.1f}x less time after")
    print(f"load average while measuring: {load[0]:.1f} at the start, {load[1]:.1f} at the end ({os.cpu_count()} CPUs)")


# ------------------------------------------------------------------ the chain


def run_chain(work: Path, transforms: Path, cores: int) -> None:
    """This checkout's workflow on the scene, to results/metrics.tsv; per-rule seconds."""
    import yaml

    wf = work / "chain"
    shutil.rmtree(wf, ignore_errors=True)
    wf.mkdir(parents=True)
    for name in ("Snakefile", "rules", "workflow", "config", "profiles", "envs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, wf / name)
    source = transforms.parent.parent / "src504"
    (wf / "config" / "bench.tsv").write_text(f"scene\tpath\tformat\tposes\tprompt\nbench\t{source}\tspinnerf\tprovided\t\n")
    config = yaml.safe_load((wf / "config" / "config.yaml").read_text())
    config.update(scenes="config/bench.tsv", generated={})
    config["scene"]["downscale"] = 1
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake = Path(sys.executable).with_name("snakemake")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    done = subprocess.run([str(snakemake), "--cores", str(cores), "results/metrics.tsv"], cwd=wf, env=env,
                          stdout=subprocess.DEVNULL, stderr=open(work / "chain.log", "w"))
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"the chain failed; see {work / 'chain.log'}")
    print(f"\n{'rule':28s} {'seconds':>8s}")
    for tsv in sorted((wf / "benchmarks").rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        print(f"{str(tsv.relative_to(wf / 'benchmarks'))[:-4]:28s} {float(lines[1].split()[0]):8.1f}")
    print(f"\nwhole smoke chain to results/metrics.tsv with --cores {cores}: {wall:.0f} s ({wall / 60:.1f} min; goal <= 20 min)")
    print(f"load average: {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} CPUs)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_stages"]:
        p = argparse.ArgumentParser()
        p.add_argument("transforms", type=Path)
        p.add_argument("out", type=Path)
        p.add_argument("--threads", type=int, default=2)
        a = p.parse_args(argv[1:])
        print(json.dumps(run_stages(a.transforms.resolve(), a.out.resolve(), a.threads)))
        return 0
    if argv[:1] in (["_count"], ["_rates"]):
        p = argparse.ArgumentParser()
        p.add_argument("transforms", type=Path)
        p.add_argument("out", type=Path)
        p.add_argument("--threads", type=int, default=2)
        a = p.parse_args(argv[1:])
        if argv[0] == "_count":
            print(json.dumps(count_rays(a.transforms.resolve(), a.out.resolve())))
        else:
            print(json.dumps(measure_rates(a.transforms.resolve(), a.out.resolve(), a.threads)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["stages", "chain"], default="stages")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "innout-bench-render")
    parser.add_argument("--before-ref", default="main", help="git ref of the 'before' code (default: main)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each stage (stages mode)")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores (chain mode)")
    parser.add_argument("--estimate", action="store_true",
                        help="seconds from exact ray counts x measured rates (for a machine too loaded to render it all)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    transforms = make_scene(work)
    if args.mode == "chain":
        run_chain(work, transforms, args.cores)
        return 0
    load0 = os.getloadavg()[0]
    before_src = checkout(args.before_ref, work / "before-code")
    if args.estimate:
        before, after = estimate(before_src, transforms, work, args.threads)
        print("\nESTIMATED: seconds = rays the code asks for / rays per second measured on this scene "
              "(the stages' setup and I/O are not included)")
        print_table(before, after, (load0, os.getloadavg()[0]))
        return 0
    before = measure(f"before ({args.before_ref})", before_src, transforms, work / "before", args.threads)
    after = measure("after (this checkout)", REPO / "src", transforms, work / "after", args.threads)
    print_table(before, after, (load0, os.getloadavg()[0]))
    return 0


if __name__ == "__main__":  # nerfstudio's datamanagers may spawn processes: keep the guard
    sys.exit(main())
