# Every model weight the workflow needs, listed in one manifest (models.cache_dir,
# default resources/models) that later rules read offline: they take the manifest as
# input and never download. The real set (`model: sd2`) fetches the inpainter and the
# depth model into the user's Hugging Face hub cache (HF_HOME; nothing it already holds,
# nothing at all with HF_HUB_OFFLINE=1; fp16 files for fp16 runs) and the LPIPS trunks
# (VGG: refine loss, AlexNet: evaluation) and the FID Inception into the cache folder;
# the offline sets (`tiny`, `sd2-random`) download nothing and build their random-weight
# models locally.
#
# localrule: on a cluster this job runs on the submitting node, not on a compute node:
# compute nodes usually have no internet, the submit node has (and the download is
# network-bound, not compute-bound). Run it once on a machine with internet before
# going offline: `snakemake --cores 1 resources/models/manifest.json`.
rule models:
    output:
        manifest=report(
            MODELS_MANIFEST,
            caption="../workflow/report/models.rst",
            category="models",
        ),
    log:
        "logs/models.log",
    benchmark:
        "benchmarks/models.tsv"
    localrule: True
    conda:
        "../envs/innout.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
    params:
        method=stage_params(METHOD, "models"),
        weights=WEIGHTS,
    script:
        "../workflow/scripts/models.py"
