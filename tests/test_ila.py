"""ILA and the multi-view denoising loop, on the tiny random inpainter (64 x 64 views)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from innout.diffusion import (
    decode,
    denoise,
    guidance,
    initial_noise,
    inpaint_kwargs,
    inpaint_single,
    inpaint_views,
    latent_size,
    prepare_views,
    processing_size,
)
from innout.ila import RECORD, SHARE, ILAAttnProcessor, ILAController, ila_installed, install_ila, uninstall_ila
from innout.model_presets import build_tiny_inpainter

SIZE = 64
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


@pytest.fixture(scope="module")
def pipe(one_thread):
    return build_tiny_inpainter()


def _views(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        images.append(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        m = np.zeros((SIZE, SIZE), bool)
        m[12 + 2 * i:40 + 2 * i, 16:44 - i] = True
        masks.append(m)
    return images, masks


def _pipeline_latents(pipe, images, masks, init, masked_latents, steps, prompt=""):
    """diffusers' own __call__ on the same inputs: (final latents, decoded images)."""
    seen = {}

    def keep(_pipe, _i, _t, kwargs):
        seen["latents"] = kwargs["latents"]
        return {}

    out = pipe(prompt=[prompt] * len(images), image=[Image.fromarray(im) for im in images],
               mask_image=[Image.fromarray(m.astype(np.uint8) * 255) for m in masks], masked_image_latents=masked_latents,
               height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=7.5, latents=init.clone(),
               output_type="np", callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
    return seen["latents"], out.images


def test_loop_equals_pipeline_with_ila_off_and_lambda_one(pipe):
    images, masks = _views(3)
    init = initial_noise(3, (8, 8), seed=1)
    views = prepare_views(pipe, images, masks, SIZE)
    ref_latents, ref_images = _pipeline_latents(pipe, images, masks, init, views["masked_latents"], STEPS, "a room")
    args = (pipe, views["mask"], views["masked_latents"], init)
    off = denoise(*args, prompt="a room", steps=STEPS, ila_lambda=None, batch_size=2, progress=False)
    lam1 = denoise(*args, prompt="a room", steps=STEPS, ila_lambda=1.0, base_index=0, batch_size=2, progress=False)
    # the default scheduler is the pipeline's PNDM (multistep): per-batch instances keep its state apart
    torch.testing.assert_close(off, ref_latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lam1, ref_latents, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(decode(pipe, lam1), ref_images, atol=1e-4)


def test_identical_target_with_lambda_zero_reproduces_the_base(pipe):
    images, masks = _views(2)
    images[1], masks[1] = images[0].copy(), masks[0].copy()
    init = initial_noise(1, (8, 8), seed=2).repeat(2, 1, 1, 1)
    views = prepare_views(pipe, images, masks, SIZE)
    out = denoise(pipe, views["mask"], views["masked_latents"], init, steps=STEPS, ila_lambda=0.0, base_index=0, progress=False)
    torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=1e-4)


def test_ila_changes_targets_but_not_the_base(pipe):
    images, masks = _views(3)
    init = initial_noise(3, (8, 8), seed=3)
    views = prepare_views(pipe, images, masks, SIZE)
    args = (pipe, views["mask"], views["masked_latents"], init)
    plain = denoise(*args, steps=STEPS, ila_lambda=None, progress=False)
    ila = denoise(*args, steps=STEPS, ila_lambda=0.2, base_index=1, progress=False)
    torch.testing.assert_close(ila[1], plain[1], atol=1e-5, rtol=1e-4)
    assert (ila[0] - plain[0]).abs().max() > 1e-3 and (ila[2] - plain[2]).abs().max() > 1e-3


def _heads(attn, x):
    b = x.shape[0]
    return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


def _attend(attn, x_q, x_kv):
    q, k, v = _heads(attn, attn.to_q(x_q)), _heads(attn, attn.to_k(x_kv)), _heads(attn, attn.to_v(x_kv))
    return F.scaled_dot_product_attention(q, k, v)


def _project(attn, heads_out):
    b, h, n, d = heads_out.shape
    return attn.to_out[1](attn.to_out[0](heads_out.transpose(1, 2).reshape(b, n, h * d)))


def test_cfg_halves_take_the_matching_base_keys_and_values(pipe):
    """Spy on the last attn1 layer of the UNet (after cross-attention, so the base's
    uncond and cond K/V differ) and recompute its SHARE output by hand."""
    name, layer = [(n, m) for n, m in pipe.unet.named_modules() if n.endswith("attn1")][-1]
    ctl = ILAController()
    seen = []
    hook = layer.register_forward_hook(lambda m, a, kw, out: seen.append((ctl.mode, (a[0] if a else kw["hidden_states"]).clone(), out.clone())), with_kwargs=True)
    images, masks = _views(3)
    views = prepare_views(pipe, images, masks, SIZE)
    lam = 0.3
    try:
        denoise(pipe, views["mask"], views["masked_latents"], initial_noise(3, (8, 8), 4), prompt="the chair and table",
                steps=1, scheduler="ddim", ila_lambda=lam, base_index=0, progress=False, controller=ctl)
    finally:
        hook.remove()
    assert [(mode, x.shape[0]) for mode, x, _ in seen] == [(RECORD, 2), (SHARE, 4)]
    base_in, target_in, target_out = seen[0][1], seen[1][1], seen[1][2]
    assert not torch.allclose(base_in[0], base_in[1], atol=1e-4), "uncond and cond base inputs should differ here"
    with torch.no_grad():
        own = _attend(layer, target_in, target_in)
        uncond = _attend(layer, target_in[:2], base_in[0:1].expand(2, -1, -1))
        cond = _attend(layer, target_in[2:], base_in[1:2].expand(2, -1, -1))
        expected = _project(layer, lam * own + (1 - lam) * torch.cat([uncond, cond]))
        wrong_uncond = _attend(layer, target_in[:2], base_in[1:2].expand(2, -1, -1))
        wrong_cond = _attend(layer, target_in[2:], base_in[0:1].expand(2, -1, -1))
        swapped = _project(layer, lam * own + (1 - lam) * torch.cat([wrong_uncond, wrong_cond]))
    torch.testing.assert_close(target_out, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(target_out, swapped, atol=1e-4)


def _lone_layer(ctl: ILAController):
    """A standalone diffusers self-attention layer (16 wide, 2 heads) with ctl's ILA processor."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(ILAAttnProcessor(ctl, "lone"))
    return attn


def _through_ila(attn, ctl: ILAController, base: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The base in RECORD mode, then the targets in SHARE mode: the targets' output."""
    ctl.record()
    attn(base)
    ctl.share()
    return attn(targets)


def test_processor_on_a_lone_attention_layer():
    """The same check on a standalone diffusers Attention with hand-made uncond/cond inputs."""
    ctl = ILAController(0.25)
    attn = _lone_layer(ctl)
    base = torch.randn(2, 10, 16)  # [uncond, cond]
    targets = torch.randn(6, 10, 16)  # [3 uncond, 3 cond]
    with torch.no_grad():
        got = _through_ila(attn, ctl, base, targets)
        kv = torch.cat([base[0:1].expand(3, -1, -1), base[1:2].expand(3, -1, -1)])
        want = _project(attn, 0.25 * _attend(attn, targets, targets) + 0.75 * _attend(attn, targets, kv))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        ctl.share(1.5)


@pytest.mark.parametrize("keep_graph", [False, True])
def test_a_target_loss_reaches_the_base_only_when_training_keeps_its_graph(keep_graph):
    """Inference stores the base's K/V detached; training (``keep_graph``) lets a target's
    loss reach the base's input, so it can teach the base's keys and values."""
    ctl = ILAController(0.25)
    ctl.keep_graph = keep_graph
    attn = _lone_layer(ctl)
    base = torch.randn(1, 10, 16, requires_grad=True)
    _through_ila(attn, ctl, base, torch.randn(1, 10, 16)).pow(2).sum().backward()
    reached = base.grad is not None and float(base.grad.abs().sum()) > 0
    assert reached == keep_graph


def test_kept_base_attention_changes_nothing_and_its_rows_are_distributions():
    """Training's ``base_attention``: the explicit attention gives the fused kernel's output
    and appends one (B, heads, L_target, L_base) probability tensor per SHARE call."""
    ctl = ILAController(0.25)
    attn = _lone_layer(ctl)
    base, targets = torch.randn(2, 10, 16), torch.randn(4, 10, 16)
    with torch.no_grad():
        fused = _through_ila(attn, ctl, base, targets)
        ctl.base_attention = []
        explicit = attn(targets)
    torch.testing.assert_close(explicit, fused, atol=1e-6, rtol=1e-5)
    (probs,) = ctl.base_attention
    assert probs.shape == (4, 2, 10, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 2, 10))
    # the uncond targets' attention is over the uncond base row: it changes when only that row does
    ctl.base_attention = []
    with torch.no_grad():
        _through_ila(attn, ctl, torch.stack([base[0] + torch.randn(10, 16), base[1]]), targets)
    moved = (ctl.base_attention[0] - probs).abs().amax(dim=(1, 2, 3))
    assert bool((moved[:2] > 1e-4).all()) and bool((moved[2:] < 1e-6).all())


def test_a_controller_subclass_decides_the_attention_to_the_base():
    """``ILAController.attend_base`` is where SHARE mode attends to the base: a subclass that
    attends to one base token only gets that token's value, mixed at lambda with the view's own."""
    class FirstToken(ILAController):
        def attend_base(self, layer, q, k, v, attention_mask):
            self.layers = [*getattr(self, "layers", []), layer]
            return v[:, :, :1].expand(-1, -1, q.shape[2], -1)

    ctl = FirstToken(0.0)
    attn = _lone_layer(ctl)
    base, targets = torch.randn(1, 10, 16), torch.randn(3, 10, 16)
    with torch.no_grad():
        out = _through_ila(attn, ctl, base, targets)
    first_value = attn.to_out[0](attn.to_v(base)[:, :1])  # lambda 0: the base's first value, projected
    torch.testing.assert_close(out, first_value.expand(3, 10, -1), atol=1e-6, rtol=1e-5)
    assert ctl.layers == ["lone"]


def test_base_runs_once_per_step_whatever_the_number_of_targets(pipe):
    ctl = ILAController()
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: calls.append((ctl.mode, args[0].shape[0])))
    images, masks = _views(6)
    views = prepare_views(pipe, images, masks, SIZE)
    try:  # a prompt: guidance is on, every batch is [uncond, cond]
        denoise(pipe, views["mask"], views["masked_latents"], initial_noise(6, (8, 8), 5), prompt="a wall", steps=STEPS,
                ila_lambda=0.2, base_index=2, batch_size=2, progress=False, controller=ctl)
    finally:
        hook.remove()
    n_t = len(pipe.scheduler.timesteps)  # PNDM (PLMS) takes steps + 1 model calls
    base_calls = [c for c in calls if c[0] == RECORD]
    assert base_calls == [(RECORD, 2)] * n_t  # once per timestep, batch [uncond, cond]
    assert [c for c in calls if c[0] == SHARE] == [(SHARE, 4), (SHARE, 4), (SHARE, 2)] * n_t  # 5 targets, batches of 2
    assert not ctl.store  # the step's K/V were freed


