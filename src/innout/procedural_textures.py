"""Textures of the procedural scenes: palettes, fractal noise, printed shapes and letters,
sampled by UV (:mod:`innout.procedural`)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from innout.images import to_u8


def _rng(seed: int, *tags: int) -> np.random.Generator:
    """An independent generator per (seed, component) so components do not disturb each other."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(t) for t in tags]]))


# --------------------------------------------------------------------------- textures


def _hsv_colors(hsv: np.ndarray) -> np.ndarray:
    """(K, 3) HSV in [0, 1] -> (K, 3) RGB float32 in [0, 1]."""
    hsv = np.asarray(hsv, np.float32).reshape(1, -1, 3).copy()
    hsv[..., 0] *= 360.0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(-1, 3)


def _palette(rng: np.random.Generator, k: int, style: str, hue0: float) -> np.ndarray:
    """k colours (K, 3) in [0, 1].

    The object's palette is vivid and confined to the hue band [hue0, hue0 + 0.3]; the
    background's is less saturated and avoids that band, so the object stands out.
    """
    if style == "object":
        hue = (hue0 + rng.uniform(0.0, 0.3, k)) % 1.0
        sat = rng.uniform(0.75, 1.0, k)
        val = rng.uniform(0.65, 1.0, k)
        cols = _hsv_colors(np.stack([hue, sat, val], 1))
        dark, light = rng.choice(k, 2, replace=False)
        cols[dark] = rng.uniform(0.0, 0.12, 3)
        cols[light] = rng.uniform(0.88, 1.0, 3)
        return cols
    hue = (hue0 + 0.4 + rng.uniform(0.0, 0.55, k)) % 1.0
    sat = rng.uniform(0.15, 0.8, k)
    val = rng.uniform(0.2, 1.0, k)
    return _hsv_colors(np.stack([hue, sat, val], 1))


