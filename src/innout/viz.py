"""Pictures for the report: contact sheets of views with their masks, and the banner every
figure made with models carries (what the weights are: :mod:`innout.provenance`)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from innout.provenance import BANNER_COLOURS, banner_text

OBJECT_RED = np.array([255, 40, 40], dtype=np.float32)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 with the mask (bool) tinted red."""
    out = rgb.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * OBJECT_RED
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
        for name in _pick(sorted(frames), count):
            frame = frames[name]
            rgb = np.asarray(Image.open(scene_dir / frame["file_path"]).convert("RGB"))
            mask = np.asarray(Image.open(scene_dir / frame["innout_object_mask"]).convert("L")) > 127
            shown = overlay_mask(rgb, mask) if split == "train" else outline_mask(rgb, mask)
            tiles.append((shown, f"{split}: {name}"))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(tiles).save(out_png)


def with_banner(image: Image.Image, text: str, colour: tuple[int, int, int] = BANNER_COLOURS["random"]) -> Image.Image:
    """The image with a strip of ``colour`` carrying ``text`` (white) on top."""
    strip = 22
    out = Image.new("RGB", (image.width, image.height + strip), colour)
    out.paste(image, (0, strip))
    ImageDraw.Draw(out).text((6, 5), text, fill="white")
    return out


def with_weights_banner(image: Image.Image, provenance: Optional[str], model_set: str = "") -> Image.Image:
    """The image under the label of the weights that made it (a red warning for random
    weights, a blue label for procedural ones; unchanged for pretrained weights)."""
    text = banner_text(provenance, model_set) if provenance else None
    return with_banner(image, text, BANNER_COLOURS[provenance]) if text else image


def weights_banner_html(provenance: Optional[str], model_set: str = "") -> str:
    """The same banner as an HTML paragraph ("" for pretrained weights)."""
    text = banner_text(provenance, model_set) if provenance else None
    if not text:
        return ""
    colour = "#%02x%02x%02x" % BANNER_COLOURS[provenance]
    return f'<p style="background:{colour};color:#fff;padding:6px 10px;font-weight:bold">{html.escape(text)}</p>'
