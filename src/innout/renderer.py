"""Rendering the geometry NeRF in the scene's own frame.

nerfstudio trains in a normalised frame: its dataparser rotates, centres and scales the
poses of ``transforms.json`` into a unit box and saves the map as
``dataparser_transforms.json`` (``transform`` 3x4, ``scale``)::

    p_nerf = scale * (R @ p_scene + t)

:class:`SceneFrame` applies it both ways (float64, exact inverse), so everything this
module takes and returns is in the SCENE frame and SCENE units: cameras
(:class:`innout.cameras.Camera`, OpenGL c2w), ray origins/directions, sample positions,
and depths (expected distance along the unit ray: ``depth_nerf / scale``).

``NerfRenderer.from_config(path)`` loads what :func:`innout.pretrain.run_pretrain` writes
(nerfstudio's ``config.yml`` + checkpoint) without touching the dataset, so it works on a
machine where the scene's images are not present.

Every stage that renders a NeRF folder does it through :class:`NerfRenderer` (the render
stage itself is :mod:`innout.render`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import yaml

from innout.cameras import Camera, Intrinsics
from innout.devices import resolve_device
from innout.errors import StageError

SIDECAR = "innout_nerf.json"
"""Written next to nerfstudio's config.yml: what the model needs that lives in the dataset."""


class SceneFrame:
    """The similarity between the scene frame and nerfstudio's normalised frame."""

    def __init__(self, transform: Any, scale: float):
        t = np.asarray(transform, dtype=np.float64)
        if t.shape == (4, 4):
            t = t[:3]
        if t.shape != (3, 4):
            raise ValueError(f"dataparser transform must be 3x4 or 4x4, got {t.shape}")
        self.transform = t
        self.scale = float(scale)
        fwd = np.eye(4)
        fwd[:3] = t
        fwd[:3] *= self.scale
        self.to_nerf_matrix = fwd  # 4x4 homogeneous: scene -> nerf
        self.from_nerf_matrix = np.linalg.inv(fwd)  # nerf -> scene
        self._rot = t[:3, :3]
        self._rot_inv = np.linalg.inv(self._rot)

    @classmethod
    def from_json(cls, path: str | Path) -> "SceneFrame":
        data = json.loads(Path(path).read_text())
        return cls(data["transform"], data["scale"])

    @classmethod
    def identity(cls) -> "SceneFrame":
        return cls(np.eye(4)[:3], 1.0)

    def to_json(self) -> dict:
        return {"transform": self.transform.tolist(), "scale": self.scale}

    # -- points, directions, poses (numpy or torch; the result has the input's type) --

    @staticmethod
    def _apply(m: np.ndarray, x: Any, translate: bool) -> Any:
        lin, off = m[:3, :3], m[:3, 3]
        if isinstance(x, torch.Tensor):
            lin_t = torch.as_tensor(lin, dtype=torch.float64, device=x.device)
            y = x.to(torch.float64) @ lin_t.T
            if translate:
                y = y + torch.as_tensor(off, dtype=torch.float64, device=x.device)
            return y.to(x.dtype)
        arr = np.asarray(x, dtype=np.float64)
        y = arr @ lin.T
        return y + off if translate else y

    def points_to_nerf(self, p: Any) -> Any:
        return self._apply(self.to_nerf_matrix, p, True)

    def points_to_scene(self, p: Any) -> Any:
        return self._apply(self.from_nerf_matrix, p, True)

    def directions_to_nerf(self, d: Any) -> Any:
        """Rotated (not normalised: a rotation keeps unit vectors unit)."""
        m = np.eye(4)
        m[:3, :3] = self._rot
        return self._apply(m, d, False)

    def directions_to_scene(self, d: Any) -> Any:
        m = np.eye(4)
        m[:3, :3] = self._rot_inv
        return self._apply(m, d, False)

    def distances_to_scene(self, t: Any) -> Any:
        return t / self.scale

    def distances_to_nerf(self, t: Any) -> Any:
        return t * self.scale

    def c2w_to_nerf(self, c2w: np.ndarray) -> np.ndarray:
        """A scene c2w (4x4 or 3x4) as nerfstudio's dataparser outputs it (3x4, unit axes)."""
        c2w = np.asarray(c2w, dtype=np.float64)
        out = np.zeros((3, 4))
        out[:, :3] = self._rot @ c2w[:3, :3]
        out[:, 3] = self.points_to_nerf(c2w[:3, 3])
        return out

    def c2w_to_scene(self, c2w_nerf: np.ndarray) -> np.ndarray:
        c2w_nerf = np.asarray(c2w_nerf, dtype=np.float64)
        out = np.eye(4)
        out[:3, :3] = self._rot_inv @ c2w_nerf[:3, :3]
        out[:3, 3] = self.points_to_scene(c2w_nerf[:3, 3])
        return out


