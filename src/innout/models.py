"""Every model weight the workflow uses: where it comes from, how it is loaded.

Model sets (``src/innout/conf/model/*.yaml``, :class:`innout.config.ModelsConfig`); each
says what its weights are in ``provenance`` (:mod:`innout.provenance`):

``sd2``
    The real weights: ``stabilityai/stable-diffusion-2-inpainting`` and a transformers
    depth-estimation model, plus the LPIPS backbones (VGG for the refine loss, AlexNet for
    the evaluation, as the published numbers) and the FID Inception network. The
    ``models`` rule runs :func:`fetch_models` once, on a machine with internet: hub models
    go to the user's Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``, or
    ``models.hub_cache``), where a machine that already holds them does not download them
    again and ``HF_HUB_OFFLINE=1`` works; with an fp16 dtype only the fp16 weight files are
    fetched (:func:`download_variant`). The torch.hub checkpoints (LPIPS trunks, Inception)
    go to ``models.cache_dir/torch``. The manifest in ``models.cache_dir`` records where
    everything lies; every later rule reads only there (``local_files_only``).
``tiny``
    Small random-weight models of the *same classes* (``UNet2DConditionModel`` with 9
    input channels, ``AutoencoderKL`` with the SD down-sampling factor 8,
    ``CLIPTextModel``/``CLIPTokenizer``, a Depth-Anything with a tiny DINOv2 backbone),
    built deterministically from a seed. Tests and CPU demos.
``sd2-random``
    The exact SD2-inpainting architecture (865.9 M-parameter UNet, SD2 VAE, OpenCLIP
    ViT-H text tower) with random weights, for speed and memory measurements.
``procedural``
    Small models of the same classes TRAINED by this project on its procedural scenes
    (``innout train-models``, :mod:`innout.training`), shipped inside the package
    (:mod:`innout.packaged`). Not Stable Diffusion: they make the method measurable
    offline. The spec ``procedural`` resolves to the shipped folder, which is loaded
    like any local folder (``from_pretrained``).

Outputs of the random sets are meaningless pictures; every summary made with them
carries :data:`innout.provenance.RANDOM_WEIGHTS_WARNING`.

The architectures of ``tiny`` and ``sd2-random`` and their random-weight builds live in
:mod:`innout.model_presets`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from innout.devices import resolve_device
from innout.errors import InputError, StageError
from innout.model_presets import TINY_SEED, build_sd2_random, build_tiny_inpainter, save_tiny_depth, save_tiny_inpainter
from innout.packaged import PACKAGED_SETS, packaged_dir, verify_weights
from innout.provenance import (
    PRETRAINED,
    RANDOM,
    RANDOM_BACKBONE,
    RANDOM_PRESETS,
    provenance_fields,
    weights_provenance,
)
from innout.stage import write_text_atomic

log = logging.getLogger("innout")

MANIFEST = "manifest.json"

# URLs of the two torch.hub checkpoints the metrics need (torchvision / torch-fidelity).
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_BACKBONE_URLS = {"vgg": VGG16_URL, "alex": ALEXNET_URL}  # torchvision's ImageNet trunks
MANIFEST_SPECS = ("inpainter", "depth", "lpips_backbone", "eval_lpips_backbone", "fid_backbone")  # what a manifest must agree on with the config
FP16_TAGS = (".fp16.", "-fp16.")  # how a hub repository names its fp16 weight files (diffusers' variant)

# --------------------------------------------------------------------------- helpers

def is_random(models_cfg: Any) -> bool:
    """Whether this model set has random weights (its outputs are not results)."""
    return weights_provenance(models_cfg) == RANDOM


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``auto``: fp16 on a GPU, fp32 elsewhere; or a name (fp16, bf16, fp32, float16...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).lower()
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    names = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
    if name not in names:
        raise ValueError(f"unknown dtype {dtype!r} (auto, fp16, bf16, fp32)")
    return names[name]


def hub_cache_dir(models_cfg: Any = None) -> Path:
    """The Hugging Face hub cache the models rule downloads into: ``models.hub_cache`` when
    set, else the user's own (huggingface_hub's: ``HF_HUB_CACHE``, else ``HF_HOME/hub``,
    else ``~/.cache/huggingface/hub``)."""
    configured = _get(models_cfg, "hub_cache", None) if models_cfg is not None else None
    if configured:
        return Path(str(configured)).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def manifest_hub_cache(cache_dir: str | Path | None) -> Path:
    """The hub cache a later stage reads from: the one the manifest in ``cache_dir``
    recorded (the models rule may have run on another node), else the user's."""
    if cache_dir is not None:
        path = Path(cache_dir) / MANIFEST
        try:
            recorded = json.loads(path.read_text()).get("hub_cache") if path.is_file() else None
        except (OSError, ValueError):
            recorded = None
        if recorded:
            return Path(recorded)
    return hub_cache_dir(None)


