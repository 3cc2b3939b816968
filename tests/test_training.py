"""Training the `procedural` model set (innout.training) on tiny data, and the shipped weights."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from innout.errors import InputError
from innout.training import TrainConfig, apply_overrides, sub_seed, train_models
from innout.training import data as data_module
from innout.training.data import MEASUREMENT_SCENES, RESERVED_SEEDS, DataConfig, check_disjoint, render_views, training_scenes
from innout.training.depth import DepthConfig, build_depth, predict, ssi_losses, train_depth
from innout.training.inpainter import (
    OBJECT,
    PairSampler,
    UnetConfig,
    assemble_pipeline,
    build_samples,
    build_text_encoder,
    build_unet,
    eps_with_base,
    noisy_inputs,
    train_unet,
)
from innout.training.loop import LoopConfig
from innout.packaged import verify_weights
from innout.training.masks import blob_mask, box_mask, silhouette_mask
from innout.training.vae import VaeConfig, build_vae, reconstruction_losses, to_signed, train_vae

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "innout" / "weights" / "procedural"

# A few seconds of everything: 2 scenes (one per variant) x 4 views of 64x48.
TINY_DATA = DataConfig(scenes=2, views_per_scene=4, width=64, height=48, supersample=1, first_seed=50_000, workers=1)


# The three ILA lessons (docs/ila-training.md), on and off: a unit test of one of them, or of
# the plain steps, states which it starts from rather than relying on the defaults.
LESSONS_ON = dict(pattern_fraction=0.4, ila_base_gradient=True, ila_attention_weight=0.05, pattern_mean="background")
LESSONS_OFF = dict(pattern_fraction=0.0, ila_base_gradient=False, ila_attention_weight=0.0)


def tiny_config(steps: int = 4) -> TrainConfig:
    loop = dict(steps=steps, batch=4, warmup=1, checkpoint_every=2)
    return TrainConfig(
        seed=3, threads=1, data=replace(TINY_DATA),
        vae=VaeConfig(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, crop=32, loop=LoopConfig(lr=2e-3, **loop)),
        unet=UnetConfig(block_out_channels=(32, 32), head_width=16, ila_fraction=0.5, encode_batch=4,
                        loop=LoopConfig(lr=1e-3, ema=0.9, **loop)),
        depth=DepthConfig(hidden_size=32, layers=4, heads=2, input_size=56, neck_hidden_sizes=(8, 8, 16, 16),
                          fusion_hidden_size=8, head_hidden_size=8, loop=LoopConfig(lr=1e-3, **loop)),
    )


@pytest.fixture(scope="module")
def views():
    return render_views(TINY_DATA)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _with_steps(loop: LoopConfig, steps: int, **kw) -> LoopConfig:
    return replace(loop, steps=steps, **kw)


# ------------------------------------------------------------------ held-out scenes

def _scene_seeds_in_tests() -> set[int]:
    """Every procedural scene seed a test names (ProceduralScene(variant, N), seed=N next to
    variant=, "seed": N in a scene dict)."""
    seeds = set()
    patterns = (r"ProceduralScene\(\s*\"\w+\"\s*,\s*(\d+)", r"variant=\"\w+\",\s*seed=(\d+)", r"\"seed\":\s*(\d+)",
                r"\"--seed\",\s*\"(\d+)\"")
    for path in (ROOT / "tests").glob("*.py"):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        for pattern in patterns:
            seeds |= {int(s) for s in re.findall(pattern, text)}
    return seeds


def test_reserved_seeds_hold_the_demo_the_tests_and_the_measurement_scenes():
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    demo_seeds = {int(spec["seed"]) for spec in config["generated"].values()}
    test_seeds = _scene_seeds_in_tests()
    assert {0, 2} <= test_seeds  # the scan finds the seeds the tests use
    assert demo_seeds | test_seeds | {s for _, s in MEASUREMENT_SCENES} <= RESERVED_SEEDS
    assert MEASUREMENT_SCENES == (("forward", 1000), ("360", 1001))


def test_views_render_in_other_processes_and_equal_those_rendered_in_this_one(views):
    # processes, not threads: threads did not scale past a few cores (innout.training.data)
    with data_module._pool(2) as pool:
        assert pool.submit(os.getpid).result() != os.getpid()
    pooled = render_views(replace(TINY_DATA, workers=2))
    assert all(np.array_equal(getattr(pooled, f.name), getattr(views, f.name)) for f in fields(pooled))


def test_training_refuses_reserved_seeds(tmp_path):
    with pytest.raises(ValueError, match="1000"):
        training_scenes(DataConfig(first_seed=998, scenes=3))
    with pytest.raises(ValueError, match="reserved"):
        check_disjoint([5000, 0])
    check_disjoint([100, 999, 1002])
    scenes = training_scenes(DataConfig(scenes=4))
    assert {v for v, _ in scenes} == {"forward", "360"} and not {s for _, s in scenes} & RESERVED_SEEDS
    out = tmp_path / "weights"
    with pytest.raises(ValueError, match="reserved"):
        train_models(out, apply_overrides(tiny_config(), ["data.first_seed=90"]), tmp_path / "work")
    assert not out.exists() and not list((tmp_path / "work").glob("views-*"))  # refused before any work
    with pytest.raises(ValueError, match="pattern_mean"):  # a typo fails now, not after the VAE's minutes
        train_models(out, apply_overrides(tiny_config(), ["unet.pattern_mean=grey"]), tmp_path / "work")
    assert not out.exists() and not list((tmp_path / "work").glob("views-*"))


def test_overrides_reach_nested_settings_and_unknown_keys_fail():
    cfg = apply_overrides(TrainConfig(), ["unet.loop.steps=7", "vae.block_out_channels=[8, 16, 16, 16]", "seed=4",
                                          "vae.loop.lr=5e-4"])
    assert cfg.unet.loop.steps == 7 and cfg.vae.block_out_channels == (8, 16, 16, 16) and cfg.seed == 4
    assert cfg.vae.loop.lr == 5e-4 and TrainConfig().vae.loop.lr != 5e-4  # a fresh config is untouched
    with pytest.raises(ValueError, match="unet.loop.stepz"):
        apply_overrides(TrainConfig(), ["unet.loop.stepz=3"])


# ------------------------------------------------------------------ masks

def test_masks_cover_a_bounded_fraction_and_silhouettes_are_dilated_like_the_scene_import():
    rng = np.random.default_rng(0)
    for draw in (box_mask, blob_mask):
        fractions = [draw(rng, 120, 160).mean() for _ in range(50)]
        assert 0.03 <= min(fractions) and max(fractions) <= 0.45
    coverage = np.zeros((120, 160), np.float32)
    coverage[50:60, 70:80] = 1.0
    coverage[49, 70:80] = 0.4  # under half covered: not the object
    mask = silhouette_mask(coverage)
    rows, cols = np.nonzero(mask)
    # 5 dilations by a 5x5 square grow the 10x10 square by 10 px on every side
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40, 69, 60, 89)
    a = [box_mask(np.random.default_rng(7), 48, 64) for _ in range(2)]
    assert np.array_equal(a[0], a[1])


# ------------------------------------------------------------------ each model learns

def test_vae_reconstruction_loss_falls(views):
    cfg = tiny_config().vae
    x = to_signed(torch.from_numpy(views.background[:4]))

    def l1(vae) -> float:
        with torch.no_grad():
            return float(reconstruction_losses(vae.decode(vae.encode(x).latent_dist.mode()).sample, x)["l1"])

    before = l1(build_vae(cfg, 1))
    vae, summary = train_vae(views, replace(cfg, loop=_with_steps(cfg.loop, 40)), 1)
    assert l1(vae) < 0.85 * before
    assert vae.config.scaling_factor == pytest.approx(summary["scaling_factor"]) and summary["scaling_factor"] > 0
    assert len(summary["history"]) == 40 and summary["steps"] == 40


def _pipeline(views, cfg: TrainConfig, vae_steps: int = 10):
    vae, _ = train_vae(views, replace(cfg.vae, loop=_with_steps(cfg.vae.loop, vae_steps)), 1)
    text_encoder, tokenizer = build_text_encoder(2)
    unet = build_unet(cfg.unet, text_encoder.config.hidden_size, 3)
    return assemble_pipeline(unet, vae, text_encoder, tokenizer)


def _fixed_eps_loss(pipe, data, embeds) -> float:
    gen = torch.Generator().manual_seed(0)
    x0 = data["target"][:8]
    t = torch.tensor([50, 150, 300, 450, 600, 750, 850, 950])[: len(x0)]
    noise = torch.randn(x0.shape, generator=gen)
    ab = pipe.scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    x_in = torch.cat([ab.sqrt() * x0 + (1 - ab).sqrt() * noise, data["mask"][:8], data["masked"][:8]], 1)
    with torch.no_grad():
        eps = pipe.unet(x_in, t, encoder_hidden_states=embeds.expand(len(x0), -1, -1)).sample
    return float((eps - noise).pow(2).mean())


def test_unet_epsilon_loss_falls_with_plain_and_ila_steps(views):
    cfg = tiny_config()
    pipe = _pipeline(views, cfg)
    data = build_samples(pipe, views, cfg.unet, 4)
    n = len(views) * cfg.unet.masks_per_view
    assert data["target"].shape == (n, 4, 6, 8) and data["mask"].shape == (n, 1, 6, 8) and data["masked"].shape == (n, 4, 6, 8)
    assert int((data["kind"] == OBJECT).sum()) == len(views)  # one object-removal sample per view
    embeds = pipe.encode_prompt("", torch.device("cpu"), 1, False)[0]
    before = _fixed_eps_loss(pipe, data, embeds)
    plain = replace(cfg.unet, **LESSONS_OFF, loop=_with_steps(cfg.unet.loop, 60, ema=0.0))
    summary = train_unet(pipe, data, embeds, plain, 5)
    after = _fixed_eps_loss(pipe, data, embeds)
    assert after < 0.7 * before
    kinds = {key for h in summary["history"] for key in h}
    assert {"mse_ila", "mse_plain"} <= kinds  # both kinds of step ran
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in pipe.unet.attn_processors.values())  # ILA uninstalled


def _offsets(painted: np.ndarray, original: np.ndarray) -> np.ndarray:
    return painted.astype(np.float64) / 255.0 - original.astype(np.float64) / 255.0


def _forward_scene(views):
    """The first forward scene's views (indices), every view's hole and its first view as the reference."""
    scene = [i for i, (variant, _) in enumerate(training_scenes(TINY_DATA)) if variant == "forward"][0]
    members = np.nonzero(views.scene == scene)[0]
    holes = np.stack([silhouette_mask(c) for c in views.coverage])
    return members, holes, int(members[0])


def test_hidden_pattern_is_one_field_painted_in_3d_behind_the_references_object(views):
    from innout.training.hidden_pattern import paint_scene, unproject

    members, holes, ref = _forward_scene(views)
    painted = paint_scene(views, members, ref, holes, 0.1, np.random.default_rng(0))
    ref_offset = _offsets(painted["background"][0], views.background[ref])
    ref_changed = np.abs(ref_offset).max(-1) > 2 / 255
    assert ref_changed.sum() > 0.5 * holes[ref].sum() and not (ref_changed & ~holes[ref]).any()  # all behind its object
    for k, i in enumerate(members[1:], 1):
        offset = _offsets(painted["background"][k], views.background[i])
        changed = np.abs(offset).max(-1) > 2 / 255
        assert painted["covered"][k] > 0.5  # forward cameras: most of a target's hole shows the reference's region
        # the same 3D points carry the same colour offset in the reference (nearest pixel)
        uv, _ = views.camera(ref).project(unproject(views.camera(i), views.background_depth[i])[changed])
        at_ref = ref_offset[np.floor(uv[:, 1]).astype(int), np.floor(uv[:, 0]).astype(int)]
        assert np.abs(offset[changed] - at_ref).mean() < 0.3 * np.abs(offset[changed]).mean()
        on_object = views.coverage[i] >= 0.5
        assert np.array_equal(painted["rgb"][k][on_object], views.rgb[i][on_object])  # the object stays in front


def test_pattern_mean_background_keeps_the_regions_mean_colour_and_only_that_changes(views):
    from innout.training.hidden_pattern import paint_scene

    members, holes, ref = _forward_scene(views)
    painted = {mean: paint_scene(views, members, ref, holes, 0.1, np.random.default_rng(0), mean)
               for mean in ("random", "background")}
    region = holes[ref] & (np.abs(_offsets(painted["random"]["background"][0], views.background[ref])).max(-1) > 2 / 255)
    offsets = {mean: _offsets(p["background"][0], views.background[ref])[region] for mean, p in painted.items()}
    assert np.abs(offsets["random"].mean(0)).max() > 0.02  # a colour shift the context cannot predict
    assert np.abs(offsets["background"].mean(0)).max() < 2 / 255  # none (uint8 rounding)
    shift = offsets["random"] - offsets["background"]  # same draws, same waves: one colour for the whole region
    assert np.abs(shift - shift.mean(0)).mean() < 2 / 255
    with pytest.raises(ValueError, match="pattern mean"):
        paint_scene(views, members, ref, holes, 0.1, np.random.default_rng(0), "grey")


def test_unet_trains_on_hidden_pattern_pairs_and_the_option_off_changes_nothing(views):
    from innout.training.hidden_pattern import build_pattern_samples

    cfg = tiny_config()
    pipe = _pipeline(views, cfg)
    data = build_samples(pipe, views, cfg.unet, 4)
    pattern = build_pattern_samples(pipe, views, 0.15, 2, 7, encode_batch=4)
    assert pattern["target"].shape[1:] == data["target"].shape[1:] and pattern["mask"].shape[1:] == data["mask"].shape[1:]
    assert torch.equal(pattern["base"][pattern["base"]], pattern["base"])  # every pair's base is a reference
    assert len(pattern["target"]) == 2 * len(views)  # 2 references per scene, every view of it each
    embeds = pipe.encode_prompt("", torch.device("cpu"), 1, False)[0]
    loop = _with_steps(cfg.unet.loop, 6, ema=0.0)
    on = replace(cfg.unet, **LESSONS_OFF, loop=loop)
    on = replace(on, pattern_fraction=0.5, ila_base_gradient=True, pattern_min_covered=0.0)
    summary = train_unet(pipe, data, embeds, on, 5, pattern=pattern)
    assert {"mse_pattern", "mse_ila", "mse_plain"} & {k for h in summary["history"] for k in h} >= {"mse_pattern"}
    with pytest.raises(ValueError, match="pattern"):
        train_unet(pipe, data, embeds, on, 5)
    off = replace(cfg.unet, **LESSONS_OFF, loop=loop)
    trained = []
    for given in (None, pattern):  # off: the same seed trains the same weights, samples given or not
        fresh = _pipeline(views, cfg)
        train_unet(fresh, data, embeds, off, 5, pattern=given)
        trained.append(fresh.unet)
    assert _same_weights(*trained)


def _counterpart_cross_entropy(pipe, data: dict, views, embeds: torch.Tensor) -> float:
    """The attention-to-base loss of fixed pairs at a fixed t (ILA at lambda 0)."""
    from innout.ila import ILAController, ila_installed
    from innout.training.counterparts import Counterparts, attention_loss

    gen = torch.Generator().manual_seed(0)
    targets, bases = PairSampler(data).sample(8, gen)
    t = torch.full((8,), 600)
    alphas = pipe.scheduler.alphas_cumprod.float()
    base_in, _, _ = noisy_inputs(data, bases, t, alphas, gen)
    x_in, _, _ = noisy_inputs(data, targets, t, alphas, gen)
    kept, controller = [], ILAController()
    with torch.no_grad(), ila_installed(pipe.unet, controller):
        eps_with_base(pipe.unet, controller, base_in, t, x_in, t, 0.0, embeds.expand(8, -1, -1), attention=kept)
    counterparts = Counterparts(views, tuple(data["target"].shape[-2:]), 0.6)
    return float(attention_loss(kept, counterparts, data["view"][targets], data["view"][bases])[0])


def test_counterpart_lesson_moves_the_attention_to_the_base_onto_the_counterparts(views):
    cfg = tiny_config()
    pipe = _pipeline(views, cfg)
    data = build_samples(pipe, views, cfg.unet, 4)
    embeds = pipe.encode_prompt("", torch.device("cpu"), 1, False)[0]
    on = replace(cfg.unet, **LESSONS_OFF, loop=_with_steps(cfg.unet.loop, 40, ema=0.0))
    on = replace(on, ila_fraction=1.0, ila_lambda=(0.0, 0.0), ila_attention_weight=1.0)
    with pytest.raises(ValueError, match="views"):
        train_unet(pipe, data, embeds, on, 5)
    before = _counterpart_cross_entropy(pipe, data, views, embeds)
    summary = train_unet(pipe, data, embeds, on, 5, views=views)
    after = _counterpart_cross_entropy(pipe, data, views, embeds)
    assert after < 0.95 * before  # measured: x0.90 in these 40 steps, x1.002 with the weight at 0
    assert {"attention_ce", "attention_hit"} <= {k for h in summary["history"] for k in h}
    off = replace(cfg.unet, **LESSONS_OFF, loop=_with_steps(cfg.unet.loop, 6, ema=0.0))
    trained = []
    for given in (None, views):  # off: the views change nothing
        fresh = _pipeline(views, cfg)
        train_unet(fresh, data, embeds, off, 5, views=given)
        trained.append(fresh.unet)
    assert _same_weights(*trained)


def test_ila_pairs_take_the_target_itself_as_base_in_their_self_fraction_only():
    # 3 scenes x 4 object samples (kind OBJECT) and one background sample each
    kind = torch.tensor([OBJECT] * 12 + [OBJECT + 1] * 3)
    scene = torch.cat([torch.arange(3).repeat_interleave(4), torch.arange(3)])
    data = {"kind": kind, "scene": scene}

    def draw(fraction: float):
        gen = torch.Generator().manual_seed(0)
        targets, bases = PairSampler(data, fraction).sample(400, gen)
        return targets, bases, gen.get_state()

    targets, bases, state = draw(0.0)
    assert (kind[bases] == OBJECT).all() and torch.equal(scene[bases], scene[targets]) and (bases != targets).all()
    # off: the draws of a sampler without the option (a target each, then a base each of the
    # scene's 4 object samples), nothing more, so the same seed trains the same weights
    gen = torch.Generator().manual_seed(0)
    torch.randint(0, 12, (400,), generator=gen)
    for _ in range(400):
        torch.randint(0, 3, (1,), generator=gen)
    assert torch.equal(state, gen.get_state())
    assert torch.equal(draw(1.0)[1], draw(1.0)[0])
    targets, bases, _ = draw(0.3)
    share = float((bases == targets).float().mean())
    assert 0.22 < share < 0.38  # 400 draws: 0.3 +- 4 standard errors
    assert torch.equal(scene[bases], scene[targets])


def test_loss_weights_count_the_implied_clean_latent_at_low_snr():
    from innout.model_presets import SD2_SCHEDULER
    from innout.training.inpainter import loss_weights
    from diffusers import PNDMScheduler

    ab = PNDMScheduler(**SD2_SCHEDULER).alphas_cumprod.float()
    t = torch.arange(1000)
    w = loss_weights(ab, t, "v")
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-5) and bool((w[1:] >= w[:-1]).all())
    # 1 + 1/SNR, the v-parameterisation's weight, up to the normalisation
    snr = ab / (1 - ab)
    assert torch.allclose(w / w[500], ((1 + 1 / snr) / (1 + 1 / snr[500])), rtol=1e-5)
    assert torch.allclose(loss_weights(ab, t, "min_snr", 5.0), torch.clamp(snr, max=5.0) / snr)
    with pytest.raises(ValueError, match="loss_weighting"):
        loss_weights(ab, t, "x0")


def _latent_data(n: int = 4) -> dict:
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(n, 1, 6, 8)
    mask[:, :, 1:4, 2:6] = 1
    return {"target": torch.randn(n, 4, 6, 8, generator=gen), "mask": mask, "masked": torch.randn(n, 4, 6, 8, generator=gen)}


def test_first_step_samples_hold_no_trace_of_the_clean_latent_and_their_target_recovers_it():
    """What the sampler's first step sees (pure noise at t = 999) and what it must output."""
    from innout.model_presets import SD2_SCHEDULER
    from innout.training.inpainter import noisy_inputs
    from diffusers import PNDMScheduler

    ab = PNDMScheduler(**SD2_SCHEDULER).alphas_cumprod.float()
    data, other = _latent_data(), _latent_data()
    other["target"] = other["target"] + 5.0
    index, t = torch.arange(4), torch.full((4,), 999)

    def inputs(d):
        return noisy_inputs(d, index, t, ab, torch.Generator().manual_seed(7), pure_first=2)

    (x, eps, hole), (x_other, _, _) = inputs(data), inputs(other)
    assert torch.equal(x[:2, :4], x_other[:2, :4])  # the first two: pure noise, whatever the target
    assert not torch.allclose(x[2:, :4], x_other[2:, :4])  # the others carry sqrt(ab) x0
    recovered = (x[:, :4] - (1 - ab[999]).sqrt() * eps) / ab[999].sqrt()
    assert torch.allclose(recovered, data["target"], atol=1e-3)  # every sample's target recovers x0
    assert torch.equal(x[:, 4:5], data["mask"]) and torch.equal(x[:, 5:], data["masked"]) and torch.equal(hole, data["mask"])


