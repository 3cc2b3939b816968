"""Clean-up of propagated masks (innout.mask_cleanup)."""

from __future__ import annotations

import cv2
import numpy as np

from innout.mask_cleanup import CleanupSettings, clean_mask, dilate_mask, fill_holes, remove_specks


def _object() -> np.ndarray:
    mask = np.zeros((60, 80), bool)
    mask[15:45, 20:60] = True  # 1200 px
    return mask


def test_specks_go_and_the_object_stays():
    mask = _object()
    mask[2, 2] = mask[50:53, 70:73].any() or True  # a lone pixel
    mask[50:53, 70:73] = True  # a 9-px speck
    out = remove_specks(mask, 0.05)
    assert not out[2, 2] and not out[50:53, 70:73].any()
    assert out[15:45, 20:60].all()


def test_a_second_large_part_is_kept():
    mask = _object()
    mask[50:58, 5:25] = True  # 160 px: 13 % of the largest part
    assert remove_specks(mask, 0.05)[50:58, 5:25].all()


def test_small_holes_fill_and_large_ones_and_the_outside_stay():
    mask = _object()
    mask[20:22, 30:32] = False  # 4 px pinhole
    mask[25:40, 35:55] = False  # 300 px: a real opening (25 % of the mask)
    out = fill_holes(mask, 0.05)
    assert out[20:22, 30:32].all()
    assert not out[25:40, 35:55].any()
    assert not out[0, :].any() and not out[:, 0].any()


def test_a_hole_touching_the_border_is_not_a_hole():
    mask = np.zeros((40, 40), bool)
    mask[:, 10:30] = True
    mask[0:3, 18:22] = False  # a notch open to the image border
    assert not fill_holes(mask, 0.5)[0:3, 18:22].any()


def test_opening_cuts_a_one_pixel_bridge():
    mask = _object()
    mask[30, 60:75] = True  # a one-pixel line to a blob
    mask[27:34, 75:79] = True
    out = clean_mask(mask, CleanupSettings(open_radius=1, speck_fraction=0.05))
    assert not out[30, 62:74].any()
    assert not out[27:34, 75:79].any()  # the blob, cut off, is a speck now
    assert out[16:44, 21:59].all()


def test_a_thin_object_survives_the_opening():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 20] = True  # one pixel wide everywhere: the opening would delete it
    assert clean_mask(mask).sum() == mask.sum()


def test_dilation_is_the_scene_imports():
    mask = _object()
    expected = cv2.dilate(mask.astype(np.uint8) * 255, np.ones((5, 5), np.uint8), iterations=5) > 0
    assert np.array_equal(dilate_mask(mask, 5, 5), expected)
    assert np.array_equal(dilate_mask(mask, 5, 0), mask)


def test_edge_snap_moves_an_outline_a_pixel_off_onto_the_colour_edge():
    from innout.edge_snap import snap_to_edges

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 60, (60, 80, 3), dtype=np.uint8)  # dark textured background
    truth = _object()
    rgb[truth] = rng.integers(180, 255, (int(truth.sum()), 3), dtype=np.uint8)  # a bright object
    for off in (cv2.dilate, cv2.erode):
        carved = off(truth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        snapped, record = snap_to_edges(rgb, carved, band=2)
        assert record["used"]
        assert np.array_equal(snapped, truth)
    # the overlap guard: a snapped outline that moved too much is not used
    carved = cv2.dilate(truth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    kept, record = snap_to_edges(rgb, carved, band=2, min_iou=0.99)
    assert not record["used"] and np.array_equal(kept, carved) and "overlaps" in record["why"]
    assert snap_to_edges(rgb, truth, band=0)[1]["used"] is False
