"""Rule masks: every view's object mask from the annotated ones (innout.masks)."""
from pathlib import Path

from innout.config import config_from_params, write_resolved
from innout.masks import run_masks
from innout.stage import limit_threads, stage

if __name__ == "__main__":  # nerfstudio's datamanagers may spawn processes
    out_dir = Path(snakemake.output.summary).parent
    with stage("masks", snakemake.log[0], outputs=[out_dir]) as log:
        limit_threads(snakemake.threads)
        cfg = config_from_params(snakemake.params.method)
        run_masks(
            Path(snakemake.input.transforms),
            Path(snakemake.input.scene),
            out_dir,
            Path(snakemake.params.work_dir),
            cfg,
            log=log,
        )
        write_resolved(cfg, out_dir / "config.yaml")