def test_hole_noise_offset_is_one_constant_per_channel_inside_the_hole_only():
    from innout.training.inpainter import noisy_inputs

    data, index, t = _latent_data(), torch.arange(4), torch.full((4,), 500)
    ab = torch.linspace(0.999, 0.005, 1000)
    _, plain, _ = noisy_inputs(data, index, t, ab, torch.Generator().manual_seed(3))
    _, offset, _ = noisy_inputs(data, index, t, ab, torch.Generator().manual_seed(3), hole_noise_offset=0.3)
    diff = offset - plain
    hole = data["mask"].bool().expand_as(diff)
    assert float(diff[~hole].abs().max()) == 0.0
    inside = diff[:, :, 1:4, 2:6]
    assert torch.allclose(inside, inside[:, :, :1, :1].expand_as(inside)) and float(inside.abs().mean()) > 0.01


def test_saved_scheduler_starts_sampling_at_the_last_timestep():
    """The first-step samples are trained at t = 999: the pipeline's scheduler must start there."""
    cfg = tiny_config()
    pipe = assemble_pipeline(build_unet(cfg.unet, 32, 3), build_vae(cfg.vae, 1), *build_text_encoder(2),
                             cfg.unet.timestep_spacing)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    for steps in (5, 20):
        scheduler.set_timesteps(steps)
        assert int(scheduler.timesteps[0]) == 999


