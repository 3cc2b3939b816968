"""Rule base: base-view selection (pHash vote), depth prior and the prior fit."""
from pathlib import Path

from innout.base import run_base
from innout.config import config_from_params
from innout.stage import limit_threads, stage

if __name__ == "__main__":  # nerfstudio's datamanagers may spawn processes
    out_dir = Path(snakemake.output.summary).parent
    with stage("base", snakemake.log[0], outputs=[out_dir]) as log:
        limit_threads(snakemake.threads)
        run_base(
            Path(snakemake.input.transforms),
            Path(snakemake.input.nerf_config),
            Path(snakemake.input.models),
            out_dir,
            Path(snakemake.params.work_dir),
            config_from_params(snakemake.params.method),
            prompt=snakemake.params.prompt,
            log=log,
        )