def download_variant(models_cfg: Any, device: str | None = "auto") -> str | None:
    """``"fp16"`` when the stages will run the models in fp16 (``models.dtype`` fp16, or
    ``auto`` on a device other than the CPU): then only the fp16 weight files are fetched
    (half the download, and nothing is cast at load time). None: full precision."""
    name = str(_get(models_cfg, "dtype", "auto")).lower()
    if name in ("fp16", "float16", "half"):
        return "fp16"
    if name == "auto" and str(device or "auto") != "cpu":
        return "fp16"
    return None


def torch_home(cache_dir: str | Path) -> Path:
    """The ``TORCH_HOME`` holding the torch.hub checkpoints (VGG16 for LPIPS, Inception
    for FID): set ``os.environ['TORCH_HOME']`` to it before lpips / torch-fidelity load."""
    return Path(cache_dir) / "torch"


def preset_dir(cache_dir: str | Path, what: str, name: str) -> Path:
    """Folder of a saved random preset, e.g. ``<cache>/presets/inpainter-tiny``."""
    return Path(cache_dir) / "presets" / f"{what}-{name}"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


# --------------------------------------------------------------------------- loading

ATTENTION_SLICING = ("off", "auto", "max")  # or a slice size (an integer)
CPU_OFFLOAD = ("off", "model", "sequential")


