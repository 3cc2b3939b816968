"""Rule metrics: results/metrics.tsv, one row per scene (and its page for the report)."""
from pathlib import Path

from innout.evaluate import write_metrics_table
from innout.stage import stage

if __name__ == "__main__":
    outputs = [Path(snakemake.output.table), Path(snakemake.output.page)]
    with stage("metrics", snakemake.log[0], outputs=outputs):
        write_metrics_table(
            dict(zip(snakemake.params.scenes, (Path(p) for p in snakemake.input))),
            outputs[0],
            outputs[1],
        )
