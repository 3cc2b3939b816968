"""Rule models: every weight the workflow needs, into the local models cache."""
from pathlib import Path

from innout.config import config_from_params
from innout.models import fetch_models
from innout.stage import limit_threads, stage

if __name__ == "__main__":
    manifest = Path(snakemake.output.manifest)
    with stage("models", snakemake.log[0], outputs=[manifest]) as log:
        limit_threads(snakemake.threads)
        cfg = config_from_params(snakemake.params.method)
        fetch_models(cfg.models, manifest.parent, device=cfg.device)
