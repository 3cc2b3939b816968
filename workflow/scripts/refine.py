"""Rule refine: stage 5, the NeRF refined with the patch loss (innout.refine)."""
from innout.gpulock import pin_job_gpu

# first, before anything imports torch: a GPU of this machine for this job (innout.gpulock)
pin_job_gpu(snakemake)

from pathlib import Path  # noqa: E402

from innout.config import config_from_params  # noqa: E402
from innout.refine import run_refine  # noqa: E402
from innout.stage import limit_threads, stage  # noqa: E402

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
