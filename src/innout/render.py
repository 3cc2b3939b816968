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

The render stages (rules ``render_pretrain``, ``render``, ``render_camera_path``) render
each view set once, at the size it is read, with progress lines (:mod:`innout.progress`):
test views only at their evaluation box (:mod:`innout.boxes`), a few train views for the
report, and videos along nerfstudio camera paths (:mod:`innout.camera_path`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, Optional

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
# the render stages: what later stages and the user read, each rendered once, at the
# size it is read
# --------------------------------------------------------------------------------------


def encode_mp4(frames: Any, path: Path, fps: float = 30, crf: int = 18) -> dict:
    """H.264 (libx264, yuv420p, constant rate factor ``crf``) MP4 of uint8 RGB frames
    (N, H, W, 3) with even H and W, through PyAV. The same frames give the same bytes
    (no timestamps or encoder randomness are written). ``fps`` is rounded to a fraction."""
    from fractions import Fraction

    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w = frames.shape[:3]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 in yuv420p needs even sizes, got {w}x{h}")
    rate = Fraction(fps).limit_denominator(1001)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # one thread: x264's output does not depend on it, but its lookahead timing does
        # not either; deterministic and small anyway at these sizes
        stream.options = {"crf": str(int(crf)), "preset": "medium", "threads": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    fps_out: float | int = int(rate) if rate.denominator == 1 else float(rate)
    return {"frames": int(n), "fps": fps_out, "width": int(w), "height": int(h), "codec": "h264 (libx264)", "crf": int(crf)}


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


def scaled_intrinsics(intr: Any, scale: float, even: bool = False) -> Any:
    """``intr`` at ``scale`` times its size (rounded; ``even``: rounded down to even sizes)."""
    w = max(2, int(round(intr.width * scale)))
    h = max(2, int(round(intr.height * scale)))
    if even:
        w, h = w - w % 2, h - h % 2
    return intr if (w, h) == (intr.width, intr.height) else intr.scaled_to(w, h)


def spread_views(names: "list[str]", count: int, first: Optional[str] = None) -> "list[str]":
    """``count`` names (all when ``count`` < 0 or there are fewer): ``first`` (if given and
    present) then the others evenly spread over the name-sorted list."""
    names = sorted(names)
    if count < 0 or count >= len(names):
        rest = [n for n in names if n != first]
        return ([first] if first in names else []) + rest
    chosen = [first] if first in names and count > 0 else []
    rest = [n for n in names if n != first]
    need = count - len(chosen)
    if need > 0 and rest:
        chosen += [rest[i] for i in np.unique(np.linspace(0, len(rest) - 1, need).round().astype(int))]
    return chosen


def _uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_test_boxes(renderer: "NerfRenderer", frames: list, folder: Path, what: str, log: Any) -> dict:
    """Render the evaluation box of every ground-truth test view (:mod:`innout.boxes`) at
    full resolution: ``folder/rgb/<view>.png`` (the box only) and ``folder/boxes.json``.
    Views with an empty mask have no box and are not rendered. Returns counts and rays."""
    from innout.boxes import test_view_boxes, write_boxes
    from innout.progress import Progress
    from innout.viz import save_png

    boxes, empty = test_view_boxes(frames)
    by_name = {f.name: f for f in frames}
    cameras = {name: by_name[name].camera.with_intrinsics(by_name[name].camera.intrinsics.cropped(*box))
               for name, box in boxes.items()}
    rays = sum(c.intrinsics.width * c.intrinsics.height for c in cameras.values())
    full = sum(f.camera.intrinsics.width * f.camera.intrinsics.height for f in frames if f.name in boxes)
    log.info("%s: %d test-view boxes, %d rays (%.0f %% of the full views)%s", what, len(boxes), rays,
             100.0 * rays / max(full, 1), f"; empty masks, not scored: {', '.join(empty)}" if empty else "")
    with Progress(what, len(cameras), rays, log=log) as progress:
        for name, cam in cameras.items():
            rgb = renderer.render_camera(cam, return_samples=False, progress=progress.advance)["rgb"].cpu().numpy()
            save_png(folder / "rgb" / f"{name}.png", _uint8(rgb))
            progress.item_done()
    write_boxes(folder, boxes, {n: (by_name[n].camera.intrinsics.width, by_name[n].camera.intrinsics.height) for n in boxes})
    return {"views": len(boxes), "empty_masks": empty, "rays": int(rays), "fraction_of_full_views": rays / max(full, 1)}


def _no_boxes(folder: Path) -> dict:
    """The test folder of a scene without ground-truth test views: no box rendered."""
    from innout.boxes import write_boxes

    write_boxes(folder, {}, {})
    return {"views": 0, "empty_masks": [], "rays": 0, "fraction_of_full_views": 0.0}


def render_train_views(renderer: "NerfRenderer", frames: list, folder: Path, scale: float, log: Any) -> dict:
    """rgb/<view>.png, depth/<view>.npy (float32 distance along the ray, scene units) and
    depth/<view>.png (colourised) of each frame's camera at ``scale`` times its size."""
    from innout.pretrain import colourise_depth
    from innout.progress import Progress
    from innout.viz import save_png

    cameras = [f.camera.with_intrinsics(scaled_intrinsics(f.camera.intrinsics, scale)) for f in frames]
    rays = sum(c.intrinsics.width * c.intrinsics.height for c in cameras)
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    with Progress("render train views", len(frames), rays, log=log) as progress:
        for f, cam in zip(frames, cameras):
            out = renderer.render_camera(cam, return_samples=False, progress=progress.advance)
            rgb, depth, acc = (out[k].cpu().numpy() for k in ("rgb", "depth", "accumulation"))
            save_png(folder / "rgb" / f"{f.name}.png", _uint8(rgb))
            np.save(folder / "depth" / f"{f.name}.npy", depth.astype(np.float32))
            save_png(folder / "depth" / f"{f.name}.png", colourise_depth(depth, acc))
            progress.item_done()
    return {"views": len(frames), "rays": int(rays)}


def render_path_frames(renderer: "NerfRenderer", cameras: "list[Camera]", what: str, log: Any) -> np.ndarray:
    """uint8 RGB frames (N, H, W, 3) of a camera path."""
    from innout.progress import Progress

    rays = sum(c.intrinsics.width * c.intrinsics.height for c in cameras)
    frames = []
    with Progress(what, len(cameras), rays, item="frames", log=log) as progress:
        for cam in cameras:
            frames.append(_uint8(renderer.render_camera(cam, return_samples=False, progress=progress.advance)["rgb"].cpu().numpy()))
            progress.item_done()
    return np.stack(frames)


def default_camera_path(renderer: "NerfRenderer", train: list, rc: Any) -> tuple[dict, "list[str]"]:
    """The video's camera path in nerfstudio's format (:mod:`innout.camera_path`): a smooth
    closed path through ``rc.video_keyframes`` train cameras at the edge of the capture,
    ``rc.video_frames`` frames at ``rc.video_fps``, ``rc.video_scale`` times the working
    size (even). Returns it and the keyframes' view names."""
    from innout.camera_path import path_intrinsics, path_keyframes, smooth_path, to_nerfstudio

    cams = [f.camera for f in train]
    keys = path_keyframes(cams, int(rc.video_keyframes))
    size = scaled_intrinsics(cams[keys[0]].intrinsics, float(rc.video_scale), even=True)
    intr = path_intrinsics(cams[keys[0]].intrinsics, size.width, size.height)
    keyframes = [cams[k].with_intrinsics(intr) for k in keys]
    path = smooth_path(keyframes, int(rc.video_frames), intr)
    return to_nerfstudio(path, renderer.frame, float(rc.video_fps), keyframes), [train[k].name for k in keys]


def video_from_camera_path(renderer: "NerfRenderer", data: dict, out_mp4: Path, crf: int, what: str, log: Any) -> dict:
    """Render a nerfstudio camera path (through nerfstudio's own loader) into an MP4."""
    from innout.camera_path import fps_of, from_nerfstudio

    cameras = from_nerfstudio(data, renderer.frame)
    even = [c.with_intrinsics(scaled_intrinsics(c.intrinsics, 1.0, even=True)) for c in cameras]
    frames = render_path_frames(renderer, even, what, log)
    return encode_mp4(frames, out_mp4, fps_of(data), crf)


def _weights(cfg: Any, upstream_summary: Optional[Path]) -> str:
    """The provenance of what is rendered: the weakest of the model set's and the upstream
    summary's (:mod:`innout.provenance`)."""
    import json

    from innout.provenance import summary_provenance, weakest, weights_provenance

    upstream = json.loads(Path(upstream_summary).read_text()) if upstream_summary and Path(upstream_summary).is_file() else {}
    return weakest(weights_provenance(cfg.models), summary_provenance(upstream))


def _load_renderer(nerf_path: Path, cfg: Any, device: Any) -> "NerfRenderer":
    from innout.errors import InputError

    try:
        return NerfRenderer.from_config(nerf_path, device=device, chunk=int(cfg.render.chunk) or None)
    except FileNotFoundError as err:
        raise InputError(nerf_path, str(err)) from None


def run_render(transforms: Path, nerf_path: Path, out_dir: Path, cfg: Any, log: Any = None,
               upstream_summary: Optional[Path] = None, base_summary: Optional[Path] = None,
               inpaint_images: Optional[Path] = None) -> dict:
    """Render the final NeRF: what evaluation, the report and the user read, once each.
    Writes ``out_dir``::

        test/rgb/<view>.png, test/boxes.json   the evaluation box of every ground-truth
                        test view (innout.boxes), full resolution: what evaluate scores
        train/rgb/<view>.png, train/depth/<view>.{npy,png}   ``render.train_views`` train
                        views (base view first, the rest evenly spread; -1: all) at
                        ``render.train_scale``
        train_views.png the report's before/after sheet of those views: input with the
                        object, its aligned inpainting (``inpaint_images``), final render
        camera_path.json  the video's path in nerfstudio's format (ns-render camera-path
                        replays it, ns-viewer loads it)
        video.mp4, video.html   the video rendered from camera_path.json (and its page)
        summary.json    counts, rays and seconds of each part, the weights' provenance (the
                        weakest of the model set's and ``upstream_summary``'s)

    ``cfg``: the method config (``render``, ``seed``, ``device``, ``models``);
    ``upstream_summary``: a summary whose weights provenance carries over (refine's);
    ``base_summary``: the base stage's (its ``winner`` is shown first);
    ``inpaint_images``: the inpaint stage's ``images/`` (the sheet's middle column)."""
    import json
    import logging
    import time

    from innout.errors import InputError
    from innout.pretrain import read_scene
    from innout.provenance import provenance_fields
    from innout.stage import atomic_dir
    from innout.viz import train_view_sheet

    log = log or logging.getLogger("innout.render")
    rc = cfg.render
    t0 = time.perf_counter()
    _, _, train, test = read_scene(Path(transforms))
    if int(rc.video_frames) < 2 or float(rc.video_fps) <= 0:
        raise InputError("render.video_frames", "the video needs at least 2 frames and a positive frame rate")
    device, device_warning = stage_device(cfg, "render")
    renderer = _load_renderer(nerf_path, cfg, device)
    weights = _weights(cfg, upstream_summary)
    base_view = json.loads(Path(base_summary).read_text()).get("winner") if base_summary else None
    by_name = {f.name: f for f in train}
    shown = [by_name[n] for n in spread_views(list(by_name), int(rc.train_views), base_view)]
    log.info("render: %d ground-truth test views (boxes only), %d of %d train views at %.2gx, a %d-frame video, on %s",
             len(test), len(shown), len(train), float(rc.train_scale), int(rc.video_frames), renderer.device)
    seconds: dict[str, float] = {}
    with atomic_dir(out_dir) as tmp:
        t = time.perf_counter()
        tests = render_test_boxes(renderer, test, tmp / "test", "render test boxes", log) if test else _no_boxes(tmp / "test")
        seconds["test"] = time.perf_counter() - t

        t = time.perf_counter()
        trains = render_train_views(renderer, shown, tmp / "train", float(rc.train_scale), log)
        sheet = train_view_sheet(shown, tmp / "train" / "rgb", inpaint_images, base_view, weights, str(cfg.models.name))
        sheet.save(tmp / "train_views.png")
        seconds["train"] = time.perf_counter() - t

        t = time.perf_counter()
        path, keys = default_camera_path(renderer, train, rc)
        (tmp / "camera_path.json").write_text(json.dumps(path, indent=1) + "\n")
        video = video_from_camera_path(renderer, path, tmp / "video.mp4", int(rc.video_crf), "render video", log)
        (tmp / "video.html").write_text(video_page(
            tmp / "video.mp4", "Camera path through the final NeRF",
            f"{video['frames']} frames at {video['fps']} fps, {video['width']}x{video['height']}, a closed path through "
            f"{len(keys)} train cameras ({', '.join(keys)}); camera_path.json holds it in nerfstudio's format.",
            weights))
        seconds["video"] = time.perf_counter() - t
        rays = tests["rays"] + trains["rays"] + video["frames"] * video["width"] * video["height"]
        total = time.perf_counter() - t0
        summary = {
            "n_test_views": len(test),
            "test_boxes": tests,
            "n_train_views": len(train),
            "train_views": [f.name for f in shown],
            "train_scale": float(rc.train_scale),
            "base_view": base_view,
            "video": {**video, "keyframes": keys, "camera_path": "camera_path.json"},
            "seconds": round(total, 3),
            "part_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "rays": int(rays),
            "rays_per_second": round(rays / max(sum(seconds.values()), 1e-9), 1),
            "depth_definition": "expected distance along the unit ray, scene units (float32 .npy); .png: turbo, 1st-99th percentile",
            **provenance_fields(weights),
            "device": str(renderer.device),
            "device_warning": device_warning,
            "seed": int(cfg.seed),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("render done in %.1f s (%d rays, %.0f rays/s)", total, rays, summary["rays_per_second"])
    return summary


def run_render_pretrain(transforms: Path, nerf_path: Path, out_dir: Path, cfg: Any, log: Any = None) -> dict:
    """Render the pre-trained NeRF (trained without the masked pixels) at the evaluation
    box of every ground-truth test view: the "before" the metrics compare the final NeRF
    with. Writes ``out_dir/test/`` (as :func:`run_render`) and ``out_dir/summary.json``. A
    scene without ground-truth test views renders nothing (the NeRF is not even loaded)."""
    import json
    import logging
    import time

    from innout.pretrain import read_scene
    from innout.stage import atomic_dir

    log = log or logging.getLogger("innout.render")
    t0 = time.perf_counter()
    _, _, _, test = read_scene(Path(transforms))
    with atomic_dir(out_dir) as tmp:
        if test:
            renderer = _load_renderer(nerf_path, cfg, stage_device(cfg, "render")[0])
            boxes = render_test_boxes(renderer, test, tmp / "test", "render test boxes (pre-trained NeRF)", log)
            device = str(renderer.device)
        else:
            log.info("the scene has no ground-truth test views: nothing to render")
            boxes, device = _no_boxes(tmp / "test"), None
        total = time.perf_counter() - t0
        summary = {
            "what": "the pre-trained NeRF (trained without the masked pixels) at the evaluation box of each ground-truth "
                    "test view: the 'before' of the metrics",
            "n_test_views": len(test),
            "test_boxes": boxes,
            "reason": None if test else "the scene has no ground-truth test views",
            "seconds": round(total, 3),
            "rays_per_second": round(boxes["rays"] / max(total, 1e-9), 1),
            "device": device,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def run_camera_path(camera_path: Path, nerf_path: Path, out_mp4: Path, out_html: Path, cfg: Any, log: Any = None,
                    upstream_summary: Optional[Path] = None) -> dict:
    """A video of the final NeRF along a user's camera path (nerfstudio's camera_path.json,
    e.g. made in ns-viewer's render panel on this NeRF): ``out_mp4`` and its page."""
    import logging

    from innout.camera_path import read_nerfstudio
    from innout.provenance import provenance_fields

    log = log or logging.getLogger("innout.render")
    data = read_nerfstudio(Path(camera_path))
    renderer = _load_renderer(nerf_path, cfg, stage_device(cfg, "render")[0])
    weights = _weights(cfg, upstream_summary)
    tmp_mp4 = out_mp4.with_name(f".{out_mp4.name}.tmp.mp4")
    video = video_from_camera_path(renderer, data, tmp_mp4, int(cfg.render.video_crf), f"render {Path(camera_path).name}", log)
    tmp_mp4.replace(out_mp4)
    out_html.write_text(video_page(
        out_mp4, f"Camera path {Path(camera_path).name} through the final NeRF",
        f"{video['frames']} frames at {video['fps']} fps, {video['width']}x{video['height']}, from {camera_path}.",
        weights))
    return {**video, "camera_path": str(camera_path), **provenance_fields(weights)}
