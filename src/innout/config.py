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
from typing import Any, Optional

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
    # COLMAP on one thread: bit-identical poses run to run (same seed, same outputs); with more
    # threads they differ slightly and so does every later stage. Costs the demo ~15 s.
    deterministic: bool = True


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
    # auto: tiny-cuda-nn (fused hash grid + MLPs) on CUDA when it imports, else torch;
    # a tcnn NeRF's checkpoint loads only where tiny-cuda-nn does (CUDA)
    implementation: str = "auto"
    # Extra scale on top of nerfstudio's (which puts the cameras in [-1, 1]^3). 0 = auto:
    # from the frames' innout_bounds, bring the nearest content to ~1 unit from the
    # cameras (forward-facing captures otherwise sit mostly in the contracted region, where
    # a small hash grid has little resolution); 1 when the frames carry no bounds.
    pose_scale_factor: float = 1.0
    steps_per_checkpoint: int = 500  # resumable checkpoints in the stage's work dir
    log_every_steps: int = 100
    # quality check of the summary: PSNR/SSIM estimated on random patches of every view
    # (rendering whole views costs far more than training on a CPU; nothing reads them)
    eval_patches_per_view: int = 3
    eval_patch_size: int = 32
    tensorboard: bool = True  # scalars into the stage's folder (tensorboard/); the import costs seconds


@dataclass
class MasksConfig:
    """The masks stage (scenes that give masks of some views only; ``innout.masks``): a NeRF
    of the whole scene (the pretrain section's NeRF, trained on every pixel), each view's
    surface carved by the annotated masks' viewing cones with visibility, clean-up,
    optional SAM refinement, then the scene's mask dilation."""

    nerf_iterations: int = 0  # training steps of the whole-scene NeRF; 0: pretrain.iterations
    depth: str = "median"  # surface of a pixel: median (where the ray's weight reaches half) | expected
    visibility_tolerance: float = 0.03  # a view sees a point not farther than its surface x (1 + this)
    mask_margin_px: int = 1  # band outside a mask where a point on the object's surface still counts as inside
    propagation_voters: int = 3  # propagated views consulted for points no annotated view sees
    reach_factor: float = 2.5  # points no view decides may be object within this x the annotated object's radius
    open_radius: int = 1  # clean-up: opening radius in pixels (0: off)
    speck_fraction: float = 0.05  # clean-up: components smaller than this share of the largest are removed
    hole_fraction: float = 0.05  # clean-up: holes smaller than this share of the mask are filled
    # outline snapped to the image's edges (GrabCut in a band this wide on either side; 0 = off) ...
    snap_band_px: int = 2
    snap_min_iou: float = 0.8  # ... kept only when it still overlaps the carved mask this much
    # SAM refinement (transformers SamModel): "" = off; a hub id (facebook/sam-vit-base) or
    # a local folder; "random" = a small random-weight SamModel (offline tests, labelled)
    sam: str = ""
    sam_points: int = 3  # positive point prompts per view (deepest inside the propagated mask)
    sam_min_iou: float = 0.7  # SAM's mask replaces the propagated one only if they overlap this much


@dataclass
class ModelsConfig:
    """Which weights every stage loads, and what they are (``provenance``: every output
    made with them carries its label, :mod:`innout.provenance`). ``tiny`` and
    ``sd2-random`` are offline presets built from configs with RANDOM weights."""

    name: str = "sd2"  # the Hydra `model` group: sd2 | procedural | tiny | sd2-random | ...
    inpainter: str = "stabilityai/stable-diffusion-2-inpainting"  # hub id or local folder
    depth: str = "depth-anything/Depth-Anything-V2-Small-hf"  # transformers depth-estimation model
    provenance: str = "pretrained"  # pretrained | procedural (trained here) | random
    lpips_backbone: str = "vgg"  # the refine stage's patch loss (vgg | alex | random: offline, no ImageNet trunk)
    # the evaluate stage's LPIPS: AlexNet, as the published SPIn-NeRF / In-N-Out numbers
    # (the released code scores with torchmetrics' default, alex); vgg values are not comparable
    eval_lpips_backbone: str = "alex"
    fid_backbone: str = "inception"  # inception (torch-fidelity's) | random (offline)
    cache_dir: str = "resources/models"  # the manifest and torch.hub checkpoints; later rules read only what it lists
    # Hugging Face hub cache for hub models: null = the user's own (HF_HUB_CACHE, else
    # HF_HOME/hub, else ~/.cache/huggingface/hub), so a machine that holds SD2 reuses it
    hub_cache: Optional[str] = None
    dtype: str = "auto"  # auto = fp16 on GPU, fp32 on CPU; fp16 also fetches only the fp16 weight files
    # diffusers memory switches for small GPUs (innout.models.apply_memory_options)
    attention_slicing: str = "off"  # off | auto | max | a slice size
    vae_tiling: bool = False  # VAE encode/decode in tiles
    cpu_offload: str = "off"  # off | model | sequential (GPU only; slower, far less GPU memory)


