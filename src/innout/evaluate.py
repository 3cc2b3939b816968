"""Metrics of an object-removal result: the SPIn-NeRF evaluation protocol.

The test cameras of a SPIn-NeRF scene were photographed after the object was physically
removed. The NeRF renders each test camera; the render and the photo are compared
**inside the bounding box of that test view's mask** (``images_N/test_label/``), never
over the whole frame: :func:`mask_bbox` gives the box, :func:`crop` cuts it out, and every
metric sees only the two crops. :func:`evaluate_views` does this for a scene's test set.

Metrics (images are float arrays in [0, 1], ``HxW`` or ``HxWx3``; ``uint8`` is divided
by 255):

PSNR
    ``10 log10(1 / MSE)`` over every pixel and channel of the crop (peak 1.0); identical
    crops give ``inf``. The scene's PSNR is the mean of the per-view values.
SSIM
    Wang et al. (2004): an 11 x 11 Gaussian window with sigma 1.5 (normalised to sum 1),
    ``K1 = 0.01``, ``K2 = 0.03``, dynamic range ``L = 1``, local (population) variances,
    per RGB channel and averaged over the channels; the SSIM map is averaged over the
    positions where an ``s x s`` window lies inside the crop, ``s = 11`` or, for crops
    narrower than 11 px, the largest odd size that fits (down to 3 px; the Gaussian stays
    11-tap, reflected at the crop's border). This is exactly
    ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, win_size=s)``.
LPIPS, FID
    :mod:`innout.lpips_metric` and :mod:`innout.fid_metric` (their docstrings: the networks,
    the weights, the small-sample bias of FID).

MUSIQ, which some papers also report, is not computed here.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from innout.boxes import (  # noqa: F401  (the protocol's box: part of this API)
    Bbox,
    crop,
    mask_bbox,
    read_boxes,
    read_object_mask,
)
from innout.devices import stage_device
from innout.errors import InputError
from innout.fid_metric import FidMetric
from innout.frames import read_scene
from innout.image_metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, image_pair, psnr, ssim
from innout.lpips_metric import LPIPS_MIN_SIDE, LpipsMetric
from innout.provenance import (
    RANDOM_BACKBONE,
    metric_backbones,
    provenance_fields,
    summary_provenance,
    weakest,
    weights_provenance,
)
from innout.stage import write_text_atomic
from innout.viz import contact_sheet, weights_banner_html, with_banner, with_weights_banner

# --------------------------------------------------------------------------- constants


METRICS_COLUMNS = ("scene", "lpips", "fid", "psnr", "ssim",
                   "lpips_before", "fid_before", "psnr_before", "ssim_before", "weights", "lpips_backbone", "fid_backbone")
"""Columns of ``results/metrics.tsv`` (one row per scene, then the :data:`MEAN_ROW`).
``*_before``: the same metrics of the comparison run the workflow names "before" (e.g. the
NeRF before refinement); ``weights``: what made the renders (:mod:`innout.provenance`);
``lpips_backbone`` / ``fid_backbone``: what the two learned metrics ran on (``random``
offline)."""
METRIC_VALUE_COLUMNS = METRICS_COLUMNS[1:9]  # the numbers the mean row averages

MEAN_ROW = "mean"
"""The ``scene`` of the table's last row: per metric, the mean over the scenes that have it
(the paper reports the mean over its scenes); a scene sheet cannot use this name."""


# --------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- PSNR, SSIM


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- LPIPS


# --------------------------------------------------------------------------- FID


# --------------------------------------------------------------------------- a scene

def evaluate_views(renders: Mapping[str, np.ndarray], gts: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                   lpips: LpipsMetric | None, fid: FidMetric | None) -> dict:
    """Metrics of one scene's test views, each computed inside the bounding box of that
    view's mask (SPIn-NeRF protocol).

    ``renders``, ``gts``, ``masks``: by view name, the same names in all three; images
    ``HxWx3`` (float in [0, 1] or uint8), masks ``HxW`` (nonzero = object). ``lpips`` /
    ``fid`` may be None to skip that metric (its values are then None).

    Returns ``{"views": {name: {"lpips", "psnr", "ssim", "bbox": [y0, y1, x0, x1]}},
    "lpips", "psnr", "ssim"`` (means over views; one perfect view makes the PSNR mean
    ``inf``), ``"fid"`` (over the set of crops), ``"n_views", "metrics"`` (which networks,
    in words), ``"lpips_backbone", "fid_backbone", "metrics_note"``
    (:func:`innout.provenance.metric_backbones`: random backbones are named)}``."""
    names = sorted(gts)
    if set(renders) != set(names) or set(masks) != set(names):
        missing = {"renders": sorted(set(names) - set(renders)), "masks": sorted(set(names) - set(masks)),
                   "gts": sorted((set(renders) | set(masks)) - set(names))}
        raise ValueError("views differ between renders, gts and masks: "
                         + "; ".join(f"missing in {k}: {', '.join(v)}" for k, v in missing.items() if v))
    if not names:
        raise ValueError("no test views to evaluate")
    views: dict[str, dict] = {}
    pred_crops, gt_crops = [], []
    for name in names:
        render, gt, mask = np.asarray(renders[name]), np.asarray(gts[name]), np.asarray(masks[name])
        if render.shape != gt.shape:
            raise ValueError(f"{name}: render {render.shape} and ground truth {gt.shape} differ in shape")
        if mask.shape[:2] != gt.shape[:2]:
            raise ValueError(f"{name}: mask {mask.shape} does not match the image {gt.shape}")
        box = mask_bbox(mask, f"{name} mask")
        p, g = image_pair(crop(render, box), crop(gt, box))
        pred_crops.append(p)
        gt_crops.append(g)
        views[name] = {"lpips": lpips(p, g) if lpips is not None else None,
                       "psnr": psnr(p, g), "ssim": ssim(p, g), "bbox": list(box)}

    def mean(key: str) -> float | None:
        values = [v[key] for v in views.values()]
        return None if any(v is None for v in values) else float(np.mean(values))

    return {
        "views": views,
        "lpips": mean("lpips"),
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "fid": fid.score(pred_crops, gt_crops) if fid is not None else None,
        "n_views": len(names),
        **metric_backbones(lpips.backbone if lpips is not None else None, fid.backbone if fid is not None else None),
        "metrics": {"protocol": "SPIn-NeRF: inside the bounding box of each test view's mask",
                    "lpips": lpips.description if lpips is not None else None,
                    "fid": fid.description if fid is not None else None,
                    "ssim": f"Gaussian window {SSIM_WINDOW} sigma {SSIM_SIGMA}, K1 {SSIM_K1} K2 {SSIM_K2}, RGB mean",
                    "psnr": "peak 1.0, mean over views"},
    }


def metrics_from_config(models_cfg: Any, evaluate_cfg: Any = None, device: str = "cpu") -> tuple[LpipsMetric, FidMetric | None]:
    """The LPIPS and FID metrics of a method config's ``models`` and ``evaluate`` sections:
    LPIPS with ``eval_lpips_backbone`` (AlexNet for the real set, as the published
    numbers; the refine loss keeps ``lpips_backbone``); FID (None when ``evaluate.fid`` is
    false) with ``fid_backbone`` (``inception`` or ``random``). Both read ``cache_dir``."""

    def _get(cfg: Any, key: str, default: Any = None) -> Any:
        return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)

    cache_dir = _get(models_cfg, "cache_dir")
    lpips = LpipsMetric(str(_get(models_cfg, "eval_lpips_backbone", "alex")), cache_dir, device,
                        min_side=int(_get(evaluate_cfg, "lpips_min_side", LPIPS_MIN_SIDE)))
    fid = None
    if bool(_get(evaluate_cfg, "fid", True)):
        fid_backbone = str(_get(models_cfg, "fid_backbone", "inception"))
        if fid_backbone not in ("inception", RANDOM_BACKBONE):
            raise ValueError(f"fid backbone {fid_backbone!r} is not one of inception, {RANDOM_BACKBONE}")
        fid = FidMetric(fid_backbone == RANDOM_BACKBONE, cache_dir, device, batch_size=int(_get(evaluate_cfg, "fid_batch_size", 8)))
    return lpips, fid


# --------------------------------------------------------------------------- table

def scene_row(scene: str, result: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> dict:
    """One ``metrics.tsv`` row from :func:`evaluate_views` results (``before``: the same
    for the comparison run, or None)."""
    row: dict[str, Any] = {"scene": scene}
    for key in ("lpips", "fid", "psnr", "ssim"):
        row[key] = result.get(key)
        row[f"{key}_before"] = before.get(key) if before is not None else None
    row["weights"] = weakest(summary_provenance(result), summary_provenance(before) if before is not None else None)
    row["lpips_backbone"] = result.get("lpips_backbone")
    row["fid_backbone"] = result.get("fid_backbone")
    return row


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict:
    """The :data:`MEAN_ROW` of scene rows: each metric column's mean over the rows where it
    is a number (None / NaN are left out; an inf PSNR makes the mean inf), ``n_scenes``
    per metric, ``weights`` the weakest of the rows', each backbone the rows' common one
    (``mixed`` when they differ)."""
    row: dict[str, Any] = {"scene": MEAN_ROW}
    counts = {}
    for column in METRIC_VALUE_COLUMNS:
        values = [float(r[column]) for r in rows if r.get(column) is not None and not math.isnan(float(r[column]))]
        row[column] = float(np.mean(values)) if values else None
        counts[column] = len(values)
    row["weights"] = weakest(*(r.get("weights") for r in rows))
    for column in ("lpips_backbone", "fid_backbone"):
        names = {r.get(column) for r in rows} - {None}
        row[column] = names.pop() if len(names) == 1 else ("mixed" if names else None)
    row["n_scenes"] = counts
    return row


def _cell(value: Any) -> str:
    if value is None:
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "NA"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    text = str(value)
    if any(c in text for c in "\t\n\r"):
        raise ValueError(f"a metrics cell cannot hold tabs or newlines: {text!r}")
    return text


def metrics_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Tab-separated ``results/metrics.tsv`` text: a header of :data:`METRICS_COLUMNS`
    (then any further keys, in order of first appearance), one line per row. Missing
    values and None / NaN are ``NA``; floats have 6 significant digits; booleans are
    ``true`` / ``false``; the text ends with a newline."""
    rows = list(rows)
    columns = list(METRICS_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(c)) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def _table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The scene rows and their mean row, as the TSV and the page show them (the mean
    row's per-metric scene counts are the page's footnote, not a column)."""
    mean = mean_row(rows)
    return [dict(r) for r in rows] + [{k: v for k, v in mean.items() if k != "n_scenes"}]


# --------------------------------------------------------------------------- the stage

METRIC_KEYS = ("lpips", "psnr", "ssim", "fid")
BEFORE_WHAT = ("the pre-trained NeRF, trained without the masked pixels (no inpainting): what a NeRF shows where "
               "the object was when it never saw those pixels")


def _read_rgb(path: Path) -> np.ndarray:


    if not Path(path).is_file():
        raise InputError(path, "render not found")
    return np.asarray(Image.open(path).convert("RGB"))


def _scene_metrics(result: Mapping[str, Any]) -> dict:
    return {"lpips": result["lpips"], "psnr": result["psnr"], "ssim": result["ssim"], "fid": result["fid"],
            "per_view": result["views"], "n_views": result["n_views"]}


def _read_box_renders(folder: Path, boxes: Mapping[str, Bbox], what: str) -> dict[str, np.ndarray]:
    """The renders of each view's evaluation box (``folder/rgb/<view>.png``, as
    ``innout.render`` writes them), checked against the boxes the masks give now."""

    rendered = read_boxes(folder)
    out = {}
    for name, box in boxes.items():
        if tuple(rendered.get(name, ())) != tuple(box):
            raise InputError(Path(folder) / "boxes.json", f"{what}: view {name} was rendered at box {rendered.get(name)}, "
                                                          f"its mask's box is {list(box)}: render it again")
        image = _read_rgb(Path(folder) / "rgb" / f"{name}.png")
        if image.shape[:2] != (box[1] - box[0], box[3] - box[2]):
            raise InputError(Path(folder) / "rgb" / f"{name}.png", f"{what}: {image.shape[1]}x{image.shape[0]} px, "
                                                                   f"its box is {box[3] - box[2]}x{box[1] - box[0]}")
        out[name] = image
    return out


def run_evaluate(transforms: Path, renders_dir: Path, before_dir: Path, out_json: Path, cfg: Any, log: Any = None,
                 comparison_png: Path | None = None, upstream_summary: Path | None = None) -> dict:
    """The SPIn-NeRF metrics of a scene (module docstring) into ``out_json``.

    ``renders_dir``: the final NeRF's renders of the evaluation box of every ground-truth
    test view (the render stage's ``test/``: ``rgb/<view>.png`` and ``boxes.json``);
    ``before_dir``: the same for the comparison run, the pre-trained NeRF, trained
    without the masked pixels (``render_pretrain/test/``). Ground truth: the test views'
    photos, the box: each test view's object mask. Views with an empty mask have no box
    and are left out (listed in ``skipped_views``). A scene without ground-truth test
    views gets every metric None and a ``reason``.

    ``comparison_png``: also draw ground truth | before | after of a few test views, the
    renders in their box over the photo (the report's picture). ``upstream_summary``: a
    summary.json whose weights provenance carries over (the render stage's): the result's
    ``weights`` is the weakest of it and the model set's (:mod:`innout.provenance`)."""


    log = log or logging.getLogger("innout.evaluate")
    device, device_warning = stage_device(cfg, "evaluate")
    _, _, _, test = read_scene(Path(transforms))
    upstream = json.loads(Path(upstream_summary).read_text()) if upstream_summary and Path(upstream_summary).is_file() else {}
    provenance = provenance_fields(weakest(weights_provenance(cfg.models), summary_provenance(upstream)))
    photos, boxes, skipped = {}, {}, []
    for f in test:
        photo = _read_rgb(f.image)
        mask = read_object_mask(f.object_mask, f.name, photo.shape[:2])
        if not mask.any():
            log.warning("test view %s: empty mask, no box to evaluate in; left out", f.name)
            skipped.append(f.name)
            continue
        photos[f.name], boxes[f.name] = photo, mask_bbox(mask, f"{f.name} mask")
    after = _read_box_renders(Path(renders_dir), boxes, "final NeRF") if boxes else {}
    before = _read_box_renders(Path(before_dir), boxes, "pre-trained NeRF") if boxes else {}
    # the protocol compares inside each box only: the crops are what every metric sees
    gts = {name: crop(photos[name], box) for name, box in boxes.items()}
    masks = {name: np.ones(gt.shape[:2], bool) for name, gt in gts.items()}
    if not gts:
        reason = "the scene has no ground-truth test views" if not test else "every test view's mask is empty"
        log.info("evaluate: %s; metrics are null", reason)
        metrics = {**{k: None for k in METRIC_KEYS}, "per_view": {}, "n_views": 0, "reason": reason, **provenance,
                   "before": {**{k: None for k in METRIC_KEYS}, "per_view": {}, "n_views": 0}, "skipped_views": skipped}
    else:
        lpips, fid = metrics_from_config(cfg.models, cfg.evaluate, device)
        if fid is not None and len(gts) < 2:
            log.warning("FID needs at least 2 test views, the scene has %d: FID is null", len(gts))
            fid = None
        log.info("evaluate: %d test views; %s", len(gts), lpips.description)
        result_after = evaluate_views(after, gts, masks, lpips, fid)
        result_before = evaluate_views(before, gts, masks, lpips, fid)
        for result in (result_after, result_before):  # boxes in the full image, not in the crop
            for name, view in result["views"].items():
                view["bbox"] = list(boxes[name])
        metrics = {
            **_scene_metrics(result_after),
            "reason": None,
            **provenance,
            **{key: result_after[key] for key in ("lpips_backbone", "fid_backbone", "metrics_note")},
            "protocol": "SPIn-NeRF: renders of the ground-truth test cameras against the photos, inside the bounding box "
                        "of each test view's mask; LPIPS/PSNR/SSIM per view and their mean, FID over the scene's crops",
            "metrics": result_after["metrics"],
            "before": {**_scene_metrics(result_before), "what": BEFORE_WHAT},
            "skipped_views": skipped,
        }
        log.info("after: LPIPS %s PSNR %s SSIM %s FID %s | before: LPIPS %s PSNR %s SSIM %s FID %s",
                 *(_fmt(metrics[k]) for k in METRIC_KEYS), *(_fmt(metrics["before"][k]) for k in METRIC_KEYS))
    metrics["device"], metrics["device_warning"] = str(device), device_warning
    write_text_atomic(out_json, json.dumps(metrics, indent=1) + "\n")  # PSNR inf is written as Infinity
    if comparison_png is not None:
        comparison_sheet(photos, boxes, before, after, metrics, Path(comparison_png))
    return metrics


def _fmt(value: Any) -> str:
    return "NA" if value is None else f"{value:.4g}"


def comparison_sheet(photos: Mapping[str, np.ndarray], boxes: Mapping[str, Bbox], before: Mapping[str, np.ndarray],
                     after: Mapping[str, np.ndarray], metrics: Mapping[str, Any], out_png: Path, n_views: int = 6) -> None:
    """For up to ``n_views`` test views: the ground-truth photo, the NeRF without the
    masked pixels (the pre-trained one) and the final NeRF, each render shown inside its
    evaluation box (drawn in red) over the photo, which is all the renders hold and all
    the protocol scores; per-view PSNR/LPIPS in the captions; a banner with the weights'
    label (:func:`innout.provenance.banner_text`) and, under it, the note on random
    LPIPS/FID backbones. A picture saying so when there is nothing to compare."""


    names = sorted(photos)
    if len(names) > n_views:
        names = [names[i] for i in np.linspace(0, len(names) - 1, n_views).round().astype(int)]
    tiles = []
    for name in names:
        y0, y1, x0, x1 = boxes[name]
        for box_image, label, m in ((None, f"{name}: ground truth", None),
                                    (before[name], "NeRF w/o masked px", metrics["before"]["per_view"][name]),
                                    (after[name], "final NeRF", metrics["per_view"][name])):
            shown = np.array(photos[name], dtype=np.uint8)
            if box_image is not None:
                shown[y0:y1, x0:x1] = box_image
            picture = Image.fromarray(shown)
            ImageDraw.Draw(picture).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 40, 40))
            text = label if m is None else f"{label}: {m['psnr']:.1f} dB, LPIPS {_fmt(m['lpips'])}"
            tiles.append((np.asarray(picture), text))
    sheet = contact_sheet(tiles, columns=3, tile_width=240) if tiles else Image.new("RGB", (480, 60), "white")
    if not tiles:
        ImageDraw.Draw(sheet).text((8, 24), f"no comparison: {metrics.get('reason')}", fill="black")
    if metrics.get("metrics_note"):
        sheet = with_banner(sheet, metrics["metrics_note"], (90, 90, 90))
    sheet = with_weights_banner(sheet, metrics.get("weights"))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)


