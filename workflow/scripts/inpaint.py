"""Rule inpaint: gather the shards, score multi-view consistency, write the summary."""
from pathlib import Path

from innout.config import config_from_params
from innout.inpaint import gather_inpaint
from innout.stage import limit_threads, stage

if __name__ == "__main__":
    out_dir = Path(snakemake.output.summary).parent
    with stage("inpaint", snakemake.log[0], outputs=[out_dir]) as log:
        limit_threads(snakemake.threads)
        gather_inpaint(
            Path(snakemake.input.transforms),
            Path(snakemake.input.base).parent,
            [Path(p) for p in snakemake.input.shards],
            out_dir,
            config_from_params(snakemake.params.method),
            log=log,
        )
