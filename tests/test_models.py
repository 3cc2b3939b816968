"""Model sets: the random presets, saving and loading offline, the fetch plan and manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from innout.errors import InputError, StageError
from innout.models import (
    RANDOM_WEIGHTS_WARNING,
    check_manifest,
    lpips_heads_path,
    manifest_item,
    SD2_TEXT,
    SD2_UNET,
    SD2_VAE,
    build_sd2_random,
    build_tiny_inpainter,
    depth_model_path,
    download_plan,
    fetch_models,
    is_random,
    load_inpainter,
    preset_dir,
    resolve_dtype,
    save_tiny_inpainter,
    sd2_unet_parameter_count,
    select_hub_files,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one torch thread


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = build_tiny_inpainter(), build_tiny_inpainter()
    assert torch.equal(torch.get_rng_state(), state)
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(a, part), getattr(b, part))
    assert not _same_weights(a.unet, build_tiny_inpainter(seed=1).unet)
    assert type(a).__name__ == "StableDiffusionInpaintPipeline"
    assert a.unet.config.in_channels == 9 and a.vae_scale_factor == 8
    assert type(a.unet).__name__ == "UNet2DConditionModel" and type(a.text_encoder).__name__ == "CLIPTextModel"
    ids = a.tokenizer("the table and chair").input_ids
    assert ids[0] == a.tokenizer.bos_token_id and ids[-1] == a.tokenizer.eos_token_id and max(ids) < a.text_encoder.config.vocab_size
    assert a.tokenizer.unk_token_id not in ids[1:-1]


def test_tiny_save_and_load_back_offline(tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    folder = save_tiny_inpainter(tmp_path / "tiny")
    loaded = StableDiffusionInpaintPipeline.from_pretrained(folder, local_files_only=True)
    built = build_tiny_inpainter()
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(loaded, part), getattr(built, part))
    assert type(loaded.scheduler) is type(built.scheduler)
    assert loaded.tokenizer("a red chair").input_ids == built.tokenizer("a red chair").input_ids
    assert loaded.tokenizer.model_max_length == 77
    # a user's local folder goes through load_inpainter the same way
    pipe = load_inpainter(str(folder), device="cpu")
    assert pipe.unet.dtype == torch.float32 and _same_weights(pipe.unet, built.unet)


def test_fetch_models_offline_preset_writes_manifest_and_caches_tiny(tmp_path):
    from transformers import AutoModelForDepthEstimation

    from innout.config import load_method_config

    cfg = load_method_config("smoke", model="tiny").models
    assert is_random(cfg)
    manifest = fetch_models(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest and manifest["random_weights"] and manifest["warning"] == RANDOM_WEIGHTS_WARNING
    assert {item["what"] for item in manifest["items"]} == {"inpainter", "depth", "lpips", "fid-inception"}
    assert all(item["random_weights"] for item in manifest["items"])
    assert manifest["model_set"] == "tiny" and manifest["specs"]["inpainter"] == "tiny"
    assert (preset_dir(tmp_path, "inpainter", "tiny") / "model_index.json").is_file()
    pipe = load_inpainter("tiny", device="cpu", cache_dir=tmp_path)
    assert _same_weights(pipe.unet, build_tiny_inpainter().unet)
    depth = AutoModelForDepthEstimation.from_pretrained(depth_model_path("tiny", tmp_path), local_files_only=True)
    with torch.no_grad():
        out = depth(pixel_values=torch.rand(1, 3, 98, 98)).predicted_depth
    assert out.shape[-2:] == (98, 98)


def test_missing_hub_weights_fail_in_one_line_without_network(tmp_path):
    with pytest.raises(StageError, match="run the `models` rule first"):
        load_inpainter("stabilityai/stable-diffusion-2-inpainting", device="cpu", cache_dir=tmp_path)


def test_download_plan_and_file_selection(tmp_path):
    from innout.config import load_method_config

    cfg = load_method_config("paper", model="sd2").models
    assert not is_random(cfg) and cfg.inpainter == "stabilityai/stable-diffusion-2-inpainting"
    plan = download_plan(cfg, tmp_path)
    assert [p["what"] for p in plan] == ["inpainter", "depth", "lpips-vgg", "fid-inception"]
    assert plan[2]["dest"].endswith("torch/hub/checkpoints/vgg16-397923af.pth")
    listing = [
        "512-inpainting-ema.ckpt", "512-inpainting-ema.safetensors", "README.md", "model_index.json",
        "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
        "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt", "tokenizer/vocab.json",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.bin",
        "safety_checker/pytorch_model.bin", "unet/diffusion_flax_model.msgpack",
    ]
    chosen = select_hub_files(listing)
    assert "unet/diffusion_pytorch_model.safetensors" in chosen and "text_encoder/model.safetensors" in chosen
    assert "vae/diffusion_pytorch_model.bin" in chosen  # no safetensors there: the .bin
    assert not any(p.endswith((".ckpt", ".msgpack")) or "fp16" in p or p.startswith(("512-", "safety")) for p in chosen)
    assert "unet/diffusion_pytorch_model.bin" not in chosen and "tokenizer/vocab.json" in chosen
    depth_files = select_hub_files(["config.json", "model.safetensors", "preprocessor_config.json", "README.md"])
    assert "model.safetensors" in depth_files  # a transformers repo keeps its root weights


def test_procedural_set_downloads_nothing_and_its_metrics_say_random_by_name(tmp_path):
    """The shipped set is fetched offline: its weights are verified in place, LPIPS and FID
    run on random backbones (no pretrained VGG or Inception offline) and say so."""
    from innout.config import load_method_config
    from innout.evaluate import metrics_from_config

    cfg = load_method_config("smoke", model="procedural").models
    assert not is_random(cfg) and download_plan(cfg, tmp_path) == []

    def no_network(item):
        raise AssertionError(f"tried to download {item['what']}")

    manifest = fetch_models(cfg, tmp_path, download=no_network)
    items = {item["what"]: item for item in manifest["items"]}
    assert set(items) == {"inpainter", "depth", "lpips", "fid-inception"}
    assert not items["inpainter"]["random_weights"] and not items["depth"]["random_weights"]
    assert items["lpips"]["random_weights"] and items["fid-inception"]["random_weights"]
    lpips, fid = metrics_from_config({**dict(cfg), "cache_dir": str(tmp_path)}, {"fid": True})
    assert lpips.random_weights and fid.random_weights


def test_random_flags_and_dtypes():
    assert is_random({"inpainter": "sd2-random", "random_weights": True})
    assert is_random({"inpainter": "tiny", "random_weights": False})
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16


def test_sd2_architecture_counts():
    """The SD2-inpainting configs on the meta device (no memory): 865.9 M UNet parameters,
    16 self-attention layers, the 83.7 M VAE and the 340 M OpenCLIP-H text tower."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    assert sd2_unet_parameter_count() == 865_925_124
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD2_UNET)
        vae = AutoencoderKL(**SD2_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD2_TEXT))
    assert sum(n.endswith("attn1.processor") for n in unet.attn_processors) == 16
    assert abs(sum(p.numel() for p in vae.parameters()) / 1e6 - 83.65) < 0.1
    assert abs(sum(p.numel() for p in text.parameters()) / 1e6 - 340.39) < 0.1