def load_inpainter(spec: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                   cache_dir: str | Path | None = None, options: Any = None):
    """A ``StableDiffusionInpaintPipeline`` on ``device`` (no safety checker, progress
    bars off).

    ``spec``: ``tiny`` / ``sd2-random`` (random presets; ``tiny`` is read from the cache
    when :func:`fetch_models` saved it there, else built, identically), a local diffusers
    folder, or a hub id read from the hub cache the manifest in ``cache_dir`` names
    (:func:`manifest_hub_cache`) with ``local_files_only=True`` (never the network); a
    snapshot holding fp16 weight files is loaded through them (diffusers' ``variant``).
    ``dtype="auto"``: fp16 on a GPU, fp32 on a CPU. ``options``: the ``models`` config's
    memory switches (:func:`apply_memory_options`).
    """
    from diffusers import StableDiffusionInpaintPipeline

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if spec == "tiny":
        saved = preset_dir(cache_dir, "inpainter", "tiny") if cache_dir is not None else None
        if saved is not None and (saved / "model_index.json").is_file():
            pipe = StableDiffusionInpaintPipeline.from_pretrained(saved, local_files_only=True, safety_checker=None,
                                                                  requires_safety_checker=False)
        else:
            pipe = build_tiny_inpainter(TINY_SEED)
    elif spec == "sd2-random":
        # 5 GB of seeded random numbers are rebuilt rather than cached; built on the
        # target device (seconds on a GPU), then cast.
        pipe = build_sd2_random(TINY_SEED, device)
    else:
        local = packaged_dir(spec, "inpainter") or Path(spec).expanduser()
        folder = local if local.is_dir() else None
        try:
            if folder is None:
                from huggingface_hub import snapshot_download

                folder = Path(snapshot_download(spec, cache_dir=manifest_hub_cache(cache_dir), local_files_only=True))
            pipe = StableDiffusionInpaintPipeline.from_pretrained(
                folder, local_files_only=True, safety_checker=None, requires_safety_checker=False,
                variant=snapshot_variant(folder, dtype), **{dtype_keyword(): dtype})
        except (OSError, ValueError) as err:  # huggingface_hub's "not in the cache" is a FileNotFoundError
            where = local if local.is_dir() else f"{spec} in the hub cache {manifest_hub_cache(cache_dir)}"
            raise StageError("models", f"cannot load the inpainter {where} offline ({err.__class__.__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); run the `models` rule first") from err
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    apply_memory_options(pipe, options, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dtype_keyword() -> str:
    """The keyword diffusers' ``from_pretrained`` takes the dtype by: ``dtype`` since diffusers
    followed transformers and deprecated ``torch_dtype`` (a FutureWarning in every stage's log
    otherwise), ``torch_dtype`` in the releases before, which do not read ``dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def snapshot_variant(folder: str | Path, dtype: torch.dtype) -> str | None:
    """``"fp16"`` when the diffusers folder's UNet ships fp16 weight files and either the
    pipeline runs in fp16 or it has no full-precision UNet weights (what
    :func:`select_hub_files` fetched); None otherwise."""
    unet = Path(folder) / "unet"
    weights = [p.name for p in unet.glob("*") if p.suffix in (".safetensors", ".bin")] if unet.is_dir() else []
    fp16 = [w for w in weights if any(tag in w for tag in FP16_TAGS)]
    full = [w for w in weights if w not in fp16 and ".non_ema." not in w and ".ema_only." not in w]
    if fp16 and (dtype == torch.float16 or not full):
        return "fp16"
    return None


def apply_memory_options(pipe: Any, options: Any, device: torch.device) -> Any:
    """Place the pipeline on ``device`` with the ``models`` config's memory switches
    (diffusers' own): ``attention_slicing`` (off | auto | max | a slice size; ILA's
    self-attention processors replace the sliced ones on the ``attn1`` layers while ILA
    is on, and use PyTorch's memory-efficient SDPA), ``vae_tiling`` (VAE encode/decode in
    overlapping tiles: large images on small GPUs), ``cpu_offload`` (off | model: each
    model moves to the GPU only while it runs | sequential: layer by layer, slowest,
    least memory; GPU only). Returns ``pipe``; ``pipe.innout_memory`` says what was applied."""
    slicing = str(_get(options, "attention_slicing", "off") if options is not None else "off")
    tiling = bool(_get(options, "vae_tiling", False)) if options is not None else False
    offload = str(_get(options, "cpu_offload", "off") if options is not None else "off")
    if offload not in CPU_OFFLOAD:
        raise StageError("models", f"models.cpu_offload is {offload!r}: use one of {', '.join(CPU_OFFLOAD)}")
    if slicing not in ATTENTION_SLICING and not slicing.isdigit():
        raise StageError("models", f"models.attention_slicing is {slicing!r}: use off, auto, max or a slice size")
    applied = {"attention_slicing": slicing, "vae_tiling": tiling, "cpu_offload": offload}
    if slicing != "off":
        pipe.enable_attention_slicing(int(slicing) if slicing.isdigit() else slicing)
    if tiling:
        pipe.vae.enable_tiling()
    if offload != "off" and device.type != "cuda":
        log.warning("models.cpu_offload=%s has no effect on %s: ignored", offload, device)
        applied["cpu_offload"] = "off"
        offload = "off"
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.innout_memory = applied
    return pipe


def depth_model_path(spec: str, cache_dir: str | Path) -> str:
    """What to give transformers (``pipeline("depth-estimation", model=...)`` or
    ``AutoModelForDepthEstimation.from_pretrained``) for ``models.depth``: the saved tiny
    preset folder (built there on first use), a local folder, or the snapshot folder of a
    hub id in the hub cache the manifest names (raises when :func:`fetch_models` has not
    put it there)."""
    if spec == "tiny":
        folder = preset_dir(cache_dir, "depth", "tiny")
        if not (folder / "config.json").is_file():
            save_tiny_depth(folder)
        return str(folder)
    local = packaged_dir(spec, "depth") or Path(spec).expanduser()
    if local.is_dir():
        return str(local)
    from huggingface_hub import snapshot_download

    hub = manifest_hub_cache(cache_dir)
    try:
        return snapshot_download(spec, cache_dir=hub, local_files_only=True)
    except (OSError, ValueError) as err:
        raise StageError("models", f"depth model {spec} is not in the hub cache {hub}; run the `models` rule first") from err


# --------------------------------------------------------------------------- fetching

def select_hub_files(files: Iterable[str], variant: str | None = None) -> list[str]:
    """The files of a hub repository a diffusers / transformers loader needs.

    Keeps configs and tokenizer files, and per folder one weight format: with
    ``variant="fp16"`` its fp16 files when the folder has some, else (and without a
    variant) the full-precision ones, safetensors when present, else ``.bin``. Drops
    non-EMA / EMA-only variants, original ``.ckpt`` checkpoints, the root-level
    original-format weights of a diffusers repo (it has ``model_index.json``), the safety
    checker, and other frameworks' weights."""
    files = sorted(set(files))
    diffusers_repo = "model_index.json" in files
    weight_ext = (".safetensors", ".bin")
    keep, full, half = [], {}, {}
    for path in files:
        folder, _, name = path.rpartition("/")
        if folder.split("/")[0] == "safety_checker" or name.endswith((".ckpt", ".msgpack", ".h5", ".onnx", ".pb")):
            continue
        if name.endswith(weight_ext):
            if any(tag in name for tag in (".non_ema.", ".ema_only.")) or (diffusers_repo and not folder):
                continue
            (half if any(tag in name for tag in FP16_TAGS) else full).setdefault(folder, []).append(path)
        elif name.endswith((".json", ".txt", ".model", ".md")) or name in ("merges.txt", "vocab.json"):
            keep.append(path)
    for folder in sorted(set(full) | set(half)):
        paths = half[folder] if variant == "fp16" and folder in half else full.get(folder, [])
        safetensors = [p for p in paths if p.endswith(".safetensors")]
        keep.extend(safetensors or paths)
        # a sharded checkpoint's index file is a .json and was kept above
    return sorted(keep)


def download_plan(models_cfg: Any, cache_dir: str | Path, device: str | None = "auto") -> list[dict]:
    """What :func:`fetch_models` downloads for a model set: one entry per item,
    ``{"what", "kind": "hub" | "url", "source", "dest", "variant"}``; hub models go to
    the hub cache (:func:`hub_cache_dir`), torch.hub checkpoints under ``cache_dir``.
    Random presets, local folders (a user's, or the sets shipped with the package) and
    random metric backbones are not downloaded. LPIPS: the refine loss's backbone
    (``lpips_backbone``) and the evaluation's (``eval_lpips_backbone``), each once."""
    cache_dir = Path(cache_dir)
    plan = []
    inpainter, depth = str(_get(models_cfg, "inpainter")), str(_get(models_cfg, "depth"))
    hub = str(hub_cache_dir(models_cfg))
    for what, source, variant in (("inpainter", inpainter, download_variant(models_cfg, device)), ("depth", depth, None)):
        if source in RANDOM_PRESETS or source in PACKAGED_SETS or Path(source).expanduser().is_dir():
            continue  # built in code / shipped with the package / a local folder: nothing to download
        plan.append({"what": what, "kind": "hub", "source": source, "dest": hub, "variant": variant})
    checkpoints = torch_home(cache_dir) / "hub" / "checkpoints"
    for backbone in lpips_backbones(models_cfg):
        url = LPIPS_BACKBONE_URLS[backbone]
        plan.append({"what": f"lpips-{backbone}", "kind": "url", "source": url, "dest": str(checkpoints / url.rsplit("/", 1)[1]),
                     "variant": None})
    if str(_get(models_cfg, "fid_backbone", "inception")) != RANDOM_BACKBONE:
        plan.append({"what": "fid-inception", "kind": "url", "source": INCEPTION_URL,
                     "dest": str(checkpoints / INCEPTION_URL.rsplit("/", 1)[1]), "variant": None})
    return plan


def lpips_backbones(models_cfg: Any) -> list[str]:
    """The pretrained LPIPS backbones a model set uses (refine loss, evaluation), in that
    order, each once; ``random`` ones need no download."""
    names = [str(_get(models_cfg, "lpips_backbone", "vgg")), str(_get(models_cfg, "eval_lpips_backbone", "alex"))]
    return [n for i, n in enumerate(names) if n in LPIPS_BACKBONE_URLS and n not in names[:i]]


def lpips_heads_path(backbone: str) -> Path:
    """The calibrated LPIPS v0.1 linear heads of ``backbone``: they ship inside the lpips
    package (``lpips/weights/v0.1/<net>.pth``), so nothing is downloaded for them."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{backbone}.pth"


def _local_snapshot(repo: str, hub: str) -> str | None:
    """The snapshot folder of ``repo`` already in the hub cache ``hub`` (None if absent)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, cache_dir=hub, local_files_only=True)
    except (OSError, ValueError):  # huggingface_hub's "not in the cache" is a FileNotFoundError
        return None


