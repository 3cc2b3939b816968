"""Which weights made an output, and the label every output made with them carries.

A model set (``src/innout/conf/model/*.yaml``, :class:`innout.config.ModelsConfig`) says
what its weights are in its ``provenance`` key:

``pretrained``
    Published weights (``sd2``: Stable Diffusion 2 inpainting, Depth Anything). No label.
``procedural``
    Models of the same classes trained by this project on its own procedural scenes
    (``procedural``). Every output carries :data:`PROCEDURAL_LABEL`.
``random``
    Randomly initialised models of the same classes (``tiny``, ``sd2-random``). Every
    output carries :data:`RANDOM_WEIGHTS_WARNING`.

A stage's provenance is the weakest of its model set's and its inputs' (a NeRF refined on
random-weight inpaintings is a random-weight result whatever model set renders it), in
the order of :data:`PROVENANCES`. Summaries hold it as :func:`provenance_fields`:
``weights``, ``weights_label`` and ``warning`` (the random-weights warning, else null).

The metric networks are another matter: LPIPS and FID need an ImageNet VGG and an
Inception that cannot be fetched offline, so offline model sets run them on random
backbones (``lpips_backbone: random``, ``fid_backbone: random``). That makes those two
metrics, and only them, incomparable with published numbers: results say so by name
(:func:`metric_backbones`), not by labelling the whole result random.

No torch here: the workflow imports this module while it parses the Snakefile.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

RANDOM, PROCEDURAL, PRETRAINED = "random", "procedural", "pretrained"
PROVENANCES = (RANDOM, PROCEDURAL, PRETRAINED)
"""Weakest first: an output made from several sources has the weakest one's provenance."""

RANDOM_PRESETS = ("tiny", "sd2-random")
"""Inpainter / depth specs built from configs with random weights, whatever a set claims."""

RANDOM_WEIGHTS_WARNING = "made with RANDOM weights: not a result"
PROCEDURAL_LABEL = "trained on procedural scenes only, not Stable Diffusion"
WEIGHTS_LABELS = {RANDOM: RANDOM_WEIGHTS_WARNING, PROCEDURAL: PROCEDURAL_LABEL, PRETRAINED: None}

RANDOM_BACKBONE = "random"
METRIC_BACKBONES_NOTE = "LPIPS/FID on random backbones: not comparable with published numbers"

# banner colours of figures (RGB): a red warning for random weights, a blue label otherwise
BANNER_COLOURS = {RANDOM: (176, 0, 32), PROCEDURAL: (24, 70, 140)}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    try:
        return cfg.get(key, default)  # OmegaConf DictConfig
    except AttributeError:
        return getattr(cfg, key, default)


def weights_provenance(models_cfg: Any) -> str:
    """``random``, ``procedural`` or ``pretrained``: what the model set's weights are.

    A random preset as inpainter or depth model makes the set random whatever its
    ``provenance`` key says; otherwise the key decides (``pretrained`` when absent).
    An unknown value is a ``ValueError`` (a typo must not pass for real weights)."""
    specs = (str(_get(models_cfg, "inpainter", "")), str(_get(models_cfg, "depth", "")))
    if any(spec in RANDOM_PRESETS for spec in specs):
        return RANDOM
    declared = _get(models_cfg, "provenance", None) or PRETRAINED
    if declared not in PROVENANCES:
        raise ValueError(f"models.provenance must be one of {', '.join(PROVENANCES)}, got {declared!r}")
    return str(declared)


def weakest(*provenances: Optional[str]) -> str:
    """The weakest of several provenances (None entries are ignored; none at all: pretrained)."""
    known = [p for p in provenances if p is not None]
    for p in known:
        if p not in PROVENANCES:
            raise ValueError(f"unknown weights provenance {p!r} ({', '.join(PROVENANCES)})")
    return min(known, key=PROVENANCES.index) if known else PRETRAINED


def weights_label(provenance: str) -> Optional[str]:
    """The text every output of this provenance carries (None for pretrained weights)."""
    return WEIGHTS_LABELS[weakest(provenance)]


def summary_provenance(summary: Mapping[str, Any]) -> Optional[str]:
    """The provenance an upstream summary (or manifest) records: its ``weights`` key;
    a ``random_weights: true`` of summaries written before provenance existed counts as
    random; None when it says neither."""
    if not isinstance(summary, Mapping):
        return None
    if summary.get("weights") in PROVENANCES:
        return str(summary["weights"])
    if summary.get("random_weights"):
        return RANDOM
    return None


def provenance_fields(provenance: str) -> dict:
    """The keys every summary made with models carries: ``weights`` (the provenance),
    ``weights_label`` (:func:`weights_label`) and ``warning`` (the random-weights
    warning for random weights, else None)."""
    provenance = weakest(provenance)
    return {"weights": provenance, "weights_label": weights_label(provenance),
            "warning": RANDOM_WEIGHTS_WARNING if provenance == RANDOM else None}


def banner_text(provenance: str, model_set: str = "") -> Optional[str]:
    """The line a figure made with these weights carries on top (None: no banner)."""
    label = weights_label(provenance)
    if label is None:
        return None
    named = f"model set {model_set}: " if model_set else ""
    return f"WARNING: {named}{label}" if provenance == RANDOM else f"{named}{label}"


def metric_backbones(lpips_backbone: str, fid_backbone: Optional[str]) -> dict:
    """What the LPIPS and FID numbers were computed with, by name: ``lpips_backbone``,
    ``fid_backbone`` (None when FID was not computed) and ``metrics_note``
    (:data:`METRIC_BACKBONES_NOTE` when either is random, else None)."""
    random_backbone = RANDOM_BACKBONE in (lpips_backbone, fid_backbone)
    return {"lpips_backbone": lpips_backbone, "fid_backbone": fid_backbone,
            "metrics_note": METRIC_BACKBONES_NOTE if random_backbone else None}


def report_weights(models_cfg: Any) -> dict:
    """What the report's captions say about a model set (rules pass it as
    ``params.weights``): ``provenance``, ``label``, ``banner`` (:func:`banner_text`) and
    ``metrics_note`` (the LPIPS/FID note when a metric backbone is random)."""
    provenance = weights_provenance(models_cfg)
    return {
        "provenance": provenance,
        "label": weights_label(provenance),
        "banner": banner_text(provenance, str(_get(models_cfg, "name", ""))),
        "metrics_note": metric_backbones(str(_get(models_cfg, "lpips_backbone", "vgg")),
                                         str(_get(models_cfg, "fid_backbone", "inception")))["metrics_note"],
    }