@pytest.mark.slow
def test_sd2_random_builds_and_runs_a_step():
    """Builds the full random SD2 inpainter (about a minute on two CPU cores)."""
    from innout.diffusion import inpaint_single

    pipe = build_sd2_random()
    assert sum(p.numel() for p in pipe.unet.parameters()) == 865_925_124
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    out = inpaint_single(pipe, image, mask, steps=1, resolution=64, scheduler="ddim")
    assert out.shape == (64, 64, 3)


def _fake_download(item: dict) -> str:
    """Stands in for the network: a hub item becomes a snapshot-like folder, a URL a file."""
    from pathlib import Path

    if item["kind"] == "hub":
        folder = Path(item["dest"]) / ("models--" + item["source"].replace("/", "--")) / "snapshots" / "0123abc"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
        return str(folder)
    Path(item["dest"]).parent.mkdir(parents=True, exist_ok=True)
    Path(item["dest"]).write_bytes(b"weights")
    return item["dest"]


def test_real_set_manifest_lists_every_download_with_its_cache_path(tmp_path):
    from innout.config import load_method_config

    cfg = load_method_config("paper", model="sd2").models
    manifest = fetch_models(cfg, tmp_path, download=_fake_download)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["random_weights"] is False and manifest["warning"] is None and manifest["model_set"] == "sd2"
    whats = [item["what"] for item in manifest["items"]]
    assert whats == ["inpainter", "depth", "lpips-vgg", "fid-inception", "lpips-heads"]
    assert not any(item["random_weights"] for item in manifest["items"])
    inpainter = manifest_item(manifest, "inpainter")
    assert inpainter["source"] == "stabilityai/stable-diffusion-2-inpainting"
    assert inpainter["path"].startswith(str(tmp_path / "huggingface"))  # inside the cache
    assert manifest_item(manifest, "lpips-vgg")["path"] == str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")
    assert manifest_item(manifest, "lpips-heads")["path"] == str(lpips_heads_path("vgg"))
    assert check_manifest(tmp_path / "manifest.json", cfg) == manifest
    # the same config gives the same file (no timestamp)
    first = (tmp_path / "manifest.json").read_bytes()
    fetch_models(cfg, tmp_path, download=_fake_download)
    assert (tmp_path / "manifest.json").read_bytes() == first


def test_manifest_is_checked_against_the_config(tmp_path):
    from innout.config import load_method_config

    tiny = load_method_config("smoke", model="tiny").models
    fetch_models(tiny, tmp_path)
    assert check_manifest(tmp_path / "manifest.json", tiny)["model_set"] == "tiny"
    sd2 = load_method_config("smoke", model="sd2").models
    with pytest.raises(InputError, match="made for model set 'tiny'.*'sd2'.*rerun the `models` rule") as err:
        check_manifest(tmp_path / "manifest.json", sd2)
    assert "\n" not in str(err.value)
    other_depth = load_method_config("smoke", ["models.depth=some/other-depth"], model="tiny").models
    with pytest.raises(InputError, match="depth="):
        check_manifest(tmp_path / "manifest.json", other_depth)
    with pytest.raises(InputError, match="not found"):
        check_manifest(tmp_path / "nowhere.json", tiny)
    # a cached component removed after the manifest was written
    import shutil

    shutil.rmtree(preset_dir(tmp_path, "inpainter", "tiny"))
    with pytest.raises(InputError, match="missing"):
        check_manifest(tmp_path / "manifest.json", tiny)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not a models manifest"):
        check_manifest(tmp_path / "manifest.json", tiny)