@dataclass
class BaseViewConfig:
    """Stage 3: base-view selection and the prior fit."""

    n_candidates: int = 5
    phash_size: int = 8  # pHash of hash_size**2 bits (imagehash default)
    depth_kind: str = "disparity"  # what the monocular model outputs: disparity (Depth Anything) | depth
    depth_fit: str = "ransac"  # robust scale/offset fit: ransac (LMedS) | irls (Tukey from repeated median)
    depth_fit_iterations: int = 500  # random 2-point models (ransac)
    depth_inlier_sigmas: float = 2.5  # inliers: |residual| <= this x robust sigma
    # Plausibility of the aligned prior (innout.depth_prior.check_plausible): a fit with a
    # non-positive scale, or whose median relative error against the NeRF's depth outside
    # the mask is above depth_prior_max_rel_error, is implausible (measured in README,
    # "Depth prior plausibility"). depth_prior_use: auto (use it only when plausible; else
    # the prior fit and refinement run without the depth term, colour only) | always (use
    # it even when implausible, with a warning) | never (colour only).
    depth_prior_max_rel_error: float = 0.3
    depth_prior_use: str = "auto"
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
    tensorboard: bool = True  # the prior fit's scalars into base/tensorboard/


@dataclass
class InpaintConfig:
    """Stage 4: aligned multi-view inpainting."""

    steps: int = 20
    guidance_scale: float = 7.5
    # an empty prompt and negative prompt give identical embeddings, so classifier-free
    # guidance changes nothing: run one UNet batch instead of two (innout.diffusion.guidance)
    skip_identical_guidance: bool = True
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
    # shards' base trajectories may differ by this much (mean absolute difference inside the
    # base view's mask, 8-bit grey levels: other GPU models / kernels) before the gather
    # calls them a mismatch; different settings or inputs are always one
    shard_tolerance: float = 2.0


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
    # how "most similar to the base" is ranked: phash (the paper: pHash of the box crops of
    # the inpaintings) | lpips (the released code: LPIPS of those crops) | pose (camera pose)
    subset_by: str = "phash"
    # re-initialise the NeRF's fields (a fresh nerfacto, as the released code does) instead
    # of continuing from the base stage's NeRF; training then starts at reset_learning_rate
    reset_fields: bool = False
    reset_learning_rate: float = 1e-2  # nerfacto's, for a NeRF trained from scratch
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
    tensorboard: bool = True  # scalars into refine/tensorboard/


@dataclass
class EvaluateConfig:
    """Metrics of the test views, inside the bounding box of each test view's mask (the
    SPIn-NeRF protocol; ``innout.evaluate``). Networks and weights: the ``models`` section
    (``lpips_backbone``, ``fid_backbone``, ``cache_dir``)."""

    fid: bool = True  # FID over the scene's test crops (needs >= 2 views; biased at ~40 views)
    fid_batch_size: int = 8  # crops of equal size per Inception forward pass
    lpips_min_side: int = 32  # crops with a shorter side are enlarged (bilinear) to this before LPIPS


@dataclass
class RenderConfig:
    """What is rendered of the final NeRF (``innout.render.run_render``): the evaluation box
    of every ground-truth test view, a few train views with depth (the report's
    before/after), and a video along a smooth closed camera path through train cameras
    (written as nerfstudio's camera_path.json)."""

    train_views: int = 6  # train views rendered (base view first, the rest evenly spread); -1: all
    train_scale: float = 1.0  # resolution of the train-view renders relative to the working one
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
    masks: MasksConfig = field(default_factory=MasksConfig)
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