def test_noop_guidance_runs_one_batch_with_the_same_result(pipe):
    """An empty prompt and negative prompt give identical embeddings: guidance changes
    nothing, so every UNet batch runs once (the base records one row of K/V, targets
    share it), and the latents match the doubled-batch run's."""
    assert guidance(pipe, "", "", 7.5)[1] == "skipped" and guidance(pipe, "", "", 7.5)[0][0] is None
    assert guidance(pipe, "", "", 7.5, skip_identical=False)[1] == "on"
    assert guidance(pipe, "a wall", "", 7.5)[1] == "on" and guidance(pipe, "", "", 1.0)[1] == "off"
    images, masks = _views(5)
    views = prepare_views(pipe, images, masks, SIZE)
    init = initial_noise(5, (8, 8), 6)
    ctl = ILAController()
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: calls.append((ctl.mode, args[0].shape[0])))
    args = (pipe, views["mask"], views["masked_latents"], init)
    kwargs = dict(steps=STEPS, ila_lambda=0.2, base_index=1, batch_size=2, progress=False)
    try:
        skipped = denoise(*args, **kwargs, controller=ctl)
    finally:
        hook.remove()
    n_t = len(pipe.scheduler.timesteps)
    assert [c for c in calls if c[0] == RECORD] == [(RECORD, 1)] * n_t
    assert [c for c in calls if c[0] == SHARE] == [(SHARE, 2), (SHARE, 2)] * n_t  # 4 targets, one row each
    doubled = denoise(*args, **kwargs, skip_identical_guidance=False)
    torch.testing.assert_close(skipped, doubled, atol=1e-5, rtol=1e-4)
    # a real prompt keeps guidance on, and guidance then changes the result
    prompted = denoise(*args, **kwargs, prompt="a wall")
    assert (prompted - skipped).abs().max() > 1e-3