def test_samples_use_the_pipelines_own_conditioning(views):
    """The masked-image latents are prepare_views' (VAE mode x scaling factor of the image
    with the masked pixels zeroed), the latent mask its nearest downsampling."""
    from innout.diffusion import prepare_views

    cfg = tiny_config()
    pipe = _pipeline(views, cfg, vae_steps=2)
    data = build_samples(pipe, views, cfg.unet, 4)
    from innout.training.inpainter import draw_masks

    view, kind, mask = draw_masks(views, cfg.unet, 4)[0]
    assert kind == OBJECT
    direct = prepare_views(pipe, [views.rgb[view]], [mask], 48)
    assert torch.allclose(direct["masked_latents"][0], data["masked"][0], atol=1e-5)
    assert torch.equal(direct["mask"][0], data["mask"][0])
    target = pipe.vae.encode(to_signed(torch.from_numpy(views.background[view:view + 1]))).latent_dist.mode()
    assert torch.allclose(target[0] * pipe.vae.config.scaling_factor, data["target"][0], atol=1e-5)


def test_depth_scale_and_shift_invariant_loss_falls(views):
    cfg = tiny_config().depth
    disparity = torch.from_numpy(1.0 / views.background_depth[:4])
    # the loss ignores scale and shift of the prediction
    parts = ssi_losses(3.0 * disparity + 0.7, disparity)
    assert float(parts["ssi"]) < 1e-5 and float(parts["grad"]) < 1e-5

    def loss(model, processor) -> float:
        with torch.no_grad():
            return float(ssi_losses(predict(model, processor, views.background[:4]), disparity)["ssi"])

    before = loss(*build_depth(cfg, 6))
    model, processor, summary = train_depth(views, replace(cfg, loop=_with_steps(cfg.loop, 40)), 6)
    assert loss(model, processor) < 0.8 * before


