"""Rule scene: import the scene into the canonical form and draw its overview."""
from pathlib import Path

from innout.scene import import_scene
from innout.stage import limit_threads, stage
from innout.viz import scene_overview

out_dir = Path(snakemake.output.summary).parent
with stage("scene", snakemake.log[0], outputs=[out_dir]) as log:
    limit_threads(snakemake.threads)
    options = dict(snakemake.params.options)
    import_scene(
        Path(snakemake.input.source),
        snakemake.params.format,
        out_dir,
        downscale=options["downscale"],
        max_width=options.get("max_width"),
        mask_dilation_iterations=options["mask_dilation_iterations"],
        mask_dilation_kernel=options["mask_dilation_kernel"],
        spinnerf_n_test=options["spinnerf_n_test"],
        poses=snakemake.params.poses,
        masks=options.get("masks", "all"),
        log=log,
    )
    scene_overview(out_dir, Path(snakemake.output.overview))