def test_install_keeps_cross_attention_and_restores(pipe):
    before = dict(pipe.unet.attn_processors)
    ctl = ILAController()
    with ila_installed(pipe.unet, ctl):
        now = pipe.unet.attn_processors
        assert sum(isinstance(p, ILAAttnProcessor) for p in now.values()) == 7  # the tiny UNet's attn1 layers
        for name, proc in now.items():
            assert isinstance(proc, ILAAttnProcessor) == name.endswith("attn1.processor")
            if name.endswith("attn2.processor"):
                assert proc is before[name]
    assert dict(pipe.unet.attn_processors) == before
    original = install_ila(pipe.unet, ctl)
    assert len(original) == len(before)  # set_attn_processor emptied only our copy
    uninstall_ila(pipe.unet, original)


def test_inpaint_views_is_deterministic_and_keeps_pixels_outside_the_mask(pipe):
    images, masks = _views(3)
    kwargs = dict(steps=2, ila_lambda=0.2, base_index=0, batch_size=2, resolution=SIZE, seed=7, progress=False)
    a = inpaint_views(pipe, images, masks, None, "a wall", **kwargs)
    b = inpaint_views(pipe, images, masks, None, "a wall", **kwargs)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for out, im, m in zip(a, images, masks):
        assert out.dtype == np.uint8 and out.shape == im.shape
        assert np.array_equal(out[~m], im[~m]) and not np.array_equal(out[m], im[m])
    single = inpaint_single(pipe, images[0], masks[0], None, "a wall", steps=2, resolution=SIZE, seed=7)
    assert np.array_equal(single, a[0])  # the base's output is its plain inpainting


def test_resizing_round_trip(pipe):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    mask = np.zeros((60, 90), bool)
    mask[20:40, 30:70] = True
    assert processing_size(90, 60, 48) == (72, 48) and latent_size(90, 60, 48) == (6, 9)
    out = inpaint_single(pipe, image, mask, None, steps=1, resolution=48)
    assert out.shape == image.shape and np.array_equal(out[~mask], image[~mask])
    with pytest.raises(ValueError, match="init_latents"):
        inpaint_views(pipe, [image], [mask], torch.zeros(1, 4, 8, 8), steps=1, resolution=48, progress=False)


def test_geometry_and_config_kwargs():
    assert processing_size(1008, 567, 512) == (912, 512)
    assert processing_size(567, 1008, 512) == (512, 912)
    assert latent_size(1008, 567, 512) == (64, 114)
    with pytest.raises(ValueError):
        processing_size(100, 100, 500)
    from innout.config import InpaintConfig

    assert inpaint_kwargs(InpaintConfig()) == dict(steps=20, guidance_scale=7.5, ila_lambda=0.2, resolution=512,
                                                   batch_size=4, scheduler="pipeline", skip_identical_guidance=True)
    assert inpaint_kwargs(InpaintConfig(ila=False))["ila_lambda"] is None
