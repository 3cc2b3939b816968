"""Rule train_models: retrain the `procedural` model set (innout.training)."""
from pathlib import Path

from innout.stage import limit_threads, stage
from innout.training import TrainConfig, train_models

if __name__ == "__main__":
    manifest = Path(snakemake.output.manifest)
    with stage("train_models", snakemake.log[0], outputs=[manifest]) as log:
        limit_threads(snakemake.threads)
        cfg = TrainConfig(seed=int(snakemake.params.seed), threads=int(snakemake.threads))
        train_models(manifest.parent, cfg, snakemake.params.work_dir, log_file=snakemake.log[0],
                     command=f"snakemake --cores {snakemake.threads} train_models (seed {cfg.seed})")
