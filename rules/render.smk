# Renders of the final (refined) NeRF: every ground-truth test camera, every train camera,
# depth maps, and a video along a smooth closed camera path (innout.render.run_render).


rule render:
    input:
        transforms=get_posed_transforms,
        refine="results/{scene}/refine/summary.json",
        nerf_config="results/{scene}/refine/nerf/innout-nerfacto/config.yml",
    output:
        summary="results/{scene}/render/summary.json",
        video="results/{scene}/render/video.mp4",
        # the same video in a page: the report shows HTML inline, an mp4 only as a download
        video_page=report(
            "results/{scene}/render/video.html",
            caption="../workflow/report/render.rst",
            category="{scene}",
            subcategory="7. renders",
        ),
    params:
        method=stage_params(METHOD, "render", "models"),
        weights=WEIGHTS,
    log:
        "logs/{scene}/render.log",
    benchmark:
        "benchmarks/{scene}/render.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    script:
        "../workflow/scripts/render.py"
