"""Rule generate: a procedural scene with ground truth, in the SPIn-NeRF layout."""
from pathlib import Path

from innout.procedural import write_spinnerf_scene
from innout.stage import stage

out_dir = Path(snakemake.output[0])
with stage("generate", snakemake.log[0], outputs=[out_dir]) as log:
    spec = dict(snakemake.params.spec)
    log.info("generating %s with %s", out_dir, spec)
    write_spinnerf_scene(out_dir, **{key: (tuple(v) if key == "downscales" else v) for key, v in spec.items()})
