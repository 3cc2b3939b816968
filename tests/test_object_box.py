"""The 3D box a scene may give instead of (or besides) annotated masks (innout.object_box)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from innout.cameras import Camera, Intrinsics, look_at
from innout.errors import InputError
from innout.object_box import ObjectBox, check_box_in_view, read_box, views_seeing


def _write(tmp_path, data):
    path = tmp_path / "object_box.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def _cameras():
    k = Intrinsics(60.0, 60.0, 32.0, 24.0, 64, 48)
    return [Camera(look_at(np.array([x, -4.0, 1.0]), np.zeros(3)), k) for x in (-1.0, 0.0, 1.0)]


def test_min_max_and_center_size_rotation(tmp_path):
    box = read_box(_write(tmp_path, {"min": [0, 0, 0], "max": [2, 1, 1]}))
    assert np.allclose(box.center, [1, 0.5, 0.5]) and np.allclose(box.size, [2, 1, 1])
    assert box.contains(np.array([[1.9, 0.5, 0.5], [2.1, 0.5, 0.5]])).tolist() == [True, False]
    rot = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    box = read_box(_write(tmp_path, {"center": [0, 0, 0], "size": [2, 0.2, 0.2], "rotation": rot.tolist()}))
    # the long axis now runs along world y
    assert box.contains(np.array([[0, 0.9, 0], [0.9, 0, 0]])).tolist() == [True, False]
    assert len(box.corners()) == 8 and box.contains(box.corners()).all()


def test_transformed_follows_a_similarity(tmp_path):
    box = ObjectBox(np.array([1.0, 0, 0]), np.array([1.0, 2, 3]), np.eye(3))
    rot = Rotation.from_euler("x", 30, degrees=True).as_matrix()
    moved = box.transformed(2.0, rot, np.array([0, 0, 5.0]))
    points = box.grid(3)
    assert moved.contains(2.0 * points @ rot.T + np.array([0, 0, 5.0])).all()
    assert np.allclose(moved.size, [2, 4, 6])


@pytest.mark.parametrize("data, words", [
    ("{not json", "not readable JSON"),
    ({"min": [0, 0, 0], "max": [1, -1, 1]}, "must exceed min"),
    ({"min": [0, 0], "max": [1, 1, 1]}, "three finite numbers"),
    ({"center": [0, 0, 0], "size": [1, 0, 1]}, "must be positive"),
    ({"center": [0, 0, 0], "size": [1, 1, 1], "rotation": [[1, 0, 0], [0, 2, 0], [0, 0, 1]]}, "not a rotation"),
    ({"corner": [0, 0, 0]}, "needs 'min' and 'max'"),
])
def test_bad_box_files_fail_with_one_line_naming_the_file(tmp_path, data, words):
    path = _write(tmp_path, data)
    with pytest.raises(InputError) as err:
        read_box(path)
    assert str(err.value).startswith(str(path)) and words in str(err.value)
    assert "\n" not in str(err.value)


def test_a_box_outside_every_view_is_an_error(tmp_path):
    cams = _cameras()
    seen = ObjectBox(np.zeros(3), np.ones(3) * 0.5, np.eye(3))
    behind = ObjectBox(np.array([0.0, -10.0, 1.0]), np.ones(3) * 0.5, np.eye(3))  # behind the cameras
    assert views_seeing(seen, cams) == [0, 1, 2]
    assert views_seeing(behind, cams) == []
    check_box_in_view(tmp_path / "object_box.json", seen, cams)
    with pytest.raises(InputError, match="outside every camera's view") as err:
        check_box_in_view(tmp_path / "object_box.json", behind, cams)
    assert str(err.value).startswith(str(tmp_path / "object_box.json"))
