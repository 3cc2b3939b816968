"""Stage 2: geometry pre-training (nerfacto on the unmasked pixels of the train views).

:func:`run_pretrain` trains the ``innout-nerfacto`` nerfstudio method on a canonical scene
(``results/{scene}/scene/transforms.json``, relative paths) or its COLMAP-posed copy
(``results/{scene}/poses/transforms.json``, absolute paths) and writes::

    out_dir/
      innout-nerfacto/            a nerfstudio run folder (innout.nerf: paths relative)
        config.yml                ns-viewer --load-config out_dir/innout-nerfacto/config.yml
        nerfstudio_models/step-NNNNNNNNN.ckpt   the final checkpoint
        dataparser_transforms.json              scene frame -> nerfstudio frame
        transforms.json           the training data as nerfstudio reads it (paths relative to it)
        innout_nerf.json          what the renderer needs besides the checkpoint
      curves.png                  loss, batch PSNR and learning rates over the steps
      tensorboard/                the same as TensorBoard scalars (pretrain.tensorboard)
      summary.json                iterations, seconds, rays_per_second, PSNR/SSIM estimates ...
      config.yaml                 the resolved method config

Nothing is rendered in full here: later stages render what they read (rule
render_pretrain: the test views' evaluation boxes); the quality figures of the summary
come from a few random patches per view (:func:`innout.patch_quality.patch_quality`).

Training (checkpoints, resume, determinism) is :func:`innout.nerf_training.train_nerf`;
this stage adds the quality estimate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

from innout.nerf_training import NS_DIR, train_nerf
from innout.patch_quality import patch_quality

__all__ = ["NS_DIR", "run_pretrain"]


def run_pretrain(transforms: Path, out_dir: Path, work_dir: Path, cfg: Any, log: Optional[logging.Logger] = None, *,
                 on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Train the geometry NeRF and write ``out_dir`` (see the module docstring), with the
    PSNR/SSIM estimate from ``pretrain.eval_patches_per_view`` random patches per view.

    ``cfg``: the resolved method config (``cfg.pretrain``, ``cfg.seed``, ``cfg.device``).
    ``on_step(step)`` is called after every completed iteration (and after that
    iteration's checkpoint, if any): tests interrupt training from it.
    Returns the summary dict (also ``out_dir/summary.json``).
    """
    log = log or logging.getLogger("innout.pretrain")
    per_view, size, seed = int(cfg.pretrain.eval_patches_per_view), int(cfg.pretrain.eval_patch_size), int(cfg.seed)

    def quality(renderer: Any, train: list, test: list) -> dict:
        return patch_quality(renderer, train, test, per_view, size, seed, log)

    return train_nerf(Path(transforms), Path(out_dir), Path(work_dir), cfg, log, on_step=on_step, quality=quality)
