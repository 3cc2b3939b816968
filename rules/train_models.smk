# Retrain the `procedural` model set (innout.training; `innout train-models` outside
# Snakemake): a small inpainting pipeline and depth model trained on procedural scenes
# only, ~25 minutes on 2 CPU cores. NOT part of the default target: `model: procedural`
# loads the weights shipped with the package (src/innout/weights/procedural). A retrained set lands
# in resources/trained/procedural/; point a model set's `inpainter` and `depth` at its
# `inpainter/` and `depth/` folders to use it. Checkpoints live in resources/.work/ (not
# an output), so an interrupted run resumes.
#
#     snakemake --cores 2 train_models
rule train_models:
    output:
        manifest=report(
            "resources/trained/procedural/manifest.json",
            caption="../workflow/report/train_models.rst",
            category="models",
        ),
    log:
        "logs/train_models.log",
    benchmark:
        "benchmarks/train_models.tsv"
    conda:
        "../envs/innout.yaml"
    threads: 2
    resources:
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=lambda wildcards, attempt: 90 * attempt,
    params:
        seed=0,
        work_dir="resources/.work/train_models",
    script:
        "../workflow/scripts/train_models.py"
