# Stage 4: aligned multi-view inpainting (ELA + ILA), split into `inpaint_shards` jobs of
# whole denoising batches, then gathered (innout.inpaint). Shard folders are temporary:
# the gathered results/{scene}/inpaint/ holds everything, byte-identical to an unsharded run.

INPAINT_SHARDS = int(config.get("inpaint_shards", 1))


rule inpaint_shard:
    input:
        transforms=get_posed_transforms,
        base="results/{scene}/base/summary.json",
        # every file of base/ the stage reads (the script reads them from the summary's folder)
        base_image="results/{scene}/base/base.png",
        base_mask="results/{scene}/base/mask.png",
        base_noise="results/{scene}/base/noise.pt",
        base_nerf="results/{scene}/base/nerf",
        models=MODELS_MANIFEST,
    output:
        # not a result: the gather rule copies it into results/{scene}/inpaint/
        shard=temp(directory("results/{scene}/.shards/inpaint/{shard}")),
    log:
        "logs/{scene}/inpaint/shard-{shard}.log",
    benchmark:
        "benchmarks/{scene}/inpaint/shard-{shard}.tsv"
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../envs/innout.yaml"
    # One thread: on a CPU the tiny demo model's small tensors gain nothing from a second
    # intra-op thread, and spinning OpenMP threads on shared cores cost up to 8x the CPU
    # time (measured); shards are the parallelism (Snakemake runs --cores of them at once).
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        method=stage_params(METHOD, "inpaint", "models"),
        shards=INPAINT_SHARDS,
    script:
        "../workflow/scripts/inpaint_shard.py"


rule inpaint:
    input:
        transforms=get_posed_transforms,
        base="results/{scene}/base/summary.json",
        # every file of base/ the stage reads (the script reads them from the summary's folder)
        base_image="results/{scene}/base/base.png",
        base_mask="results/{scene}/base/mask.png",
        base_noise="results/{scene}/base/noise.pt",
        base_nerf="results/{scene}/base/nerf",
        shards=lambda wildcards: expand(
            "results/{scene}/.shards/inpaint/{shard}",
            scene=wildcards.scene,
            shard=range(INPAINT_SHARDS),
        ),
    output:
        summary=report(
            "results/{scene}/inpaint/summary.json",
            caption="../workflow/report/inpaint.rst",
            category="{scene}",
            subcategory="5. inpainting",
        ),
        comparison=report(
            "results/{scene}/inpaint/comparison.png",
            caption="../workflow/report/inpaint.rst",
            category="{scene}",
            subcategory="5. inpainting",
        ),
        # every train view's aligned inpainting (refine trains on them, render shows them)
        images=directory("results/{scene}/inpaint/images"),
    log:
        "logs/{scene}/inpaint/gather.log",
    benchmark:
        "benchmarks/{scene}/inpaint/gather.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 1
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        method=stage_params(METHOD, "inpaint", "models"),
        weights=WEIGHTS,
    script:
        "../workflow/scripts/inpaint.py"
