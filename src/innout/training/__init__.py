"""Train the ``procedural`` model set: a small inpainting pipeline and a depth model of the
classes the real ``sd2`` set uses, from procedural scenes only (``innout train-models``).

These weights are not Stable Diffusion. They exist so that the method's machinery (the
base view, ELA, ILA, the depth prior, the refinement) is measurable, and the demo shows
what the tool is for, on any machine, offline: every output made with them says
"trained on procedural scenes only".

Phases (each in its own module; :func:`train_models` runs them in order):

1. :mod:`.data`: render the training views (scenes whose seeds are disjoint from every
   evaluation scene, :data:`.data.RESERVED_SEEDS`);
2. :mod:`.depth`: the ``DepthAnythingForDepthEstimation``, refused at once if it did not
   learn (:func:`.depth.check_learnt`: a minute lost, not the run);
3. :mod:`.vae`: the ``AutoencoderKL`` and its latent ``scaling_factor``;
4. :mod:`.inpainter`: latent samples through the pipeline's own conditioning code, then
   the 9-channel ``UNet2DConditionModel`` (plain and ILA steps);
5. save ``inpainter/`` (a ``StableDiffusionInpaintPipeline`` folder, fp16), ``depth/``
   (a transformers folder, fp32: it is small, and transformers loads it in the dtype it
   was saved in), ``loss_curves.png``, ``train.log`` and ``manifest.json`` (:mod:`.manifest`).

Budget: the whole training must fit in 45 minutes on 2 CPU cores. The default config took
30 minutes (1774 s: data 20, vae 137, samples 27, unet 1545, depth 41) with ``--threads 2``
on an idle 2-core AMD EPYC with AVX-512 (2026-12-02), and 50 minutes (2992 s) on another
2-core AVX-512 EPYC the same day: machines of the same core count differ ~1.7x, so on slow
cores it is over (each run's manifest records its phases' seconds and its machine). The
UNet's 4800 steps with the ILA lesson are most of it (an ILA or hidden-pattern step runs the
base view with gradient: two backward passes). Rendered views and latent samples are cached
in ``work_dir`` and every model checkpoints there, so a killed run resumes (same seed, same
weights).

``TrainConfig.device`` (``innout train-models --device``) trains on a GPU, for a larger
budget. Every random draw stays on the CPU (the loops' ``torch.Generator``), so a GPU run
draws the batches a CPU run draws; what it computes differs in the last bits, so its caches
and checkpoints are keyed apart from the CPU's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from innout.training.data import (
    MEASUREMENT_SCENES,
    RESERVED_SEEDS,
    VIEWS_FORMAT,
    DataConfig,
    Views,
    render_views,
    training_scenes,
)
from innout.training.depth import MAX_TRAINED_REL_ERROR, DepthConfig, check_learnt, evaluate_depth, train_depth
from innout.training.hidden_pattern import PATTERN_FORMAT, build_pattern_samples, check_pattern_mean
from innout.training.inpainter import UnetConfig, assemble_pipeline, build_samples, build_text_encoder, build_unet, train_unet
from innout.devices import computed_on, resolve_device
from innout.stage import atomic_dir
from innout.training.loop import plot_loss_curves
from innout.packaged import write_manifest
from innout.training.vae import VaeConfig, train_vae

log = logging.getLogger("innout")

TRAINED_ON = "trained on procedural scenes only, not Stable Diffusion"
LOG_NAME = "train.log"


@dataclass
class TrainConfig:
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (innout.devices.resolve_device); the shipped set: cpu
    data: DataConfig = field(default_factory=DataConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: what the manifest and the log say trained."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def sub_seed(seed: int, name: str) -> int:
    """An independent seed per component, from the run's seed."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def state_digest(model: torch.nn.Module) -> str:
    """A hash of a model's weights (what the cached latent samples were encoded with)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key.sub=value`` overrides to ``cfg`` in place and return it (values parsed as
    YAML; lists become tuples)."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        target, *path = key.strip().split(".")[::-1]
        path = path[::-1]
        node = cfg
        for name in path:
            if not dataclasses.is_dataclass(node) or not hasattr(node, name):
                raise ValueError(f"unknown training setting {key!r}")
            node = getattr(node, name)
        if not dataclasses.is_dataclass(node) or target not in {f.name for f in dataclasses.fields(node)}:
            raise ValueError(f"unknown training setting {key!r}")
        value = yaml.safe_load(raw)
        current = getattr(node, target)
        if isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, str):
            try:
                value = type(current)(float(value))  # YAML 1.1 reads 5e-4 as a string
            except ValueError:
                raise ValueError(f"training setting {key!r} needs a number, got {raw!r}") from None
        setattr(node, target, tuple(value) if isinstance(value, list) else value)
    return cfg


@contextlib.contextmanager
def _torch_settings(threads: int, device: torch.device):
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    attention_kernels = contextlib.nullcontext()
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace, set before its first call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # CUDA's memory-efficient attention sums its backward pass in a varying order
        # (warned on the H200, 2026-12-04; warn_only keeps ops without a deterministic
        # twin running): the math kernel's matmuls do not. The CPU keeps its kernels.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention_kernels = sdpa_kernel([SDPBackend.MATH])
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with attention_kernels:
            yield
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(before)


def _cached_views(cfg: DataConfig, work: Path | None) -> Views:
    key = fingerprint(asdict(cfg))
    path = work / f"views-{key}-v{VIEWS_FORMAT}.npz" if work is not None else None
    if path is not None and path.is_file():
        log.info("data: reusing %s", path)
        return Views.load(path)
    views = render_views(cfg)
    if path is not None:
        views.save(path)
    return views


def _cached_samples(pipe, views: Views, cfg: UnetConfig, seed: int, key: str, work: Path | None) -> dict:
    return _cached(work, f"samples-{key}.pt", lambda progress: build_samples(pipe, views, cfg, seed, progress), "samples")


def _cached(work: Path | None, name: str, build, what: str) -> dict:
    """``build(progress)``'s tensors, saved as ``work/name`` and reused from there."""
    path = work / name if work is not None else None
    if path is not None and path.is_file():
        log.info("%s: reusing %s", what, path)
        return torch.load(path, weights_only=True)
    last = [time.perf_counter()]

    def progress(part, done, total):
        if time.perf_counter() - last[0] >= 8.0 or done == total:
            log.info("%s: encoded %d/%d %s", what, done, total, part)
            last[0] = time.perf_counter()

    samples = build(progress)
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(samples, tmp)
        tmp.replace(path)
    return samples


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _versions() -> dict:
    import diffusers
    import numpy
    import transformers

    import innout

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__, "innout": innout.__version__,
            "innout_commit": _source_commit(Path(innout.__file__).parent),
            "innout_sources_sha256": source_digest(Path(innout.__file__).parent)}