def _network_errors() -> tuple[type, ...]:
    """What a hub call raises without a network: OSError kinds, and httpx's transport
    errors (huggingface_hub's HTTP client), which are not OSErrors."""
    try:
        import httpx

        return (OSError, httpx.TransportError)
    except ImportError:  # older huggingface_hub (requests): its errors are OSErrors
        return (OSError,)


def _check_snapshot(folder: str | Path, item: dict) -> None:
    """A snapshot found offline must hold a loader's config and some weights."""
    folder = Path(folder)
    has_config = (folder / "model_index.json").is_file() or (folder / "config.json").is_file()
    has_weights = any(p.suffix in (".safetensors", ".bin") for p in folder.rglob("*"))
    if not (has_config and has_weights):
        raise StageError("models", f"{item['source']}: the snapshot {folder} in the hub cache is incomplete "
                                   "(no config or no weights); rerun the `models` rule with network access")


def _download(item: dict) -> str:
    """One plan entry, into its cache. Returns where it now lies. A hub model already in
    the hub cache is not downloaded again: with ``HF_HUB_OFFLINE=1`` (or no network) the
    cached snapshot is used as it is."""
    if item["kind"] == "hub":
        from huggingface_hub import HfApi, constants, snapshot_download

        if constants.HF_HUB_OFFLINE:
            folder = _local_snapshot(item["source"], item["dest"])
            if folder is None:
                raise StageError("models", f"{item['source']} is not in the hub cache {item['dest']} and HF_HUB_OFFLINE is set: "
                                           "download it on a machine with network access (same HF_HOME)")
            _check_snapshot(folder, item)
            return folder
        try:
            files = select_hub_files(HfApi().list_repo_files(item["source"]), item.get("variant"))
            # files already in the cache are not downloaded again
            return snapshot_download(item["source"], cache_dir=item["dest"], allow_patterns=files)
        except _network_errors() as err:  # no network: fall back to what the cache holds
            folder = _local_snapshot(item["source"], item["dest"])
            if folder is None:
                raise StageError("models", f"cannot download {item['source']} ({err.__class__.__name__}) and it is not in the "
                                           f"hub cache {item['dest']}") from err
            log.warning("cannot reach the hub (%s): using the cached snapshot %s", err.__class__.__name__, folder)
            _check_snapshot(folder, item)
            return folder
    dest = Path(item["dest"])
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(item["source"], str(dest), progress=False)
    return str(dest)


