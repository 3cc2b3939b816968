rule poses:
    input:
        transforms="results/{scene}/scene/transforms.json",
    output:
        summary=report(
            "results/{scene}/poses/summary.json",
            caption="../workflow/report/poses.rst",
            category="{scene}",
            subcategory="2. poses",
        ),
        transforms="results/{scene}/poses/transforms.json",
        cameras=report(
            "results/{scene}/poses/cameras.png",
            caption="../workflow/report/poses.rst",
            category="{scene}",
            subcategory="2. poses",
        ),
    log:
        "logs/{scene}/poses.log",
    benchmark:
        "benchmarks/{scene}/poses.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    params:
        method=stage_params(METHOD, "poses"),
    script:
        "../workflow/scripts/poses.py"