def source_digest(package_dir: Path) -> str:
    """sha256 over the package's Python and YAML sources (path and content, the shipped
    weights excluded): names the training code even when it was not committed yet, as when
    a recipe change and the set it trains land in one commit."""
    digest = hashlib.sha256()
    files = sorted(p for p in package_dir.rglob("*")
                   if p.suffix in (".py", ".yaml") and "weights" not in p.relative_to(package_dir).parts)
    for path in files:
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _source_commit(package_dir: Path) -> str | None:
    """The git commit of the code that trained (``+dirty`` with uncommitted changes to
    tracked files), so a manifest names the recipe's code as well as its command; None
    outside a git checkout (an installed wheel)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def save_half(pipe, path: Path) -> None:
    """Save the pipeline with fp16 weights (a few MB). Each model is cast with ``half()``, not
    the pipeline with ``to(dtype=float16)``: that warns that a float16 pipeline cannot run on
    a CPU (true, and beside the point for saving) and each model's ``to(dtype)`` warns about
    fp32-only modules these models do not have; three false alarms at the end of a run."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.to("cpu").half()
    pipe.save_pretrained(path, safe_serialization=True)


def train_models(out_dir: str | Path, cfg: TrainConfig | None = None, work_dir: str | Path | None = None,
                 command: str | None = None, log_file: str | Path | None = None,
                 max_depth_rel_error: float | None = MAX_TRAINED_REL_ERROR) -> dict:
    """Train every model of the ``procedural`` set and write ``out_dir`` (atomically).
    Returns the manifest. ``work_dir`` holds the caches and checkpoints (None: none);
    ``log_file`` is copied into ``out_dir`` as the training log. A depth model whose error
    on its training views is above ``max_depth_rel_error`` (None: no check) is refused
    (``ValueError``) and nothing is written (:func:`innout.training.depth.check_learnt`)."""
    cfg = cfg or TrainConfig()
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    scenes = training_scenes(cfg.data)  # refuses reserved seeds before any work
    check_pattern_mean(cfg.unet.pattern_mean)  # else a typo would fail after the VAE's minutes
    device = resolve_device(cfg.device)  # a GPU asked for and missing: one line, before any work
    on = computed_on(device)  # caches and checkpoints are keyed by the kind of device
    seeds = {name: sub_seed(cfg.seed, name) for name in ("vae", "text", "unet", "samples", "pattern", "depth")}
    start = time.perf_counter()
    phases = {}
    with _torch_settings(cfg.threads, device):
        log.info("train-models: %d scenes (%s seeds %d-%d), %d views each; seed %d, %d threads, on %s", len(scenes),
                 "/".join(sorted({v for v, _ in scenes})), scenes[0][1], scenes[-1][1], cfg.data.views_per_scene,
                 cfg.seed, torch.get_num_threads(), device_name(device))
        t = time.perf_counter()
        views = _cached_views(cfg.data, work)
        phases["data"] = time.perf_counter() - t

        data_key = fingerprint(asdict(cfg.data))
        # The depth model first: it is quick (~1 min of the ~30-50), and a refused one then
        # costs that minute, not the whole run (each phase draws from its own seed, so the
        # order changes no weights).
        t = time.perf_counter()
        depth_model, processor, depth_summary = train_depth(views, cfg.depth, seeds["depth"], work,
                                                            fingerprint(data_key, asdict(cfg.depth), seeds["depth"], *on),
                                                            device)
        depth_summary.update(evaluate_depth(depth_model, processor, views.subset(slice(0, None, max(1, len(views) // 64)))))
        phases["depth"] = time.perf_counter() - t
        log.info("depth: median relative error after scale/shift alignment on training views: %.3f (object-free), "
                 "%.3f (with the object)", depth_summary["depth_rel_error_background"], depth_summary["depth_rel_error_object"])
        check_learnt(depth_summary, max_depth_rel_error)  # before anything else is trained or written

        t = time.perf_counter()
        vae_key = fingerprint(data_key, asdict(cfg.vae), seeds["vae"], *on)
        vae, vae_summary = train_vae(views, cfg.vae, seeds["vae"], work, vae_key, device)
        phases["vae"] = time.perf_counter() - t

        t = time.perf_counter()
        text_encoder, tokenizer = build_text_encoder(seeds["text"])
        unet = build_unet(cfg.unet, text_encoder.config.hidden_size, seeds["unet"])
        pipe = assemble_pipeline(unet, vae, text_encoder, tokenizer, cfg.unet.timestep_spacing).to(device)
        samples_key = fingerprint(vae_key, state_digest(vae), seeds["samples"],
                                  *(getattr(cfg.unet, k) for k in ("masks_per_view", "extra_hole_fraction", "encode_batch")))
        samples = _cached_samples(pipe, views, cfg.unet, seeds["samples"], samples_key, work)
        pattern = None
        if cfg.unet.pattern_fraction > 0:
            pattern_key = fingerprint(vae_key, state_digest(vae), seeds["pattern"], PATTERN_FORMAT,
                                      *(getattr(cfg.unet, k) for k in ("pattern_amplitude", "pattern_references", "encode_batch", "pattern_mean")))
            pattern = _cached(work, f"pattern-{pattern_key}.pt", lambda progress: build_pattern_samples(
                pipe, views, cfg.unet.pattern_amplitude, cfg.unet.pattern_references, seeds["pattern"],
                cfg.unet.encode_batch, progress, cfg.unet.pattern_mean), "pattern samples")
        phases["samples"] = time.perf_counter() - t

        t = time.perf_counter()
        prompt_embeds = pipe.encode_prompt("", device, 1, False)[0].detach()
        unet_summary = train_unet(pipe, samples, prompt_embeds, cfg.unet, seeds["unet"], work,
                                  fingerprint(samples_key, asdict(cfg.unet), seeds["unet"]), pattern, views)
        phases["unet"] = time.perf_counter() - t


    histories = {"vae": vae_summary.pop("history"), "unet": unet_summary.pop("history"), "depth": depth_summary.pop("history")}
    info = {
        "model_set": "procedural",
        "trained_on": TRAINED_ON,
        "command": command,
        "seed": cfg.seed,
        "threads": cfg.threads,
        "device": device_name(device),
        "config": asdict(cfg),
        "training_scenes": {"count": len(scenes), "seeds": [scenes[0][1], scenes[-1][1]],
                            "variants": sorted({v for v, _ in scenes}), "views": len(views)},
        "reserved_seeds": {"seeds_below": 100, "measurement_scenes": [list(s) for s in MEASUREMENT_SCENES],
                           "count": len(RESERVED_SEEDS)},
        "models": {
            "vae": {"class": type(vae).__name__, "parameters": _parameters(vae), "scaling_factor": vae.config.scaling_factor},
            "unet": {"class": type(pipe.unet).__name__, "parameters": _parameters(pipe.unet),
                     "in_channels": pipe.unet.config.in_channels,
                     "self_attention_layers": sum(1 for n in pipe.unet.attn_processors if n.endswith("attn1.processor"))},
            "text_encoder": {"class": type(text_encoder).__name__, "parameters": _parameters(text_encoder),
                             "note": "random weights (seeded), frozen: the prompt is fixed and empty"},
            "depth": {"class": type(depth_model).__name__, "parameters": _parameters(depth_model)},
        },
        "results": {"vae": vae_summary, "unet": unet_summary, "depth": depth_summary},
        "phase_seconds": {k: round(v, 1) for k, v in phases.items()},
        "wall_seconds": round(time.perf_counter() - start, 1),
        "versions": _versions(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    with atomic_dir(out_dir) as tmp:
        save_half(pipe, tmp / "inpainter")
        depth_model.to("cpu").save_pretrained(tmp / "depth", safe_serialization=True)
        processor.save_pretrained(tmp / "depth")
        plot_loss_curves(histories, tmp / "loss_curves.png")
        manifest = write_manifest(tmp, info)
        log.info("train-models: done in %.0f s (data %.0f, vae %.0f, samples %.0f, unet %.0f, depth %.0f); writing %s",
                 info["wall_seconds"], *(phases[k] for k in ("data", "vae", "samples", "unet", "depth")), out_dir)
        if log_file is not None and Path(log_file).is_file():
            shutil.copyfile(log_file, tmp / LOG_NAME)
    return manifest

