"""Rule pretrain: masked nerfacto geometry pre-training (nerfstudio)."""
from pathlib import Path

from innout.config import config_from_params
from innout.pretrain import run_pretrain
from innout.stage import limit_threads, stage

if __name__ == "__main__":  # nerfstudio's datamanagers may spawn processes
    out_dir = Path(snakemake.output.summary).parent
    with stage("pretrain", snakemake.log[0], outputs=[out_dir]) as log:
        limit_threads(snakemake.threads)
        run_pretrain(
            Path(snakemake.input.transforms),
            out_dir,
            Path(snakemake.params.work_dir),
            config_from_params(snakemake.params.method),
            log=log,
        )
