"""Rule base: base-view selection (pHash vote), depth prior and the prior fit."""
from innout.gpulock import pin_job_gpu

# first, before anything imports torch: a GPU of this machine for this job (innout.gpulock)
pin_job_gpu(snakemake)

from pathlib import Path  # noqa: E402

from innout.base import run_base  # noqa: E402
from innout.config import config_from_params  # noqa: E402
from innout.stage import limit_threads, stage  # noqa: E402

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
