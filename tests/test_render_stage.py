"""The render stage: every camera, depth maps, a smooth closed camera path and its MP4,
on the tiny NeRF trained once per session by ``tests/test_pretrain.py``'s fixture."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_pretrain import offline, scene, trained  # noqa: F401  (session fixtures shared with the pretrain tests)

from innout.cameras import Camera, Intrinsics, look_at
from innout.render import camera_path, encode_mp4, path_keyframes

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
    path = camera_path(keys, 60)
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


def test_run_render(trained, tmp_path, offline):  # noqa: F811
    import av
    from PIL import Image

    from innout.config import load_method_config
    from innout.pretrain import read_scene
    from innout.render import run_render

    cfg = load_method_config("smoke", ["device=cpu", "render.video_frames=6", "render.video_fps=3", "render.train_scale=0.5"], model="tiny")
    (tmp_path / "refine").mkdir()
    (tmp_path / "refine" / "summary.json").write_text(json.dumps({"weights": "random"}))
    nerf = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    summary = run_render(trained["scene"], nerf, tmp_path / "render", cfg, upstream_summary=tmp_path / "refine" / "summary.json")
    out = tmp_path / "render"
    _, _, train, test = read_scene(trained["scene"])
    w, h = train[0].camera.intrinsics.width, train[0].camera.intrinsics.height
    for f in test:
        assert Image.open(out / "test" / "rgb" / f"{f.name}.png").size == (w, h)
        depth = np.load(out / "test" / "depth" / f"{f.name}.npy")
        assert depth.shape == (h, w) and np.isfinite(depth).all() and (depth > 0).all()
        assert (out / "test" / "depth" / f"{f.name}.png").is_file()
    for f in train:
        assert Image.open(out / "train" / "rgb" / f"{f.name}.png").size == (w // 2, h // 2)
        assert np.load(out / "train" / "depth" / f"{f.name}.npy").shape == (h // 2, w // 2)
    with av.open(str(out / "video.mp4")) as container:
        frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (h - h % 2, w - w % 2, 3)
    assert np.std(frames[0]) > 5  # the scene, not a blank frame
    page = (out / "video.html").read_text()
    assert "data:video/mp4;base64," in page and "RANDOM" in page
    path = json.loads((out / "path.json").read_text())
    assert len(path["c2w"]) == 6 and set(path["keyframes"]) <= {f.name for f in train}
    assert summary["weights"] == "random" and summary["n_test_views"] == len(test) and summary["video"]["frames"] == 6
    # the renders are the NeRF's (rendered again through the API: the same pixels)
    from innout.render import NerfRenderer

    again = NerfRenderer.from_config(nerf, device="cpu").render_camera(test[0].camera, return_samples=False)["rgb"].numpy()
    ours = np.asarray(Image.open(out / "test" / "rgb" / f"{test[0].name}.png"), dtype=float)
    assert np.abs(np.clip(again, 0, 1) * 255 - ours).max() <= 0.5 + 1e-6


def test_renders_of_trained_weights_carry_their_label(trained, tmp_path, offline, procedural_like):  # noqa: F811
    from provenance_check import random_mentions

    from innout.config import load_method_config
    from innout.provenance import PROCEDURAL_LABEL
    from innout.render import run_render

    cfg = load_method_config("smoke", ["device=cpu", "render.video_frames=2", "render.video_fps=2", "render.train_scale=0.25",
                                       *procedural_like], model="tiny")
    (tmp_path / "refine.json").write_text(json.dumps({"weights": "procedural"}))
    nerf = trained["out_dir"] / "innout-nerfacto" / "config.yml"
    summary = run_render(trained["scene"], nerf, tmp_path / "render", cfg, upstream_summary=tmp_path / "refine.json")
    assert summary["weights"] == "procedural" and summary["weights_label"] == PROCEDURAL_LABEL and summary["warning"] is None
    assert random_mentions(json.loads((tmp_path / "render" / "summary.json").read_text())) == []
    page = (tmp_path / "render" / "video.html").read_text()
    without_video = re.sub(r'src="data:[^"]*"', "", page)  # base64 may spell anything
    assert PROCEDURAL_LABEL in page and "random" not in without_video.lower()
