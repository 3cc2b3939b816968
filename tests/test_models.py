"""Model sets: the random presets, saving and loading offline, the fetch plan and manifest."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from innout.errors import InputError, StageError
from innout.model_presets import (
    SD2_TEXT,
    SD2_UNET,
    SD2_VAE,
    build_sd2_random,
    build_tiny_inpainter,
    save_tiny_inpainter,
    sd2_unet_parameter_count,
)
from innout.models import (
    check_manifest,
    depth_model_path,
    download_plan,
    fetch_models,
    load_inpainter,
    lpips_heads_path,
    manifest_item,
    preset_dir,
    resolve_dtype,
    select_hub_files,
)
from innout.provenance import PROCEDURAL_LABEL, RANDOM_WEIGHTS_WARNING, weights_provenance


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
    # a user's local folder goes through load_inpainter the same way, without the
    # FutureWarning diffusers gives callers still passing the deprecated `torch_dtype`
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*torch_dtype.*")
        pipe = load_inpainter(str(folder), device="cpu")
    assert pipe.unet.dtype == torch.float32 and _same_weights(pipe.unet, built.unet)


def test_fetch_models_offline_preset_writes_manifest_and_caches_tiny(tmp_path):
    from transformers import AutoModelForDepthEstimation

    from innout.config import load_method_config

    cfg = load_method_config("smoke", model="tiny").models
    assert weights_provenance(cfg) == "random"
    manifest = fetch_models(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest and manifest["weights"] == "random" and manifest["warning"] == RANDOM_WEIGHTS_WARNING
    assert {item["what"] for item in manifest["items"]} == {"inpainter", "depth", "lpips", "eval-lpips", "fid-inception"}
    assert all(item["weights"] == "random" for item in manifest["items"])
    assert manifest["model_set"] == "tiny" and manifest["specs"]["inpainter"] == "tiny"
    assert (preset_dir(tmp_path, "inpainter", "tiny") / "model_index.json").is_file()
    pipe = load_inpainter("tiny", device="cpu", cache_dir=tmp_path)
    assert _same_weights(pipe.unet, build_tiny_inpainter().unet)
    depth = AutoModelForDepthEstimation.from_pretrained(depth_model_path("tiny", tmp_path), local_files_only=True)
    with torch.no_grad():
        out = depth(pixel_values=torch.rand(1, 3, 98, 98)).predicted_depth
    assert out.shape[-2:] == (98, 98)


def test_missing_hub_weights_fail_in_one_line_without_network(tmp_path):
    with pytest.raises(StageError, match="run the `models` rule first") as err:
        load_inpainter("stabilityai/stable-diffusion-2-inpainting", device="cpu", cache_dir=tmp_path)
    assert "\n" not in str(err.value) and "hub cache" in str(err.value)


def test_download_plan_and_file_selection(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from innout.config import load_method_config

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "user-hub"))
    cfg = load_method_config("paper", model="sd2").models
    assert weights_provenance(cfg) == "pretrained" and cfg.inpainter == "stabilityai/stable-diffusion-2-inpainting"
    plan = download_plan(cfg, tmp_path)
    # LPIPS: VGG for the refine loss, AlexNet for the evaluation (the published numbers')
    assert [p["what"] for p in plan] == ["inpainter", "depth", "lpips-vgg", "lpips-alex", "fid-inception"]
    assert plan[2]["dest"].endswith("torch/hub/checkpoints/vgg16-397923af.pth")
    assert plan[3]["dest"].endswith("torch/hub/checkpoints/alexnet-owt-7be5be79.pth")
    assert plan[0]["dest"] == plan[1]["dest"] == str(tmp_path / "user-hub")  # the user's hub cache
    assert plan[0]["variant"] == "fp16" and plan[1]["variant"] is None  # GPU dtype auto = fp16
    assert download_plan(cfg, tmp_path, device="cpu")[0]["variant"] is None
    fp32 = load_method_config("paper", ["models.dtype=fp32"], model="sd2").models
    assert download_plan(fp32, tmp_path)[0]["variant"] is None
    mine = load_method_config("paper", [f"models.hub_cache={tmp_path / 'mine'}"], model="sd2").models
    assert download_plan(mine, tmp_path)[0]["dest"] == str(tmp_path / "mine")
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
    # fp16: the fp16 files where a folder has them, the full ones elsewhere, never both
    half = select_hub_files(listing, variant="fp16")
    weights = sorted(p for p in half if p.endswith((".safetensors", ".bin")))
    assert weights == ["text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                       "vae/diffusion_pytorch_model.bin"]
    assert set(half) - set(weights) == set(chosen) - {p for p in chosen if p.endswith((".safetensors", ".bin"))}
    depth_files = select_hub_files(["config.json", "model.safetensors", "preprocessor_config.json", "README.md"])
    assert "model.safetensors" in depth_files  # a transformers repo keeps its root weights


def test_procedural_set_downloads_nothing_and_its_metrics_say_random_by_name(tmp_path):
    """The shipped set is fetched offline: its weights are verified in place, LPIPS and FID
    run on random backbones (no pretrained VGG or Inception offline) and say so, and the
    set itself is labelled procedural, not random."""
    from innout.config import load_method_config
    from innout.evaluate import metrics_from_config

    cfg = load_method_config("smoke", model="procedural").models
    assert weights_provenance(cfg) == "procedural" and download_plan(cfg, tmp_path) == []

    def no_network(item):
        raise AssertionError(f"tried to download {item['what']}")

    manifest = fetch_models(cfg, tmp_path, download=no_network)
    assert manifest["weights"] == "procedural" and manifest["weights_label"] == PROCEDURAL_LABEL and manifest["warning"] is None
    items = {item["what"]: item for item in manifest["items"]}
    assert set(items) == {"inpainter", "depth", "lpips", "eval-lpips", "fid-inception"}
    assert items["inpainter"]["weights"] == items["depth"]["weights"] == "procedural"
    assert items["lpips"]["weights"] == items["eval-lpips"]["weights"] == items["fid-inception"]["weights"] == "random"
    lpips, fid = metrics_from_config({**dict(cfg), "cache_dir": str(tmp_path)}, {"fid": True})
    assert lpips.random_weights and fid.random_weights


def test_provenance_of_model_sets_and_dtypes():
    assert weights_provenance({"inpainter": "sd2-random", "provenance": "random"}) == "random"
    # a random preset is random whatever the set claims
    assert weights_provenance({"inpainter": "tiny", "provenance": "pretrained"}) == "random"
    assert weights_provenance({"inpainter": "/some/folder", "depth": "tiny", "provenance": "procedural"}) == "random"
    assert weights_provenance({"inpainter": "/some/folder", "depth": "/other", "provenance": "procedural"}) == "procedural"
    assert weights_provenance({"inpainter": "org/model"}) == "pretrained"
    with pytest.raises(ValueError, match="provenance"):
        weights_provenance({"inpainter": "org/model", "provenance": "trained"})
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


@pytest.mark.parametrize("offload", ["off", "model"])
def test_sd2_random_is_built_on_the_gpu_it_runs_on(monkeypatch, offload):
    """The GPU check's inpainter (``sd2-random``) is built on the GPU (seeded under a fork of
    CUDA's RNG), then cast to fp16: that path on a virtual GPU (tests/virtual_gpu.py), with
    the SD2 configs shrunk to the tiny ones so that it takes seconds; and with
    ``models.cpu_offload=model`` (accelerate's hooks move each model to the GPU while it runs:
    they need the ``accelerate`` package, a dependency since it was found missing here).
    ``sequential`` offload goes through the meta device, which the virtual GPU cannot follow."""
    from virtual_gpu import on_gpu, pretend_cuda, virtual_gpu

    from innout import model_presets
    from innout.diffusion import inpaint_single

    for part in ("UNET", "VAE", "TEXT"):
        monkeypatch.setattr(model_presets, f"SD2_{part}", getattr(model_presets, f"TINY_{part}"))
    pretend_cuda(monkeypatch)
    image = np.full((64, 64, 3), 128, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    with virtual_gpu():
        pipe = load_inpainter("sd2-random", device="cuda", options={"cpu_offload": offload})
        for part in ("unet", "vae", "text_encoder"):
            weights = list(getattr(pipe, part).parameters())
            assert all(w.dtype == torch.float16 for w in weights), part
            # offloaded: each model waits on the CPU until its hook moves it for its call
            assert all(on_gpu(w) for w in weights) if offload == "off" else not any(on_gpu(w) for w in weights), part
        out = inpaint_single(pipe, image, mask, steps=2, resolution=64, scheduler="ddim")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert pipe.innout_memory["cpu_offload"] == offload


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

    cfg = load_method_config("paper", [f"models.hub_cache={tmp_path / 'hub'}"], model="sd2").models
    manifest = fetch_models(cfg, tmp_path, download=_fake_download)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["weights"] == "pretrained" and manifest["warning"] is None and manifest["model_set"] == "sd2"
    whats = [item["what"] for item in manifest["items"]]
    assert whats == ["inpainter", "depth", "lpips-vgg", "lpips-alex", "fid-inception", "lpips-heads-vgg", "lpips-heads-alex"]
    assert all(item["weights"] == "pretrained" for item in manifest["items"])
    inpainter = manifest_item(manifest, "inpainter")
    assert inpainter["source"] == "stabilityai/stable-diffusion-2-inpainting"
    assert inpainter["path"].startswith(str(tmp_path / "hub"))  # inside the hub cache
    assert manifest["hub_cache"] == str(tmp_path / "hub")
    assert manifest_item(manifest, "lpips-vgg")["path"] == str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth")
    assert manifest_item(manifest, "lpips-alex")["path"] == str(tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")
    assert manifest_item(manifest, "lpips-heads-alex")["path"] == str(lpips_heads_path("alex"))
    assert manifest["specs"]["eval_lpips_backbone"] == "alex"
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


# ----------------------------------------------------------------------- the user's hub cache

def _fake_hub_snapshot(hub, repo: str, revision: str, save) -> "Path":
    """A model laid out as huggingface_hub lays out its cache:
    ``models--org--name/snapshots/<rev>/...`` and ``refs/main`` naming the revision."""
    from pathlib import Path

    root = Path(hub) / ("models--" + repo.replace("/", "--"))
    folder = root / "snapshots" / revision
    save(folder)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return folder


@pytest.fixture
def user_hub(tmp_path, monkeypatch):
    """HF_HOME's hub cache holding a tiny inpainter (fp16 variant files only, as the models
    rule fetches them for a GPU) and a tiny depth model; HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    from innout.model_presets import save_tiny_depth

    hub = tmp_path / "hf-home" / "hub"

    def save_fp16(folder):
        pipe = build_tiny_inpainter().to(torch.float16)
        pipe.save_pretrained(folder, variant="fp16")

    inpainter = _fake_hub_snapshot(hub, "org/tiny-inpainting", "1111aaaa", save_fp16)
    depth = _fake_hub_snapshot(hub, "org/tiny-depth", "2222bbbb", save_tiny_depth)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))  # what huggingface_hub derived from HF_HOME at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {"hub": hub, "inpainter": inpainter, "depth": depth}


