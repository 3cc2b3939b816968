# innout: remove an object from a 3D scene (In-N-Out, NeurIPS 2024).
# Run from the repository root:  snakemake --cores all   (see README.md)


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/scene.smk"
include: "rules/poses.smk"
include: "rules/masks.smk"
include: "rules/pretrain.smk"
include: "rules/models.smk"
include: "rules/base.smk"
include: "rules/inpaint.smk"
include: "rules/refine.smk"
include: "rules/render.smk"
include: "rules/evaluate.smk"
include: "rules/train_models.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
