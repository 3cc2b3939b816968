"""Method hyper-parameters as Hydra structured configs.

The workflow's `config.yaml` picks a preset (``method.preset``: ``smoke`` for CPU minutes,
``paper`` for the published settings) and may add Hydra overrides
(``method.overrides: ["pretrain.iterations=2000"]``). Each stage resolves the config once,
uses its own section and writes the whole resolved config next to its output, so every
result says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

CONF_DIR = Path(__file__).parent / "conf"


@dataclass
class PosesConfig:
    """COLMAP (pycolmap) structure-from-motion."""

    max_num_features: int = 2048  # SIFT features per image
    max_image_size: int = 1600  # longest side given to SIFT; sources are downscaled to it
    matcher: str = "auto"  # auto (sequential, exhaustive if too few register) | sequential | exhaustive
    sequential_overlap: int = 10  # neighbours matched by the sequential matcher
    min_registered_fraction: float = 0.95  # fewer registered train views is an error
    # PINHOLE: the benchmark inputs (SPIn-NeRF/LLFF, procedural) are undistorted, and the
    # geometry stage trains on pinhole cameras. SIMPLE_RADIAL/OPENCV estimate distortion,
    # which pre-training then refuses (undistort the images first).
    camera_model: str = "PINHOLE"


@dataclass
class PretrainConfig:
    """Stage 2: nerfacto geometry pre-training on unmasked pixels (defaults: the paper's,
    i.e. nerfstudio's nerfacto with view-dependent colour off)."""

    iterations: int = 10000
    rays_per_batch: int = 4096
    eval_rays_per_chunk: int = 32768  # rays per forward pass when rendering
    num_nerf_samples_per_ray: int = 48
    num_proposal_samples_per_ray: list[int] = field(default_factory=lambda: [256, 96])
    proposal_hash_max_res: list[int] = field(default_factory=lambda: [128, 256])  # one per proposal net
    proposal_num_levels: int = 5
    proposal_log2_hashmap_size: int = 17
    proposal_hidden_dim: int = 16
    num_levels: int = 16  # hash-grid levels of the main field
    log2_hashmap_size: int = 19
    max_res: int = 2048
    hidden_dim: int = 64
    hidden_dim_color: int = 64
    use_view_dependent_color: bool = False  # the paper switches it off for stability
    use_appearance_embedding: bool = False
    learning_rate: float = 1e-2  # Adam, proposal nets and field
    lr_final: float = 1e-4  # exponential decay towards this ...
    lr_decay_steps: int = 200000  # ... reached after this many steps (nerfacto: 200k)
    proposal_warmup: int = 5000  # steps over which proposal updates thin out to every `proposal_update_every`
    proposal_update_every: int = 5
    proposal_weights_anneal_max_num_iters: int = 1000
    distortion_loss_mult: float = 0.002
    interlevel_loss_mult: float = 1.0
    mixed_precision: bool = True  # CUDA only; CPU trains in float32
    implementation: str = "torch"  # torch | tcnn (tcnn checkpoints do not load on CPU)
    # Extra scale on top of nerfstudio's (which puts the cameras in [-1, 1]^3). 0 = auto:
    # from the frames' innout_bounds, bring the nearest content to ~1 unit from the
    # cameras (forward-facing captures otherwise sit mostly in the contracted region, where
    # a small hash grid has little resolution); 1 when the frames carry no bounds.
    pose_scale_factor: float = 1.0
    steps_per_checkpoint: int = 500  # resumable checkpoints in the stage's work dir
    log_every_steps: int = 100


@dataclass
class ModelsConfig:
    """Which weights every stage loads. ``tiny`` and ``sd2-random`` are offline presets
    built from configs with RANDOM weights: their outputs are labelled so."""

    name: str = "sd2"  # sd2 | procedural | tiny | sd2-random (the Hydra `model` group)
    inpainter: str = "stabilityai/stable-diffusion-2-inpainting"  # hub id or local folder
    depth: str = "depth-anything/Depth-Anything-V2-Small-hf"  # transformers depth-estimation model
    lpips_backbone: str = "vgg"
    random_weights: bool = False
    cache_dir: str = "resources/models"  # filled once by the `models` rule; later rules read only this
    dtype: str = "auto"  # auto = fp16 on GPU, fp32 on CPU


@dataclass
class BaseViewConfig:
    """Stage 3: base-view selection and the prior fit."""

    n_candidates: int = 5
    phash_size: int = 8  # pHash of hash_size**2 bits (imagehash default)
    depth_kind: str = "disparity"  # what the monocular model outputs: disparity (Depth Anything) | depth
    depth_fit: str = "ransac"  # robust scale/offset fit: ransac (LMedS) | irls (Tukey from repeated median)
    depth_fit_iterations: int = 500  # random 2-point models (ransac)
    depth_inlier_sigmas: float = 2.5  # inliers: |residual| <= this x robust sigma
    # The prior fit: the pre-trained NeRF is fine-tuned with L_rec (random rays through
    # unmasked pixels of all train views: keeps the rest of the scene) + prior_weight *
    # L_prior (the base view's masked pixels: colour MSE against its inpainting +
    # depth_weight * DS-NeRF depth loss against the aligned monocular depth). The paper
    # gives no numbers for this fit; these mirror the refinement's batch sizes (4096 +
    # 1024 rays), fine-tune at a tenth of nerfacto's learning rate and weigh the depth
    # term as DS-NeRF does (lambda_D = 0.1).
    prior_iterations: int = 1000
    rays_per_batch: int = 4096  # L_rec rays per step
    prior_rays_per_batch: int = 1024  # L_prior rays per step
    prior_weight: float = 1.0
    depth_weight: float = 0.1  # DS-NeRF depth loss inside L_prior
    # DS-NeRF's sigma (std of the ray-termination target) as a FRACTION of the median
    # aligned prior depth inside the mask, so it does not depend on the scene's units
    depth_sigma: float = 0.05
    learning_rate: float = 1e-3  # Adam (nerfacto's two groups), decaying exponentially ...
    lr_final: float = 1e-4  # ... to this at the last iteration
    # linear learning-rate warm-up: a fresh Adam moves every parameter with a gradient by
    # ~lr on its first steps whatever the gradient's size; measured on the demo, one
    # un-warmed step at 5e-3 costs the unmasked pixels 3 dB
    warmup_steps: int = 100
    steps_per_checkpoint: int = 200  # resumable checkpoints in the stage's work dir
    log_every_steps: int = 50


@dataclass
class InpaintConfig:
    """Stage 4: aligned multi-view inpainting."""

    steps: int = 20
    guidance_scale: float = 7.5
    ila_lambda: float = 0.2  # weight of a view's own attention; 1 - lambda goes to the base view (paper 0.2, released code 0.1)
    ila: bool = True  # false: the "without ILA" ablation (every view denoised on its own)
    resolution: int = 512  # inpainting resolution (shorter side), multiple of 8
    batch_size: int = 4  # target views denoised together
    ela: str = "composite"  # initial-latent alignment: composite (paper) | splat (released code) | off (ablation)
    ela_interpolation: str = "bilinear"  # how base noise is read at a projected sample: bilinear | nearest
    ela_min_visible: float = 0.5  # rays with less of their weight inside the base view get fresh noise
    ela_region: str = "all"  # all (paper: the whole latent) | mask (aligned only inside the dilated mask)
    ela_mask_dilation: int = 1  # latent pixels the latent-resolution mask is dilated by
    scheduler: str = "pipeline"  # pipeline (what the model ships: PNDM for SD2-inpainting) | ddim | pndm
    # the consistency score renders the NeRF's depth of the masked pixels of every view on
    # a grid of every n-th row and column (1: all; a regular subsample keeps the mean unbiased)
    consistency_stride: int = 1


@dataclass
class RefineConfig:
    """Stage 5: refinement, L = L_rec + prior_weight * L_prior + lambda_patch * L_patch
    (defaults: the paper's, or the released code's where the paper is silent; see
    ``innout.refine``)."""

    iterations: int = 5000  # paper 5k (released code: 6k)
    rays_per_batch: int = 4096  # L_rec: random rays from unmasked pixels of all train views
    prior_weight: float = 1.0  # multiplies L_prior (base view's masked pixels: colour MSE + depth)
    prior_rays_per_batch: int = 1024  # rays per step for L_prior
    prior_depth_weight: float = 0.1  # weight of the DS-NeRF depth term inside L_prior (colour MSE has 1)
    # DS-NeRF's sigma, relative to the median of the base view's depth prior inside the mask
    # (scene units differ between scenes; a relative width transfers)
    prior_depth_sigma: float = 0.02
    learning_rate: float = 1e-3  # Adam (nerfacto's optimisers) starting from the base NeRF ...
    lr_final: float = 1e-4  # ... decaying exponentially to this over the iterations
    steps_per_checkpoint: int = 500  # resumable state in results/{scene}/.work/refine
    log_every_steps: int = 100
    keep_fraction: float = 0.5  # patch views: share of each of the 12 groups kept (most similar to the base)
    include_base_in_patches: bool = False  # the base view is supervised by L_prior already
    patch_size: int = 256  # square patches inside the mask's bounding box (clipped to the image)
    patches_per_step: int = 1  # patches rendered per step (released code: 1)
    lambda_patch: float = 0.01  # multiplies L_patch = l1 + lpips + adv (applied in refine.patch_loss)
    l1_weight: float = 1.0
    lpips_weight: float = 1.0  # 0: the "without LPIPS" ablation
    adv_weight: float = 1.0  # 0: the "without the adversarial term" ablation
    disc_tile: int = 64  # discriminator input (power of two >= 8); smaller patches are resized up to it
    disc_tiles: str = "grid"  # grid (every non-overlapping tile of a patch) | random (tiles_per_patch crops)
    tiles_per_patch: int = 4  # random mode only
    disc_channels: int = 256  # channels at the tile resolution, doubling per halving ...
    disc_max_channels: int = 512  # ... capped here (StyleGAN2-ADA at 64 px: 256 / 512)
    disc_mbstd_group: int = 4  # minibatch-stddev group size
    disc_equalized_lr: bool = True  # StyleGAN2's equalized learning rate
    disc_optimizer: str = "adam"  # adam (betas 0, 0.99 as StyleGAN2) | rmsprop (released code)
    disc_lr: float = 2e-3
    r1_gamma: float = 0.2  # R1 = gamma / 2 * E||grad D(real)||^2 (images in [-1, 1]); released code: 0.2
    r1_every: int = 1  # lazy R1: every k D steps, scaled by k (StyleGAN2 uses 16)


@dataclass
class EvaluateConfig:
    """Metrics of the test views, inside the bounding box of each test view's mask (the
    SPIn-NeRF protocol; ``innout.evaluate``). Networks and weights: the ``models`` section
    (``lpips_backbone``, ``random_weights``, ``cache_dir``)."""

    fid: bool = True  # FID over the scene's test crops (needs >= 2 views; biased at ~40 views)
    fid_batch_size: int = 8  # crops of equal size per Inception forward pass
    lpips_min_side: int = 32  # crops with a shorter side are enlarged (bilinear) to this before LPIPS


@dataclass
class RenderConfig:
    """Renders of the final NeRF: every test and train camera, depth maps and a video along
    a smooth closed camera path through some train cameras (``innout.render.run_render``)."""

    train_scale: float = 1.0  # resolution of the train-camera renders relative to the working one
    video_keyframes: int = 8  # train cameras the path passes through (ordered around their centre)
    video_frames: int = 120
    video_fps: int = 30
    video_scale: float = 1.0  # video resolution relative to the working one (rounded to even pixels)
    video_crf: int = 18  # x264 constant rate factor (lower: better quality, larger file)
    chunk: int = 0  # rays per forward pass; 0: the NeRF's own eval chunk


@dataclass
class MethodConfig:
    preset: str = "paper"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    models: ModelsConfig = field(default_factory=ModelsConfig)
    poses: PosesConfig = field(default_factory=PosesConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    base: BaseViewConfig = field(default_factory=BaseViewConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    render: RenderConfig = field(default_factory=RenderConfig)


ConfigStore.instance().store(name="base_method", node=MethodConfig)


def load_method_config(preset: str = "smoke", overrides: list[str] | tuple[str, ...] = (), model: str | None = None) -> Any:
    """Compose the preset (and model preset) with Hydra; a read-only, resolved DictConfig."""
    GlobalHydra.instance().clear()
    chosen = [f"preset={preset}"] + ([f"model={model}"] if model else [])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="method", overrides=[*chosen, *overrides])
    OmegaConf.resolve(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def write_resolved(cfg: Any, path: Path) -> None:
    """The resolved config next to a stage's output (YAML)."""
    Path(path).write_text(OmegaConf.to_yaml(cfg))


def stage_params(cfg: Any, stage: str, *also: str) -> dict:
    """The part of the method config a stage depends on, as plain data.

    Snakemake reruns a job when its params change, so a rule passes exactly this:
    changing the refine section reruns refine (and downstream), not pre-training.
    ``also`` names further sections the stage reads (e.g. ``models``)."""
    params = {"preset": cfg.preset, "seed": cfg.seed, "device": cfg.device}
    for section in (stage, *also):
        params[section] = OmegaConf.to_container(cfg[section], resolve=True)
    return params


def config_from_params(params: dict) -> Any:
    """A read-only DictConfig from :func:`stage_params` (what a rule script receives)."""
    cfg = OmegaConf.create(dict(params))
    OmegaConf.set_readonly(cfg, True)
    return cfg
