"""What a rule's ``params`` hold of the method config, for the stages whose part is more
than their own section. Light on purpose (no torch): the Snakefile imports it while it
plans, and every job parses the Snakefile again."""

from __future__ import annotations

from typing import Any

from innout.config import stage_params

# The inpainting settings the candidates are made with (the inpaint stage's own, so the
# base view's fill and noise are those the aligned views will be denoised beside).
BASE_INPAINT_KEYS = ("steps", "guidance_scale", "resolution", "scheduler", "skip_identical_guidance")


def base_stage_params(cfg: Any) -> dict:
    """The config the base rule depends on: its section, the models section and the
    inpainting settings of :data:`BASE_INPAINT_KEYS` (not ILA / ELA / batching, so
    tuning those reruns only the inpaint stage)."""

    params = stage_params(cfg, "base", "models")
    params["inpaint"] = {key: cfg.inpaint[key] for key in BASE_INPAINT_KEYS}
    return params