def _real_cfg(tmp_path, *overrides):
    from innout.config import load_method_config

    cfg = load_method_config("paper", ["models.inpainter=org/tiny-inpainting", "models.depth=org/tiny-depth",
                                       f"models.cache_dir={tmp_path / 'models'}", *overrides], model="sd2").models
    checkpoints = tmp_path / "models" / "torch" / "hub" / "checkpoints"  # the torch.hub files, already there
    checkpoints.mkdir(parents=True, exist_ok=True)
    for item in download_plan(cfg, tmp_path / "models"):
        if item["kind"] == "url":
            Path(item["dest"]).write_bytes(b"weights")
    return cfg


def test_models_rule_uses_the_user_hub_cache_offline(tmp_path, user_hub, monkeypatch):
    """HF_HUB_OFFLINE=1 and the snapshots already in HF_HOME's hub cache: nothing is
    downloaded (the network is not touched), the manifest records the hub cache and the
    snapshot folders, and later stages load from there, through the fp16 files."""
    import huggingface_hub

    from innout.models import depth_model_path, manifest_hub_cache

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_network)
    cfg = _real_cfg(tmp_path)
    manifest = fetch_models(cfg, tmp_path / "models", device="cuda")
    assert manifest["hub_cache"] == str(user_hub["hub"]) and manifest["env"]["HF_HUB_CACHE"] == str(user_hub["hub"])
    assert manifest_item(manifest, "inpainter")["path"] == str(user_hub["inpainter"])
    assert manifest_item(manifest, "inpainter")["variant"] == "fp16"
    assert manifest_item(manifest, "depth")["path"] == str(user_hub["depth"])
    assert check_manifest(tmp_path / "models" / "manifest.json", cfg) == manifest
    # a stage on another machine (other HF_HOME) reads the hub cache the manifest names
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert manifest_hub_cache(tmp_path / "models") == user_hub["hub"]
    pipe = load_inpainter("org/tiny-inpainting", device="cpu", dtype="fp32", cache_dir=tmp_path / "models")
    assert pipe.unet.dtype == torch.float32
    reference = build_tiny_inpainter().unet.state_dict()
    loaded = pipe.unet.state_dict()
    assert all(torch.equal(loaded[k], reference[k].half().float()) for k in reference)  # the fp16 files' values
    assert depth_model_path("org/tiny-depth", tmp_path / "models") == str(user_hub["depth"])


