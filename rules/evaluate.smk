# Metrics of the final NeRF against ground truth (SPIn-NeRF protocol, innout.evaluate),
# the pre-trained NeRF's (trained without the masked pixels) as "before", and the
# workflow-level table of every scene. Renders come from rules render / render_pretrain.


rule evaluate:
    input:
        transforms=get_posed_transforms,
        render="results/{scene}/render/summary.json",
        # the evaluation boxes of the test views: final NeRF ("after") and pre-trained NeRF
        after="results/{scene}/render/test",
        before="results/{scene}/render_pretrain/test",
        # LPIPS and FID networks come from the models cache (nothing is downloaded here)
        models=MODELS_MANIFEST,
    output:
        metrics="results/{scene}/eval/metrics.json",
        comparison=report(
            "results/{scene}/eval/comparison.png",
            caption="../workflow/report/evaluate.rst",
            category="{scene}",
            subcategory="8. metrics",
        ),
    log:
        "logs/{scene}/evaluate.log",
    benchmark:
        "benchmarks/{scene}/evaluate.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        method=stage_params(METHOD, "evaluate", "models"),
        weights=WEIGHTS,
    script:
        "../workflow/scripts/evaluate.py"


rule metrics:
    input:
        expand("results/{scene}/eval/metrics.json", scene=scenes.index),
    output:
        table="results/metrics.tsv",
        page=report(
            "results/metrics.html",
            caption="../workflow/report/metrics.rst",
            category="metrics",
        ),
    log:
        "logs/metrics.log",
    benchmark:
        "benchmarks/metrics.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        scenes=list(scenes.index),
        weights=WEIGHTS,
    script:
        "../workflow/scripts/metrics.py"
