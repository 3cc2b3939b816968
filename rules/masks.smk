# Object masks of every view from a few annotated ones (or a 3D box): only for scenes whose
# sheet row says `masks: some` or lists annotated views (innout.masks.run_masks). A NeRF of
# the whole scene gives each view's surface; the annotated masks' viewing cones, with
# visibility, carve the object out of it. Later stages read results/{scene}/masks/transforms.json
# (get_posed_transforms). The NeRF's checkpoints live in results/{scene}/.work/masks.


rule masks:
    input:
        transforms=get_camera_transforms,
        scene="results/{scene}/scene/transforms.json",
    output:
        summary=report(
            "results/{scene}/masks/summary.json",
            caption="../workflow/report/masks.rst",
            category="{scene}",
            subcategory="2b. masks",
        ),
        overview=report(
            "results/{scene}/masks/overview.png",
            caption="../workflow/report/masks.rst",
            category="{scene}",
            subcategory="2b. masks",
        ),
        transforms="results/{scene}/masks/transforms.json",
    log:
        "logs/{scene}/masks.log",
    benchmark:
        "benchmarks/{scene}/masks.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 240 * attempt,
        gpu=1 if METHOD.device != "cpu" else 0,
    params:
        # the whole-scene NeRF trains with the pretrain section's settings
        method=stage_params(METHOD, "masks", "pretrain"),
        # checkpoints live outside the output: Snakemake deletes incomplete outputs
        # before a rerun, and a killed job must resume from its last checkpoint
        work_dir=lambda wildcards: f"results/{wildcards.scene}/.work/masks",
    script:
        "../workflow/scripts/masks.py"
