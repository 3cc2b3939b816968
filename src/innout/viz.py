"""Pictures for the report: contact sheets of views with their masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OBJECT_RED = np.array([255, 40, 40], dtype=np.float32)
MISSED_GREEN = np.array([40, 220, 40], dtype=np.float32)
EXTRA_BLUE = np.array([40, 90, 255], dtype=np.float32)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 with the mask (bool) tinted red."""
    out = rgb.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * OBJECT_RED
    return out.clip(0, 255).astype(np.uint8)


def overlay_comparison(rgb: np.ndarray, mask: np.ndarray, reference: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 with ``mask`` & ``reference`` red, reference only (missed) green, mask only
    (extra) blue."""
    out = rgb.astype(np.float32).copy()
    for region, colour in ((mask & reference, OBJECT_RED), (reference & ~mask, MISSED_GREEN), (mask & ~reference, EXTRA_BLUE)):
        out[region] = (1 - alpha) * out[region] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def outline_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB uint8 with the mask's border drawn in red (evaluation regions)."""
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    out = rgb.copy()
    out[mask & ~inner] = OBJECT_RED.astype(np.uint8)
    return out


def contact_sheet(tiles: list[tuple[np.ndarray, str]], columns: int = 6, tile_width: int = 200) -> Image.Image:
    """Tiles (uint8 RGB, caption) in a grid with captions under each."""
    if not tiles:
        return Image.new("RGB", (tile_width, 40), "white")
    h0, w0 = tiles[0][0].shape[:2]
    tile_height = max(1, round(tile_width * h0 / w0))
    caption = 14
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile_width, rows * (tile_height + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(tiles):
        x, y = (i % columns) * tile_width, (i // columns) * (tile_height + caption)
        sheet.paste(Image.fromarray(img).resize((tile_width, tile_height), Image.BILINEAR), (x, y))
        draw.text((x + 3, y + tile_height), text, fill="black")
    return sheet


def _pick(names: list[str], count: int) -> list[str]:
    if len(names) <= count:
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


def scene_overview(scene_dir: Path, out_png: Path, n_train: int = 12, n_test: int = 6) -> None:
    """Train views with their object masks, and ground-truth test views with their regions."""
    meta = json.loads((scene_dir / "transforms.json").read_text())
    by_split: dict[str, list[dict]] = {"train": [], "test": []}
    for frame in meta["frames"]:
        by_split[frame.get("innout_split", "train")].append(frame)
    tiles = []
    for split, count in (("train", n_train), ("test", n_test)):
        frames = {Path(f["file_path"]).stem: f for f in by_split[split]}
        # scenes that give some masks only: the annotated views first, then views without one
        annotated = sorted(n for n, f in frames.items() if f.get("innout_annotation"))
        others = [n for n in sorted(frames) if n not in annotated]
        for name in annotated + _pick(others, max(0, count - len(annotated))):
            frame = frames[name]
            rgb = np.asarray(Image.open(scene_dir / frame["file_path"]).convert("RGB"))
            mask_file = frame.get("innout_object_mask") or frame.get("innout_annotation")
            if mask_file is None:
                tiles.append((rgb, f"{split}: {name} (mask to make)"))
                continue
            mask = np.asarray(Image.open(scene_dir / mask_file).convert("L")) > 127
            shown = overlay_mask(rgb, mask) if split == "train" else outline_mask(rgb, mask)
            tiles.append((shown, f"{split}: {name}" + (" (annotated)" if name in annotated else "")))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(tiles).save(out_png)


def masks_overview(images: dict[str, Path], masks: dict[str, np.ndarray], references: dict[str, np.ndarray],
                   annotated: list[str], out_png: Path, n_views: int = 16) -> None:
    """The masks stage's picture: the annotated views, then propagated ones (red = mask;
    where a reference mask exists, green = missed, blue = extra, and the IoU)."""
    tiles = []
    others = [n for n in sorted(masks) if n not in annotated]
    for name in list(annotated) + _pick(others, max(0, n_views - len(annotated))):
        rgb = np.asarray(Image.open(images[name]).convert("RGB"))
        mask = masks[name]
        if name in annotated:
            tiles.append((overlay_mask(rgb, mask), f"{name}: annotated"))
        elif name in references:
            ref = references[name]
            union = np.logical_or(mask, ref).sum()
            score = np.logical_and(mask, ref).sum() / union if union else 1.0
            tiles.append((overlay_comparison(rgb, mask, ref), f"{name}: IoU {score:.2f}"))
        else:
            tiles.append((overlay_mask(rgb, mask), f"{name}: propagated"))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(tiles).save(out_png)
