# Stage 5: refinement of the base stage's NeRF with L_rec + L_prior + lambda_patch L_patch
# (innout.refine.run_refine). Checkpoints live in results/{scene}/.work/refine.


rule refine:
    input:
        transforms=get_posed_transforms,
        base="results/{scene}/base/summary.json",
        # every file of base/ and inpaint/ the stage reads (from the summaries' folders)
        base_image="results/{scene}/base/base.png",
        base_mask="results/{scene}/base/mask.png",
        base_depth_prior="results/{scene}/base/depth_prior.npy",
        base_nerf="results/{scene}/base/nerf",
        inpaint="results/{scene}/inpaint/summary.json",
        inpaint_images="results/{scene}/inpaint/images",
        # LPIPS' backbone comes from the models cache (nothing is downloaded here)
        models=MODELS_MANIFEST,
    output:
        summary=report(
            "results/{scene}/refine/summary.json",
            caption="../workflow/report/refine.rst",
            category="{scene}",
            subcategory="6. refinement",
        ),
        nerf_config="results/{scene}/refine/nerf/innout-nerfacto/config.yml",
        curves=report(
            "results/{scene}/refine/curves.png",
            caption="../workflow/report/curves.rst",
            category="{scene}",
            subcategory="6. refinement",
        ),
    log:
        "logs/{scene}/refine.log",
    benchmark:
        "benchmarks/{scene}/refine.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        method=stage_params(METHOD, "refine", "models"),
        weights=WEIGHTS,
        # checkpoints outside the output: Snakemake deletes incomplete outputs before a
        # rerun, and a killed job must resume from its last checkpoint
        work_dir=lambda wildcards: f"results/{wildcards.scene}/.work/refine",
    script:
        "../workflow/scripts/refine.py"
