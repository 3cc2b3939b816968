"""Every model weight the workflow uses: where it comes from, how it is loaded.

Three model sets (``src/innout/conf/model/*.yaml``, :class:`innout.config.ModelsConfig`):

``sd2``
    The real weights: ``stabilityai/stable-diffusion-2-inpainting`` and a transformers
    depth-estimation model, plus the LPIPS VGG backbone and the FID Inception network.
    The ``models`` rule runs :func:`fetch_models` once, on a machine with internet, into
    ``models.cache_dir``; every later rule reads only that folder (``local_files_only``).
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
carries :data:`RANDOM_WEIGHTS_WARNING` (see :func:`is_random`).

Architecture assumptions for ``sd2-random`` (written from the published architecture of
SD 2 inpainting and its diffusers configs; no file was downloaded to check them):

* UNet: ``UNet2DConditionModel`` with ``in_channels=9`` (4 noisy latents + 1 mask +
  4 masked-image latents), ``out_channels=4``, ``block_out_channels=(320, 640, 1280,
  1280)``, ``layers_per_block=2``, down blocks ``3 x CrossAttnDownBlock2D +
  DownBlock2D``, up blocks ``UpBlock2D + 3 x CrossAttnUpBlock2D``,
  ``attention_head_dim=(5, 10, 20, 20)`` (diffusers' historical name for the number of
  heads: every head is 64 wide), ``cross_attention_dim=1024``,
  ``use_linear_projection=True``, ``upcast_attention=False`` (the 512-px inpainting
  model, unlike the 768-v model), ``sample_size=64``, SiLU, 32 norm groups, eps 1e-5,
  ``flip_sin_to_cos=True``, ``freq_shift=0``. 16 self-attention (``attn1``) layers.
* VAE: ``AutoencoderKL`` with ``block_out_channels=(128, 256, 512, 512)``, 2 layers per
  block, 4 latent channels, 32 norm groups, ``scaling_factor=0.18215``.
* Text encoder: OpenCLIP ViT-H/14's text tower as ``CLIPTextModel``: hidden 1024,
  23 layers (SD2 uses the penultimate of OpenCLIP's 24, so the converted model keeps
  23), 16 heads, MLP 4096, GELU, vocabulary 49408, 77 positions, ``projection_dim``
  512, ``bos/eos/pad`` ids 0/2/1 as SD2's converted config. The tokenizer is a small
  byte-level BPE (the real 49408-entry vocabulary is not available offline); token ids
  stay below the embedding size, so the text encoder runs unchanged.
* Scheduler: ``PNDMScheduler`` (PLMS, ``skip_prk_steps=True``), ``scaled_linear`` betas
  0.00085 to 0.012 over 1000 steps, ``steps_offset=1``, ``set_alpha_to_one=False``,
  ``clip_sample=False``, epsilon prediction (the inpainting model is not v-prediction).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from innout.errors import InputError, StageError
from innout.packaged import PACKAGED_SETS, packaged_dir, verify_weights
from innout.stage import write_text_atomic

log = logging.getLogger("innout")

RANDOM_WEIGHTS_WARNING = "made with RANDOM weights: not a result"
"""The line every summary, report and figure made with a random model set carries."""

RANDOM_PRESETS = ("tiny", "sd2-random")
TINY_SEED = 0  # every random model is built from this seed
MANIFEST = "manifest.json"

# URLs of the two torch.hub checkpoints the metrics need (torchvision / torch-fidelity).
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_BACKBONE_URLS = {"vgg": VGG16_URL, "alex": ALEXNET_URL}  # torchvision's ImageNet trunks
MANIFEST_SPECS = ("inpainter", "depth", "lpips_backbone")  # what a manifest must agree on with the config

# --------------------------------------------------------------------------- configs

SD2_UNET = dict(
    sample_size=64,
    in_channels=9,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1.0,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    dual_cross_attention=False,
    use_linear_projection=True,
    upcast_attention=False,
    resnet_time_scale_shift="default",
)

SD2_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

SD2_TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    projection_dim=512,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

SD2_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

# The tiny set: same classes, same latent geometry (4 channels, factor 8), a few
# thousand parameters per block. Two UNet levels, both with attention (7 attn1 layers).
TINY_UNET = dict(
    sample_size=8,
    in_channels=9,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=(2, 4),  # numbers of heads (diffusers' naming), 16 wide each
    use_linear_projection=True,
)

TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.18215,
)

TINY_TEXT = dict(
    vocab_size=600,
    hidden_size=32,
    intermediate_size=64,
    projection_dim=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="gelu",
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)

# A few merges so that common words are not all single bytes (and merging is exercised).
_TINY_MERGES = (("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>"), ("e", "r</w>"))


# --------------------------------------------------------------------------- helpers

def is_random(models_cfg: Any) -> bool:
    """Whether this model set has random weights (its outputs are not results)."""
    return bool(_get(models_cfg, "random_weights", False)) or str(_get(models_cfg, "inpainter", "")) in RANDOM_PRESETS


def random_metric_backbones(models_cfg: Any) -> bool:
    """Whether LPIPS and FID run on random backbones: in random sets, and in sets whose
    ``lpips_backbone`` is ``random`` (``procedural``: no pretrained VGG or Inception exists
    offline, so neither is downloaded)."""
    return is_random(models_cfg) or str(_get(models_cfg, "lpips_backbone", "vgg")) == "random"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def hf_cache_dir(cache_dir: str | Path) -> Path:
    """Where the Hugging Face snapshots live inside the models cache."""
    return Path(cache_dir) / "huggingface"


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


class _seeded:
    """Build modules from a fixed seed without touching the caller's RNG state."""

    def __init__(self, seed: int, device: torch.device):
        self.seed, self.device = seed, torch.device(device)

    def __enter__(self):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        self._dev = torch.device(self.device)
        self._dev.__enter__()  # parameters are created (and initialised) on the target device
        return self

    def __exit__(self, *exc):
        self._dev.__exit__(*exc)
        return self._fork.__exit__(*exc)


