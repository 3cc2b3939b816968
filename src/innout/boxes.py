"""The region the SPIn-NeRF protocol scores: the bounding box of a test view's object mask.

Ground-truth test views were photographed after the object was removed; their masks
(``images_N/test_label/``) mark where it stood. Metrics compare render and photo only
inside each mask's bounding box, so that box is also all the renderer has to draw of a
test view (:mod:`innout.render`) and all :mod:`innout.evaluate` reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from innout.errors import InputError

Bbox = tuple[int, int, int, int]

BOXES_FILE = "boxes.json"
"""Written beside renders of test-view boxes: which box of which view, in which image size."""


def mask_bbox(mask: np.ndarray, name: str = "mask") -> Bbox:
    """The bounding box ``(y0, y1, x0, x1)`` (half-open: rows ``y0..y1-1``) of the nonzero
    pixels of an ``HxW`` mask (an ``HxWxC`` mask counts a pixel when any channel is set).
    An empty mask raises ``ValueError`` naming ``name``."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected an HxW mask, got shape {np.asarray(mask).shape}")
    m = m.astype(bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"{name}: the mask is empty, it has no bounding box")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop(img: np.ndarray, bbox: Sequence[int]) -> np.ndarray:
    """``img[y0:y1, x0:x1]`` for a box from :func:`mask_bbox`."""
    y0, y1, x0, x1 = (int(v) for v in bbox)
    return np.asarray(img)[y0:y1, x0:x1]


def read_object_mask(path: Path | None, frame_name: str, shape: tuple[int, int]) -> np.ndarray:
    """A test view's object mask (bool, nonzero = object) of an image of ``shape`` (H, W)."""
    if path is None or not Path(path).is_file():
        raise InputError(path or frame_name, f"test view {frame_name} has no object mask: the protocol's box comes from it")
    m = np.asarray(Image.open(path))
    m = (m[..., 0] if m.ndim == 3 else m) > 0
    if m.shape != tuple(shape):
        raise InputError(path, f"mask is {m.shape[1]}x{m.shape[0]}, its image {shape[1]}x{shape[0]}")
    return m


def test_view_boxes(frames: Iterable[Any]) -> tuple[dict[str, Bbox], list[str]]:
    """The box of every ground-truth test view (``innout.frames.Frame``) by name, and the
    names of views whose mask is empty (they have no box and are not scored)."""
    boxes: dict[str, Bbox] = {}
    empty: list[str] = []
    for f in frames:
        k = f.camera.intrinsics
        mask = read_object_mask(f.object_mask, f.name, (k.height, k.width))
        if mask.any():
            boxes[f.name] = mask_bbox(mask, f"{f.name} mask")
        else:
            empty.append(f.name)
    return boxes, empty


def write_boxes(folder: Path, boxes: dict[str, Bbox], sizes: dict[str, tuple[int, int]]) -> None:
    """``folder/boxes.json``: each rendered view's box and its full image size (W, H)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BOXES_FILE).write_text(json.dumps({
        "definition": "rgb/<view>.png holds the pixels [y0, y1) x [x0, x1) of the view (the bounding box of its test "
                      "mask: the region the SPIn-NeRF protocol scores), at the full working resolution",
        "boxes": {name: list(box) for name, box in boxes.items()},
        "image_size": {name: list(sizes[name]) for name in boxes},
    }, indent=1) + "\n")


def read_boxes(folder: Path) -> dict[str, Bbox]:
    """The boxes of ``folder/boxes.json`` by view name; one-line errors naming the file."""
    path = Path(folder) / BOXES_FILE
    try:
        data = json.loads(path.read_text())
        return {name: tuple(int(v) for v in box) for name, box in data["boxes"].items()}  # type: ignore[misc]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"cannot read the rendered boxes: {err}") from None
