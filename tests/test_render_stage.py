"""The render stages: the test views' evaluation boxes, the report's train views with depth,
a smooth closed camera path in nerfstudio's format and its MP4, progress lines while
rendering; on the tiny NeRF trained once per session by ``tests/test_pretrain.py``'s
fixture."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_pretrain import offline, scene, trained  # noqa: F401  (session fixtures shared with the pretrain tests)

from innout.camera_path import path_keyframes, smooth_path
from innout.cameras import Camera, Intrinsics, look_at
from innout.render import encode_mp4

K = Intrinsics(50.0, 50.0, 32.0, 24.0, 64, 48)


def _ring(n: int, radius: float = 3.0) -> list[Camera]:
    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n
        eye = np.array([radius * np.cos(a), radius * np.sin(a), 0.5])
        cams.append(Camera(look_at(eye, np.zeros(3)), K))
    return cams


def test_keyframes_go_around_the_capture():
    cams = _ring(36)
    rng = np.random.default_rng(0)
    order = rng.permutation(36)  # the input order must not matter
    shuffled = [cams[i] for i in order]
    keys = path_keyframes(shuffled, 8)
    assert len(keys) == 8 and len(set(keys)) == 8
    angles = [np.arctan2(*shuffled[k].c2w[:3, 3][[1, 0]]) for k in keys]
    steps = np.diff(np.unwrap(angles + angles[:1]))
    # consecutive keyframes step around the ring in one direction, a full turn in all
    assert (np.sign(steps) == np.sign(steps[0])).all() and abs(steps.sum()) == pytest.approx(2 * np.pi, abs=1e-6)
    # a forward-facing grid: the outline's extreme cameras
    grid = [Camera(look_at(np.array([x, y, 0.0]), np.array([0.0, 0.0, -5.0]), np.array([0.0, 1.0, 0.0])), K)
            for x in np.linspace(-1, 1, 5) for y in np.linspace(-0.5, 0.5, 4)]
    for k in path_keyframes(grid, 8):
        x, y = grid[k].c2w[:3, 3][:2]
        assert abs(x) == pytest.approx(1.0) or abs(y) == pytest.approx(0.5)


def test_camera_path_is_smooth_closed_and_through_keyframes():
    keys = _ring(6)
    path = smooth_path(keys, 60)
    assert len(path) == 60
    np.testing.assert_allclose(path[0].c2w, keys[0].c2w, atol=1e-9)  # starts on the first keyframe
    centres = np.stack([c.c2w[:3, 3] for c in path])
    steps = np.linalg.norm(np.diff(np.vstack([centres, centres[:1]]), axis=0), axis=1)  # closed: back to the start
    assert steps.max() < 1.3 * steps.min()  # evenly spaced along an even ring
    for c in path:
        r = c.c2w[:3, :3]
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-9)
        assert np.linalg.det(r) == pytest.approx(1.0)
    # the orientation turns smoothly: no jump between neighbouring frames
    fwd = np.stack([-c.c2w[:3, 2] for c in path])
    turn = np.degrees(np.arccos(np.clip((fwd * np.roll(fwd, -1, axis=0)).sum(1), -1, 1)))
    assert turn.max() < 3 * np.median(turn) + 1e-6 and turn.max() < 15


def test_mp4_is_decodable_and_deterministic(tmp_path):
    import av

    rng = np.random.default_rng(1)
    frames = (rng.random((5, 24, 32, 3)) * 255).astype(np.uint8)
    info = encode_mp4(frames, tmp_path / "a.mp4", fps=10, crf=10)
    encode_mp4(frames, tmp_path / "b.mp4", fps=10, crf=10)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert info == {"frames": 5, "fps": 10, "width": 32, "height": 24, "codec": "h264 (libx264)", "crf": 10}
    with av.open(str(tmp_path / "a.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (24, 32, 3)
    with pytest.raises(ValueError, match="even"):
        encode_mp4(frames[:, :23], tmp_path / "c.mp4")


def _render_cfg(*extra: str):
    from innout.config import load_method_config

    return load_method_config("smoke", ["device=cpu", "render.video_frames=6", "render.video_fps=3", "render.train_scale=0.5",
                                        "render.train_views=3", "render.video_scale=1.0", *extra], model="tiny")


def test_run_render(trained, tmp_path, offline):  # noqa: F811
    """What the render stage writes: the evaluation box of every test view at full
    resolution (what evaluate reads), the chosen train views (base first) with depth at
    train_scale, the report's sheet, camera_path.json and a video rendered from it."""
    import av
    from PIL import Image

    from innout.boxes import mask_bbox, read_boxes
    from innout.frames import read_scene
    from innout.render import run_render
    from innout.renderer import NerfRenderer

    _, _, train, test = read_scene(trained["scene"])
    base = train[len(train) // 2].name
    (tmp_path / "refine").mkdir()
    (tmp_path / "refine" / "summary.json").write_text(json.dumps({"weights": "random"}))
    (tmp_path / "base.json").write_text(json.dumps({"winner": base}))
    nerf = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    summary = run_render(trained["scene"], nerf, tmp_path / "render", _render_cfg(), upstream_summary=tmp_path / "refine" / "summary.json",
                         base_summary=tmp_path / "base.json", inpaint_images=None)
    out = tmp_path / "render"
    w, h = train[0].camera.intrinsics.width, train[0].camera.intrinsics.height
    boxes = read_boxes(out / "test")
    for f in test:
        mask = np.asarray(Image.open(f.object_mask)) > 0
        box = mask_bbox(mask)
        assert boxes[f.name] == box
        assert Image.open(out / "test" / "rgb" / f"{f.name}.png").size == (box[3] - box[2], box[1] - box[0])
    assert summary["test_boxes"]["rays"] < 0.5 * len(test) * w * h  # the boxes, not the views
    assert summary["train_views"][0] == base and len(summary["train_views"]) == 3
    assert sorted(p.stem for p in (out / "train" / "rgb").glob("*.png")) == sorted(summary["train_views"])
    for name in summary["train_views"]:
        assert Image.open(out / "train" / "rgb" / f"{name}.png").size == (w // 2, h // 2)
        assert np.load(out / "train" / "depth" / f"{name}.npy").shape == (h // 2, w // 2)
    sheet = Image.open(out / "train_views.png")
    assert sheet.size[0] == 3 * 240 and sheet.size[1] > 3 * 100  # three views, three columns, a warning banner
    with av.open(str(out / "video.mp4")) as container:
        frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (h - h % 2, w - w % 2, 3)
    assert np.std(frames[0]) > 5  # the scene, not a blank frame
    page = (out / "video.html").read_text()
    assert "data:video/mp4;base64," in page and "RANDOM" in page
    path = json.loads((out / "camera_path.json").read_text())
    assert len(path["camera_path"]) == 6 and path["render_width"] == frames[0].shape[1]
    assert set(summary["video"]["keyframes"]) <= {f.name for f in train}
    assert summary["weights"] == "random" and summary["n_test_views"] == len(test) and summary["video"]["frames"] == 6
    # the box renders are the NeRF's pixels there (rendered again through the API: the same)
    y0, y1, x0, x1 = boxes[test[0].name]
    again = NerfRenderer.from_config(nerf, device="cpu").render_camera(test[0].camera, return_samples=False)["rgb"].numpy()
    ours = np.asarray(Image.open(out / "test" / "rgb" / f"{test[0].name}.png"), dtype=float)
    assert np.abs(np.clip(again[y0:y1, x0:x1], 0, 1) * 255 - ours).max() <= 0.5 + 1e-6


def test_render_pretrain_boxes_only_with_ground_truth(trained, tmp_path, offline):  # noqa: F811
    """The "before" renders: the same boxes from the pre-trained NeRF; a scene without
    ground-truth test views renders nothing (and never loads the NeRF)."""
    from innout.boxes import read_boxes
    from innout.render import run_render_pretrain

    nerf = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    summary = run_render_pretrain(trained["scene"], nerf, tmp_path / "before", _render_cfg())
    assert summary["test_boxes"]["views"] == summary["n_test_views"] > 0
    assert set(read_boxes(tmp_path / "before" / "test")) == {p.stem for p in (tmp_path / "before" / "test" / "rgb").glob("*.png")}
    meta = json.loads(trained["scene"].read_text())
    meta["frames"] = [f for f in meta["frames"] if f["innout_split"] == "train"]
    own = trained["scene"].parent / "no_ground_truth.json"
    own.write_text(json.dumps(meta))
    summary = run_render_pretrain(own, tmp_path / "no-such-nerf", tmp_path / "own", _render_cfg())
    assert summary["n_test_views"] == 0 and summary["reason"] and summary["device"] is None
    assert [p.name for p in (tmp_path / "own" / "test").iterdir()] == ["boxes.json"]


def test_camera_path_round_trip_through_nerfstudio(trained, tmp_path, offline):  # noqa: F811
    """camera_path.json is nerfstudio's format: nerfstudio's own loader
    (get_path_from_json, what ns-render camera-path uses) gives back the path's cameras
    (poses in the NeRF's frame, square pixels, centred principal point), and the viewer's
    keyframe fields are there."""
    import torch
    from nerfstudio.cameras.camera_paths import get_path_from_json

    from innout.camera_path import from_nerfstudio, path_intrinsics, read_nerfstudio, to_nerfstudio
    from innout.frames import read_scene
    from innout.renderer import NerfRenderer

    renderer = NerfRenderer.from_config(trained["out_dir"], device="cpu")
    _, _, train, _ = read_scene(trained["scene"])
    intr = path_intrinsics(train[0].camera.intrinsics, 40, 30)
    keys = [f.camera.with_intrinsics(intr) for f in train[:4]]
    path = smooth_path(keys, 9, intr)
    data = to_nerfstudio(path, renderer.frame, 12.0, keys)
    (tmp_path / "camera_path.json").write_text(json.dumps(data))
    loaded = read_nerfstudio(tmp_path / "camera_path.json")
    cams = get_path_from_json(loaded)
    assert cams.shape[0] == 9 and int(cams.width[0]) == 40 and int(cams.height[0]) == 30
    for i, cam in enumerate(path):
        expected = torch.from_numpy(renderer.frame.c2w_to_nerf(cam.c2w)).float()
        torch.testing.assert_close(cams.camera_to_worlds[i], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(cams.fx[:, 0].double().numpy(), intr.fx, atol=1e-3)
    np.testing.assert_allclose(cams.fy[:, 0].double().numpy(), intr.fy, atol=1e-3)
    assert float(cams.cx[0]) == 20.0 and float(cams.cy[0]) == 15.0
    back = from_nerfstudio(loaded, renderer.frame)
    for a, b in zip(back, path):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-5)
        assert a.intrinsics.width == 40 and abs(a.intrinsics.fy - intr.fy) < 1e-3
    assert loaded["seconds"] == pytest.approx(9 / 12.0) and len(loaded["keyframes"]) == 4
    assert all(len(k["matrix"]) == 16 and k["aspect"] == pytest.approx(40 / 30) for k in loaded["keyframes"])


def test_user_camera_path_renders_a_video(trained, tmp_path, offline):  # noqa: F811
    import av

    from innout.camera_path import path_intrinsics, to_nerfstudio
    from innout.errors import InputError
    from innout.frames import read_scene
    from innout.render import run_camera_path
    from innout.renderer import NerfRenderer

    renderer = NerfRenderer.from_config(trained["out_dir"], device="cpu")
    _, _, train, _ = read_scene(trained["scene"])
    intr = path_intrinsics(train[0].camera.intrinsics, 32, 24)
    data = to_nerfstudio([f.camera.with_intrinsics(intr) for f in train[:3]], renderer.frame, 2.0)
    (tmp_path / "mine.json").write_text(json.dumps(data))
    nerf = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    info = run_camera_path(tmp_path / "mine.json", nerf, tmp_path / "mine.mp4", tmp_path / "mine.html", _render_cfg())
    with av.open(str(tmp_path / "mine.mp4")) as container:
        frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (24, 32, 3) and info["fps"] == 2
    assert "RANDOM" in (tmp_path / "mine.html").read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"camera_path": []}))
    with pytest.raises(InputError, match="bad.json"):
        run_camera_path(tmp_path / "bad.json", nerf, tmp_path / "bad.mp4", tmp_path / "bad.html", _render_cfg())
    assert not (tmp_path / "bad.mp4").exists()


