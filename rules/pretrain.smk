rule pretrain:
    input:
        transforms=get_posed_transforms,
    output:
        summary=report(
            "results/{scene}/pretrain/summary.json",
            caption="../workflow/report/pretrain.rst",
            category="{scene}",
            subcategory="3. geometry",
        ),
        nerf_config="results/{scene}/pretrain/innout-nerfacto/config.yml",
        curves=report(
            "results/{scene}/pretrain/curves.png",
            caption="../workflow/report/curves.rst",
            category="{scene}",
            subcategory="3. geometry",
        ),
    log:
        "logs/{scene}/pretrain.log",
    benchmark:
        "benchmarks/{scene}/pretrain.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        method=stage_params(METHOD, "pretrain"),
        # checkpoints live outside the output: Snakemake deletes incomplete outputs
        # before a rerun, and a killed job must resume from its last checkpoint
        work_dir=lambda wildcards: f"results/{wildcards.scene}/.work/pretrain",
    script:
        "../workflow/scripts/pretrain.py"