def _component(what: str, source: str, path: str | Path | None, weights: str, note: str | None = None,
               variant: str | None = None) -> dict:
    """One manifest entry: a component, where it came from, where it lies (None: built
    from its configs at load time, nothing stored), what its weights are (``weights``: a
    provenance of :mod:`innout.provenance`) and for hub models which weight variant was
    fetched."""
    item = {"what": what, "source": source, "path": None if path is None else str(path), "weights": weights}
    if variant:
        item["variant"] = variant
    if note:
        item["note"] = note
    return item


def packaged_component(what: str, spec: str, provenance: str) -> dict:
    """The manifest entry of a component shipped with the package, after checking every
    file of the set against the sha256 its ``manifest.json`` lists (a mismatch is an
    :class:`InputError` naming the file)."""
    shipped = verify_weights(packaged_dir(spec))
    return _component(what, f"{spec} (shipped with innout; {shipped.get('trained_on', '')})", packaged_dir(spec, what),
                      provenance, f"sha256 of every file verified against {packaged_dir(spec) / 'manifest.json'}")


def _preset_component(what: str, spec: str, cache_dir: Path) -> dict:
    """A random preset: ``tiny`` models are saved into the cache (``presets/``) so later
    stages load them from there like real ones; ``sd2-random`` is rebuilt from its seed
    at load time (5 GB of random numbers are not worth writing to disk; building takes
    seconds on a GPU)."""
    source = f"{spec} (random, seed {TINY_SEED})"
    if spec == "tiny":
        folder = preset_dir(cache_dir, what, "tiny")
        log.info("saving the tiny random %s into %s", what, folder)
        saved = save_tiny_inpainter(folder) if what == "inpainter" else save_tiny_depth(folder)
        return _component(what, source, saved, RANDOM)
    if spec == "sd2-random" and what == "inpainter":
        return _component(what, source, None, RANDOM, "SD2-inpainting architecture built from its configs at load time")
    raise StageError("models", f"{spec!r} is not a random {what} preset (inpainter: {', '.join(RANDOM_PRESETS)}; depth: tiny)")