# --------------------------------------------------------------------------- building

def tiny_tokenizer(model_max_length: int = 77):
    """A byte-level BPE CLIP tokenizer with a ~520-entry vocabulary, built in memory.

    transformers 5 ignores ``vocab_file=``; the vocabulary is passed as a dict."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    for symbol in alphabet:
        vocab[symbol + "</w>"] = len(vocab)
    for left, right in _TINY_MERGES:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=list(_TINY_MERGES), model_max_length=model_max_length)


def _scheduler(config: dict):
    from diffusers import PNDMScheduler

    return PNDMScheduler(**config)


def _assemble(unet, vae, text_encoder, tokenizer, scheduler):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_inpainter(seed: int = TINY_SEED, device: str | torch.device = "cpu"):
    """The ``tiny`` inpainter: a ``StableDiffusionInpaintPipeline`` of small random
    models (fp32, on ``device``), identical for the same seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with _seeded(seed, device):
        unet = UNet2DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    return _assemble(unet, vae, text_encoder, tiny_tokenizer(), _scheduler(SD2_SCHEDULER)).to(torch.device(device))


def build_sd2_random(seed: int = TINY_SEED, device: str | torch.device = "cpu"):
    """The SD2-inpainting architecture with random weights (fp32, built on ``device``:
    about a minute on two CPU cores, instant on a GPU; ~5 GB in fp32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with _seeded(seed, device):
        unet = UNet2DConditionModel(**SD2_UNET)
        vae = AutoencoderKL(**SD2_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD2_TEXT))
    return _assemble(unet, vae, text_encoder, tiny_tokenizer(77), _scheduler(SD2_SCHEDULER))


def sd2_unet_parameter_count() -> int:
    """Parameters of the SD2-inpainting UNet, counted on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD2_UNET)
    return sum(p.numel() for p in unet.parameters())


def save_tiny_inpainter(folder: str | Path, seed: int = TINY_SEED) -> Path:
    """Save the tiny inpainter as a diffusers folder (``save_pretrained``): loading it back
    is the path a real local folder takes."""
    folder = Path(folder)
    build_tiny_inpainter(seed).save_pretrained(folder)
    return folder


