# Stage 3: base view and prior fit (innout.base.run_base). The candidates are inpainted
# with the inpaint stage's resolution / steps / guidance / scheduler; the prompt comes
# from the scene sheet. Fit checkpoints and cached candidate inpaintings live in
# results/{scene}/.work/base.

from innout.rule_params import base_stage_params


rule base:
    input:
        transforms=get_posed_transforms,
        nerf_config="results/{scene}/pretrain/innout-nerfacto/config.yml",
        models=MODELS_MANIFEST,
    output:
        summary=report(
            "results/{scene}/base/summary.json",
            caption="../workflow/report/base.rst",
            category="{scene}",
            subcategory="4. base view",
        ),
        overview=report(
            "results/{scene}/base/overview.png",
            caption="../workflow/report/base.rst",
            category="{scene}",
            subcategory="4. base view",
        ),
        image="results/{scene}/base/base.png",
        mask="results/{scene}/base/mask.png",
        noise="results/{scene}/base/noise.pt",
        depth_prior="results/{scene}/base/depth_prior.npy",
        # the fitted NeRF folder (config, checkpoint, data): inpaint and refine read all of it
        nerf=directory("results/{scene}/base/nerf"),
        curves=report(
            "results/{scene}/base/curves.png",
            caption="../workflow/report/curves.rst",
            category="{scene}",
            subcategory="4. base view",
        ),
    log:
        "logs/{scene}/base.log",
    benchmark:
        "benchmarks/{scene}/base.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        method=base_stage_params(METHOD),
        weights=WEIGHTS,
        prompt=lambda wildcards: scenes.loc[wildcards.scene, "prompt"],
        # checkpoints live outside the output: Snakemake deletes incomplete outputs
        # before a rerun, and a killed job must resume from its last checkpoint
        work_dir=lambda wildcards: f"results/{wildcards.scene}/.work/base",
    script:
        "../workflow/scripts/base.py"
