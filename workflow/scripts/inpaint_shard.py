"""Rule inpaint_shard: ELA + ILA inpainting of one shard of the train views."""
from innout.gpulock import pin_job_gpu

# first, before anything imports torch: a GPU of this machine for this job (innout.gpulock)
pin_job_gpu(snakemake)

from pathlib import Path  # noqa: E402

from innout.config import config_from_params  # noqa: E402
from innout.inpaint import run_inpaint_shard  # noqa: E402
from innout.stage import limit_threads, stage  # noqa: E402

if __name__ == "__main__":
    out_dir = Path(snakemake.output.shard)
    with stage(f"inpaint shard {snakemake.wildcards.shard}", snakemake.log[0], outputs=[out_dir]) as log:
        limit_threads(snakemake.threads)
        run_inpaint_shard(
            Path(snakemake.input.transforms),
            Path(snakemake.input.base).parent,
            out_dir,
            config_from_params(snakemake.params.method),
            int(snakemake.wildcards.shard),
            int(snakemake.params.shards),
            manifest=Path(snakemake.input.models),
            log=log,
        )
