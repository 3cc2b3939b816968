"""Pictures for the report: contact sheets of views with their masks, the train views
before and after the removal, training curves, and the banner every figure made with
models carries (what the weights are: :mod:`innout.provenance`)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

from innout.provenance import BANNER_COLOURS, banner_text

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


def with_banner(image: Image.Image, text: str, colour: tuple[int, int, int] = BANNER_COLOURS["random"]) -> Image.Image:
    """The image with a strip of ``colour`` carrying ``text`` (white) on top."""
    strip = 22
    out = Image.new("RGB", (image.width, image.height + strip), colour)
    out.paste(image, (0, strip))
    ImageDraw.Draw(out).text((6, 5), text, fill="white")
    return out


def _read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _placeholder(shape: tuple[int, int], text: str) -> np.ndarray:
    tile = Image.new("RGB", (shape[1], shape[0]), (230, 230, 230))
    ImageDraw.Draw(tile).text((6, shape[0] // 2 - 6), text, fill="black")
    return np.asarray(tile)


def train_view_sheet(frames: list, renders: Path, inpainted: Path | None, base_view: str | None,
                     weights: Optional[str] = None, model_set: str = "", tile_width: int = 240) -> Image.Image:
    """One row per train view (``innout.frames.Frame``): the input photo with the
    object's mask outlined in red, its aligned inpainting (``inpainted/<view>.png``; a
    grey tile when there is none) and the final NeRF's render (``renders/<view>.png``).
    Captions name the view and mark the base view; the banner of ``weights`` (the
    provenance of what made the inpaintings, :func:`with_weights_banner`) goes on top."""
    tiles = []
    for f in frames:
        photo = _read_rgb(f.image)
        mask = np.zeros(photo.shape[:2], bool)
        if f.object_mask is not None and Path(f.object_mask).is_file():
            m = np.asarray(Image.open(f.object_mask).convert("L"))
            if m.shape == mask.shape:
                mask = m > 127
        tag = " (base view)" if f.name == base_view else ""
        tiles.append((outline_mask(photo, mask), f"{f.name}{tag}: input, object outlined"))
        fill = Path(inpainted) / f"{f.name}.png" if inpainted is not None else None
        if fill is not None and fill.is_file():
            tiles.append((_read_rgb(fill), "aligned inpainting" + (" (RANDOM weights)" if weights == "random" else "")))
        else:
            tiles.append((_placeholder(photo.shape[:2], "no inpainting"), "aligned inpainting: none"))
        tiles.append((_read_rgb(Path(renders) / f"{f.name}.png"), "final NeRF render (object removed)"))
    sheet = contact_sheet(tiles, columns=3, tile_width=tile_width)
    return with_weights_banner(sheet, weights, model_set)


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


def plot_curves(history: list[dict], panels: dict[str, list[str]], out_png: Path, title: str) -> None:
    """Training curves: one panel per entry of ``panels`` (panel title -> scalar names of
    ``history``, a list of ``{"step": s, name: value, ...}``), losses on a log scale when
    positive; a panel without data says so."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels.items()):
        drawn = False
        for key in keys:
            points = [(h["step"], h[key]) for h in history if key in h and h[key] is not None and np.isfinite(h[key])]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=key.split("/")[-1], linewidth=1.2)
                drawn = True
        if drawn:
            if "loss" in name.lower() and all(h.get(k, 1.0) > 0 for h in history for k in keys if k in h):
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def pose_plot(estimated: dict[str, list], reference: dict[str, list] | None, unregistered: list[str], caption: str,
              out_png: Path) -> None:
    """Camera centres seen along the capture's least-spread axis: the estimated ones (by
    view name, already aligned to the reference when there is one) as dots, reference
    ones as rings joined to their estimate, unregistered views listed; ``caption`` (the
    registration and error figures) as the title."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = np.array(list(estimated.values()) + list((reference or {}).values()), dtype=float).reshape(-1, 3)
    centre = points.mean(axis=0) if len(points) else np.zeros(3)
    axes = np.linalg.svd(points - centre, full_matrices=False)[2][:2] if len(points) >= 2 else np.eye(3)[:2]

    def flat(centres: dict[str, list]) -> dict[str, np.ndarray]:
        return {n: (np.asarray(c, float) - centre) @ axes.T for n, c in centres.items()}

    est2 = flat(estimated)
    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    if reference:
        ref2 = flat(reference)
        for name, r in ref2.items():
            if name in est2:
                ax.plot([r[0], est2[name][0]], [r[1], est2[name][1]], color="#d62728", linewidth=0.8)
        ax.scatter(*np.array(list(ref2.values())).T, s=36, facecolors="none", edgecolors="#555555", label="reference")
    if est2:
        ax.scatter(*np.array(list(est2.values())).T, s=10, color="#1f77b4", label="COLMAP" + (" (aligned)" if reference else ""))
    if unregistered:
        shown = ", ".join(unregistered[:8]) + (" ..." if len(unregistered) > 8 else "")
        ax.text(0.01, 0.01, f"not registered ({len(unregistered)}): {shown}", transform=ax.transAxes, fontsize=7, color="#d62728")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(caption, fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