def build_tiny_depth(seed: int = TINY_SEED):
    """A Depth-Anything (DINOv2 backbone) of a few hundred thousand random parameters and
    its image processor (inputs resized to 98 px): transformers' ``depth-estimation``."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=98, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=8, reassemble_hidden_size=32, depth_estimation_type="relative")
    with _seeded(seed, "cpu"):
        model = DepthAnythingForDepthEstimation(config)
    processor = DPTImageProcessor(size={"height": 98, "width": 98}, keep_aspect_ratio=True, ensure_multiple_of=14)
    return model, processor


def save_tiny_depth(folder: str | Path, seed: int = TINY_SEED) -> Path:
    folder = Path(folder)
    model, processor = build_tiny_depth(seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------- loading

def load_inpainter(spec: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                   cache_dir: str | Path | None = None):
    """A ``StableDiffusionInpaintPipeline`` on ``device`` (no safety checker, progress
    bars off).

    ``spec``: ``tiny`` / ``sd2-random`` (random presets; ``tiny`` is read from the cache
    when :func:`fetch_models` saved it there, else built, identically), a local diffusers
    folder, or a hub id resolved in ``cache_dir`` with ``local_files_only=True`` (never
    the network). ``dtype="auto"``: fp16 on a GPU, fp32 on a CPU.
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
        kwargs = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False, torch_dtype=dtype)
        try:
            if local.is_dir():
                pipe = StableDiffusionInpaintPipeline.from_pretrained(local, **kwargs)
            else:
                cache = hf_cache_dir(cache_dir) if cache_dir is not None else None
                pipe = StableDiffusionInpaintPipeline.from_pretrained(spec, cache_dir=cache, **kwargs)
        except (OSError, EnvironmentError, ValueError) as err:
            where = local if local.is_dir() else f"{spec} in {cache_dir}"
            raise StageError("models", f"cannot load the inpainter {where} offline ({err.__class__.__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}); run the `models` rule first") from err
    pipe = pipe.to(device)
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def depth_model_path(spec: str, cache_dir: str | Path) -> str:
    """What to give transformers (``pipeline("depth-estimation", model=...)`` or
    ``AutoModelForDepthEstimation.from_pretrained``) for ``models.depth``: the saved tiny
    preset folder (built there on first use), a local folder, or the snapshot folder of a
    hub id inside the cache (raises when :func:`fetch_models` has not downloaded it)."""
    if spec == "tiny":
        folder = preset_dir(cache_dir, "depth", "tiny")
        if not (folder / "config.json").is_file():
            save_tiny_depth(folder)
        return str(folder)
    local = packaged_dir(spec, "depth") or Path(spec).expanduser()
    if local.is_dir():
        return str(local)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, cache_dir=hf_cache_dir(cache_dir), local_files_only=True)
    except Exception as err:  # huggingface_hub raises several kinds for "not in the cache"
        raise StageError("models", f"depth model {spec} is not in {cache_dir}; run the `models` rule first") from err


# --------------------------------------------------------------------------- fetching

def select_hub_files(files: Iterable[str]) -> list[str]:
    """The files of a hub repository a diffusers / transformers loader needs.

    Keeps configs and tokenizer files, and per folder one full-precision weight format
    (safetensors when present, else ``.bin``); drops fp16/non-EMA variants, original
    ``.ckpt`` checkpoints, the root-level original-format weights of a diffusers repo
    (it has ``model_index.json``), the safety checker, and other frameworks' weights."""
    files = sorted(set(files))
    diffusers_repo = "model_index.json" in files
    weight_ext = (".safetensors", ".bin")
    keep, weights = [], {}
    for path in files:
        folder, _, name = path.rpartition("/")
        if folder.split("/")[0] == "safety_checker" or name.endswith((".ckpt", ".msgpack", ".h5", ".onnx", ".pb")):
            continue
        if name.endswith(weight_ext):
            if any(tag in name for tag in (".fp16.", ".non_ema.", ".ema_only.", "-fp16.")) or (diffusers_repo and not folder):
                continue
            weights.setdefault(folder, []).append(path)
        elif name.endswith((".json", ".txt", ".model", ".md")) or name in ("merges.txt", "vocab.json"):
            keep.append(path)
    for folder, paths in weights.items():
        safetensors = [p for p in paths if p.endswith(".safetensors")]
        keep.extend(safetensors or paths)
        # a sharded checkpoint's index file is a .json and was kept above
    return sorted(keep)