def metrics_html(rows: Sequence[Mapping[str, Any]], networks: Sequence[str] = ()) -> str:
    """The metrics table (:data:`METRICS_COLUMNS`) as a small HTML page for the report:
    the scene rows, then the mean row (bold) with how many scenes each mean covers, under a
    banner with the weakest weights' label and the note on random LPIPS/FID backbones when
    there are any; ``networks``: the LPIPS / FID networks the scenes were scored with (in
    words)."""


    columns = list(METRICS_COLUMNS)
    mean = mean_row(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def tr(row: Mapping[str, Any], attrs: str = "") -> str:
        return f"<tr{attrs}>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>"

    body = "".join(tr(row) for row in rows) + tr(mean, ' id="mean" style="font-weight:bold;border-top:2px solid #333"')
    counts = ", ".join(f"{c} {n}" for c, n in mean["n_scenes"].items() if not c.endswith("_before"))
    note = (f"<p><i>mean</i>: per metric, the mean over the scenes that have it, as the paper reports its table "
            f"(scenes counted: {html.escape(counts)} of {len(rows)}).</p>\n")
    banner = weights_banner_html(weakest(*(row.get("weights") for row in rows)))
    notes = {metric_backbones(row.get("lpips_backbone"), row.get("fid_backbone"))["metrics_note"] for row in rows} - {None}
    banner += "".join(f"<p><b>{html.escape(n)}</b></p>" for n in sorted(notes))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>metrics</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #999;padding:3px 8px;text-align:right}"
            "table{border-collapse:collapse}</style></head>\n<body>\n" + banner +
            "<p>SPIn-NeRF protocol: test renders against ground truth inside each test view's mask box. "
            "LPIPS and FID: lower is better; PSNR (dB) and SSIM: higher is better. <i>_before</i>: the pre-trained "
            "NeRF, trained without the masked pixels (no inpainting).</p>\n"
            + "".join(f"<p>{html.escape(n)}</p>\n" for n in networks) +
            f"<table id=\"metrics\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n{note}</body></html>\n")


def write_metrics_table(metrics_files: Mapping[str, Path], out_tsv: Path, out_html: Path | None = None) -> list[dict]:
    """``results/metrics.tsv`` (and its HTML page) from each scene's metrics.json: one row
    per scene, then the mean row (:func:`mean_row`). Returns the scene rows."""

    rows, networks = [], []
    for scene, path in metrics_files.items():
        m = json.loads(Path(path).read_text())
        rows.append(scene_row(scene, m, m.get("before")))
        for key in ("lpips", "fid"):
            described = (m.get("metrics") or {}).get(key)
            if described and described not in networks:
                networks.append(described)  # differing networks across scenes show up as two lines
    write_text_atomic(out_tsv, metrics_table(_table_rows(rows)))
    if out_html is not None:
        write_text_atomic(out_html, metrics_html(rows, networks))
    return rows