def _fbm(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int) -> np.ndarray:
    """Multi-octave value noise (h, w), float32, roughly in [0, 1].

    Octave k is white noise on a grid of cell size cell / 2**k texels; the sum is built
    coarse to fine on the grids (upsampling the partial sum each time) and only the
    finest grid is interpolated (bicubic) to full resolution.
    """
    acc = None
    amp, total = 1.0, 0.0
    c = cell
    for k in range(octaves):
        c = max(cell / 2.0**k, 2.0)
        gh, gw = int(math.ceil(h / c)) + 3, int(math.ceil(w / c)) + 3
        grid = rng.random((gh, gw), dtype=np.float32)
        if acc is None:
            acc = grid
        else:
            acc = cv2.resize(acc, (gw, gh), interpolation=cv2.INTER_LINEAR)
            cv2.scaleAdd(grid, amp, acc, dst=acc)
        total += amp
        amp *= 0.55
    up = cv2.resize(acc, (int(round(acc.shape[1] * c)), int(round(acc.shape[0] * c))), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(rng.integers(0, int(c) + 1)), int(rng.integers(0, int(c) + 1))
    out = up[oy:oy + h, ox:ox + w]
    out *= 1.0 / total
    return out


def _ramp_lut(colors: np.ndarray, sharpness: float) -> np.ndarray:
    """(1, 256, 3) uint8 look-up table of a banded colour ramp through ``colors``."""
    k = len(colors)
    f = np.linspace(0.0, k - 1, 256)
    i0 = np.minimum(f.astype(np.int64), k - 2)
    frac = np.clip((f - i0 - 0.5) * sharpness + 0.5, 0.0, 1.0)[:, None]
    lut = colors[i0] * (1.0 - frac) + colors[i0 + 1] * frac
    return to_u8(lut).reshape(1, 256, 3)


def _to_index(field_: np.ndarray) -> np.ndarray:
    """A scalar field stretched to uint8 (mean +- 2 std of a subsample -> 0..255)."""
    sub = field_[::5, ::5]
    mu, sd = float(sub.mean()), float(sub.std()) + 1e-6
    return cv2.convertScaleAbs(field_, alpha=255.0 / (4 * sd), beta=-255.0 * (mu - 2 * sd) / (4 * sd))


def _spots(rng: np.random.Generator, img8: np.ndarray, radius: float, density: float, palette: np.ndarray) -> None:
    """Crisp colourful discs of ~``radius`` texels at random places (in place, vectorised by dilation)."""
    h, w = img8.shape[:2]
    r = max(1, int(round(radius)))
    n = int(h * w * density / (math.pi * r * r))
    if n == 0:
        return
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    cols = _pick_colors(rng, palette, n, 0.5, 1.2)
    imp = np.zeros((h, w, 3), np.uint8)
    imp[ys, xs] = cols
    mask = np.zeros((h, w), np.uint8)
    mask[ys, xs] = 255
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    cv2.copyTo(cv2.dilate(imp, kernel), cv2.dilate(mask, kernel), img8)


def _pick_colors(rng: np.random.Generator, palette: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """n palette colours (n, 3) uint8, each scaled in brightness by a factor in [lo, hi)."""
    cols = palette[rng.integers(0, len(palette), n)] * rng.uniform(lo, hi, (n, 1))
    return (np.clip(cols, 0, 1) * 255).astype(np.uint8)


_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789#&%@"
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX)


def _draw_shapes(rng: np.random.Generator, img8: np.ndarray, scale: float, count: int, palette: np.ndarray) -> None:
    """Random filled/outlined shapes, strokes, glyphs and checker patches of size ~scale texels."""
    h, w = img8.shape[:2]
    if count <= 0:
        return
    kinds = rng.integers(0, 8, count)
    centres = np.stack([rng.integers(0, w, count), rng.integers(0, h, count)], 1).tolist()
    sizes = (scale * rng.uniform(0.5, 1.5, count)).tolist()
    cols = _pick_colors(rng, palette, count, 0.5, 1.2)
    cols2 = _pick_colors(rng, palette, count, 0.3, 1.2)
    col_t, col2_t = [tuple(c) for c in cols.tolist()], [tuple(c) for c in cols2.tolist()]
    angles = rng.uniform(0, 360, count).tolist()
    thick = np.maximum(1, (np.array(sizes) * rng.uniform(0.08, 0.25, count)).astype(np.int64)).tolist()
    extra = rng.random((count, 8))
    for i in range(count):
        cx, cy = centres[i]
        s, col, kind, x = sizes[i], col_t[i], kinds[i], extra[i]
        if kind == 0:  # filled disc with a ring of another colour
            rad = max(1, int(s / 2))
            cv2.circle(img8, (cx, cy), rad, col, -1, cv2.LINE_AA)
            cv2.circle(img8, (cx, cy), rad, col2_t[i], thick[i], cv2.LINE_AA)
        elif kind == 1:  # ellipse
            axes = (max(1, int(s / 2)), max(1, int(s * (0.15 + 0.3 * x[0]))))
            cv2.ellipse(img8, (cx, cy), axes, angles[i], 0, 360, col, -1, cv2.LINE_AA)
        elif kind == 2:  # rotated rectangle
            box = cv2.boxPoints(((cx, cy), (s, s * (0.3 + 0.7 * x[0])), angles[i]))
            cv2.fillPoly(img8, [np.round(box).astype(np.int32)], col, cv2.LINE_AA)
        elif kind == 3:  # random polygon (3 to 5 corners)
            m = 3 + int(x[0] * 3)
            ang = np.sort(x[1:1 + m] * 2 * math.pi)
            rad = s / 2 * (0.5 + 0.5 * x[2:2 + m])
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
            cv2.fillPoly(img8, [np.round(pts).astype(np.int32)], col, cv2.LINE_AA)
        elif kind == 4:  # stroke (polyline random walk)
            steps = (x.reshape(4, 2) - 0.5) * s
            pts = np.cumsum(steps, 0) + [cx, cy]
            cv2.polylines(img8, [np.round(pts).astype(np.int32)], False, col, thick[i], cv2.LINE_AA)
        elif kind == 5:  # glyphs
            m = 1 + int(x[0] * 3)
            text = "".join(_LETTERS[int(v * len(_LETTERS)) % len(_LETTERS)] for v in x[1:1 + m])
            fs = s / 22.0
            weight = max(1, int(fs * (1.5 + 2 * x[6])))
            cv2.putText(img8, text, (cx, cy), _FONTS[int(x[5] * 4) % 4], fs, col, weight, cv2.LINE_AA)
        elif kind == 6:  # checker patch
            cell = max(2, int(s / (3 + int(x[0] * 3))))
            nx, ny = 2 + int(x[1] * 4), 2 + int(x[2] * 4)
            x0, y0 = max(0, cx - nx * cell // 2), max(0, cy - ny * cell // 2)
            x1, y1 = min(w, x0 + nx * cell), min(h, y0 + ny * cell)
            if x1 > x0 and y1 > y0:
                chk = ((np.arange(y0, y1)[:, None] - y0) // cell + (np.arange(x0, x1)[None, :] - x0) // cell) % 2 == 1
                patch = img8[y0:y1, x0:x1]
                patch[chk] = cols[i]
                patch[~chk] = cols2[i]
        elif x[0] < 0.5:  # ring
            cv2.circle(img8, (cx, cy), max(1, int(s / 2)), col, thick[i], cv2.LINE_AA)
        else:  # outlined square
            box = cv2.boxPoints(((cx, cy), (s, s), angles[i]))
            cv2.polylines(img8, [np.round(box).astype(np.int32)], True, col, thick[i], cv2.LINE_AA)


def _make_texture(rng: np.random.Generator, h: int, w: int, texel: float, style: str, detail: float = 1.0,
                  hue0: float = 0.0) -> np.ndarray:
    """A (h, w, 3) uint8 texture; feature sizes are set in metres through ``texel``."""
    h, w = max(int(h), 8), max(int(w), 8)
    area_m2 = h * w * texel * texel
    if style == "object":
        pal = _palette(rng, 6, "object", hue0)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        # plaid of two stripe families in the object's vivid palette
        a1 = rng.uniform(0, math.pi)
        p1 = rng.uniform(0.06, 0.12) / texel
        band = np.floor((xx * math.cos(a1) + yy * math.sin(a1)) / p1).astype(np.int64) % len(pal)
        a2 = a1 + rng.uniform(0.6, 1.2) * math.pi / 2
        p2 = rng.uniform(0.03, 0.06) / texel
        cross = ((xx * math.cos(a2) + yy * math.sin(a2)) / p2) % 1.0 < 0.35
        img = pal[band]
        img[cross] = img[cross] * 0.35 + 0.65 * pal[(band[cross] + 2) % len(pal)]
        img *= (0.8 + 0.4 * _fbm(rng, h, w, 0.15 / texel, 3))[..., None]
        img8 = to_u8(img)
        _spots(rng, img8, 0.012 / texel, 0.12, pal)
        for scale, dens in ((0.12, 0.3), (0.06, 0.25), (0.03, 0.12)):
            _draw_shapes(rng, img8, scale / texel, int(area_m2 * dens / (scale * scale)), pal)
    else:
        pal = _palette(rng, 7, style, hue0)
        idx = _to_index(_fbm(rng, h, w, rng.uniform(0.5, 0.9) / texel, 6))
        img8 = cv2.LUT(cv2.merge([idx, idx, idx]), _ramp_lut(pal, rng.uniform(2.0, 5.0)))
        shade = 0.55 + 0.9 * _fbm(rng, h, w, 0.08 / texel, 3)
        img8 = np.clip(img8 * shade[..., None], 0, 255).astype(np.uint8)
        pal2 = _palette(rng, 9, style, hue0)
        for radius_m, dens in ((0.035, 0.08 * detail), (0.015, 0.06 * detail)):
            _spots(rng, img8, radius_m / texel, dens, pal2)
        for scale, dens in ((0.45, 0.2), (0.22, 0.2 * detail), (0.11, 0.1 * detail)):
            _draw_shapes(rng, img8, scale / texel, int(area_m2 * dens / (scale * scale)), pal2)
    # a touch of blur so texels never alias into sharp 1-texel edges
    return cv2.GaussianBlur(img8, (0, 0), 0.7)


def _sample_texture(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup (wrapping) of uint8 texture at texel coordinates uv (k, 2) -> (k, 3) float32."""
    k = len(uv)
    if k == 0:
        return np.zeros((0, 3), np.float32)
    cols = 1024
    rows = -(-k // cols)
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    # texel i covers [i, i + 1): its centre is i + 0.5, which cv2.remap calls i
    mx[:k] = uv[:, 0] - 0.5
    my[:k] = uv[:, 1] - 0.5
    out = cv2.remap(tex, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return out.reshape(-1, 3)[:k].astype(np.float32) * (1.0 / 255.0)