def _model_components(models_cfg: Any, cache_dir: Path, provenance: str, download, device: str | None) -> list[dict]:
    """The inpainter and the depth model: a random preset is built, a local folder is used
    in place, a hub id is fetched into the hub cache."""
    hub = {item["what"]: item for item in download_plan(models_cfg, cache_dir, device) if item["kind"] == "hub"}
    items = []
    for what in ("inpainter", "depth"):
        spec = str(_get(models_cfg, what))
        local = Path(spec).expanduser()
        if spec in RANDOM_PRESETS:
            items.append(_preset_component(what, spec, cache_dir))
        elif spec in PACKAGED_SETS:
            items.append(packaged_component(what, spec, provenance))
        elif local.is_dir():  # a user's own folder, or weights shipped with the package
            items.append(_component(what, spec, local.resolve(), provenance, "local folder, used in place"))
        elif provenance == RANDOM:
            raise StageError("models", f"model set {_get(models_cfg, 'name')!r} is random but its {what} is {spec!r}, "
                                       f"neither a random preset ({', '.join(RANDOM_PRESETS)}) nor a local folder")
        else:
            item = hub[what]
            log.info("fetching %s (%s%s) into %s", what, spec, f", {item['variant']} weights" if item["variant"] else "", item["dest"])
            path = download(item)
            variant = snapshot_variant(path, torch.float16 if item["variant"] == "fp16" else torch.float32)
            items.append(_component(what, spec, path, provenance, variant=variant))
    return items


def _metric_components(models_cfg: Any, cache_dir: Path, download) -> list[dict]:
    """The LPIPS and FID networks: downloaded ImageNet trunks (plus LPIPS' calibrated heads
    from the lpips package), or, for a ``random`` backbone, nothing (built from a seed at
    load time; every metric computed with one says so by name)."""
    items = []
    for item in download_plan(models_cfg, cache_dir, None):
        if item["kind"] == "url":
            log.info("fetching %s (%s) into %s", item["what"], item["source"], item["dest"])
            items.append(_component(item["what"], item["source"], download(item), PRETRAINED))
    for backbone in lpips_backbones(models_cfg):
        heads = lpips_heads_path(backbone)
        if not heads.is_file():
            raise StageError("models", f"LPIPS linear heads missing: {heads} (reinstall the lpips package)")
        items.append(_component(f"lpips-heads-{backbone}", f"lpips package, v0.1 {backbone}", heads, PRETRAINED))
    for what, key, use in (("lpips", "lpips_backbone", "refine loss"), ("eval-lpips", "eval_lpips_backbone", "evaluation")):
        if str(_get(models_cfg, key, "")) == RANDOM_BACKBONE:
            items.append(_component(what, RANDOM_BACKBONE, None, RANDOM, f"{use}: random backbone built at load time"))
    if str(_get(models_cfg, "fid_backbone", "inception")) == RANDOM_BACKBONE:
        items.append(_component("fid-inception", "inception-v3-compat", None, RANDOM, "random Inception built at load time"))
    return items


