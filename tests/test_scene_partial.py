"""Scenes that give masks of some views only (or a 3D box): the import side of the masks
stage (innout.scene, ``masks=``). Today's all-masks behaviour is tests/test_scene.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_scene import _box_mask, _check_failed, _make_nerfstudio, _random_rgb, _read, _save, _spin, make_spinnerf

from innout.errors import InputError
from innout.frames import read_scene
from innout.scene import import_scene, parse_masks_option


def _images_scene(root: Path, annotated: dict[str, np.ndarray], n: int = 5) -> Path:
    rng = np.random.default_rng(4)
    for i in range(n):
        _save(root / "images" / f"p{i}.jpg", _random_rgb(rng, (64, 48)))
    for name, mask in annotated.items():
        _save(root / "masks" / f"{name}.png", mask)
    return root


def test_masks_option_parsing():
    assert parse_masks_option("all") == ("all", [])
    assert parse_masks_option("some") == ("some", [])
    assert parse_masks_option("img_045,img_070") == ("listed", ["img_045", "img_070"])
    assert parse_masks_option(["a", "b", "a"]) == ("listed", ["a", "b"])
    for bad in ("", "a,,b", "a, b"):
        with pytest.raises(ValueError):
            parse_masks_option(bad)


def test_some_masks_of_an_images_scene(tmp_path):
    mask = _box_mask((64, 48), (8, 8, 24, 24), 1)
    src = _images_scene(tmp_path / "src", {"p1": mask, "p3": mask})
    out = tmp_path / "out"
    summary = import_scene(src, "auto", out, masks="some")
    info = summary["masks"]
    assert info["mode"] == "some" and info["annotated_views"] == ["p1", "p3"]
    assert info["views_without_masks"] == ["p0", "p2", "p4"] and info["box"] is None
    assert "suggested_views" not in info  # no poses yet: the masks stage suggests
    # annotations stay undilated (the masks stage carves with the true outline)
    np.testing.assert_array_equal(_read(out / "annotations" / "p1.png"), _box_mask((16, 12), (2, 2, 6, 6)))
    assert not (out / "masks").exists() or not list((out / "masks").iterdir())
    meta = json.loads((out / "transforms.json").read_text())
    frames = {Path(f["file_path"]).stem: f for f in meta["frames"]}
    assert frames["p1"]["innout_mask"] == "annotation" and frames["p1"]["innout_annotation"] == "annotations/p1.png"
    assert frames["p0"]["innout_mask"] == "missing" and "mask_path" not in frames["p0"]
    assert meta["innout"]["masks"]["annotated_views"] == ["p1", "p3"]
    assert summary["mask_fraction_mean"] is None


def test_listed_views_keep_the_others_as_reference(tmp_path):
    src = make_spinnerf(tmp_path / "src", n_train=4)
    out = tmp_path / "out"
    summary = _spin(src, out, masks="img003")
    info = summary["masks"]
    assert info["mode"] == "listed" and info["annotated_views"] == ["img003"] and info["reference_masks"]
    assert sorted(p.name for p in (out / "reference_masks").iterdir()) == ["img002.png", "img004.png", "img005.png"]
    np.testing.assert_array_equal(_read(out / "reference_masks" / "img002.png"), _box_mask((32, 24), (8, 6, 16, 12)))
    # test views keep their (evaluation) masks as before
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["img000.png", "img001.png"]
    assert set(info["suggested_views"]) == {"1", "2", "3"}
    assert all(v in summary["train_views"] for v in info["suggested_views"]["2"])


def test_some_masks_of_a_spinnerf_scene(tmp_path):
    src = make_spinnerf(tmp_path / "src", n_train=4)
    for name in ("img002", "img004"):
        (src / "images_4" / "label" / f"{name}.png").unlink()
    summary = _spin(src, tmp_path / "out", masks="some")
    assert summary["masks"]["annotated_views"] == ["img003", "img005"]
    assert summary["masks"]["views_without_masks"] == ["img002", "img004"]


def test_some_masks_of_a_nerfstudio_scene(tmp_path):
    src = tmp_path / "src"
    meta = _make_nerfstudio(src)
    _save(src / "obj" / "f2.png", _box_mask((40, 30), (5, 5, 15, 15)))
    meta["frames"][2]["innout_object_mask"] = "obj/f2.png"
    (src / "transforms.json").write_text(json.dumps(meta))
    summary = import_scene(src, "nerfstudio", tmp_path / "out", downscale=1, masks="some")
    assert summary["masks"]["annotated_views"] == ["f2"]
    with pytest.raises(InputError, match="names no mask"):
        import_scene(src, "nerfstudio", tmp_path / "out2", downscale=1)  # all masks required by default


def test_partial_scene_is_refused_by_pretraining(tmp_path):
    src = make_spinnerf(tmp_path / "src", n_train=4)
    _spin(src, tmp_path / "out", masks="img003")
    with pytest.raises(InputError, match="no object mask yet") as err:
        read_scene(tmp_path / "out" / "transforms.json")
    assert "\n" not in str(err.value)
    _, _, train, _ = read_scene(tmp_path / "out" / "transforms.json", allow_missing_masks=True)
    assert len(train) == 4


def test_a_valid_box_is_kept_in_the_scene(tmp_path):
    src = make_spinnerf(tmp_path / "src", n_train=4)
    (src / "object_box.json").write_text(json.dumps({"min": [-0.5, -0.5, -0.5], "max": [0.5, 0.5, 0.5]}))
    summary = _spin(src, tmp_path / "out", masks="some")
    assert summary["masks"]["box"] == "object_box.json"
    box = json.loads((tmp_path / "out" / "object_box.json").read_text())
    assert box["center"] == [0.0, 0.0, 0.0] and box["size"] == [1.0, 1.0, 1.0]
    # a box alone is enough: no annotated mask at all
    import shutil

    shutil.rmtree(src / "images_4" / "label")
    (src / "images_4" / "test_label").mkdir(exist_ok=True)
    for name in ("img000", "img001"):
        _save(src / "images_4" / "test_label" / f"{name}.png", _box_mask((32, 24), (8, 6, 16, 12)))
    summary = _spin(src, tmp_path / "out2", masks="some")
    assert summary["masks"]["annotated_views"] == [] and summary["masks"]["box"] == "object_box.json"


# --------------------------------------------------------------------------- bad input


def test_an_annotated_mask_naming_no_view(tmp_path):
    mask = _box_mask((64, 48), (8, 8, 24, 24), 1)
    src = _images_scene(tmp_path / "src", {"p1": mask, "p9": mask})
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_scene(src, "auto", out, masks="some")
    msg = _check_failed(exc, str(src / "masks" / "p9.png"), out)
    assert "names no view" in msg


def test_an_empty_annotated_mask(tmp_path):
    src = _images_scene(tmp_path / "src", {"p1": _box_mask((64, 48), (8, 8, 24, 24), 1), "p2": np.zeros((48, 64), np.uint8)})
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_scene(src, "auto", out, masks="some")
    msg = _check_failed(exc, str(src / "masks" / "p2.png"), out)
    assert "is empty" in msg


def test_a_box_outside_every_view(tmp_path):
    src = make_spinnerf(tmp_path / "src", n_train=4)
    (src / "object_box.json").write_text(json.dumps({"center": [0.0, -40.0, 0.0], "size": [0.5, 0.5, 0.5]}))
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out, masks="some")
    msg = _check_failed(exc, str(src / "object_box.json"), out)
    assert "outside every camera's view" in msg


def test_a_box_without_poses(tmp_path):
    src = _images_scene(tmp_path / "src", {})
    (src / "object_box.json").write_text(json.dumps({"min": [0, 0, 0], "max": [1, 1, 1]}))
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_scene(src, "auto", out, masks="some")
    _check_failed(exc, str(src / "object_box.json"), out)


def test_some_masks_but_none_given(tmp_path):
    src = _images_scene(tmp_path / "src", {})
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        import_scene(src, "auto", out, masks="some")
    _check_failed(exc, "at least one train view", out)


@pytest.mark.parametrize("listed", ["img999", "img000"])  # no view / a test view
def test_listed_view_must_be_a_train_view(tmp_path, listed):
    src = make_spinnerf(tmp_path / "src")
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        _spin(src, out, masks=listed)
    _check_failed(exc, listed, out)
