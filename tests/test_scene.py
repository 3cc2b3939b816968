"""The scene stage: every input format into the canonical scene, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from innout import procedural
from innout.cameras import Camera, Intrinsics, camera_to_llff_row, look_at, opengl_c2w_to_opencv_w2c
from innout.errors import InputError
from innout.scene import detect_format, import_scene

FULL = (128, 96)  # full-resolution size of the synthetic SPIn-NeRF scenes
FOCAL = 110.0


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _random_rgb(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _box_mask(size: tuple[int, int], box: tuple[int, int, int, int], value: int = 255) -> np.ndarray:
    """A mask with ``value`` in the box (x0, y0, x1, y1), 0 elsewhere."""
    m = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    return m


def _ring_c2w(n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        a = 0.3 * (i / max(n - 1, 1) - 0.5)
        eye = np.array([2.0 * np.sin(a), -4.0, 0.2 * np.cos(3 * a)])
        out.append(look_at(eye, np.zeros(3)))
    return out


def make_spinnerf(root: Path, *, n_test: int = 2, n_train: int = 3, levels: tuple[int, ...] = (4,),
                  mask_value: int = 255, mask_pad: int = 0, label_all: bool = False,
                  full: bool = True) -> Path:
    """A tiny SPIn-NeRF-layout scene; masks are a box in the middle of every view."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    n = n_test + n_train
    names = [f"img{i:03d}" for i in range(n)]
    rows = []
    for c2w in _ring_c2w(n):
        cam = Camera(c2w, Intrinsics(FOCAL, FOCAL, FULL[0] / 2, FULL[1] / 2, *FULL))
        rows.append(camera_to_llff_row(cam, 1.0, 10.0))
    np.save(root / "poses_bounds.npy", np.stack(rows))
    for name in names:
        if full:
            _save(root / "images" / f"{name}.jpg", _random_rgb(rng, FULL))
        for lv in levels:
            size = (FULL[0] // lv, FULL[1] // lv)
            _save(root / f"images_{lv}" / f"{name}.png", _random_rgb(rng, size))
    for lv in levels:
        size = (FULL[0] // lv, FULL[1] // lv)
        msize = (size[0] + mask_pad, size[1] + mask_pad)
        box = (msize[0] // 4, msize[1] // 4, msize[0] // 2, msize[1] // 2)
        for i, name in enumerate(names):
            if i >= n_test or label_all:
                _save(root / f"images_{lv}" / "label" / f"{name}.png", _box_mask(msize, box, mask_value))
            if i < n_test:
                _save(root / f"images_{lv}" / "test_label" / f"{name}.png", _box_mask(msize, box, mask_value))
    return root


def _spin(src: Path, out: Path, fmt: str = "spinnerf", **kwargs) -> dict:
    """import_scene for the tiny SPIn-NeRF scenes above (2 test views unless told)."""
    kwargs.setdefault("spinnerf_n_test", 2)
    return import_scene(src, fmt, out, **kwargs)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _check_failed(exc: pytest.ExceptionInfo, fragment: str, out: Path) -> str:
    """The error is one line naming ``fragment``, and nothing was left behind."""
    msg = str(exc.value)
    assert "\n" not in msg
    assert fragment in msg, msg
    assert not out.exists()
    if out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return msg


# --------------------------------------------------------------------------- spinnerf


def test_spinnerf_basic(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    out = tmp_path / "out" / "scene"
    summary = _spin(src, out, "auto", mask_dilation_iterations=0)
    assert summary["format"] == "spinnerf"
    assert (summary["n_train"], summary["n_test"]) == (3, 2)
    assert summary["test_views"] == ["img000", "img001"]
    assert summary["train_views"] == ["img002", "img003", "img004"]
    assert (summary["width"], summary["height"]) == (32, 24)
    assert summary["warnings"] == []
    assert json.loads((out / "summary.json").read_text()) == summary
    meta = json.loads((out / "transforms.json").read_text())
    assert meta["innout"]["has_poses"] and meta["innout"]["format"] == "spinnerf"
    assert meta["test_filenames"] == ["images/img000.png", "images/img001.png"]
    assert meta["val_filenames"] == meta["test_filenames"]
    assert (meta["w"], meta["h"]) == (32, 24)
    assert meta["fl_x"] == pytest.approx(FOCAL / 4) and meta["cx"] == pytest.approx(16.0)
    fr = meta["frames"][2]
    assert fr["innout_split"] == "train" and fr["file_path"] == "images/img002.png"
    assert fr["innout_source_image"] == str(src / "images" / "img002.jpg")
    assert fr["innout_source_size"] == list(FULL)
    np.testing.assert_allclose(fr["transform_matrix"], _ring_c2w(5)[2], atol=1e-9)
    # independently of innout.cameras: LLFF's loader turns (down, right, back) columns into
    # (right, up, back) as [R1, -R0, R2]
    row = np.load(src / "poses_bounds.npy")[2, :15].reshape(3, 5)
    np.testing.assert_allclose(np.asarray(fr["transform_matrix"])[:3],
                               np.stack([row[:, 1], -row[:, 0], row[:, 2], row[:, 3]], axis=1), atol=1e-12)
    assert fr["innout_bounds"] == [1.0, 10.0]
    # images re-encoded from images_4, masks binarised to 0/255, nerf masks inverted
    src_img = _read(src / "images_4" / "img002.png")
    np.testing.assert_array_equal(_read(out / "images" / "img002.png"), src_img)
    mask = _read(out / "masks" / "img002.png")
    np.testing.assert_array_equal(mask, _box_mask((32, 24), (8, 6, 16, 12)))
    np.testing.assert_array_equal(_read(out / "nerf_masks" / "img002.png"), 255 - mask)
    assert summary["mask_fraction_mean"] == pytest.approx(48 / (32 * 24))
    assert not [p for p in out.parent.iterdir() if p.name != "scene"]


@pytest.mark.parametrize("value", [1, 255])
def test_spinnerf_mask_values(tmp_path, value):
    src = make_spinnerf(tmp_path / "src", mask_value=value)
    summary = _spin(src, tmp_path / "out", mask_dilation_iterations=0)
    expected = _box_mask((32, 24), (8, 6, 16, 12))
    for name in ["img000", "img003"]:
        np.testing.assert_array_equal(_read(tmp_path / "out" / "masks" / f"{name}.png"), expected)
    assert summary["warnings"] == []


def test_spinnerf_masks_off_by_two_pixels(tmp_path):
    src = make_spinnerf(tmp_path / "src", mask_pad=2)
    summary = _spin(src, tmp_path / "out", mask_dilation_iterations=0)
    warnings = [w for w in summary["warnings"] if "34x26" in w and "32x24" in w]
    assert len(warnings) == 2  # one for label/, one for test_label/
    mask = _read(tmp_path / "out" / "masks" / "img003.png")
    assert mask.shape == (24, 32)
    ys, xs = np.nonzero(mask)
    assert abs(xs.min() - 8) <= 1 and abs(ys.min() - 6) <= 1 and abs(xs.max() - 15) <= 1


def test_spinnerf_dilation(tmp_path):
    src = make_spinnerf(tmp_path / "src", n_test=1, n_train=1)
    dot = np.zeros((24, 32), np.uint8)
    dot[12, 16] = 1
    _save(src / "images_4" / "label" / "img001.png", dot)
    _save(src / "images_4" / "test_label" / "img000.png", dot)
    out = tmp_path / "out"
    _spin(src, out, spinnerf_n_test=1)  # defaults: 5x5 kernel, 5 iterations
    train = _read(out / "masks" / "img001.png")
    ys, xs = np.nonzero(train)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (2, 22, 6, 26)  # grows by 2 px per iteration
    assert train.sum() == 255 * 21 * 21
    test = _read(out / "masks" / "img000.png")  # test masks are the evaluation region: not dilated
    assert np.count_nonzero(test) == 1 and test[12, 16] == 255
    _spin(src, tmp_path / "out3", spinnerf_n_test=1,
                 mask_dilation_iterations=1, mask_dilation_kernel=3)
    assert np.count_nonzero(_read(tmp_path / "out3" / "masks" / "img001.png")) == 9


def test_spinnerf_resized_from_full_resolution(tmp_path):
    """No images_2/: images come from images/, masks from the closest label folder (images_4)."""
    src = make_spinnerf(tmp_path / "src", levels=(4,))
    summary = _spin(src, tmp_path / "out", downscale=2, mask_dilation_iterations=0)
    assert (summary["width"], summary["height"]) == (64, 48)
    meta = json.loads((tmp_path / "out" / "transforms.json").read_text())
    assert meta["fl_x"] == pytest.approx(FOCAL / 2)
    mask = _read(tmp_path / "out" / "masks" / "img004.png")
    np.testing.assert_array_equal(mask, _box_mask((64, 48), (16, 12, 32, 24)))
    assert summary["warnings"] == []
    # max_width: 64x48 -> 40x30
    summary = _spin(src, tmp_path / "out2", downscale=2, max_width=40)
    assert (summary["width"], summary["height"]) == (40, 30)
    meta = json.loads((tmp_path / "out2" / "transforms.json").read_text())
    assert meta["fl_x"] == pytest.approx(FOCAL * 40 / 128) and meta["cy"] == pytest.approx(15.0)
    assert _read(tmp_path / "out2" / "images" / "img000.png").shape == (30, 40, 3)


@pytest.mark.parametrize("levels, used", [((8,), 8), ((8, 16), 8), ((2, 8), 2)])
def test_spinnerf_without_the_requested_level_uses_the_nearest(tmp_path, levels, used):
    """A scene shipping only some images_N/ (and no images/ to resize from): the nearest
    level (by ratio; ties to the finer one) with its own masks, and a warning naming both."""
    src = make_spinnerf(tmp_path / "src", levels=levels, full=False)
    summary = _spin(src, tmp_path / "out", downscale=4, mask_dilation_iterations=0)
    size = (FULL[0] // used, FULL[1] // used)
    assert (summary["width"], summary["height"]) == size
    meta = json.loads((tmp_path / "out" / "transforms.json").read_text())
    assert meta["fl_x"] == pytest.approx(FOCAL / used)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "images" / "img002.png"), _read(src / f"images_{used}" / "img002.png"))
    box = (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "masks" / "img004.png"), _box_mask(size, box))
    named = [w for w in summary["warnings"] if str(src / "images_4") in w and str(src / f"images_{used}") in w]
    assert len(named) == 1 and "nearest" in named[0], summary["warnings"]


def test_spinnerf_label_for_all_images_and_sorted_pairing(tmp_path):
    src = make_spinnerf(tmp_path / "src", label_all=True)
    label = src / "images_4" / "label"
    for i, p in enumerate(sorted(label.iterdir())):  # names no longer match: pairing in sorted order
        p.rename(label / f"mask_{i:02d}.png")
    summary = _spin(src, tmp_path / "out", mask_dilation_iterations=0)
    assert summary["n_train"] == 3
    assert any("sorted order" in w for w in summary["warnings"])
    # a distinctive mask on the last image must land on the last train view
    distinctive = np.full((24, 32), 255, np.uint8)
    distinctive[0, 0] = 0  # (an all-object train mask is an input error)
    _save(label / "mask_04.png", distinctive)
    _spin(src, tmp_path / "out2", mask_dilation_iterations=0)
    assert (_read(tmp_path / "out2" / "masks" / "img004.png") == 255).mean() > 0.99
    assert _read(tmp_path / "out2" / "masks" / "img003.png").min() == 0


def test_spinnerf_multilevel_mask_warns(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    m = _box_mask((32, 24), (8, 6, 16, 12))
    m[0, 0] = 40  # below half: background
    _save(src / "images_4" / "label" / "img002.png", m)
    summary = _spin(src, tmp_path / "out", mask_dilation_iterations=0)
    assert any("grey levels" in w for w in summary["warnings"])
    np.testing.assert_array_equal(_read(tmp_path / "out" / "masks" / "img002.png"),
                                  _box_mask((32, 24), (8, 6, 16, 12)))


def test_spinnerf_n_test_from_generator_json(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    (src / "innout_generator.json").write_text(json.dumps({"n_test": 2}))
    summary = import_scene(src, "spinnerf", tmp_path / "out")  # no spinnerf_n_test: the file's 2, not 40
    assert (summary["n_train"], summary["n_test"]) == (3, 2)


def test_replaces_an_existing_scene(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    _spin(src, out)
    assert not (out / "stale.txt").exists() and (out / "transforms.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# --------------------------------------------------------------------------- bad input


def test_missing_train_mask(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    (src / "images_4" / "label" / "img003.png").unlink()
    out = tmp_path / "results" / "s" / "scene"  # parents created by the import are removed again
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    msg = _check_failed(exc, str(src / "images_4" / "label" / "img003.png"), out)
    assert "img003.jpg" in msg and "train view" in msg
    assert not (tmp_path / "results").exists()


def test_mask_count_mismatch(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    label = src / "images_4" / "label"
    for i, p in enumerate(sorted(label.iterdir())):
        p.rename(label / f"m{i}.png")
    (label / "m0.png").unlink()
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    msg = _check_failed(exc, str(label), out)
    assert "holds 2 masks" in msg and "3 train views" in msg and "5 images" in msg


def test_missing_test_masks(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    for p in (src / "images_4" / "test_label").iterdir():
        p.unlink()
    (src / "images_4" / "test_label").rmdir()
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    _check_failed(exc, "test_label", out)


def test_corrupt_image(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    bad = src / "images_4" / "img002.png"
    bad.write_bytes(b"this is not a png")
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    assert "not a readable image" in _check_failed(exc, str(bad), out)


def test_truncated_image_fails_while_writing(tmp_path):
    """The header reads fine, the pixels do not: the error comes mid-write; nothing is left."""
    src = make_spinnerf(tmp_path / "src")
    bad = src / "images_4" / "img004.png"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    _check_failed(exc, str(bad), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_poses_bounds_wrong_shape(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    np.save(src / "poses_bounds.npy", np.zeros((5, 15)))
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    msg = _check_failed(exc, str(src / "poses_bounds.npy"), out)
    assert "(5, 15): expected (N, 17) with N = number of images (5)" in msg


def test_poses_bounds_wrong_row_count(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    rows = np.load(src / "poses_bounds.npy")
    np.save(src / "poses_bounds.npy", rows[:4])
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    assert "(4, 17)" in _check_failed(exc, "poses_bounds.npy", out)


def test_poses_bounds_not_finite(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    rows = np.load(src / "poses_bounds.npy")
    rows[3, 3] = np.nan
    np.save(src / "poses_bounds.npy", rows)
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    assert "row 3" in _check_failed(exc, "poses_bounds.npy", out)


def test_mask_of_wrong_aspect(tmp_path):
    src = make_spinnerf(tmp_path / "src")
    bad = _save(src / "images_4" / "label" / "img002.png", np.zeros((32, 24), np.uint8))
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    assert "aspect" in _check_failed(exc, str(bad), out)


def test_all_one_train_mask(tmp_path):
    """A train view whose mask covers the whole image leaves the geometry nothing to learn from it."""
    src = make_spinnerf(tmp_path / "src")
    bad = src / "images_4" / "label" / "img003.png"
    _save(bad, np.full(_read(bad).shape, 255, np.uint8))
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    assert "whole image" in _check_failed(exc, str(bad), out)


def test_all_zero_train_masks(tmp_path):
    """One empty train mask is a warning; all of them empty means there is nothing to remove."""
    src = make_spinnerf(tmp_path / "src")
    label = src / "images_4" / "label"
    masks = sorted(label.iterdir())
    _save(masks[0], np.zeros(_read(masks[0]).shape, np.uint8))
    summary = _spin(src, tmp_path / "one")
    assert any("1 train masks are empty" in w for w in summary["warnings"])
    for m in masks[1:]:
        _save(m, np.zeros(_read(m).shape, np.uint8))
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out)
    assert "all 3 train masks are empty" in _check_failed(exc, str(label), out)


def test_non_binary_masks_are_thresholded_with_a_warning(tmp_path):
    """Anti-aliased (many grey levels) masks: object = above half the maximum, and a warning."""
    src = make_spinnerf(tmp_path / "src")
    for m in sorted((src / "images_4" / "label").iterdir()):
        arr = _read(m).astype(np.float64)
        ramp = np.linspace(0, 100, arr.shape[1])[None, :]
        _save(m, np.clip(arr * 0.6 + ramp, 0, 255).astype(np.uint8))  # object ~153-253, background 0-100
    summary = _spin(src, tmp_path / "out", mask_dilation_iterations=0)
    assert any("more than two grey levels" in w for w in summary["warnings"])
    obj = _read(tmp_path / "out" / "masks" / "img002.png") > 0
    assert 0 < obj.mean() < 0.5


def test_cannot_detect_format(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_scene(tmp_path / "empty", "auto", out)
    _check_failed(exc, str(tmp_path / "empty"), out)


# --------------------------------------------------------------------------- nerfstudio


def _make_nerfstudio(root: Path, n: int = 4, size: tuple[int, int] = (40, 30)) -> dict:
    rng = np.random.default_rng(1)
    frames = []
    for i, c2w in enumerate(_ring_c2w(n)):
        _save(root / "images" / f"f{i}.jpg", _random_rgb(rng, size))
        frames.append({"file_path": f"images/f{i}.jpg", "transform_matrix": c2w.tolist()})
    meta = {"camera_angle_x": 0.9, "w": size[0], "h": size[1], "k1": 0.01, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return meta


def test_nerfstudio_fox(tmp_path, fox_dir):
    out = tmp_path / "fox"
    summary = import_scene(fox_dir, "auto", out, downscale=2)
    assert summary["format"] == "nerfstudio"
    assert (summary["n_train"], summary["n_test"]) == (50, 0)
    assert (summary["width"], summary["height"]) == (135, 240)
    assert summary["mask_fraction_mean"] == 0.0 and any("no object masks" in w for w in summary["warnings"])
    src = json.loads((fox_dir / "transforms.json").read_text())
    meta = json.loads((out / "transforms.json").read_text())
    assert [f["transform_matrix"] for f in meta["frames"]] == [f["transform_matrix"] for f in src["frames"]]
    assert meta["fl_x"] == pytest.approx(src["fl_x"] / 2) and meta["cy"] == pytest.approx(src["cy"] / 2)
    assert meta["k1"] == src["k1"] and meta["p2"] == src["p2"]
    assert meta["val_filenames"] == meta["train_filenames"] and meta["test_filenames"] == []
    first = Path(meta["frames"][0]["innout_source_image"])
    assert first.is_absolute() and first.samefile(fox_dir / "images" / "0001.jpg")
    assert _read(out / "images" / "0001.png").shape == (240, 135, 3)


def test_nerfstudio_masks_splits_and_fallbacks(tmp_path):
    src = tmp_path / "src"
    meta = _make_nerfstudio(src)
    keep = np.full((30, 40), 255, np.uint8)
    keep[5:10, 5:10] = 0  # nerfstudio: 0 = ignore; that is the object
    for i, fr in enumerate(meta["frames"]):
        _save(src / "ns_masks" / f"f{i}.png", keep)
        fr["mask_path"] = f"ns_masks/f{i}.png"
    meta["frames"][0]["innout_split"] = "test"
    (src / "transforms.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    summary = import_scene(src, "nerfstudio", out, downscale=1, mask_dilation_iterations=0)
    assert summary["test_views"] == ["f0"] and summary["train_views"] == ["f1", "f2", "f3"]
    np.testing.assert_array_equal(_read(out / "masks" / "f1.png"), 255 - keep)
    m = json.loads((out / "transforms.json").read_text())
    assert m["fl_x"] == pytest.approx(0.5 * 40 / np.tan(0.45)) and m["fl_y"] == m["fl_x"]
    assert (m["cx"], m["cy"], m["k1"]) == (20.0, 15.0, 0.01)
    # the canonical scene is itself a nerfstudio input (innout_object_mask wins over mask_path)
    again = import_scene(out, "auto", tmp_path / "again", downscale=1, mask_dilation_iterations=0)
    assert again["test_views"] == ["f0"]
    np.testing.assert_array_equal(_read(tmp_path / "again" / "masks" / "f1.png"), 255 - keep)


def test_nerfstudio_masks_folder(tmp_path):
    src = tmp_path / "src"
    _make_nerfstudio(src)
    for i in range(4):
        _save(src / "masks" / f"f{i}.png", _box_mask((40, 30), (0, 0, 4, 4), 1))
    summary = import_scene(src, "nerfstudio", tmp_path / "out", downscale=2, mask_dilation_iterations=0)
    assert (summary["width"], summary["height"]) == (20, 15)
    np.testing.assert_array_equal(_read(tmp_path / "out" / "masks" / "f2.png"), _box_mask((20, 15), (0, 0, 2, 2)))
    assert summary["warnings"] == []


def test_nerfstudio_missing_file(tmp_path):
    src = tmp_path / "src"
    _make_nerfstudio(src)
    (src / "images" / "f2.jpg").unlink()
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_scene(src, "nerfstudio", out)
    assert "frame 2" in _check_failed(exc, str(src / "images" / "f2.jpg"), out)


def test_nerfstudio_non_finite_pose(tmp_path):
    src = tmp_path / "src"
    meta = _make_nerfstudio(src)
    meta["frames"][1]["transform_matrix"][0][3] = float("inf")
    (src / "transforms.json").write_text(json.dumps(meta))  # json writes Infinity
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_scene(src, "auto", out)
    assert "non-finite" in _check_failed(exc, str(src / "transforms.json"), out)


# --------------------------------------------------------------------------- colmap and images


def test_colmap_text_model(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(2)
    size, fx, fy, cx, cy = (48, 36), 50.0, 52.0, 23.0, 17.5
    model = src / "sparse" / "0"
    model.mkdir(parents=True)
    (model / "cameras.txt").write_text(f"1 OPENCV {size[0]} {size[1]} {fx} {fy} {cx} {cy} 0.1 -0.02 0.001 0.002\n")
    lines, c2ws = [], _ring_c2w(3)
    for i, c2w in enumerate(c2ws):
        _save(src / "images" / f"v{i}.png", _random_rgb(rng, size))
        w2c = opengl_c2w_to_opencv_w2c(c2w)
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        t = w2c[:3, 3]
        lines += [f"{i + 1} {qw} {qx} {qy} {qz} {t[0]} {t[1]} {t[2]} 1 v{i}.png", ""]
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    (model / "points3D.txt").write_text("")
    _save(src / "images" / "extra.png", _random_rgb(rng, size))  # not in the model: skipped
    assert detect_format(src) == "colmap"
    summary = import_scene(src, "auto", tmp_path / "out", downscale=2)
    assert summary["train_views"] == ["v0", "v1", "v2"] and summary["has_poses"]
    assert any("not in the COLMAP model" in w for w in summary["warnings"])
    meta = json.loads((tmp_path / "out" / "transforms.json").read_text())
    for fr, c2w in zip(meta["frames"], c2ws):
        np.testing.assert_allclose(fr["transform_matrix"], c2w, atol=1e-6)
    assert (meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"]) == pytest.approx((fx / 2, fy / 2, cx / 2, cy / 2))
    assert (meta["k1"], meta["k2"], meta["p1"], meta["p2"]) == pytest.approx((0.1, -0.02, 0.001, 0.002))


def test_images_without_poses(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(3)
    for i in range(3):
        _save(src / "images" / f"p{i}.jpg", _random_rgb(rng, (64, 48)))
        _save(src / "masks" / f"p{i}.png", _box_mask((64, 48), (8, 8, 24, 24), 1))
    summary = import_scene(src, "auto", tmp_path / "out")
    assert summary["format"] == "images" and not summary["has_poses"] and summary["n_train"] == 3
    assert summary["mask_fraction_mean"] > 0
    meta = json.loads((tmp_path / "out" / "transforms.json").read_text())
    assert meta["innout"]["has_poses"] is False and "fl_x" not in meta
    assert (meta["w"], meta["h"]) == (16, 12)
    assert all("transform_matrix" not in f for f in meta["frames"])
    assert meta["frames"][0]["innout_source_size"] == [64, 48]
    out = tmp_path / "out2"
    with pytest.raises(InputError) as exc:
        import_scene(src, "auto", out, poses="provided")
    _check_failed(exc, str(src), out)


# --------------------------------------------------------------------------- procedural scene


def test_procedural_spinnerf_scene(tmp_path):
    """100 generated views: 60 train + 40 test, masks on the right images, poses reproject exactly."""
    src = tmp_path / "gen"
    w, h = 160, 120  # small: 100 views render in seconds
    procedural.write_spinnerf_scene(src, variant="forward", seed=0, n_train=60, n_test=40, width=w, height=h,
                                    downscales=(2,), supersample=1, progress=False)
    gen = json.loads((src / "innout_generator.json").read_text())
    out = tmp_path / "scene"
    summary = import_scene(src, "auto", out, downscale=2)  # spinnerf_n_test defaults to 40
    assert (summary["n_train"], summary["n_test"]) == (60, 40)
    assert summary["test_views"] == [Path(n).stem for n in gen["names"]["test"]]
    assert summary["train_views"] == [Path(n).stem for n in gen["names"]["train"]]
    assert (summary["width"], summary["height"]) == (w // 2, h // 2)
    assert summary["warnings"] == []
    meta = json.loads((out / "transforms.json").read_text())
    frames = {Path(f["file_path"]).stem: f for f in meta["frames"]}

    scene = procedural.ProceduralScene("forward", 0)
    gen_cams = dict(zip(summary["test_views"], scene.cameras(40, w, h, "test")))
    gen_cams.update(zip(summary["train_views"], scene.cameras(60, w, h, "train")))
    obj = scene.object_points(300)
    pts = np.concatenate([obj, scene.background_points(300)])
    worst, inside = 0.0, []
    for name, cam in gen_cams.items():
        fr = frames[name]
        ours = Camera(np.asarray(fr["transform_matrix"]),
                      Intrinsics(meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], meta["w"], meta["h"]))
        truth = cam.with_intrinsics(cam.intrinsics.scaled_to(meta["w"], meta["h"]))
        uv_ours, z_ours = ours.project(pts)
        uv_true, z_true = truth.project(pts)
        front = z_true > 1e-3
        assert front.sum() > 100
        np.testing.assert_array_equal(z_ours > 1e-3, front)
        worst = max(worst, float(np.abs(uv_ours[front] - uv_true[front]).max()))
        if fr["innout_split"] == "train":  # the object lands in this view's own (dilated) mask
            mask = _read(out / fr["innout_object_mask"]) > 0
            uv, z = truth.project(obj)
            u, v = np.floor(uv).astype(int).T
            ok = (z > 0) & (u >= 0) & (v >= 0) & (u < meta["w"]) & (v < meta["h"])
            inside.append(mask[v[ok], u[ok]].mean())
    assert worst < 0.5, worst
    assert min(inside) > 0.9, min(inside)
    # masks come from the generator's label folders, binarised, train ones dilated, test ones not
    for name in (summary["test_views"][0], summary["train_views"][0]):
        folder = "test_label" if name in summary["test_views"] else "label"
        label = _read(src / "images_2" / folder / f"{name}.png") > 0
        ours = _read(out / "masks" / f"{name}.png") > 0
        if folder == "test_label":
            np.testing.assert_array_equal(ours, label)
        else:
            assert ours[label].all() and ours.sum() > label.sum()
