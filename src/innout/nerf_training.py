"""Training a nerfacto NeRF on a canonical scene, resumably: the loop of the pretrain stage
(and of the masks stage's whole-scene NeRF), its checkpoints and determinism.

:func:`train_nerf` trains the ``innout-nerfacto`` nerfstudio method on the unmasked pixels
of a scene's train views and writes a NeRF folder (:mod:`innout.pretrain` describes it).
Training runs in ``work_dir`` (persistent across reruns, unlike Snakemake outputs): a
checkpoint every ``pretrain.steps_per_checkpoint`` steps (model, optimisers, schedulers,
RNG states, step). A rerun with the same settings resumes from the last one; a checkpoint
made with other settings or data, or on the other kind of device (another fingerprint), is
discarded. Checkpoint steps follow nerfstudio: ``step-N`` holds the state after iteration N
(0-based), so a run of ``iterations`` steps ends with ``step-{iterations-1}`` and resumes at
N + 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from innout.config import write_resolved
from innout.devices import computed_on, stage_device
from innout.errors import InputError, StageError
from innout.frames import Frame, nerfstudio_transforms, read_scene
from innout.renderer import SIDECAR, NerfRenderer, SceneFrame, latest_checkpoint
from innout.rng_state import capture_rng, restore_rng
from innout.stage import atomic_dir
from innout.training_log import TrainingLog

NS_DIR = "innout-nerfacto"  # nerfstudio's run folder inside out_dir (= the method name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# settings that do not change the trained model: changing them keeps a run resumable
_NOT_IN_FINGERPRINT = ("steps_per_checkpoint", "log_every_steps", "eval_rays_per_chunk", "eval_patches_per_view",
                       "eval_patch_size", "tensorboard")


def _fingerprint(cfg: Any, transforms_bytes: bytes, device: torch.device) -> str:
    """What a checkpoint in the work dir must have been trained with to be resumed, the kind of
    device included (:func:`innout.devices.computed_on`; besides, a GPU trains in mixed
    precision, and torch's gradient scaler refuses the empty state a CPU run saves)."""

    pre = OmegaConf.to_container(cfg.pretrain, resolve=True) if not isinstance(cfg.pretrain, dict) else dict(cfg.pretrain)
    for key in _NOT_IN_FINGERPRINT:
        pre.pop(key, None)
    identity = {"pretrain": pre, "seed": int(cfg.seed)}
    on = computed_on(device)
    if on:  # (nothing on a CPU: the fingerprints of CPU work dirs stay as they were)
        identity["device"] = on
    blob = json.dumps(identity, sort_keys=True).encode()
    h = hashlib.sha256(blob)
    h.update(hashlib.sha256(transforms_bytes).digest())
    return h.hexdigest()[:16]


def plain_state(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into Python numbers/tensors.

    nerfstudio's learning-rate schedules compute with numpy, so optimiser and scheduler
    states hold numpy floats; torch >= 2.6 loads with ``weights_only=True`` by default
    (nerfstudio's ``eval_setup`` included), which refuses numpy objects."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        items = [(k, plain_state(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [plain_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain_state(v) for v in obj)
    return obj


def _save_checkpoint(ckpt_dir: Path, step: int, pipeline, optimizers, grad_scaler, extra: dict) -> Path:
    """nerfstudio's checkpoint layout (plus an ``innout`` entry), written atomically;
    older checkpoints in the folder are removed once the new one is in place."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:09d}.ckpt"
    tmp = ckpt_dir / f".step-{step:09d}.ckpt.tmp"
    state = {
        "step": step,
        "pipeline": pipeline.state_dict(),
        "optimizers": {k: v.state_dict() for k, v in optimizers.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in optimizers.schedulers.items()},
        "scalers": grad_scaler.state_dict(),
        "innout": extra,
    }
    torch.save(plain_state(state), tmp)
    os.replace(tmp, path)
    for old in ckpt_dir.glob("step-*.ckpt"):
        if old != path:
            old.unlink()
    return path


class _Quiet:
    """Silence nerfstudio's rich console (its messages go to stdout, not our log)."""

    def __enter__(self):
        from nerfstudio.utils.rich_utils import CONSOLE

        self.console, self.was = CONSOLE, CONSOLE.quiet
        CONSOLE.quiet = True
        return self

    def __exit__(self, *exc):
        self.console.quiet = self.was
        return False


CURVE_POINTS = 200
"""About this many points of each training curve (TensorBoard and curves.png)."""


CURVE_PANELS = {"losses": ["loss/total", "loss/rgb_loss", "loss/interlevel_loss", "loss/distortion_loss"],
                "PSNR of the training batch (dB)": ["psnr/train_batch"],
                "learning rate": ["lr/fields", "lr/proposal_networks"]}


def _curve_scalars(loss: torch.Tensor, loss_dict: dict, metrics: dict, optimizers: Any) -> dict:
    """Losses, the batch PSNR and every optimiser's learning rate at one step."""
    out = {"loss/total": float(loss.detach())}
    out.update({f"loss/{k}": float(v.detach()) for k, v in loss_dict.items()})
    if "psnr" in metrics:
        out["psnr/train_batch"] = float(metrics["psnr"].detach())
    for name, optimizer in optimizers.optimizers.items():
        out[f"lr/{name}"] = float(optimizer.param_groups[0]["lr"])
    return out


def train_nerf(
    transforms: Path,
    out_dir: Path,
    work_dir: Path,
    cfg: Any,
    log: Optional[logging.Logger] = None,
    *,
    on_step: Optional[Callable[[int], None]] = None,
    quality: Optional[Callable[[NerfRenderer, list[Frame], list[Frame]], dict]] = None,
) -> dict:
    """Train a NeRF on ``transforms`` (resuming from ``work_dir``) and write the NeRF folder
    ``out_dir`` (:mod:`innout.pretrain` lists it).

    ``quality(renderer, train, test)``: the quality figures of the summary (the pretrain
    stage's patch estimate); None leaves them None (the masks stage renders what it needs
    itself). ``cfg``: the resolved method config (``cfg.pretrain``, ``cfg.seed``,
    ``cfg.device``). ``on_step(step)`` is called after every completed iteration (and after
    that iteration's checkpoint, if any): tests interrupt training from it.
    Returns the summary dict (also ``out_dir/summary.json``).
    """
    # nerfstudio is heavy (seconds to import): loaded when training starts
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
    from nerfstudio.engine.optimizers import Optimizers

    from innout.nerf import (
        NerfSettings,
        make_trainer_config,
        rebase_transforms,
        resolve_implementation,
        write_folder_config,
    )

    log = log or logging.getLogger("innout.pretrain")
    t_stage = time.perf_counter()
    transforms, out_dir, work_dir = Path(transforms).resolve(), Path(out_dir).resolve(), Path(work_dir).resolve()
    meta, frames, train, test = read_scene(transforms)
    settings = NerfSettings.from_pretrain(cfg.pretrain)
    if settings.iterations < 1:
        raise InputError("pretrain.iterations", "must be at least 1")
    device_t, device_warning = stage_device(cfg, "pretrain")
    device = str(device_t)
    settings.implementation = resolve_implementation(settings.implementation, device)
    seed = int(cfg.seed)
    w, h = train[0].camera.intrinsics.width, train[0].camera.intrinsics.height
    log.info(
        "pretrain: %d train views, %d ground-truth test views, %dx%d, %d iterations x %d rays on %s (nerfacto implementation %s)",
        len(train), len(test), w, h, settings.iterations, settings.rays_per_batch, device, settings.implementation,
    )

    # ---- work dir: resumable state ------------------------------------------------
    ns_data = nerfstudio_transforms(meta, frames, train, test)
    ns_data_text = json.dumps(ns_data, indent=1)
    # a checkpoint of the other implementation (tcnn / torch) has another layout
    fingerprint = _fingerprint(cfg, ns_data_text.encode() + settings.implementation.encode(), device_t)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_file = work_dir / "run.json"
    ckpt_dir = work_dir / "checkpoints"
    if run_file.is_file():
        previous = json.loads(run_file.read_text()).get("fingerprint")
        if previous != fingerprint and ckpt_dir.exists():
            log.warning("work dir %s holds a run with other settings or data: starting over", work_dir)
            for f in ckpt_dir.glob("*.ckpt"):
                f.unlink()
    run_file.write_text(json.dumps({"fingerprint": fingerprint, "transforms": str(transforms)}, indent=1))
    data_json = work_dir / "data" / "transforms.json"
    data_json.parent.mkdir(parents=True, exist_ok=True)
    data_json.write_text(ns_data_text)

    # ---- nerfstudio pipeline --------------------------------------------------------
    if settings.pose_scale_factor <= 0:
        settings.pose_scale_factor, why = auto_pose_scale_factor(data_json, train)
        log.info("pose_scale_factor auto: %.4g (%s)", settings.pose_scale_factor, why)
    seed_everything(seed)
    mixed = bool(settings.mixed_precision) and device.startswith("cuda")
    trainer_cfg = make_trainer_config(settings, data=data_json, output_dir=work_dir, experiment_name="run", timestamp="", device=device.split(":")[0])
    grad_scaler = torch.amp.GradScaler("cuda", enabled=mixed)
    t0 = time.perf_counter()
    with _Quiet():
        pipeline = trainer_cfg.pipeline.setup(device=device, test_mode="val", world_size=1, local_rank=0, grad_scaler=grad_scaler)
    dp_out = pipeline.datamanager.train_dataparser_outputs
    frame_map = SceneFrame(dp_out.dataparser_transform.cpu().numpy(), float(dp_out.dataparser_scale))
    _check_frame(frame_map, dp_out, train)
    log.info("nerfstudio pipeline ready in %.1f s (scene -> nerfstudio scale %.4g)", time.perf_counter() - t0, frame_map.scale)
    optimizers = Optimizers(trainer_cfg.optimizers.copy(), pipeline.get_param_groups())
    callbacks = pipeline.get_training_callbacks(
        TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=grad_scaler, pipeline=pipeline, trainer=None)
    )
    model = pipeline.model

    # ---- resume ------------------------------------------------------------------------
    start, train_seconds, resumed_from, history = 0, 0.0, None, []
    last = latest_checkpoint(ckpt_dir)
    if last is not None:
        state = torch.load(last, map_location="cpu", weights_only=False)
        pipeline.load_pipeline(state["pipeline"], state["step"])
        optimizers.load_optimizers(state["optimizers"])
        optimizers.load_schedulers(state["schedulers"])
        grad_scaler.load_state_dict(state["scalers"])
        extra = state.get("innout", {})
        if "rng" in extra:
            restore_rng(extra["rng"], device_t)
        ps = extra.get("proposal_sampler")
        if ps:
            model.proposal_sampler._steps_since_update = int(ps["steps_since_update"])
            model.proposal_sampler._step = int(ps["step"])
        train_seconds = float(extra.get("train_seconds", 0.0))
        history = extra.get("curves", [])
        start = int(state["step"]) + 1
        resumed_from = start
        log.info("resuming from step %d (checkpoint %s)", start, last.name)
        del state

    # ---- train ---------------------------------------------------------------------------
    curves = TrainingLog(work_dir / "tensorboard" if bool(cfg.pretrain.tensorboard) else None, start_step=start)
    curves.load_state(history)
    n_iter = settings.iterations
    curve_every = max(1, n_iter // CURVE_POINTS)
    rays = settings.rays_per_batch
    log_every = max(1, int(_cfg_get(cfg.pretrain, "log_every_steps", 50)))
    every_ckpt = max(1, settings.steps_per_checkpoint)
    dev_type = device.split(":")[0]
    loss_val, psnr_val = float("nan"), float("nan")
    window_t, window_steps = time.perf_counter(), 0
    t_train = time.perf_counter()
    seconds_before = train_seconds
    step = start - 1

    def extra_state() -> dict:
        return {
            "rng": capture_rng(device_t),
            "train_seconds": seconds_before + (time.perf_counter() - t_train),
            "fingerprint": fingerprint,
            "curves": curves.state(),
            "proposal_sampler": {
                "steps_since_update": int(model.proposal_sampler._steps_since_update),
                "step": int(model.proposal_sampler._step),
            },
        }

    for step in range(start, n_iter):
        pipeline.train()
        for cb in callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        with torch.autocast(device_type=dev_type, enabled=mixed):
            _, loss_dict, metrics = pipeline.get_train_loss_dict(step=step)
            loss = sum(loss_dict.values())
        if not torch.isfinite(loss):
            raise StageError("pretrain", f"loss became {float(loss)} at step {step}")
        grad_scaler.scale(loss).backward()
        optimizers.optimizer_scaler_step_all(grad_scaler)
        scale_before = grad_scaler.get_scale()
        grad_scaler.update()
        if scale_before <= grad_scaler.get_scale():
            for sched in optimizers.schedulers.values():
                sched.step()
        for cb in callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        window_steps += 1
        done = step + 1
        if done % curve_every == 0 or done == n_iter:
            curves.add(done, _curve_scalars(loss, loss_dict, metrics, optimizers))
        if done % log_every == 0 or done == n_iter or step == start:
            loss_val = float(loss.detach())
            psnr_val = float(metrics["psnr"].detach()) if "psnr" in metrics else float("nan")
            now = time.perf_counter()
            rps = window_steps * rays / max(now - window_t, 1e-9)
            eta = (n_iter - done) * rays / max(rps, 1e-9)
            log.info("step %d/%d loss %.5f psnr %.2f dB %.0f rays/s eta %.0f s", done, n_iter, loss_val, psnr_val, rps, eta)
            window_t, window_steps = now, 0
        if done % every_ckpt == 0 and done < n_iter:
            _save_checkpoint(ckpt_dir, step, pipeline, optimizers, grad_scaler, extra_state())
        if on_step is not None:
            on_step(step)

    ran = max(0, n_iter - start)
    train_seconds = seconds_before + (time.perf_counter() - t_train if ran else 0.0)
    if ran or last is None or int(last.name[5:14]) != n_iter - 1:
        final_ckpt = _save_checkpoint(ckpt_dir, n_iter - 1, pipeline, optimizers, grad_scaler, extra_state())
    else:
        final_ckpt = last
        log.info("training was already complete (%d steps)", n_iter)
    log.info("training: %d steps in %.1f s (%d this run)", n_iter, train_seconds, ran)

    # ---- outputs ---------------------------------------------------------------------------
    # nothing is rendered in full here: the "before" of the metrics is rule render_pretrain's
    # (test-view boxes), and the quality check below renders a few patches per view
    renderer = NerfRenderer(model, frame_map, device=device, chunk=int(settings.eval_rays_per_chunk))
    t_quality = time.perf_counter()
    if quality is not None:
        figures = quality(renderer, train, test)
    else:
        figures = {"psnr_train_unmasked": None, "psnr_test_outside_mask": None, "ssim_test_outside_mask": None,
                   "quality_patches": None}
    quality_seconds = time.perf_counter() - t_quality
    with atomic_dir(out_dir) as tmp:
        ns_base = tmp / NS_DIR
        final_ns = out_dir / NS_DIR
        (ns_base / "nerfstudio_models").mkdir(parents=True)
        (ns_base / "transforms.json").write_text(json.dumps(rebase_transforms(ns_data, transforms.parent, final_ns), indent=1))
        out_cfg = make_trainer_config(settings, device=dev_type)
        out_cfg.max_num_iterations = n_iter
        write_folder_config(out_cfg, ns_base, final_ns)
        dp_out.save_dataparser_transform(ns_base / "dataparser_transforms.json")
        (ns_base / SIDECAR).write_text(
            json.dumps(
                {
                    "num_train_data": len(pipeline.datamanager.train_dataset),
                    "aabb": dp_out.scene_box.aabb.tolist(),
                    "scene_to_nerf": frame_map.to_json(),
                    "train_views": [f.name for f in train],
                    "step": n_iter - 1,
                },
                indent=1,
            )
        )
        # the final checkpoint without the resume-only entries (RNG states etc.)
        state = torch.load(final_ckpt, map_location="cpu", weights_only=False)
        state.pop("innout", None)
        torch.save(plain_state(state), ns_base / "nerfstudio_models" / final_ckpt.name)
        del state
        curves.plot(tmp / "curves.png", f"pretrain: {len(train)} train views, {n_iter} steps of {rays} rays", CURVE_PANELS)
        curves.export(tmp)

        summary = {
            "iterations": n_iter,
            "seconds": round(train_seconds, 3),
            "rays_per_second": round(n_iter * rays / max(train_seconds, 1e-9), 1),
            "rays_per_batch": rays,
            **figures,
            "n_train_views": len(train),
            "n_test_views": len(test),
            "resolution": [w, h],
            "device": device,
            "device_warning": device_warning,
            "implementation": settings.implementation,
            "seed": seed,
            "preset": _cfg_get(cfg, "preset", None),
            "resumed_from_step": resumed_from,
            "steps_this_run": ran,
            "final_loss": None if math.isnan(loss_val) else loss_val,
            "quality_seconds": round(quality_seconds, 3),
            "stage_seconds": round(time.perf_counter() - t_stage, 3),
            "dataparser_scale": frame_map.scale,
            "nerfstudio_config": f"{NS_DIR}/config.yml",
            "checkpoint": f"{NS_DIR}/nerfstudio_models/{final_ckpt.name}",
            "tensorboard": "tensorboard" if curves.tensorboard_dir is not None else None,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        write_resolved(cfg, tmp / "config.yaml")
    log.info(
        "pretrain done: PSNR train (unmasked) %s dB, test outside mask %s dB / SSIM %s",
        _fmt(summary["psnr_train_unmasked"]), _fmt(summary["psnr_test_outside_mask"]), _fmt(summary["ssim_test_outside_mask"]),
    )
    return summary


def _cfg_get(node: Any, key: str, default: Any) -> Any:
    try:
        return node[key] if key in node else default
    except TypeError:
        return getattr(node, key, default)


def auto_pose_scale_factor(data_json: Path, train: list[Frame]) -> tuple[float, str]:
    """Scale factor (<= 1) that puts the train views' median near bound at distance 1 in
    nerfstudio's frame; 1.0 when the frames have no ``innout_bounds``."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    nears = []
    for f in train:
        b = f.raw.get("innout_bounds")
        if isinstance(b, (list, tuple)) and len(b) == 2 and b[0] is not None and np.isfinite(b[0]) and b[0] > 0:
            nears.append(float(b[0]))
    if not nears:
        return 1.0, "no innout_bounds in the frames"
    with _Quiet():
        parser = NerfstudioDataParserConfig(data=Path(data_json), downscale_factor=1).setup()
        base = float(parser.get_dataparser_outputs(split="train").dataparser_scale)
    near = float(np.median(nears))
    factor = min(1.0, 1.0 / (base * near))
    return factor, f"median near bound {near:.4g} x nerfstudio scale {base:.4g}"


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _check_frame(frame: "Any", dp_out: Any, train: list[Frame]) -> None:
    """The saved transform must map every train camera exactly onto nerfstudio's."""
    by_path = {os.path.normpath(f.image): f for f in train}
    c2ws = dp_out.cameras.camera_to_worlds.cpu().numpy()
    worst = 0.0
    for path, c2w_ns in zip(dp_out.image_filenames, c2ws):
        f = by_path.get(os.path.normpath(path))
        if f is None:
            raise StageError("pretrain", f"nerfstudio trains on {path}, which is not a train view")
        worst = max(worst, float(np.abs(frame.c2w_to_nerf(f.camera.c2w) - c2w_ns).max()))
    if worst > 1e-4:
        raise StageError("pretrain", f"scene -> nerfstudio transform does not reproduce nerfstudio's poses (error {worst:.2e})")