class FakeClock:
    """Monotonic seconds that advance by ``step`` at every reading (a slow machine)."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_progress_line_within_the_first_10_s_of_rendering(trained, monkeypatch, offline):  # noqa: F811
    """Rendering on a machine where every chunk of rays takes 3 s: the render log gets a
    progress line (views done/total, rays/s, ETA) within the first 10 s and then at
    least every 10 s, not only at the end."""
    import logging

    from innout import progress
    from innout.frames import read_scene
    from innout.render import render_test_boxes
    from innout.renderer import NerfRenderer

    clock = FakeClock(3.0)
    monkeypatch.setattr(progress, "CLOCK", clock)
    lines: list[tuple[float, str]] = []

    class Lines(logging.Handler):
        def emit(self, record):
            lines.append((clock.now, record.getMessage()))

    log = logging.getLogger("innout.test.progress")
    log.setLevel(logging.INFO)
    log.addHandler(Lines())
    renderer = NerfRenderer.from_config(trained["out_dir"], device="cpu", chunk=64)
    _, _, _, test = read_scene(trained["scene"])
    start = clock.now
    with tempfile_dir() as folder:
        render_test_boxes(renderer, test, folder, "render test boxes", log)
    progress_lines = [(t, m) for t, m in lines if "ETA" in m]
    assert progress_lines, lines
    assert progress_lines[0][0] - start <= 10.0, progress_lines[0]
    times = [start] + [t for t, _ in progress_lines]
    assert max(np.diff(times)) <= 10.0, times
    t, message = progress_lines[0]
    assert f"/{len(test)} views" in message and "rays/s" in message, message


def tempfile_dir():
    import tempfile
    from pathlib import Path

    class _Dir(tempfile.TemporaryDirectory):
        def __enter__(self):
            return Path(super().__enter__())

    return _Dir()