def test_models_rule_offline_without_the_snapshot_is_one_line(tmp_path, user_hub):
    import shutil

    shutil.rmtree(user_hub["hub"] / "models--org--tiny-depth")
    with pytest.raises(StageError, match="org/tiny-depth is not in the hub cache .* HF_HUB_OFFLINE") as err:
        fetch_models(_real_cfg(tmp_path), tmp_path / "models")
    assert "\n" not in str(err.value) and str(user_hub["hub"]) in str(err.value)


def test_no_network_falls_back_to_the_cached_snapshot(tmp_path, user_hub, monkeypatch):
    import httpx
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise httpx.ConnectError("no route to host")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", unreachable)
    manifest = fetch_models(_real_cfg(tmp_path), tmp_path / "models")
    assert manifest_item(manifest, "inpainter")["path"] == str(user_hub["inpainter"])


def test_memory_switches_are_applied(caplog):
    """attention slicing and VAE tiling on the tiny inpainter (and ILA still runs over the
    sliced processors); CPU offload is ignored on the CPU and called on a GPU device."""
    from innout.diffusion import inpaint_views
    from innout.models import apply_memory_options

    options = {"attention_slicing": "auto", "vae_tiling": True, "cpu_offload": "model"}
    pipe = load_inpainter("tiny", device="cpu", options=options)
    kinds = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert kinds == {"SlicedAttnProcessor"}, kinds
    assert pipe.vae.use_tiling is True
    assert pipe.innout_memory == {"attention_slicing": "auto", "vae_tiling": True, "cpu_offload": "off"}
    assert "cpu_offload=model has no effect" in caplog.text
    images = [np.full((32, 48, 3), 120, np.uint8) for _ in range(2)]
    masks = [np.zeros((32, 48), bool) for _ in range(2)]
    for m in masks:
        m[8:24, 12:36] = True
    out = inpaint_views(pipe, images, masks, steps=2, resolution=32, base_index=0, ila_lambda=0.2, progress=False)
    assert len(out) == 2 and out[1].shape == (32, 48, 3)

    calls = []

    class FakePipe:
        vae = None

        def enable_model_cpu_offload(self, device=None):
            calls.append(("model", device))

        def enable_sequential_cpu_offload(self, device=None):
            calls.append(("sequential", device))

        def to(self, device):
            calls.append(("to", device))

    apply_memory_options(FakePipe(), {"cpu_offload": "model"}, torch.device("cuda"))
    apply_memory_options(FakePipe(), {"cpu_offload": "sequential"}, torch.device("cuda"))
    assert calls == [("model", torch.device("cuda")), ("sequential", torch.device("cuda"))]
    with pytest.raises(StageError, match="cpu_offload"):
        apply_memory_options(FakePipe(), {"cpu_offload": "yes"}, torch.device("cuda"))
