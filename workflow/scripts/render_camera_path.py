"""Rule render_camera_path: the final NeRF along a user's nerfstudio camera path
(innout.render.run_camera_path)."""
from innout.gpulock import pin_job_gpu

# first, before anything imports torch: a GPU of this machine for this job (innout.gpulock)
pin_job_gpu(snakemake)

from pathlib import Path  # noqa: E402

from innout.config import config_from_params  # noqa: E402
from innout.render import run_camera_path  # noqa: E402
from innout.stage import limit_threads, stage  # noqa: E402

if __name__ == "__main__":
    outputs = [Path(snakemake.output.video), Path(snakemake.output.video_page)]
    with stage("render_camera_path", snakemake.log[0], outputs=outputs) as log:
        limit_threads(snakemake.threads)
        run_camera_path(
            Path(snakemake.input.camera_path),
            Path(snakemake.input.nerf_config),
            outputs[0],
            outputs[1],
            config_from_params(snakemake.params.method),
            log=log,
            upstream_summary=Path(snakemake.input.refine),
        )
