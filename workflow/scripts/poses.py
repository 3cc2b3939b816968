"""Rule poses: COLMAP structure-from-motion (pycolmap) on the scene's views."""
from pathlib import Path

from innout.config import config_from_params, write_resolved
from innout.poses import estimate_poses
from innout.stage import limit_threads, stage

out_dir = Path(snakemake.output.summary).parent
with stage("poses", snakemake.log[0], outputs=[out_dir]) as log:
    limit_threads(snakemake.threads)
    cfg = config_from_params(snakemake.params.method)
    estimate_poses(
        Path(snakemake.input.transforms).parent,
        out_dir,
        max_num_features=cfg.poses.max_num_features,
        max_image_size=cfg.poses.max_image_size,
        matcher=cfg.poses.matcher,
        min_registered_fraction=cfg.poses.min_registered_fraction,
        sequential_overlap=cfg.poses.sequential_overlap,
        camera_model=cfg.poses.camera_model,
        deterministic=cfg.poses.deterministic,
        num_threads=snakemake.threads,
        seed=cfg.seed,
        log=log,
    )
    write_resolved(cfg, out_dir / "config.yaml")
