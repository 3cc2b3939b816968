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
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import yaml

from innout.cameras import Camera
from innout.devices import resolve_device, stage_device

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
                from innout.errors import StageError

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
    ) -> Dict[str, torch.Tensor]:
        """Render rays (..., 3) given in the scene frame; directions need not be unit."""
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
        finally:
            self.model.keep_samples = False
            self.model.train(was_training)
        result = {}
        for key, chunks in parts.items():
            value = torch.cat(chunks, dim=0).to(torch.float32)
            result[key] = value.reshape(*batch_shape, *value.shape[1:])
        return result

    def render_camera(self, camera: Camera, chunk: Optional[int] = None, return_samples: bool = True) -> Dict[str, torch.Tensor]:
        """Render every pixel of ``camera`` (scene-frame c2w, intrinsics at any resolution):
        ``rgb`` (H, W, 3), ``depth`` (H, W), ``accumulation`` (H, W) and with
        ``return_samples`` ``positions`` (H, W, S, 3), ``weights`` (H, W, S),
        ``distances`` (H, W, S)."""
        origins, dirs = camera.rays()
        k = camera.intrinsics
        return self.render_rays(origins, dirs, chunk=chunk, return_samples=return_samples, pixel_area=1.0 / (k.fx * k.fy))

    def camera_from_nerf(self, camera_index: int, cameras: Any) -> Camera:
        """A nerfstudio ``Cameras`` entry (normalised frame) as a scene-frame Camera."""
        from innout.cameras import Intrinsics

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


# --------------------------------------------------------------------------------------
# the render stage: every camera, depth maps and a camera-path video
# --------------------------------------------------------------------------------------


def path_keyframes(cameras: "list[Camera]", count: int) -> list[int]:
    """Indices of up to ``count`` cameras that a closed path visits in order around the
    capture: the camera centres are projected on their two main axes (PCA), and for
    ``count`` directions evenly spread over the circle the camera furthest along that
    direction is taken (the extreme points of the capture, in angular order), repeats
    dropped. A ring of cameras (360 capture) gives points on the ring, a forward-facing
    grid the points of its outline."""
    centres = np.stack([np.asarray(c.c2w, float)[:3, 3] for c in cameras])
    if len(cameras) <= 2:
        return list(range(len(cameras)))
    offsets = centres - centres.mean(axis=0)
    _, _, axes = np.linalg.svd(offsets, full_matrices=False)
    uv = offsets @ axes[:2].T
    uv /= np.maximum(np.abs(uv).max(axis=0), 1e-12)  # equal weight to both axes
    picked: list[int] = []
    for k in range(max(2, int(count))):
        angle = 2.0 * np.pi * k / max(2, int(count))
        best = int(np.argmax(uv @ np.array([np.cos(angle), np.sin(angle)])))
        if best not in picked:
            picked.append(best)
    return picked


def camera_path(keyframes: "list[Camera]", n_frames: int, intrinsics: Any = None) -> "list[Camera]":
    """A smooth closed path through the keyframe cameras: centres on a periodic cubic
    spline (parameterised by chord length), orientations on a rotation spline (scipy's
    ``RotationSpline``: continuous angular velocity) through the keyframes' rotations,
    ``n_frames`` cameras evenly spaced in the parameter. ``intrinsics``: of every frame
    (default: the first keyframe's)."""
    from scipy.interpolate import CubicSpline
    from scipy.spatial.transform import Rotation, RotationSpline

    if not keyframes:
        raise ValueError("a camera path needs at least one keyframe")
    intr = intrinsics or keyframes[0].intrinsics
    c2ws = [np.asarray(c.c2w, float) for c in keyframes]
    if len(c2ws) == 1:
        return [Camera(c2ws[0].copy(), intr) for _ in range(n_frames)]
    closed = c2ws + [c2ws[0]]
    centres = np.stack([m[:3, 3] for m in closed])
    chord = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    chord = np.where(chord > 1e-9, chord, 1e-9)  # two keyframes at one place still get distinct times
    times = np.concatenate([[0.0], np.cumsum(chord)])
    position = CubicSpline(times, centres, bc_type="periodic")
    rotations = Rotation.from_matrix(np.stack([m[:3, :3] for m in closed]))
    orientation = RotationSpline(times, rotations)
    ts = np.linspace(0.0, times[-1], int(n_frames), endpoint=False)
    out = []
    for t, p, r in zip(ts, position(ts), orientation(ts).as_matrix()):
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = r, p
        out.append(Camera(m, intr))
    return out