def download_plan(models_cfg: Any, cache_dir: str | Path) -> list[dict]:
    """What :func:`fetch_models` downloads for a real model set: one entry per item,
    ``{"what", "kind": "hub" | "url", "source", "dest"}``."""
    cache_dir = Path(cache_dir)
    plan = []
    inpainter, depth = str(_get(models_cfg, "inpainter")), str(_get(models_cfg, "depth"))
    for what, source in (("inpainter", inpainter), ("depth", depth)):
        if source in RANDOM_PRESETS or source in PACKAGED_SETS or Path(source).expanduser().is_dir():
            continue  # built in code / shipped with the package / a local folder: nothing to download
        plan.append({"what": what, "kind": "hub", "source": source, "dest": str(hf_cache_dir(cache_dir))})
    checkpoints = torch_home(cache_dir) / "hub" / "checkpoints"
    backbone = str(_get(models_cfg, "lpips_backbone", "vgg"))
    if backbone in LPIPS_BACKBONE_URLS:
        url = LPIPS_BACKBONE_URLS[backbone]
        plan.append({"what": f"lpips-{backbone}", "kind": "url", "source": url, "dest": str(checkpoints / url.rsplit("/", 1)[1])})
    if not random_metric_backbones(models_cfg):
        plan.append({"what": "fid-inception", "kind": "url", "source": INCEPTION_URL,
                     "dest": str(checkpoints / INCEPTION_URL.rsplit("/", 1)[1])})
    return plan


