"""The LPIPS metric of the evaluation (and the refine stage's perceptual loss network).

LPIPS
    ``lpips`` 0.1.4, version 0.1, inputs scaled to [-1, 1]. Backbone ``vgg`` (the
    project's default) or ``alex`` (values differ between backbones, so the one used is
    written into every result; compare only like with like): ImageNet weights read from the
    models cache (``<cache_dir>/torch/hub/checkpoints/``, filled by the ``models`` rule),
    never downloaded; the linear heads are the calibrated ones shipped inside the lpips
    package (``lpips/weights/v0.1/<net>.pth``), checked key by key. Backbone ``random``
    (offline model sets; results say ``lpips_backbone: random``): a VGG16 trunk with random weights
    (``pnet_rand=True``, initialised from a fixed seed as torchvision initialises VGG) and
    random linear heads from the same seed, made non-negative (the calibrated heads are
    non-negative, so the distance stays >= 0). Identical crops score exactly 0. Crops
    with a side shorter than ``min_side`` (32 px: VGG pools four times) are enlarged
    bilinearly, both alike, before the network sees them.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from innout.devices import resolve_device
from innout.errors import StageError
from innout.image_metrics import checkpoint_path, image_pair, to_tensor
from innout.models import ALEXNET_URL, VGG16_URL

LPIPS_BACKBONES = ("vgg", "alex", "random")


LPIPS_MIN_SIDE = 32


BACKBONE_FILES = {"vgg": VGG16_URL.rsplit("/", 1)[1], "alex": ALEXNET_URL.rsplit("/", 1)[1]}


class LpipsMetric:
    """LPIPS between two crops (module docstring). ``backbone``: ``vgg`` | ``alex`` (ImageNet
    trunk from ``cache_dir``, calibrated heads from the lpips package) | ``random`` (random
    trunk and heads from ``seed``: offline presets, results are not measurements).

    Nothing is downloaded: the lpips model is always built with ``pnet_rand=True`` (so
    torchvision fetches nothing) and the trunk's weights are then copied from the cache."""

    def __init__(self, backbone: str = "vgg", cache_dir: str | Path | None = None, device: str = "cpu", *,
                 seed: int = 0, min_side: int = LPIPS_MIN_SIDE):
        if backbone not in LPIPS_BACKBONES:
            raise ValueError(f"lpips backbone {backbone!r} is not one of {', '.join(LPIPS_BACKBONES)}")
        self.backbone, self.seed, self.min_side = backbone, int(seed), int(min_side)
        self.random_weights = backbone == "random"
        self.device = resolve_device(device)
        net = "vgg" if self.random_weights else backbone
        trunk = None if self.random_weights else checkpoint_path(cache_dir, BACKBONE_FILES[backbone], f"LPIPS {backbone} backbone")

        import lpips

        # Built on the meta device (no weights, no download, no 138 M-parameter VGG init),
        # then allocated and every tensor written below; a tensor left unwritten (NaN) is an error.
        with warnings.catch_warnings(), torch.device("meta"):
            # lpips passes torchvision the deprecated `pretrained=False`: a warning, nothing more
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.fill_(float("nan"))
        model.scaling_layer = lpips.ScalingLayer()  # lpips' input normalisation (constants)
        if self.random_weights:
            _random_lpips(model, self.seed)
            self.description = f"LPIPS v0.1, VGG16 trunk and linear heads with RANDOM weights (seed {self.seed})"
        else:
            _load_lpips_heads(model, net)
            _load_trunk(model.net, net, trunk)
            self.description = f"LPIPS v0.1, {net} trunk ({trunk.name}), calibrated linear heads (lpips package)"
        unset = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if torch.isnan(t).any()]
        if unset:
            raise RuntimeError(f"LPIPS tensors left uninitialised (lpips version change?): {unset}")
        self.model = model.eval().requires_grad_(False).to(self.device)

    def __call__(self, pred: np.ndarray, gt: np.ndarray) -> float:
        p, g = image_pair(pred, gt)
        a, b = to_tensor(p, self.device), to_tensor(g, self.device)
        h, w = a.shape[-2:]
        if min(h, w) < self.min_side:
            scale = self.min_side / min(h, w)
            size = (max(self.min_side, round(h * scale)), max(self.min_side, round(w * scale)))
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            d = self.model(a * 2 - 1, b * 2 - 1)
        return float(d.reshape(-1)[0].item())