def fetch_models(models_cfg: Any, cache_dir: str | Path, download=None, device: str | None = "auto") -> dict:
    """Put every weight the workflow needs where later stages read it and write
    ``cache_dir/manifest.json``. Returns the manifest.

    Hub models go into the hub cache (:func:`hub_cache_dir`; nothing that is already
    there, and nothing at all with ``HF_HUB_OFFLINE=1``; ``download`` is
    :func:`_download`, tests pass a stand-in) and torch.hub checkpoints into
    ``cache_dir/torch``; ``device`` (the method's) decides whether fp16 weight files are
    fetched (:func:`download_variant`). Local folders are used in place; random presets
    download nothing and the tiny models are saved into the cache (``presets/``), so
    later stages load them like real ones. The manifest names the model set, its specs
    (:func:`check_manifest` compares them with the config a later stage runs with), its
    provenance (``weights``, ``weights_label``, ``warning``:
    :func:`innout.provenance.provenance_fields`), the hub cache (None when no hub model is
    used) and, per component, ``what``, ``source``, ``path`` (None when a random component
    is built from its configs at load time), ``weights`` and, for hub models, ``variant``.
    It holds no timestamp: the same config gives the same file."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    provenance = weights_provenance(models_cfg)
    download = download or _download
    items = (_model_components(models_cfg, cache_dir, provenance, download, device)
             + _metric_components(models_cfg, cache_dir, download))
    uses_hub = any(item["kind"] == "hub" for item in download_plan(models_cfg, cache_dir, device))
    hub = str(hub_cache_dir(models_cfg)) if uses_hub else None
    manifest = {
        "model_set": str(_get(models_cfg, "name", "")),
        "specs": {key: str(_get(models_cfg, key, "")) for key in MANIFEST_SPECS},
        **provenance_fields(provenance),
        "cache_dir": str(cache_dir),
        "hub_cache": hub,
        "env": {"TORCH_HOME": str(torch_home(cache_dir)), "HF_HUB_CACHE": hub},
        "items": items,
    }
    write_text_atomic(cache_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_manifest(path: str | Path, models_cfg: Any) -> dict:
    """The manifest at ``path`` if it was made for ``models_cfg`` and everything it lists
    is still in the cache; else an :class:`InputError` in one line (which says to rerun
    the ``models`` rule)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "models manifest not found (run the `models` rule)")
    try:
        manifest = json.loads(path.read_text())
        items = manifest["items"]
        specs = manifest["specs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not a models manifest ({err.__class__.__name__}: {err}); rerun the `models` rule") from None
    wanted = str(_get(models_cfg, "name", ""))
    if manifest.get("model_set") != wanted:
        raise InputError(path, f"made for model set {manifest.get('model_set')!r}, but the config uses {wanted!r}; rerun the `models` rule")
    for key in MANIFEST_SPECS:
        if str(specs.get(key)) != str(_get(models_cfg, key, "")):
            raise InputError(path, f"made with {key}={specs.get(key)!r}, but the config has {_get(models_cfg, key)!r}; rerun the `models` rule")
    if manifest.get("weights") != weights_provenance(models_cfg):
        raise InputError(path, f"made with {manifest.get('weights')!r} weights, the config's model set has "
                               f"{weights_provenance(models_cfg)!r}; rerun the `models` rule")
    for item in items:
        if item.get("path") and not Path(item["path"]).exists():
            raise InputError(path, f"lists {item['path']} for {item.get('what')}, which is missing; rerun the `models` rule")
    return manifest


def manifest_item(manifest: dict, what: str) -> dict | None:
    """The manifest's entry for component ``what`` (None when it has none)."""
    for item in manifest.get("items", []):
        if item.get("what") == what:
            return item
    return None


def load_depth_model(spec: str, cache_dir: str | Path, device: str | torch.device = "cpu"):
    """``(model, processor)``: the transformers depth-estimation model ``models.depth``
    (``AutoModelForDepthEstimation`` + ``AutoImageProcessor``) from the cache, offline,
    fp32, in eval mode on ``device``."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = depth_model_path(spec, cache_dir)
    try:
        model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise StageError("models", f"cannot load the depth model {spec} from {folder} ({err.__class__.__name__}); "
                                   "rerun the `models` rule") from err
    return model.to(resolve_device(device)).eval(), processor
