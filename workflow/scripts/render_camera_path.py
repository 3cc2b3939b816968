"""Rule render_camera_path: the final NeRF along a user's nerfstudio camera path
(innout.render.run_camera_path)."""
from pathlib import Path

from innout.config import config_from_params
from innout.render import run_camera_path
from innout.stage import limit_threads, stage

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