def _random_lpips(model: Any, seed: int) -> None:
    """Seeded random LPIPS weights: the trunk's convolutions as torchvision initialises VGG
    (Kaiming-normal, fan-out, ReLU; zero bias), the linear heads as PyTorch initialises a
    1x1 convolution (Kaiming-uniform), then made non-negative."""

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=g)
                torch.nn.init.zeros_(module.bias)
        for lin in model.lins:
            conv = lin.model[-1]
            torch.nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=g)
            conv.weight.abs_()


def _load_lpips_heads(model: Any, net: str) -> None:
    """The calibrated linear heads shipped inside the lpips package (``weights/v0.1``)."""
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise StageError("evaluate", f"LPIPS linear heads missing: {path} (reinstall the lpips package)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = {k for k in model.state_dict() if k.startswith("lin") and not k.startswith("lins.")}  # lins.* alias lin*
    if set(state) != expected:
        raise StageError("evaluate", f"{path}: unexpected LPIPS head keys {sorted(set(state) ^ expected)}")
    model.load_state_dict(state, strict=False)


def _load_trunk(trunk: Any, net: str, path: Path) -> None:
    """Copy a torchvision ``vgg16`` / ``alexnet`` checkpoint's ``features.<i>`` layers into
    lpips' trunk, whose slices keep torchvision's layer indices as module names."""

    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = {k for k in state if k.startswith("features.")}
    used = set()
    with torch.no_grad():
        for name, module in trunk.named_modules():
            if not isinstance(module, torch.nn.Conv2d):
                continue
            index = name.rsplit(".", 1)[1]
            for param in ("weight", "bias"):
                key = f"features.{index}.{param}"
                if key not in state or state[key].shape != getattr(module, param).shape:
                    raise StageError("evaluate", f"{path}: not a torchvision {net} checkpoint ({key} missing or misshapen)")
                getattr(module, param).copy_(state[key])
                used.add(key)
    if used != wanted:
        raise StageError("evaluate", f"{path}: layers not used by the {net} trunk: {sorted(wanted - used)}")


class _MinSide(nn.Module):
    """An LPIPS module that first enlarges (bilinear, both alike) images with a side below
    ``min_side``: VGG pools four times, smaller patches have no deep features."""

    def __init__(self, module: nn.Module, min_side: int):
        super().__init__()
        self.module = module
        self.min_side = int(min_side)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        if min(h, w) < self.min_side:
            size = (max(self.min_side, round(h * self.min_side / min(h, w))), max(self.min_side, round(w * self.min_side / min(h, w))))
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return self.module(a, b)


def make_lpips_module(models_cfg: Any, device: Any, seed: int = 0, min_side: int = 32) -> tuple[nn.Module, str, str]:
    """``(module, description, backbone)``: lpips.LPIPS (v0.1, the configured
    backbone) called on images in [-1, 1]. Real backbones load from the models cache
    (:class:`LpipsMetric`: nothing is downloaded); ``random`` (offline
    presets) is a seeded random VGG trunk with random heads."""

    get = (lambda k, d: models_cfg.get(k, d)) if hasattr(models_cfg, "get") else (lambda k, d: getattr(models_cfg, k, d))
    metric = LpipsMetric(str(get("lpips_backbone", "vgg")), get("cache_dir", None), str(device), seed=seed, min_side=min_side)
    return _MinSide(metric.model, min_side), metric.description, metric.backbone
