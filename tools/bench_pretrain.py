#!/usr/bin/env python
"""Benchmark: training rays/s of the geometry stage (``innout-nerfacto``) next to plain
nerfstudio ``nerfacto`` with the same rays, samples and hash grids, in one process.

    .venv/bin/python tools/bench_pretrain.py                      # smoke preset, a generated scene
    .venv/bin/python tools/bench_pretrain.py --preset paper --transforms results/demo/scene/transforms.json
    .venv/bin/python tools/bench_pretrain.py -o pretrain.rays_per_batch=4096 --threads 2

Both models train on the same data through the same (non-parallel) nerfstudio data
manager with the same loop; rounds alternate between them so machine load affects both
alike. "Plain nerfacto" is nerfstudio's ``nerfacto`` method config with the preset's ray
batch, sample counts and grid sizes copied in; everything else is nerfacto's default
(camera optimiser SO3xR3, appearance embedding, view-dependent colour, nerfstudio's torch
hash grid). Its LPIPS metric (which downloads AlexNet) is replaced by a stub while it is
built: metrics are not part of a training step. Goal: ratio (ours / nerfacto) >= 0.9.
Timings on a shared machine are noisy: compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def _make_scene(root: Path, width: int, height: int, n_train: int, n_test: int) -> Path:
    from innout.procedural import write_spinnerf_scene
    from innout.scene import import_scene

    write_spinnerf_scene(root / "src", "forward", 0, n_train, n_test, width * 2, height * 2, (2,), progress=False)
    import_scene(root / "src", "spinnerf", root / "scene", downscale=2, spinnerf_n_test=n_test)
    return root / "scene" / "transforms.json"


@contextmanager
def _no_lpips():
    """nerfacto builds torchmetrics' LPIPS (AlexNet download) in populate_modules."""
    import torch
    import torchmetrics.image.lpip as lpip_mod

    class _Stub(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def forward(self, *args, **kwargs):  # pragma: no cover - never called in a training step
            return torch.zeros(())

    saved = lpip_mod.LearnedPerceptualImagePatchSimilarity
    lpip_mod.LearnedPerceptualImagePatchSimilarity = _Stub
    try:
        yield
    finally:
        lpip_mod.LearnedPerceptualImagePatchSimilarity = saved


def _plain_nerfacto_config(ours, settings):
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig

    cfg = copy.deepcopy(method_configs["nerfacto"])
    cfg.pipeline.datamanager = VanillaDataManagerConfig(
        dataparser=copy.deepcopy(ours.pipeline.datamanager.dataparser),
        train_num_rays_per_batch=settings.rays_per_batch,
        eval_num_rays_per_batch=settings.rays_per_batch,
    )
    cfg.pipeline.datamanager.data = ours.pipeline.datamanager.data
    m, o = cfg.pipeline.model, ours.pipeline.model
    for name in (
        "num_nerf_samples_per_ray", "num_proposal_samples_per_ray", "num_proposal_iterations", "proposal_net_args_list",
        "num_levels", "log2_hashmap_size", "max_res", "hidden_dim", "hidden_dim_color", "implementation",
        "proposal_warmup", "proposal_update_every", "eval_num_rays_per_chunk",
    ):
        setattr(m, name, copy.deepcopy(getattr(o, name)))
    return cfg


class _Runner:
    def __init__(self, name: str, trainer_cfg, device: str):
        import torch
        from nerfstudio.engine.callbacks import TrainingCallbackAttributes
        from nerfstudio.engine.optimizers import Optimizers

        from innout.nerf_training import _Quiet

        self.name = name
        torch.manual_seed(0)
        with _Quiet(), _no_lpips():
            self.pipeline = trainer_cfg.pipeline.setup(device=device, test_mode="val")
        self.optimizers = Optimizers(trainer_cfg.optimizers.copy(), self.pipeline.get_param_groups())
        self.callbacks = self.pipeline.get_training_callbacks(
            TrainingCallbackAttributes(optimizers=self.optimizers, grad_scaler=None, pipeline=self.pipeline, trainer=None)
        )
        self.rays = trainer_cfg.pipeline.datamanager.train_num_rays_per_batch
        self.step = 0
        self.cuda = device.startswith("cuda")

    def train(self, steps: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) for ``steps`` training steps."""
        import torch
        from nerfstudio.engine.callbacks import TrainingCallbackLocation

        if self.cuda:
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.pipeline.train()
            for cb in self.callbacks:
                cb.run_callback_at_location(self.step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
            self.optimizers.zero_grad_all()
            _, loss_dict, _ = self.pipeline.get_train_loss_dict(step=self.step)
            sum(loss_dict.values()).backward()
            self.optimizers.optimizer_step_all()
            for sched in self.optimizers.schedulers.values():
                sched.step()
            for cb in self.callbacks:
                cb.run_callback_at_location(self.step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
            self.step += 1
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("-o", "--override", action="append", default=[], help="Hydra override, e.g. pretrain.rays_per_batch=2048")
    parser.add_argument("--transforms", type=Path, help="a canonical scene's transforms.json (default: generate a small one)")
    parser.add_argument("--size", default="160x120", help="working resolution of the generated scene")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: the preset's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from innout.config import load_method_config
    from innout.devices import resolve_device
    from innout.frames import nerfstudio_transforms, read_scene
    from innout.nerf import NerfSettings, make_trainer_config

    cfg = load_method_config(args.preset, args.override)
    settings = NerfSettings.from_pretrain(cfg.pretrain)
    device = str(resolve_device(args.device or cfg.device))
    with tempfile.TemporaryDirectory(prefix="innout-bench-") as tmp_name:
        tmp = Path(tmp_name)
        transforms = args.transforms
        if transforms is None:
            w, h = (int(v) for v in args.size.lower().split("x"))
            print(f"generating a {w}x{h} procedural scene (30 train views) ...", flush=True)
            transforms = _make_scene(tmp / "gen", w, h, 30, 0)
        meta, frames, train, test = read_scene(transforms)
        data = tmp / "transforms.json"
        data.write_text(json.dumps(nerfstudio_transforms(meta, frames, train, test)))
        ours_cfg = make_trainer_config(settings, data=data, output_dir=tmp, experiment_name="bench", timestamp="", device=device)
        plain_cfg = _plain_nerfacto_config(ours_cfg, settings)
        runners = [_Runner("innout-nerfacto", ours_cfg, device), _Runner("nerfacto", plain_cfg, device)]
        for r in runners:
            r.train(args.warmup)
        results: dict[str, list[tuple[float, float]]] = {r.name: [] for r in runners}
        for k in range(args.rounds):
            for r in runners if k % 2 == 0 else reversed(runners):
                results[r.name].append(r.train(args.steps))
    rays = settings.rays_per_batch
    summary = {
        "device": device,
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "overrides": args.override,
        "rays_per_batch": rays,
        "samples": {"proposal": list(settings.num_proposal_samples_per_ray), "nerf": settings.num_nerf_samples_per_ray},
        "grid": {"levels": settings.num_levels, "log2_hashmap_size": settings.log2_hashmap_size, "max_res": settings.max_res},
        "steps_per_round": args.steps,
        "rounds": args.rounds,
    }
    print(f"\n{'model':<16} {'rays/s (wall)':>14} {'rays/cpu-s':>12}   per-round wall rays/s")
    for name, runs in results.items():
        wall = [args.steps * rays / w for w, _ in runs]
        cpu = [args.steps * rays / c for _, c in runs]
        summary[name] = {"rays_per_second": statistics.median(wall), "rays_per_cpu_second": statistics.median(cpu), "rounds": wall}
        print(f"{name:<16} {statistics.median(wall):>14.0f} {statistics.median(cpu):>12.0f}   " + " ".join(f"{v:.0f}" for v in wall))
    ratio = summary["innout-nerfacto"]["rays_per_second"] / summary["nerfacto"]["rays_per_second"]
    ratio_cpu = summary["innout-nerfacto"]["rays_per_cpu_second"] / summary["nerfacto"]["rays_per_cpu_second"]
    summary["ratio"] = ratio
    summary["ratio_cpu"] = ratio_cpu
    print(f"ratio innout-nerfacto / nerfacto: {ratio:.2f} (wall), {ratio_cpu:.2f} (CPU time); goal >= 0.9")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