def test_a_trained_set_is_used_in_place_and_labelled(tmp_path, procedural_like):
    """A set of local folders (shipped weights) declared procedural: nothing is
    downloaded, the manifest carries the procedural label and names the random metric
    backbones, and a stage checking it against a random set's config refuses it."""
    from innout.config import load_method_config

    cfg = load_method_config("smoke", procedural_like, model="tiny").models

    def no_network(item: dict) -> str:
        raise AssertionError(f"tried to download {item}")

    manifest = fetch_models(cfg, tmp_path, download=no_network)
    assert manifest["weights"] == "procedural" and manifest["weights_label"] == PROCEDURAL_LABEL and manifest["warning"] is None
    items = {item["what"]: item for item in manifest["items"]}
    assert items["inpainter"]["weights"] == items["depth"]["weights"] == "procedural"
    assert items["inpainter"]["path"] == cfg.inpainter and items["inpainter"]["note"] == "local folder, used in place"
    assert items["lpips"]["weights"] == items["fid-inception"]["weights"] == "random"
    assert check_manifest(tmp_path / "manifest.json", cfg) == manifest
    tiny = load_method_config("smoke", model="tiny").models
    with pytest.raises(InputError, match="made for model set 'procedural-like'"):
        check_manifest(tmp_path / "manifest.json", tiny)
    relabelled = load_method_config("smoke", [*procedural_like, "models.provenance=pretrained"], model="tiny").models
    with pytest.raises(InputError, match="'procedural' weights.*'pretrained'"):
        check_manifest(tmp_path / "manifest.json", relabelled)