def test_depth_normalisation_subtracts_the_lower_median_as_torch_median_gives_it():
    """The median is read from a sort (torch.median's indices are found non-deterministically
    on CUDA): the same number torch.median gives, for an even count and for ties."""
    from innout.training.depth import _normalise

    maps = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(0))  # 24 values per map
    maps[1] = 0.5
    maps[2, :2] = 0.25
    flat = maps.flatten(1)
    median = flat.median(dim=1).values
    scale = (flat - median[:, None]).abs().mean(dim=1).clamp_min(1e-6)
    assert torch.equal(_normalise(maps), (maps - median.view(-1, 1, 1)) / scale.view(-1, 1, 1))


@pytest.mark.parametrize("seed", [sub_seed(s, "depth") for s in range(4)])
def test_depth_model_starts_with_an_output_that_varies(seed):
    """The shipped config's depth model at initialisation: its output must vary across the
    view (else the scale-and-shift-invariant loss has no gradient worth the name and
    training may never leave the constant: `--seed 2` did). With transformers' init it
    varied by ~1e-7 around 1 for these seeds; drawn by fan-in, ~0.05-0.1, positive."""
    model, _ = build_depth(DepthConfig(), seed)
    pixels = torch.rand(2, 3, 126, 168, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixels).predicted_depth
    assert float(out.std()) > 0.01
    assert float(out.min()) > 0  # the head's final ReLU passes every pixel's gradient
    with pytest.raises(ValueError, match="depth.init must be one of fan_in, transformers, got 'fanin'"):
        build_depth(replace(DepthConfig(), init="fanin"), seed)


