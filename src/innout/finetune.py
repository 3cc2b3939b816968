"""Further optimisation of a trained geometry NeRF, shared by two stages.

The base stage's prior fit (stage 3) and refinement (stage 5) both start from a NeRF
folder written by an earlier stage (nerfstudio ``config.yml`` + checkpoint, see
:mod:`innout.render`), optimise the same ``InnoutNerfactoModel`` with their own losses
on rays they choose, and end in a NeRF folder of the same layout, so
:meth:`innout.renderer.NerfRenderer.from_config`, ``ns-viewer`` and ``ns-render`` open it.

:class:`NerfTuner` holds the model, its Adam optimisers (nerfacto's: one for the
proposal networks, one for the field, ``eps = 1e-15``, exponential decay), the
regularisers nerfacto trains with (interlevel and distortion losses), a DS-NeRF depth
loss, resumable checkpoints in a work folder, and :meth:`NerfTuner.export`.

Everything is given and returned in the SCENE frame (rays, depths in scene units); the
conversion to nerfstudio's normalised frame happens here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from innout.errors import StageError
from innout.renderer import SIDECAR, NerfRenderer, find_nerf_config, latest_checkpoint
from innout.rng_state import capture_rng, restore_rng


class NerfTuner:
    """A trained innout-nerfacto loaded for more optimisation (see the module docstring)."""

    def __init__(
        self,
        nerf_path: str | Path,
        device: str | torch.device = "auto",
        learning_rate: float = 1e-3,
        lr_final: float = 1e-4,
        decay_steps: int = 1000,
        stage: str = "finetune",
        warmup_steps: int = 0,
        reset_seed: Optional[int] = None,
    ):
        self.source_config = find_nerf_config(Path(nerf_path))
        self.renderer = NerfRenderer.from_config(self.source_config, device=device)
        self.model = self.renderer.model
        self.frame = self.renderer.frame
        self.device = self.renderer.device
        self.stage = stage
        self.start_step = int(torch.load(latest_checkpoint(self.source_config.parent / "nerfstudio_models"),
                                         map_location="cpu", weights_only=False)["step"])
        if reset_seed is not None:
            self._reset_fields(int(reset_seed))
        self.step = 0
        groups = self.model.get_param_groups()
        gamma = (lr_final / learning_rate) ** (1.0 / max(1, decay_steps)) if learning_rate > 0 else 1.0
        self.optimizers = {
            name: torch.optim.Adam(params, lr=learning_rate, eps=1e-15) for name, params in groups.items() if params
        }
        # exponential decay from learning_rate to lr_final over decay_steps, then flat;
        # optionally a linear warm-up: fresh Adam moves every parameter with a gradient by
        # ~lr on its first steps, whatever the gradient's size, which shakes a trained model
        warm = max(0, int(warmup_steps))
        self.schedulers = {
            name: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s, g=gamma, n=decay_steps, m=warm: g ** min(s, n) * (min(1.0, (s + 1) / m) if m else 1.0)
            )
            for name, opt in self.optimizers.items()
        }
        self.model.train()

    def _reset_fields(self, seed: int) -> None:
        """Every parameter of the NeRF (fields and proposal networks) as a fresh nerfacto
        of the same configuration initialises it from ``seed``; the frame (scene box,
        scale) stays, and the step-dependent schedules (proposal sampling, weight anneal)
        start over."""
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            fresh = self.model.config.setup(scene_box=self.model.scene_box, num_train_data=self.model.num_train_data,
                                            metadata={}, device=self.device, grad_scaler=None)
        self.model.load_state_dict(fresh.state_dict())
        self.start_step = 0
        self.model.update_to_step(0)

    # -- rays ---------------------------------------------------------------------------

    def forward(self, origins: Any, directions: Any) -> dict[str, torch.Tensor]:
        """Render rays (N, 3) given in the scene frame, with gradients.

        Returns ``rgb`` (N, 3), ``depth`` (N,) expected distance (scene units),
        ``accumulation`` (N,), and ``regulariser``: nerfacto's interlevel + distortion
        losses over these rays (scalar, already weighted by the model's multipliers)."""
        from nerfstudio.cameras.rays import RayBundle
        from nerfstudio.model_components.losses import distortion_loss, interlevel_loss

        o = torch.as_tensor(np.asarray(origins, dtype=np.float64)) if not isinstance(origins, torch.Tensor) else origins.double()
        d = torch.as_tensor(np.asarray(directions, dtype=np.float64)) if not isinstance(directions, torch.Tensor) else directions.double()
        d = d / torch.linalg.norm(d, dim=-1, keepdim=True)
        o_n = self.frame.points_to_nerf(o.cpu()).to(torch.float32)
        d_n = self.frame.directions_to_nerf(d.cpu())
        d_n = (d_n / torch.linalg.norm(d_n, dim=-1, keepdim=True)).to(torch.float32)
        n = o_n.shape[0]
        bundle = RayBundle(
            origins=o_n.to(self.device),
            directions=d_n.to(self.device),
            pixel_area=torch.full((n, 1), 1e-6, device=self.device),
            camera_indices=torch.zeros((n, 1), dtype=torch.long, device=self.device),
        )
        self.model.train()
        out = self.model(bundle)
        cfg = self.model.config
        reg = cfg.interlevel_loss_mult * interlevel_loss(out["weights_list"], out["ray_samples_list"])
        reg = reg + cfg.distortion_loss_mult * distortion_loss(out["weights_list"], out["ray_samples_list"]).mean()
        return {
            "rgb": out["rgb"],
            "depth": out["expected_depth"][..., 0] / self.frame.scale,
            "accumulation": out["accumulation"][..., 0],
            "regulariser": reg,
            "_weights": out["weights_list"][-1],
            "_samples": out["ray_samples_list"][-1],
        }

    def depth_loss(self, outputs: dict[str, torch.Tensor], target_depth: torch.Tensor, sigma: float) -> torch.Tensor:
        """DS-NeRF's depth loss of rays whose surface should be at ``target_depth`` (N,)
        (scene units, distance along the unit ray): the ray-termination distribution is
        pushed towards a Gaussian of standard deviation ``sigma`` (scene units) there."""
        from nerfstudio.model_components.losses import ds_nerf_depth_loss

        samples = outputs["_samples"]
        steps = (samples.frustums.starts + samples.frustums.ends) / 2
        lengths = samples.frustums.ends - samples.frustums.starts
        target = (target_depth.to(self.device, torch.float32) * self.frame.scale)[..., None]
        # nerfstudio's ds_nerf_depth_loss divides by 2 * sigma: its "sigma" is the VARIANCE
        sigma_nerf = sigma * self.frame.scale
        return ds_nerf_depth_loss(outputs["_weights"], target, steps, lengths, sigma_nerf**2).mean()

    # -- optimisation ------------------------------------------------------------------

    def optimise(self, loss: torch.Tensor) -> None:
        """One step of every optimiser on ``loss``; a non-finite loss is a stage error."""
        if not torch.isfinite(loss):
            raise StageError(self.stage, f"loss became {float(loss)} at step {self.step}")
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
        for sched in self.schedulers.values():
            sched.step()
        self.model.proposal_sampler.step_cb(self.start_step + self.step)
        self.step += 1
        # step-dependent state (the proposal weights' anneal) follows the global step, as
        # nerfacto's training callbacks would set it: the exported checkpoint's step then
        # reproduces it when NerfRenderer.from_config loads the NeRF
        self.model.update_to_step(self.start_step + self.step)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.model.get_param_groups().values() for p in group]

    # -- checkpoints -----------------------------------------------------------------

    def save_checkpoint(self, folder: Path, extra: Optional[dict] = None) -> Path:
        """Resumable state after ``self.step`` steps (atomic; older ones removed)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step:09d}.ckpt"
        tmp = folder / f".{path.name}.tmp"
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "proposal_sampler": [self.model.proposal_sampler._steps_since_update, self.model.proposal_sampler._step],
            "rng": capture_rng(self.device),  # the GPU's too: nerfacto's stratified samples are drawn there
            "extra": extra or {},
        }
        torch.save(state, tmp)
        os.replace(tmp, path)
        for old in folder.glob("step-*.ckpt"):
            if old != path:
                old.unlink()
        return path

    def resume(self, folder: Path) -> Optional[dict]:
        """Load the latest checkpoint of ``folder`` if there is one; its ``extra``."""
        last = latest_checkpoint(folder) if folder.is_dir() else None
        if last is None:
            return None
        state = torch.load(last, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        for k, v in state["optimizers"].items():
            self.optimizers[k].load_state_dict(v)
        for k, v in state["schedulers"].items():
            self.schedulers[k].load_state_dict(v)
        self.model.proposal_sampler._steps_since_update, self.model.proposal_sampler._step = state["proposal_sampler"]
        # (checkpoints written before the GPU's state was kept hold torch's CPU state alone)
        restore_rng(state["rng"] if "rng" in state else {"torch": state["torch_rng"]}, self.device)
        self.step = int(state["step"])
        self.model.update_to_step(self.start_step + self.step)
        return state["extra"]

    # -- the result ----------------------------------------------------------------------

    def export(self, out_dir: Path, extra_meta: Optional[dict] = None, final_dir: Optional[Path] = None) -> Path:
        """Write the NeRF as ``out_dir/innout-nerfacto/`` (config.yml, training data,
        dataparser transforms, sidecar, one checkpoint), the layout the pretrain stage
        writes (:mod:`innout.nerf`: nerfstudio's tools open it, paths relative).
        ``final_dir``: where ``out_dir`` will be renamed to (default: ``out_dir``)."""
        from innout.nerf import rebase_transforms, write_folder_config

        src = self.source_config.parent
        dst = Path(out_dir) / src.name
        final_ns_dir = Path(final_dir or out_dir) / src.name
        (dst / "nerfstudio_models").mkdir(parents=True, exist_ok=True)
        config = yaml.load(self.source_config.read_text(), Loader=yaml.Loader)
        # the training data the config names, with paths relative to the new folder, so the
        # folder opens in nerfstudio's viewer on its own
        if (src / "transforms.json").is_file():
            data = json.loads((src / "transforms.json").read_text())
            (dst / "transforms.json").write_text(json.dumps(rebase_transforms(data, src, final_ns_dir), indent=1))
        write_folder_config(config, dst, final_ns_dir)
        shutil.copy2(src / "dataparser_transforms.json", dst / "dataparser_transforms.json")
        meta = json.loads((src / SIDECAR).read_text()) if (src / SIDECAR).is_file() else {}
        total = self.start_step + self.step
        meta.update(extra_meta or {}, step=total)
        (dst / SIDECAR).write_text(json.dumps(meta, indent=1))
        self.model.eval()
        pipeline_state = {f"_model.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({"step": total, "pipeline": pipeline_state}, dst / "nerfstudio_models" / f"step-{total:09d}.ckpt")
        self.model.train()
        return dst / "config.yml"
