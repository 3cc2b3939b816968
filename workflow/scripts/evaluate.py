"""Rule evaluate: SPIn-NeRF metrics of the final and the pre-trained NeRF (innout.evaluate)."""
from innout.gpulock import pin_job_gpu

# first, before anything imports torch: a GPU of this machine for this job (innout.gpulock)
pin_job_gpu(snakemake)

from pathlib import Path  # noqa: E402

from innout.config import config_from_params  # noqa: E402
from innout.evaluate import run_evaluate  # noqa: E402
from innout.stage import limit_threads, stage  # noqa: E402

if __name__ == "__main__":
    outputs = [Path(snakemake.output.metrics), Path(snakemake.output.comparison)]
    with stage("evaluate", snakemake.log[0], outputs=outputs) as log:
        limit_threads(snakemake.threads)
        run_evaluate(
            Path(snakemake.input.transforms),
            Path(snakemake.input.after),
            Path(snakemake.input.before),
            outputs[0],
            config_from_params(snakemake.params.method),
            log=log,
            comparison_png=outputs[1],
            upstream_summary=Path(snakemake.input.render),
        )
