import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.utils import min_version, validate

min_version("8.20")

# Make the library importable when the workflow runs from a source checkout without
# an installed package (the README's commands install it; this is a fallback).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from innout.config import load_method_config, stage_params  # noqa: E402
from innout.provenance import report_weights  # noqa: E402

##### config and scene sheet #####

validate(config, schema="../workflow/schemas/config.schema.yaml")

SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# the scene column of the mean row of results/metrics.tsv (innout.evaluate.MEAN_ROW; not
# imported: that module loads torch, which the DAG does not need)
MEAN_ROW = "mean"


def load_scene_sheet(path, data_root=None):
    """The scene sheet indexed by scene name; one-line errors naming the file. A path may
    start with ``{data_root}``, replaced by the config's ``data_root`` (one folder holding
    a benchmark's scenes: config/spinnerf.tsv)."""
    if not Path(path).is_file():
        raise WorkflowError(f"{path}: scene sheet not found")
    sheet = pd.read_csv(path, sep="\t", dtype=str, comment="#", keep_default_na=False)
    for column in ("scene", "path"):
        if column not in sheet.columns:
            raise WorkflowError(
                f"{path}: scene sheet has no column '{column}' (columns: scene, path, format, poses, prompt, masks)"
            )
    for column, default in (
        ("format", "auto"),
        ("poses", "auto"),
        ("prompt", ""),
        ("masks", "all"),
    ):
        if column not in sheet.columns:
            sheet[column] = default
        sheet[column] = sheet[column].replace("", default)
    for name in sheet["scene"]:
        if not SAFE_NAME.match(name):
            raise WorkflowError(
                f"{path}: unsafe scene name {name!r}: use letters, digits, '-' and '_' only"
            )
        if name == MEAN_ROW:
            raise WorkflowError(
                f"{path}: the scene name {name!r} is taken by the mean row of results/metrics.tsv"
            )
    duplicated = sheet["scene"][sheet["scene"].duplicated()].tolist()
    if duplicated:
        raise WorkflowError(
            f"{path}: scene names appear twice: {', '.join(duplicated)}"
        )
    validate(sheet, schema="../workflow/schemas/scenes.schema.yaml")
    uses_root = sheet["path"].str.contains("{data_root}", regex=False)
    if uses_root.any():
        if not data_root:
            first = sheet["scene"][uses_root].iloc[0]
            raise WorkflowError(
                f"{path}: scene {first}'s path uses {{data_root}}, but data_root is not set "
                "(--config data_root=/path/to/the/scenes)"
            )
        sheet["path"] = sheet["path"].str.replace(
            "{data_root}", str(data_root).rstrip("/"), regex=False
        )
    return sheet.set_index("scene", drop=False)


scenes = load_scene_sheet(config["scenes"], config.get("data_root"))
GENERATED = config.get("generated", {})


def load_camera_paths(paths_by_scene):
    """{scene: {name: camera_path.json}} from config `camera_paths` (a file or a list of
    files per scene; the name is the file's stem); one-line errors naming the key."""
    out = {}
    for scene, files in (paths_by_scene or {}).items():
        if scene not in scenes.index:
            raise WorkflowError(
                f"config camera_paths: {scene!r} is not a scene of {config['scenes']}"
            )
        named = {}
        for path in [files] if isinstance(files, str) else list(files):
            name = Path(path).stem
            if not SAFE_NAME.match(name) or name in named:
                raise WorkflowError(
                    f"config camera_paths.{scene}: {path}: file names must be unique and use letters, digits, '-', '_'"
                )
            named[name] = path
        out[scene] = named
    return out


CAMERA_PATHS = load_camera_paths(config.get("camera_paths"))


def method_config():
    method = config.get("method", {})
    return load_method_config(
        method.get("preset", "smoke"),
        method.get("overrides", []),
        method.get("model", "sd2"),
    )


METHOD = method_config()
# The models rule's output; every rule that loads a model takes it as input and reads
# only the cache folder it lies in.
MODELS_MANIFEST = str(Path(METHOD.models.cache_dir) / "manifest.json")
# What the model set's weights are, for the report's captions (rules pass it as
# params.weights): provenance, its label, the banner line and the LPIPS/FID note.
WEIGHTS = report_weights(METHOD.models)


# Scene names come from the sheet, so a typo in a target fails early instead of matching.
wildcard_constraints:
    scene="|".join(re.escape(name) for name in scenes.index) or "^$",
    generated="|".join(re.escape(name) for name in GENERATED) or "^$",
    path=r"[A-Za-z0-9_-]+",


##### input functions #####


def generated_path(name):
    return f"results/generated/{name}"


def get_scene_source(wildcards):
    """The scene's folder; a procedural scene's folder is built by rule generate."""
    return scenes.loc[wildcards.scene, "path"]


def scene_format(name):
    fmt = scenes.loc[name, "format"]
    path = scenes.loc[name, "path"]
    if fmt != "auto":
        return fmt
    if path.startswith("results/generated/"):
        return "spinnerf"
    if Path(path).exists():
        from innout.scene import detect_format

        return detect_format(Path(path))
    return "auto"


def scene_uses_colmap(name):
    """Whether the scene's poses come from the poses rule (COLMAP)."""
    poses = scenes.loc[name, "poses"]
    if poses == "colmap":
        return True
    if poses == "provided":
        return False
    return scene_format(name) == "images"


def get_user_camera_path(wildcards):
    """The user's camera_path.json behind results/{scene}/camera_paths/{path}.mp4."""
    return CAMERA_PATHS[wildcards.scene][wildcards.path]


def scene_makes_masks(name):
    """Whether the scene gives masks of some views only (sheet column `masks`: `some` or
    view names), so the masks rule makes the others."""
    return scenes.loc[name, "masks"] != "all"


def scene_options(name):
    """The scene rule's import options; `masks` only when the scene does not give them all,
    so scenes with every mask keep the params (and the cached results) they had."""
    options = dict(config["scene"])
    if scene_makes_masks(name):
        options["masks"] = scenes.loc[name, "masks"]
    return options


def get_camera_transforms(wildcards):
    """transforms.json with poses: COLMAP's when the scene uses it, else the scene's own."""
    if scene_uses_colmap(wildcards.scene):
        return f"results/{wildcards.scene}/poses/transforms.json"
    return f"results/{wildcards.scene}/scene/transforms.json"


def get_posed_transforms(wildcards):
    """What every stage from pretrain on reads: posed views with every mask (the masks
    rule's output when the scene gives masks of some views only)."""
    if scene_makes_masks(wildcards.scene):
        return f"results/{wildcards.scene}/masks/transforms.json"
    return get_camera_transforms(wildcards)


def get_final_output():
    """Every scene of the sheet through the last implemented stage."""
    targets = []
    for name in scenes.index:
        targets.append(f"results/{name}/scene/summary.json")
        if scene_uses_colmap(name):
            targets.append(f"results/{name}/poses/summary.json")
        if scene_makes_masks(name):
            targets.append(f"results/{name}/masks/summary.json")
        targets.append(f"results/{name}/pretrain/summary.json")
        targets.append(f"results/{name}/base/summary.json")
        targets.append(f"results/{name}/inpaint/summary.json")
        targets.append(f"results/{name}/eval/metrics.json")
        targets.append(f"results/{name}/render/video.mp4")
        targets += [
            f"results/{name}/camera_paths/{path}.mp4"
            for path in CAMERA_PATHS.get(name, {})
        ]
    targets.append("results/metrics.tsv")
    return targets
