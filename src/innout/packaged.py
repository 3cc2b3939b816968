"""Model weights that ship inside the package (``src/innout/weights/<set>/``): where they
are, and their manifests.

A packaged set (:data:`PACKAGED_SETS`; ``innout train-models`` made them) is a folder with
``inpainter/`` (a diffusers ``StableDiffusionInpaintPipeline`` folder), ``depth/`` (a
transformers depth-estimation folder) and ``manifest.json``: how the weights were made
(command, seed, steps, final losses, wall time, versions) and a sha256 per file.
:func:`verify_weights` checks the files against it; the ``models`` rule runs it before it
records a packaged set in the models cache. No torch here (the workflow may import it
while it parses the Snakefile).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from innout.errors import InputError
from innout.stage import write_text_atomic

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"
PACKAGED_SETS = ("procedural",)
"""Model-set specs that name weights shipped with the package (``models.inpainter`` /
``models.depth: procedural``)."""

MANIFEST = "manifest.json"
HASHED_FOLDERS = ("inpainter", "depth")  # what a model set loads; the manifest hashes every file in them


def packaged_dir(spec: str, what: str | None = None) -> Path | None:
    """The shipped folder of a packaged set (``what``: its ``inpainter`` or ``depth``
    sub-folder), or None when ``spec`` names no packaged set."""
    if str(spec) not in PACKAGED_SETS:
        return None
    folder = PACKAGED_WEIGHTS / str(spec)
    return folder / what if what else folder


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(folder: str | Path) -> list[str]:
    """Relative paths of every file in the model folders of ``folder``."""
    folder = Path(folder)
    return [p.relative_to(folder).as_posix() for sub in HASHED_FOLDERS for p in sorted((folder / sub).rglob("*")) if p.is_file()]


def file_hashes(folder: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file in the model folders of ``folder``."""
    return {rel: sha256(Path(folder) / rel) for rel in model_files(folder)}


def write_manifest(folder: str | Path, info: dict) -> dict:
    """Write ``folder/manifest.json``: ``info`` plus ``files`` (the hashes)."""
    manifest = {**info, "files": file_hashes(folder)}
    write_text_atomic(Path(folder) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise InputError(path, "weights manifest not found")
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
            raise ValueError("it lists no files")
    except ValueError as err:
        raise InputError(path, f"not a weights manifest ({err})") from None
    return manifest


def verify_weights(folder: str | Path) -> dict:
    """The manifest of ``folder`` after checking every file it lists against its sha256
    (an :class:`InputError` naming the first file that is missing or differs) and that
    the model folders hold no file it does not list."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for rel, expected in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise InputError(path, f"missing (listed in {folder / MANIFEST})")
        actual = sha256(path)
        if actual != expected:
            raise InputError(path, f"sha256 {actual[:12]}... differs from {expected[:12]}... in {folder / MANIFEST}: "
                                   "the weights were changed or damaged")
    extra = sorted(set(model_files(folder)) - set(manifest["files"]))
    if extra:
        raise InputError(folder / extra[0], f"not listed in {folder / MANIFEST}")
    return manifest
