rule generate:
    output:
        directory("results/generated/{generated}"),
    log:
        "logs/generated/{generated}.log",
    benchmark:
        "benchmarks/generated/{generated}.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        spec=lambda wildcards: GENERATED[wildcards.generated],
    script:
        "../workflow/scripts/generate.py"


rule scene:
    input:
        source=get_scene_source,
    output:
        summary="results/{scene}/scene/summary.json",
        transforms="results/{scene}/scene/transforms.json",
        overview=report(
            "results/{scene}/scene/overview.png",
            caption="../workflow/report/scene.rst",
            category="{scene}",
            subcategory="1. input",
        ),
    log:
        "logs/{scene}/scene.log",
    benchmark:
        "benchmarks/{scene}/scene.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        format=lambda wildcards: scenes.loc[wildcards.scene, "format"],
        poses=lambda wildcards: scenes.loc[wildcards.scene, "poses"],
        options=lambda wildcards: scene_options(wildcards.scene),
    script:
        "../workflow/scripts/scene.py"
