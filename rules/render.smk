# Renders (innout.render): each view set once, by the rule whose NeRF it shows, at the size
# it is read. render_pretrain: the pre-trained NeRF at the evaluation box of every
# ground-truth test view (the "before" of the metrics; nothing when the scene has no
# ground truth). render: the final NeRF at the same boxes, the report's train views and
# the video along camera_path.json (nerfstudio's format). render_camera_path: the final
# NeRF along a user's camera path (config: camera_paths).


rule render_pretrain:
    input:
        transforms=get_posed_transforms,
        nerf_config="results/{scene}/pretrain/innout-nerfacto/config.yml",
    output:
        summary="results/{scene}/render_pretrain/summary.json",
        test=directory("results/{scene}/render_pretrain/test"),
    log:
        "logs/{scene}/render_pretrain.log",
    benchmark:
        "benchmarks/{scene}/render_pretrain.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=lambda wildcards, attempt: 60 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        method=stage_params(METHOD, "render"),
    script:
        "../workflow/scripts/render_pretrain.py"


rule render:
    input:
        transforms=get_posed_transforms,
        refine="results/{scene}/refine/summary.json",
        nerf_config="results/{scene}/refine/nerf/innout-nerfacto/config.yml",
        base="results/{scene}/base/summary.json",
        inpaint_images="results/{scene}/inpaint/images",
    output:
        summary="results/{scene}/render/summary.json",
        test=directory("results/{scene}/render/test"),
        train=directory("results/{scene}/render/train"),
        train_views=report(
            "results/{scene}/render/train_views.png",
            caption="../workflow/report/render_train.rst",
            category="{scene}",
            subcategory="7. renders",
        ),
        camera_path="results/{scene}/render/camera_path.json",
        video="results/{scene}/render/video.mp4",
        # the same video in a page: the report shows HTML inline, an mp4 only as a download
        video_page=report(
            "results/{scene}/render/video.html",
            caption="../workflow/report/render.rst",
            category="{scene}",
            subcategory="7. renders",
        ),
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
    params:
        method=stage_params(METHOD, "render", "models"),
        weights=WEIGHTS,
    script:
        "../workflow/scripts/render.py"


rule render_camera_path:
    input:
        camera_path=get_user_camera_path,
        refine="results/{scene}/refine/summary.json",
        nerf_config="results/{scene}/refine/nerf/innout-nerfacto/config.yml",
    output:
        video="results/{scene}/camera_paths/{path}.mp4",
        video_page=report(
            "results/{scene}/camera_paths/{path}.html",
            caption="../workflow/report/camera_path.rst",
            category="{scene}",
            subcategory="7. renders",
        ),
    log:
        "logs/{scene}/camera_paths/{path}.log",
    benchmark:
        "benchmarks/{scene}/camera_paths/{path}.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        method=stage_params(METHOD, "render", "models"),
        weights=WEIGHTS,
    script:
        "../workflow/scripts/render_camera_path.py"
