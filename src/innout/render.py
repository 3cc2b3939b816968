"""The render stages (rules ``render_pretrain``, ``render``, ``render_camera_path``): each
view set rendered once, at the size it is read, with progress lines
(:mod:`innout.progress`): test views only at their evaluation box (:mod:`innout.boxes`), a
few train views for the report, and videos along nerfstudio camera paths
(:mod:`innout.camera_path`). The rendering itself is :class:`innout.renderer.NerfRenderer`.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np

from innout.boxes import test_view_boxes, write_boxes
from innout.camera_path import (
    fps_of,
    from_nerfstudio,
    path_intrinsics,
    path_keyframes,
    read_nerfstudio,
    smooth_path,
    to_nerfstudio,
)
from innout.cameras import Camera
from innout.devices import stage_device
from innout.errors import InputError
from innout.frames import read_scene
from innout.images import colourise_depth, save_png, to_u8
from innout.progress import Progress
from innout.provenance import provenance_fields, summary_provenance, weakest, weights_provenance
from innout.renderer import NerfRenderer
from innout.stage import atomic_dir
from innout.viz import train_view_sheet, weights_banner_html

# --------------------------------------------------------------------------------------
# the render stages: what later stages and the user read, each rendered once, at the
# size it is read
# --------------------------------------------------------------------------------------


def encode_mp4(frames: Any, path: Path, fps: float = 30, crf: int = 18) -> dict:
    """H.264 (libx264, yuv420p, constant rate factor ``crf``) MP4 of uint8 RGB frames
    (N, H, W, 3) with even H and W, through PyAV. The same frames give the same bytes
    (no timestamps or encoder randomness are written). ``fps`` is rounded to a fraction."""

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


def render_test_boxes(renderer: "NerfRenderer", frames: list, folder: Path, what: str, log: Any) -> dict:
    """Render the evaluation box of every ground-truth test view (:mod:`innout.boxes`) at
    full resolution: ``folder/rgb/<view>.png`` (the box only) and ``folder/boxes.json``.
    Views with an empty mask have no box and are not rendered. Returns counts and rays."""

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
            save_png(folder / "rgb" / f"{name}.png", to_u8(rgb))
            progress.item_done()
    write_boxes(folder, boxes, {n: (by_name[n].camera.intrinsics.width, by_name[n].camera.intrinsics.height) for n in boxes})
    return {"views": len(boxes), "empty_masks": empty, "rays": int(rays), "fraction_of_full_views": rays / max(full, 1)}


def _no_boxes(folder: Path) -> dict:
    """The test folder of a scene without ground-truth test views: no box rendered."""

    write_boxes(folder, {}, {})
    return {"views": 0, "empty_masks": [], "rays": 0, "fraction_of_full_views": 0.0}


def render_train_views(renderer: "NerfRenderer", frames: list, folder: Path, scale: float, log: Any) -> dict:
    """rgb/<view>.png, depth/<view>.npy (float32 distance along the ray, scene units) and
    depth/<view>.png (colourised) of each frame's camera at ``scale`` times its size."""

    cameras = [f.camera.with_intrinsics(scaled_intrinsics(f.camera.intrinsics, scale)) for f in frames]
    rays = sum(c.intrinsics.width * c.intrinsics.height for c in cameras)
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    with Progress("render train views", len(frames), rays, log=log) as progress:
        for f, cam in zip(frames, cameras):
            out = renderer.render_camera(cam, return_samples=False, progress=progress.advance)
            rgb, depth, acc = (out[k].cpu().numpy() for k in ("rgb", "depth", "accumulation"))
            save_png(folder / "rgb" / f"{f.name}.png", to_u8(rgb))
            np.save(folder / "depth" / f"{f.name}.npy", depth.astype(np.float32))
            save_png(folder / "depth" / f"{f.name}.png", colourise_depth(depth, acc))
            progress.item_done()
    return {"views": len(frames), "rays": int(rays)}


def render_path_frames(renderer: "NerfRenderer", cameras: "list[Camera]", what: str, log: Any) -> np.ndarray:
    """uint8 RGB frames (N, H, W, 3) of a camera path."""

    rays = sum(c.intrinsics.width * c.intrinsics.height for c in cameras)
    frames = []
    with Progress(what, len(cameras), rays, item="frames", log=log) as progress:
        for cam in cameras:
            frames.append(to_u8(renderer.render_camera(cam, return_samples=False, progress=progress.advance)["rgb"].cpu().numpy()))
            progress.item_done()
    return np.stack(frames)


def default_camera_path(renderer: "NerfRenderer", train: list, rc: Any) -> tuple[dict, "list[str]"]:
    """The video's camera path in nerfstudio's format (:mod:`innout.camera_path`): a smooth
    closed path through ``rc.video_keyframes`` train cameras at the edge of the capture,
    ``rc.video_frames`` frames at ``rc.video_fps``, ``rc.video_scale`` times the working
    size (even). Returns it and the keyframes' view names."""

    cams = [f.camera for f in train]
    keys = path_keyframes(cams, int(rc.video_keyframes))
    size = scaled_intrinsics(cams[keys[0]].intrinsics, float(rc.video_scale), even=True)
    intr = path_intrinsics(cams[keys[0]].intrinsics, size.width, size.height)
    keyframes = [cams[k].with_intrinsics(intr) for k in keys]
    path = smooth_path(keyframes, int(rc.video_frames), intr)
    return to_nerfstudio(path, renderer.frame, float(rc.video_fps), keyframes), [train[k].name for k in keys]


def video_from_camera_path(renderer: "NerfRenderer", data: dict, out_mp4: Path, crf: int, what: str, log: Any) -> dict:
    """Render a nerfstudio camera path (through nerfstudio's own loader) into an MP4."""

    cameras = from_nerfstudio(data, renderer.frame)
    even = [c.with_intrinsics(scaled_intrinsics(c.intrinsics, 1.0, even=True)) for c in cameras]
    frames = render_path_frames(renderer, even, what, log)
    return encode_mp4(frames, out_mp4, fps_of(data), crf)


def _weights(cfg: Any, upstream_summary: Optional[Path]) -> str:
    """The provenance of what is rendered: the weakest of the model set's and the upstream
    summary's (:mod:`innout.provenance`)."""


    upstream = json.loads(Path(upstream_summary).read_text()) if upstream_summary and Path(upstream_summary).is_file() else {}
    return weakest(weights_provenance(cfg.models), summary_provenance(upstream))


def _load_renderer(nerf_path: Path, cfg: Any, device: Any) -> "NerfRenderer":

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