def lpips_heads_path(backbone: str) -> Path:
    """The calibrated LPIPS v0.1 linear heads of ``backbone``: they ship inside the lpips
    package (``lpips/weights/v0.1/<net>.pth``), so nothing is downloaded for them."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{backbone}.pth"


def _download(item: dict) -> str:
    """One plan entry, downloaded (network). Returns where it now lies."""
    if item["kind"] == "hub":
        from huggingface_hub import HfApi, snapshot_download

        files = select_hub_files(HfApi().list_repo_files(item["source"]))
        return snapshot_download(item["source"], cache_dir=item["dest"], allow_patterns=files)
    dest = Path(item["dest"])
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(item["source"], str(dest), progress=False)
    return str(dest)


def _component(what: str, source: str, path: str | Path | None, random_weights: bool, note: str | None = None) -> dict:
    """One manifest entry: a component, where it came from, where it lies in the cache
    (None: built from its configs at load time, nothing stored) and whether its weights
    are random."""
    item = {"what": what, "source": source, "path": None if path is None else str(path), "random_weights": bool(random_weights)}
    if note:
        item["note"] = note
    return item


def packaged_component(what: str, spec: str) -> dict:
    """The manifest entry of a component shipped with the package, after checking every
    file of the set against the sha256 its ``manifest.json`` lists (a mismatch is an
    :class:`InputError` naming the file)."""
    shipped = verify_weights(packaged_dir(spec))
    return _component(what, f"{spec} (shipped with innout; {shipped.get('trained_on', '')})", packaged_dir(spec, what),
                      False, f"sha256 of every file verified against {packaged_dir(spec) / 'manifest.json'}")


def _random_components(models_cfg: Any, cache_dir: Path) -> list[dict]:
    """The offline presets: built from configs, nothing downloaded. ``tiny`` models are
    saved into the cache (``presets/``) so later stages load them from there like real
    ones; ``sd2-random`` is rebuilt from its seed at load time (5 GB of random numbers
    are not worth writing to disk; building takes seconds on a GPU)."""
    random_source = f"random, seed {TINY_SEED}"
    inpainter, depth = str(_get(models_cfg, "inpainter")), str(_get(models_cfg, "depth"))
    items = []
    if inpainter == "tiny":
        log.info("saving the tiny random inpainter into %s", preset_dir(cache_dir, "inpainter", "tiny"))
        items.append(_component("inpainter", f"tiny ({random_source})", save_tiny_inpainter(preset_dir(cache_dir, "inpainter", "tiny")), True))
    elif inpainter == "sd2-random":
        items.append(_component("inpainter", f"sd2-random ({random_source})", None, True, "SD2-inpainting architecture built from its configs at load time"))
    else:
        raise StageError("models", f"model set {_get(models_cfg, 'name')!r} is marked random but its inpainter is {inpainter!r} "
                                   f"(random inpainters: {', '.join(RANDOM_PRESETS)})")
    if depth == "tiny":
        log.info("saving the tiny random depth model into %s", preset_dir(cache_dir, "depth", "tiny"))
        items.append(_component("depth", f"tiny ({random_source})", save_tiny_depth(preset_dir(cache_dir, "depth", "tiny")), True))
    else:
        raise StageError("models", f"random model sets use the tiny depth model, got depth={depth!r}")
    items.append(_component("lpips", str(_get(models_cfg, "lpips_backbone")), None, True, "random backbone built at load time"))
    items.append(_component("fid-inception", "inception-v3-compat", None, True, "random Inception built at load time"))
    return items


def _real_components(models_cfg: Any, cache_dir: Path, download=None) -> list[dict]:
    """The real set: every plan entry downloaded into the cache (``download`` is
    :func:`_download`; tests pass a stand-in), plus the LPIPS heads of the lpips package."""
    download = download or _download
    items = []
    for what, source in (("inpainter", str(_get(models_cfg, "inpainter"))), ("depth", str(_get(models_cfg, "depth")))):
        local = Path(source).expanduser()
        if source in PACKAGED_SETS:
            items.append(packaged_component(what, source))
        elif local.is_dir():  # a user's own folder: used in place
            items.append(_component(what, source, local.resolve(), False, "local folder, used in place"))
    for item in download_plan(models_cfg, cache_dir):
        log.info("downloading %s (%s)", item["what"], item["source"])
        items.append(_component(item["what"], item["source"], download(item), False))
    backbone = str(_get(models_cfg, "lpips_backbone", "vgg"))
    if backbone in LPIPS_BACKBONE_URLS:
        heads = lpips_heads_path(backbone)
        if not heads.is_file():
            raise StageError("models", f"LPIPS linear heads missing: {heads} (reinstall the lpips package)")
        items.append(_component("lpips-heads", f"lpips package, v0.1 {backbone}", heads, False))
    if random_metric_backbones(models_cfg):
        items.append(_component("lpips", backbone, None, True, "random backbone built at load time"))
        items.append(_component("fid-inception", "inception-v3-compat", None, True, "random Inception built at load time"))
    return items


def fetch_models(models_cfg: Any, cache_dir: str | Path, download=None) -> dict:
    """Put every weight the workflow needs into ``cache_dir`` and write
    ``cache_dir/manifest.json``. Returns the manifest.

    Real sets download (run on a machine with internet: the ``models`` rule); random sets
    download nothing and save the tiny models into the cache (``presets/``), so later
    stages load them like real ones. The manifest names the model set and its specs
    (:func:`check_manifest` compares them with the config a later stage runs with) and,
    per component, ``what``, ``source``, ``path`` (in the cache; None when a random
    component is built from its configs at load time) and ``random_weights``. It holds
    no timestamp: the same config gives the same file."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    random_set = is_random(models_cfg)
    items = _random_components(models_cfg, cache_dir) if random_set else _real_components(models_cfg, cache_dir, download)
    manifest = {
        "model_set": str(_get(models_cfg, "name", "")),
        "specs": {key: str(_get(models_cfg, key, "")) for key in MANIFEST_SPECS},
        "random_weights": random_set,
        "warning": RANDOM_WEIGHTS_WARNING if random_set else None,
        "cache_dir": str(cache_dir),
        "env": {"TORCH_HOME": str(torch_home(cache_dir)), "HF_HUB_CACHE": str(hf_cache_dir(cache_dir))},
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
    if bool(manifest.get("random_weights")) != is_random(models_cfg):
        raise InputError(path, "its random_weights flag differs from the config's model set; rerun the `models` rule")
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