def encode_mp4(frames: Any, path: Path, fps: int = 30, crf: int = 18) -> dict:
    """H.264 (libx264, yuv420p, constant rate factor ``crf``) MP4 of uint8 RGB frames
    (N, H, W, 3) with even H and W, through PyAV. The same frames give the same bytes
    (no timestamps or encoder randomness are written)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs even sizes, got {w}x{h}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # one thread: x264's output does not depend on it, but its lookahead timing does
        # not either; deterministic and small anyway at these sizes
        stream.options = {"crf": str(int(crf)), "preset": "medium", "threads": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"frames": int(n), "fps": int(fps), "width": int(w), "height": int(h), "codec": "h264 (libx264)", "crf": int(crf)}


def video_page(video: Path, title: str, caption: str, weights: Optional[str] = None) -> str:
    """A self-contained HTML page showing an MP4 (embedded as a data URI) for the report,
    which shows HTML results inline but offers other files only as downloads; under the
    banner of the weights that made it (``weights``: a provenance, :mod:`innout.provenance`)."""
    import base64
    import html

    from innout.viz import weights_banner_html

    data = base64.b64encode(Path(video).read_bytes()).decode("ascii")
    banner = weights_banner_html(weights)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title></head>\n"
        "<body style=\"font-family:sans-serif\">\n" + banner + "<h3>" + html.escape(title) + "</h3>\n"
        "<video id=\"video\" controls autoplay loop muted playsinline style=\"max-width:100%\" "
        "src=\"data:video/mp4;base64," + data + "\"></video>\n"
        "<p>" + html.escape(caption) + "</p>\n</body></html>\n"
    )


def _scaled_intrinsics(intr: Any, scale: float, even: bool = False) -> Any:
    w = max(2, int(round(intr.width * scale)))
    h = max(2, int(round(intr.height * scale)))
    if even:
        w, h = w - w % 2, h - h % 2
    return intr if (w, h) == (intr.width, intr.height) else intr.scaled_to(w, h)


def _render_views(renderer: "NerfRenderer", frames: list, folder: Path, scale: float, log: Any) -> int:
    """rgb/<name>.png, depth/<name>.npy (float32 distance along the ray, scene units) and
    depth/<name>.png (colourised) of each frame's camera; returns the rays rendered."""
    from innout.pretrain import _save_png, colourise_depth

    rays = 0
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cam = f.camera.with_intrinsics(_scaled_intrinsics(f.camera.intrinsics, scale)) if scale != 1.0 else f.camera
        out = renderer.render_camera(cam, return_samples=False)
        rgb, depth, acc = (out[k].cpu().numpy() for k in ("rgb", "depth", "accumulation"))
        _save_png(folder / "rgb" / f"{f.name}.png", rgb)
        np.save(folder / "depth" / f"{f.name}.npy", depth.astype(np.float32))
        _save_png(folder / "depth" / f"{f.name}.png", colourise_depth(depth, acc))
        rays += depth.size
        if (i + 1) % 10 == 0 or i + 1 == len(frames):
            log.info("rendered %d/%d views into %s", i + 1, len(frames), folder)
    return rays