def find_nerf_config(path: str | Path) -> Path:
    """nerfstudio's config.yml from a config.yml, a checkpoint, a nerfstudio run folder
    or a pre-training output folder (``<out>/innout-nerfacto/config.yml``)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".ckpt":
        path = path.parent.parent / "config.yml"
    elif path.is_dir():
        for cand in (path / "config.yml", path / "innout-nerfacto" / "config.yml"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{path}: no config.yml (nor innout-nerfacto/config.yml) in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such nerfstudio config")
    return path


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The ``step-NNNNNNNNN.ckpt`` with the highest step in ``folder`` (None if none)."""
    best, best_step = None, -1
    if folder.is_dir():
        for f in folder.iterdir():
            m = re.fullmatch(r"step-(\d+)\.ckpt", f.name)
            if m and int(m.group(1)) > best_step:
                best, best_step = f, int(m.group(1))
    return best


class NerfRenderer:
    """Renders an ``InnoutNerfactoModel`` for cameras and rays given in the scene frame.

    Outputs are float32 torch tensors on the renderer's device:
    ``rgb`` (..., 3) in [0, 1], ``depth`` (...) expected distance along the unit ray in
    scene units, ``accumulation`` (...), and with ``return_samples``:
    ``positions`` (..., S, 3) sample positions (scene frame), ``weights`` (..., S)
    volume-rendering weights T_i (1 - exp(-sigma_i delta_i)) (they sum to
    ``accumulation``) and ``distances`` (..., S) distances of the samples along the ray
    (scene units). ``depth == sum(weights * distances) / accumulation`` (up to the clip
    to the sampled range).
    """

    def __init__(self, model: torch.nn.Module, frame: SceneFrame, device: str | torch.device = "auto", chunk: int = 4096):
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.frame = frame
        self.chunk = int(chunk)

    # -- loading ----------------------------------------------------------------------

    @classmethod
    def from_config(cls, path: str | Path, device: str | torch.device = "auto", chunk: Optional[int] = None) -> "NerfRenderer":
        """Load a trained geometry NeRF (see :func:`find_nerf_config` for ``path``).

        Paths are taken relative to the config's folder (not the absolute ones inside
        it), so a moved results folder still loads.
        """
        from nerfstudio.data.scene_box import SceneBox

        given = Path(path)
        config_path = find_nerf_config(given)
        base = config_path.parent
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
        ckpt_path = given if given.suffix == ".ckpt" else latest_checkpoint(base / config.relative_model_dir)
        if ckpt_path is None:
            raise FileNotFoundError(f"{base / config.relative_model_dir}: no step-*.ckpt checkpoint")
        frame = SceneFrame.from_json(base / "dataparser_transforms.json")
        dev = resolve_device(device)
        if getattr(config.pipeline.model, "implementation", "torch") == "tcnn":
            from innout.nerf import tcnn_available

            if dev.type != "cuda" or not tcnn_available():
                raise StageError("nerf", f"{config_path} is a tiny-cuda-nn NeRF (pretrain.implementation tcnn): it loads only "
                                         "on a CUDA device with the tinycudann package")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model_state = {k[len("_model."):]: v for k, v in state["pipeline"].items() if k.startswith("_model.")}
        meta = json.loads((base / SIDECAR).read_text()) if (base / SIDECAR).is_file() else {}
        num_train = int(meta.get("num_train_data", 0)) or _infer_num_train(model_state)
        scene_scale = float(config.pipeline.datamanager.dataparser.scene_scale)
        aabb = torch.tensor(meta.get("aabb", [[-scene_scale] * 3, [scene_scale] * 3]), dtype=torch.float32)
        model = config.pipeline.model.setup(
            scene_box=SceneBox(aabb=aabb), num_train_data=num_train, metadata={}, device=dev, grad_scaler=None
        )
        model.load_state_dict(model_state, strict=True)
        model.update_to_step(int(state["step"]))
        model.eval()
        return cls(model, frame, dev, chunk or int(config.pipeline.model.eval_num_rays_per_chunk))

    # -- rendering --------------------------------------------------------------------

    def render_rays(
        self,
        origins: Any,
        directions: Any,
        chunk: Optional[int] = None,
        return_samples: bool = True,
        pixel_area: Optional[Any] = None,
        progress: Optional[Callable[[int], None]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Render rays (..., 3) given in the scene frame; directions need not be unit.
        ``progress(n)`` is called after every chunk of ``n`` rays (see innout.progress)."""
        from nerfstudio.cameras.rays import RayBundle

        o = origins if isinstance(origins, torch.Tensor) else torch.from_numpy(np.array(origins, dtype=np.float64))
        d = directions if isinstance(directions, torch.Tensor) else torch.from_numpy(np.array(directions, dtype=np.float64))
        o, d = torch.broadcast_tensors(o.to(torch.float64), d.to(torch.float64))
        batch_shape = o.shape[:-1]
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        d = d / torch.linalg.norm(d, dim=-1, keepdim=True)
        o_n = self.frame.points_to_nerf(o).to(torch.float32)
        d_n = self.frame.directions_to_nerf(d)
        d_n = (d_n / torch.linalg.norm(d_n, dim=-1, keepdim=True)).to(torch.float32)
        if pixel_area is None:
            area = torch.full((o.shape[0], 1), 1e-6, dtype=torch.float32)
        else:
            area = torch.as_tensor(pixel_area, dtype=torch.float32).expand(*batch_shape).reshape(-1, 1)
        chunk = int(chunk or self.chunk)
        n = o.shape[0]
        parts: Dict[str, list] = {}
        was_training = self.model.training
        self.model.eval()
        self.model.keep_samples = return_samples
        try:
            with torch.no_grad():
                for start in range(0, n, chunk):
                    sl = slice(start, min(start + chunk, n))
                    bundle = RayBundle(
                        origins=o_n[sl].to(self.device),
                        directions=d_n[sl].to(self.device),
                        pixel_area=area[sl].to(self.device),
                        camera_indices=torch.zeros((sl.stop - sl.start, 1), dtype=torch.long, device=self.device),
                    )
                    out = self.model(bundle)
                    parts.setdefault("rgb", []).append(out["rgb"])
                    parts.setdefault("depth", []).append(out["expected_depth"][..., 0] / self.frame.scale)
                    parts.setdefault("accumulation", []).append(out["accumulation"][..., 0])
                    if return_samples:
                        parts.setdefault("weights", []).append(out["sample_weights"])
                        parts.setdefault("positions", []).append(self.frame.points_to_scene(out["sample_positions"]))
                        parts.setdefault("distances", []).append(out["sample_distances"] / self.frame.scale)
                    if progress is not None:
                        progress(sl.stop - sl.start)
        finally:
            self.model.keep_samples = False
            self.model.train(was_training)
        result = {}
        for key, chunks in parts.items():
            value = torch.cat(chunks, dim=0).to(torch.float32)
            result[key] = value.reshape(*batch_shape, *value.shape[1:])
        return result

    def render_camera(self, camera: Camera, chunk: Optional[int] = None, return_samples: bool = True,
                      progress: Optional[Callable[[int], None]] = None) -> Dict[str, torch.Tensor]:
        """Render every pixel of ``camera`` (scene-frame c2w, intrinsics at any resolution):
        ``rgb`` (H, W, 3), ``depth`` (H, W), ``accumulation`` (H, W) and with
        ``return_samples`` ``positions`` (H, W, S, 3), ``weights`` (H, W, S),
        ``distances`` (H, W, S)."""
        origins, dirs = camera.rays()
        k = camera.intrinsics
        return self.render_rays(origins, dirs, chunk=chunk, return_samples=return_samples, pixel_area=1.0 / (k.fx * k.fy),
                                progress=progress)

    def camera_from_nerf(self, camera_index: int, cameras: Any) -> Camera:
        """A nerfstudio ``Cameras`` entry (normalised frame) as a scene-frame Camera."""

        c = cameras[camera_index]
        intr = Intrinsics(float(c.fx), float(c.fy), float(c.cx), float(c.cy), int(c.width), int(c.height))
        return Camera(self.frame.c2w_to_scene(c.camera_to_worlds.cpu().numpy()), intr)


def _infer_num_train(model_state: Dict[str, torch.Tensor]) -> int:
    for key in ("field.embedding_appearance.embedding.weight", "camera_optimizer.pose_adjustment"):
        if key in model_state:
            return int(model_state[key].shape[0])
    return 1


def to_numpy(outputs: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in outputs.items()}
