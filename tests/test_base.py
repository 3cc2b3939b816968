"""Base-view selection: centroid candidates and the pHash vote."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
from PIL import Image

from innout.base import candidate_views, masked_phash, phash_vote, white_outside_mask
from innout.cameras import Camera, Intrinsics, look_at

K = Intrinsics(100.0, 100.0, 64.0, 48.0, 128, 96)


def _grid_cameras(shift=np.zeros(3)) -> dict[str, Camera]:
    """A 5 x 5 grid of cameras in the plane y = -3 looking at the origin, shuffled names."""
    cams = {}
    for i in range(5):
        for j in range(5):
            eye = np.array([i - 2.0, -3.0, j - 2.0]) + shift
            cams[f"v{(7 * (5 * i + j)) % 25:02d}_{i}{j}"] = Camera(look_at(eye, shift), K)
    return cams


def test_candidates_nearest_the_centroid_ties_by_name():
    cams = _grid_cameras(np.array([10.0, 5.0, -2.0]))
    names = {n[-2:]: n for n in cams}
    got = candidate_views(cams, n=5)
    # the centre camera, then its four neighbours at distance 1, ordered by name
    ring = sorted(names[k] for k in ("12", "21", "23", "32"))
    assert got == [names["22"], *ring]
    assert candidate_views(cams, n=1) == [names["22"]]
    # the next ring (distance sqrt 2) follows, again by name
    diag = sorted(names[k] for k in ("11", "13", "31", "33"))
    assert candidate_views(cams, n=9)[5:] == diag
    # c2w matrices work too; asking for more than there are gives them all
    assert candidate_views({k: c.c2w for k, c in cams.items()}, n=5) == got
    assert len(candidate_views(cams, n=100)) == 25
    with pytest.raises(ValueError):
        candidate_views({}, n=5)


def _fill(rng: np.random.Generator, kind: int) -> np.ndarray:
    """A 96 x 128 image whose masked region holds one of two structured fills."""
    yy, xx = np.mgrid[0:96, 0:128]
    if kind == 0:
        base = 127 + 100 * np.sin(xx / 6.0) * np.cos(yy / 9.0)
    else:
        base = 127 + 100 * np.sign(np.sin(yy / 4.0 + xx / 15.0))
    img = np.repeat(base[..., None], 3, axis=2) + rng.normal(0, 6, (96, 128, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _mask() -> np.ndarray:
    m = np.zeros((96, 128), bool)
    m[20:76, 30:100] = True
    return m


def test_vote_picks_one_of_the_agreeing_four():
    rng = np.random.default_rng(0)
    names = ["c0", "c1", "c2", "c3", "c4"]
    images = {n: _fill(rng, 0) for n in names}
    images["c2"] = _fill(rng, 1)  # the odd one out
    masks = {n: _mask() for n in names}
    out = phash_vote(images, masks)
    assert out["candidates"] == names
    assert out["winner"] in {"c0", "c1", "c3", "c4"}
    assert out["distances"]["c2"] == max(out["distances"].values())
    assert out["distances"][out["winner"]] == min(out["distances"].values())
    assert sum(out["votes"].values()) == 5 and out["votes"]["c2"] == 0
    assert all(len(h) == 16 for h in out["hashes"].values())  # 64-bit pHash in hex
    assert out["pairwise"]["c0"]["c2"] == out["pairwise"]["c2"]["c0"]


def test_vote_ties_go_to_the_smallest_name():
    img = _fill(np.random.default_rng(1), 0)
    out = phash_vote({"b": img, "a": img, "c": img}, {k: _mask() for k in "abc"})
    assert out["winner"] == "a" and set(out["distances"].values()) == {0}


def test_what_is_hashed_is_the_fill_on_white():
    rng = np.random.default_rng(2)
    img, mask = _fill(rng, 0), _mask()
    white = white_outside_mask(img, mask)
    assert (white[~mask] == 255).all() and (white[mask] == img[mask]).all()
    expected = str(imagehash.phash(Image.fromarray(white)))
    assert phash_vote({"a": img}, {"a": mask})["hashes"]["a"] == expected
    # changing anything outside the mask does not change the hash; inside it does
    other = img.copy()
    other[~mask] = rng.integers(0, 256, (int((~mask).sum()), 3))
    assert str(masked_phash(other, mask)) == expected
    flipped = img.copy()
    flipped[mask] = 255 - flipped[mask]
    assert str(masked_phash(flipped, mask)) != expected
    with pytest.raises(ValueError):
        phash_vote({"a": img}, {})
