"""Rule refine: stage 5, the NeRF refined with the patch loss (innout.refine)."""
from pathlib import Path

from innout.config import config_from_params
from innout.refine import run_refine
from innout.stage import limit_threads, stage

if __name__ == "__main__":
    out_dir = Path(snakemake.output.summary).parent
    with stage("refine", snakemake.log[0], outputs=[out_dir]) as log:
        limit_threads(snakemake.threads)
        run_refine(
            Path(snakemake.input.transforms),
            Path(snakemake.input.base).parent,
            Path(snakemake.input.inpaint).parent,
            out_dir,
            Path(snakemake.params.work_dir),
            config_from_params(snakemake.params.method),
            log=log,
        )
