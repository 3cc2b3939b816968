"""The architectures of the offline model sets and their random-weight builds: the SD2
inpainting configs (``sd2-random``: the real architecture, random weights) and the ``tiny``
configs of the same classes, built deterministically from :data:`TINY_SEED`; the tiny
presets are saved as folders so later stages load them like real weights. No hub access.

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

from pathlib import Path

import torch

TINY_SEED = 0  # every random model is built from this seed


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