# ------------------------------------------------------------------ reproducibility

def test_same_seed_same_weights_and_a_killed_run_resumes_to_them(views, tmp_path):
    cfg = tiny_config(steps=6).vae
    a, _ = train_vae(views, cfg, 9)
    b, _ = train_vae(views, cfg, 9)
    assert _same_weights(a, b)
    c, _ = train_vae(views, cfg, 10)
    assert not _same_weights(a, c)

    # killed after the checkpoint of step 4 (checkpoint_every=2), then rerun
    import innout.training.vae as vae_module

    real = vae_module.reconstruction_losses
    calls = {"n": 0}

    def dying(recon, target):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(recon, target)

    vae_module.reconstruction_losses = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            train_vae(views, cfg, 9, tmp_path, "fp")
    finally:
        vae_module.reconstruction_losses = real
    assert (tmp_path / "vae.ckpt.pt").is_file()
    resumed, summary = train_vae(views, cfg, 9, tmp_path, "fp")
    assert _same_weights(a, resumed) and summary["steps"] == 6


def _aten_ops(run) -> int:
    """How many aten operations ``run()`` issues (each a kernel launch, at least, on a GPU),
    reads of CPU scalars (AdamW's step counters, which launch nothing) left out."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func is not torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return Count.n


def test_optimiser_and_ema_cost_a_few_kernels_whatever_the_parameter_count():
    """On a GPU these small models' steps are bound by kernel launches (H200, 2026-12-04):
    the AdamW step and the EMA update issue multi-tensor operations, not ~10 per parameter,
    and the EMA is still decay x average + (1 - decay) x weights."""
    from innout.training.loop import Loop

    def ops_of_a_step(parameters: int) -> tuple[int, int]:
        model = torch.nn.Sequential(*[torch.nn.Linear(3, 3) for _ in range(parameters // 2)])
        loop = Loop("probe", model, LoopConfig(steps=4, lr=1e-3, batch=1, ema=0.9), seed=0, work_dir=None)
        model(torch.ones(1, 3)).sum().backward()
        loop.optimizer.step()  # the first step creates the optimiser's state, one tensor at a time
        return _aten_ops(loop.optimizer.step), _aten_ops(loop._ema_update)

    few, many = ops_of_a_step(4), ops_of_a_step(40)
    assert many == few and few[0] <= 16 and few[1] <= 4, (few, many)

    model = torch.nn.Linear(3, 2)
    loop = Loop("probe", model, LoopConfig(steps=4, lr=1e-3, batch=1, ema=0.9), seed=0, work_dir=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [avg.clone() for avg in loop.ema]
    loop.step = 5
    loop._ema_update()
    decay = min(0.9, 6 / 15)
    for avg, old, p in zip(loop.ema, before, model.parameters()):
        assert torch.equal(avg, old.mul(decay).add(p.detach(), alpha=1 - decay))


def test_gpu_training_takes_the_deterministic_attention_kernel(monkeypatch):
    """On CUDA the trainers' attention runs the math kernel (the memory-efficient one's
    backward is not deterministic); on the CPU the kernels stay as they were."""
    from innout.training import _torch_settings

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # restored after the test

    def enabled():
        return (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                torch.backends.cuda.math_sdp_enabled())

    before = enabled()
    with _torch_settings(1, torch.device("cuda")):
        assert enabled() == (False, False, True)
    assert enabled() == before
    with _torch_settings(1, torch.device("cpu")):
        assert enabled() == before


def test_unet_and_depth_training_are_reproducible(views):
    from innout.training.hidden_pattern import build_pattern_samples

    cfg = tiny_config()
    pipe = _pipeline(views, cfg, vae_steps=2)
    data = build_samples(pipe, views, cfg.unet, 4)
    pattern = build_pattern_samples(pipe, views, cfg.unet.pattern_amplitude, 2, 7, encode_batch=4,
                                    mean=LESSONS_ON["pattern_mean"])
    # with the lessons: their base gradient and attention loss must not break reproducibility
    recipe = replace(cfg.unet, **LESSONS_ON, pattern_min_covered=0.0)  # the tiny views' holes are small
    embeds = pipe.encode_prompt("", torch.device("cpu"), 1, False)[0]
    states = []
    for _ in range(2):
        pipe.unet.load_state_dict(build_unet(cfg.unet, 32, 3).state_dict())
        summary = train_unet(pipe, data, embeds, replace(recipe, loop=_with_steps(recipe.loop, 8)), 5,
                             pattern=pattern, views=views)
        states.append({k: v.clone() for k, v in pipe.unet.state_dict().items()})
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert {"mse_pattern", "attention_ce"} <= {k for h in summary["history"] for k in h}  # the lessons ran
    m1, _, _ = train_depth(views, cfg.depth, 6)
    m2, _, _ = train_depth(views, cfg.depth, 6)
    assert _same_weights(m1, m2)


# ------------------------------------------------------------------ the whole run

def test_train_models_writes_a_loadable_set_with_its_manifest(tmp_path, capfd):
    from innout.models import load_depth_model, load_inpainter

    out = tmp_path / "procedural"
    # 4 steps cannot teach depth (error ~0.3 on the training views): with the real bar the
    # run is refused and writes nothing; the rest of the test runs without the bar
    with pytest.raises(ValueError, match="the depth model did not learn: median relative error 0.[0-9]+ on its training views > 0.15"):
        train_models(out, tiny_config(), tmp_path / "work", command="innout train-models --test")
    assert not out.exists()
    capfd.readouterr()
    manifest = train_models(out, tiny_config(), tmp_path / "work", command="innout train-models --test", max_depth_rel_error=None)
    # saving the fp16 copy must not end a good run with diffusers' "cannot run with `cpu`
    # device ... running them will fail" and "should be kept in float32" false alarms
    stderr = capfd.readouterr().err
    assert "cannot run with" not in stderr and "kept in float32" not in stderr, stderr[-400:]
    assert manifest["command"] == "innout train-models --test" and manifest["seed"] == 3
    for key in ("vae", "unet", "depth"):
        assert manifest["results"][key]["steps"] == 4 and manifest["results"][key]["final_losses"]
    assert set(manifest["versions"]) >= {"torch", "diffusers", "transformers"}
    assert (out / "loss_curves.png").is_file()
    assert verify_weights(out)["files"] == manifest["files"]
    pipe = load_inpainter(str(out / "inpainter"), device="cpu")
    assert pipe.unet.dtype == torch.float32 and pipe.vae.config.scaling_factor == manifest["models"]["vae"]["scaling_factor"]
    model, _ = load_depth_model(str(out / "depth"), tmp_path)
    assert type(model).__name__ == "DepthAnythingForDepthEstimation"


# ------------------------------------------------------------------ the shipped weights

def _attention_resolutions(unet) -> int:
    """Distinct latent resolutions at which the UNet has self-attention (attn1)."""
    levels = set()
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            block = name.split(".attentions")[0]
            levels.add(block)
    down = {b for b in levels if b.startswith("down_blocks")}
    return len(down) + any(b.startswith("mid_block") for b in levels)


def test_shipped_weights_load_as_the_expected_classes_and_match_their_manifest():
    from innout.models import depth_model_path, load_depth_model, load_inpainter

    manifest = verify_weights(SHIPPED)
    assert manifest["model_set"] == "procedural" and manifest["trained_on"].startswith("trained on procedural scenes only")
    assert manifest["command"].startswith("innout train-models")
    # What the training cost is recorded, with the machine that paid it; whether that fits the
    # 45-minute budget depends on the machine (the same recipe: 1774-1958 s on one 2-core
    # EPYC, 2774-2992 s on another), so the README reports it rather than a test asserting a
    # speed (the house rule: no timed tests).
    phases = manifest["phase_seconds"]
    assert set(phases) == {"data", "depth", "vae", "samples", "unet"} and manifest["threads"] == 2
    assert sum(phases.values()) <= manifest["wall_seconds"] <= sum(phases.values()) + 120
    assert manifest["machine"]["cpus"] >= 1 and manifest["versions"]["innout_sources_sha256"]
    assert sum((SHIPPED / f).stat().st_size for f in manifest["files"]) < 40e6
    pipe = load_inpainter("procedural", device="cpu")
    assert type(pipe.vae).__name__ == "AutoencoderKL" and pipe.vae_scale_factor == 8 and pipe.vae.config.latent_channels == 4
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and pipe.unet.config.in_channels == 9
    assert _attention_resolutions(pipe.unet) >= 2
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert depth_model_path("procedural", "unused") == str(SHIPPED / "depth")
    model, _ = load_depth_model("procedural", "unused")
    assert type(model).__name__ == "DepthAnythingForDepthEstimation"


def test_shipped_weights_were_trained_by_the_default_recipe():
    """``innout train-models --seed N`` without ``--set`` trains the shipped set (N: its
    manifest's seed): a default changed without retraining, or weights trained with
    overrides, fails here."""
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert "--set" not in manifest["command"] and f"--seed {manifest['seed']}" in manifest["command"]
    recipe = {key: value for key, value in manifest["config"].items() if key != "seed"}
    recipe.setdefault("device", "cpu")  # sets trained before --device existed trained on the CPU
    defaults = json.loads(json.dumps(asdict(TrainConfig())))
    for group in recipe:
        assert recipe[group] == defaults[group], f"{group}: the shipped set was trained otherwise: retrain it"
    assert recipe.keys() == defaults.keys() - {"seed"}


def test_a_changed_weight_file_is_a_one_line_error_naming_it(tmp_path):
    copy = tmp_path / "procedural"
    shutil.copytree(SHIPPED, copy)
    target = copy / "inpainter" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        verify_weights(copy)
    assert str(target) in str(err.value) and "sha256" in str(err.value) and "\n" not in str(err.value)
    (copy / "manifest.json").unlink()
    with pytest.raises(InputError, match="manifest"):
        verify_weights(copy)


def test_source_digest_names_the_code_and_not_the_weights(tmp_path):
    from innout.training import source_digest

    package = tmp_path / "innout"
    (package / "training").mkdir(parents=True)
    (package / "weights" / "procedural").mkdir(parents=True)
    (package / "training" / "depth.py").write_text("INIT = 'fan_in'\n")
    (package / "weights" / "procedural" / "manifest.json").write_text("{}")
    first = source_digest(package)
    (package / "weights" / "procedural" / "extra.py").write_text("x = 1\n")  # weights: not code
    assert source_digest(package) == first
    (package / "training" / "depth.py").write_text("INIT = 'transformers'\n")
    assert source_digest(package) != first