def run_render(transforms: Path, nerf_path: Path, out_dir: Path, cfg: Any, log: Any = None,
               upstream_summary: Optional[Path] = None) -> dict:
    """Render the final NeRF and write ``out_dir``::

        test/rgb/<name>.png, test/depth/<name>.{npy,png}    ground-truth test cameras (if any)
        train/rgb/<name>.png, train/depth/<name>.{npy,png}  every train camera (render.train_scale)
        video.mp4       a closed smooth path through render.video_keyframes train cameras
        video.html      the same video in a page (the report shows it inline)
        path.json       the keyframes and every frame's c2w and intrinsics
        summary.json    counts, seconds, rays/s, the weights' provenance (the weakest of the
                        model set's and ``upstream_summary``'s)

    ``cfg``: the method config (``render``, ``seed``, ``device``, ``models``)."""
    import json
    import logging
    import time

    from innout.errors import InputError
    from innout.pretrain import read_scene
    from innout.provenance import provenance_fields, summary_provenance, weakest, weights_provenance
    from innout.stage import atomic_dir

    log = log or logging.getLogger("innout.render")
    rc = cfg.render
    t0 = time.perf_counter()
    _, _, train, test = read_scene(Path(transforms))
    device, device_warning = stage_device(cfg, "render")
    try:
        renderer = NerfRenderer.from_config(nerf_path, device=device, chunk=int(rc.chunk) or None)
    except FileNotFoundError as err:
        raise InputError(nerf_path, str(err)) from None
    upstream = json.loads(Path(upstream_summary).read_text()) if upstream_summary and Path(upstream_summary).is_file() else {}
    weights = weakest(weights_provenance(cfg.models), summary_provenance(upstream))
    if int(rc.video_frames) < 2 or int(rc.video_fps) < 1:
        raise InputError("render.video_frames", "the video needs at least 2 frames and 1 frame per second")
    log.info("render: %d test + %d train cameras, a %d-frame video, on %s", len(test), len(train), int(rc.video_frames), renderer.device)
    with atomic_dir(out_dir) as tmp:
        rays = 0
        t_views = time.perf_counter()
        if test:
            rays += _render_views(renderer, test, tmp / "test", 1.0, log)
        rays += _render_views(renderer, train, tmp / "train", float(rc.train_scale), log)
        view_seconds = time.perf_counter() - t_views

        cams = [f.camera for f in train]
        keys = path_keyframes(cams, int(rc.video_keyframes))
        intr = _scaled_intrinsics(cams[keys[0]].intrinsics, float(rc.video_scale), even=True)
        path = camera_path([cams[k] for k in keys], int(rc.video_frames), intr)
        t_video = time.perf_counter()
        frames = []
        for i, cam in enumerate(path):
            rgb = renderer.render_camera(cam, return_samples=False)["rgb"].cpu().numpy()
            frames.append((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
            if (i + 1) % 20 == 0 or i + 1 == len(path):
                log.info("video frame %d/%d", i + 1, len(path))
        rays += len(path) * intr.width * intr.height
        video = encode_mp4(np.stack(frames), tmp / "video.mp4", int(rc.video_fps), int(rc.video_crf))
        video_seconds = time.perf_counter() - t_video
        (tmp / "video.html").write_text(video_page(
            tmp / "video.mp4", "Camera path through the final NeRF",
            f"{video['frames']} frames at {video['fps']} fps, {video['width']}x{video['height']}, a closed path through "
            f"{len(keys)} train cameras ({', '.join(train[k].name for k in keys)}).",
            weights))
        (tmp / "path.json").write_text(json.dumps({
            "keyframes": [train[k].name for k in keys],
            "intrinsics": {"fx": intr.fx, "fy": intr.fy, "cx": intr.cx, "cy": intr.cy, "width": intr.width, "height": intr.height},
            "c2w": [np.round(c.c2w, 9).tolist() for c in path],
        }, indent=1))
        seconds = time.perf_counter() - t0
        summary = {
            "n_test_views": len(test),
            "n_train_views": len(train),
            "train_scale": float(rc.train_scale),
            "video": {**video, "keyframes": [train[k].name for k in keys]},
            "seconds": round(seconds, 3),
            "view_seconds": round(view_seconds, 3),
            "video_seconds": round(video_seconds, 3),
            "rays_per_second": round(rays / max(seconds, 1e-9), 1),
            "depth_definition": "expected distance along the unit ray, scene units (float32 .npy); .png: turbo, 1st-99th percentile",
            **provenance_fields(weights),
            "device": str(renderer.device),
            "device_warning": device_warning,
            "seed": int(cfg.seed),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("render done in %.1f s (%d rays, %.0f rays/s)", seconds, rays, rays / max(seconds, 1e-9))
    return summary
