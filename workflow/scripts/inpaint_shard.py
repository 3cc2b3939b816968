"""Rule inpaint_shard: ELA + ILA inpainting of one shard of the train views."""
from pathlib import Path

from innout.config import config_from_params
from innout.inpaint import run_inpaint_shard
from innout.stage import limit_threads, stage

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
