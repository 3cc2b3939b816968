"""Rule render_pretrain: the pre-trained NeRF at the test views' evaluation boxes (the
"before" of the metrics; innout.render.run_render_pretrain)."""
from innout.gpulock import pin_job_gpu

# first, before anything imports torch: a GPU of this machine for this job (innout.gpulock)
pin_job_gpu(snakemake)

from pathlib import Path  # noqa: E402

from innout.config import config_from_params  # noqa: E402
from innout.render import run_render_pretrain  # noqa: E402
from innout.stage import limit_threads, stage  # noqa: E402

if __name__ == "__main__":
    out_dir = Path(snakemake.output.summary).parent
    with stage("render_pretrain", snakemake.log[0], outputs=[out_dir]) as log:
        limit_threads(snakemake.threads)
        run_render_pretrain(
            Path(snakemake.input.transforms),
            Path(snakemake.input.nerf_config),
            out_dir,
            config_from_params(snakemake.params.method),
            log=log,
        )
