"""Metrics of an object-removal result: the SPIn-NeRF evaluation protocol.

The test cameras of a SPIn-NeRF scene were photographed after the object was physically
removed. The NeRF renders each test camera; the render and the photo are compared
**inside the bounding box of that test view's mask** (``images_N/test_label/``), never
over the whole frame: :func:`mask_bbox` gives the box, :func:`crop` cuts it out, and every
metric sees only the two crops. :func:`evaluate_views` does this for a scene's test set.

Metrics (images are float arrays in [0, 1], ``HxW`` or ``HxWx3``; ``uint8`` is divided
by 255):

PSNR
    ``10 log10(1 / MSE)`` over every pixel and channel of the crop (peak 1.0); identical
    crops give ``inf``. The scene's PSNR is the mean of the per-view values.
SSIM
    Wang et al. (2004): an 11 x 11 Gaussian window with sigma 1.5 (normalised to sum 1),
    ``K1 = 0.01``, ``K2 = 0.03``, dynamic range ``L = 1``, local (population) variances,
    per RGB channel and averaged over the channels; the SSIM map is averaged over the
    positions where an ``s x s`` window lies inside the crop, ``s = 11`` or, for crops
    narrower than 11 px, the largest odd size that fits (down to 3 px; the Gaussian stays
    11-tap, reflected at the crop's border). This is exactly
    ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, win_size=s)``.
LPIPS
    ``lpips`` 0.1.4, version 0.1, inputs scaled to [-1, 1]. Backbone ``vgg`` (the
    project's default) or ``alex`` (values differ between backbones, so the one used is
    written into every result; compare only like with like): ImageNet weights read from the
    models cache (``<cache_dir>/torch/hub/checkpoints/``, filled by the ``models`` rule),
    never downloaded; the linear heads are the calibrated ones shipped inside the lpips
    package (``lpips/weights/v0.1/<net>.pth``), checked key by key. Backbone ``random``
    (offline presets; results labelled random): a VGG16 trunk with random weights
    (``pnet_rand=True``, initialised from a fixed seed as torchvision initialises VGG) and
    random linear heads from the same seed, made non-negative (the calibrated heads are
    non-negative, so the distance stays >= 0). Identical crops score exactly 0. Crops
    with a side shorter than ``min_side`` (32 px: VGG pools four times) are enlarged
    bilinearly, both alike, before the network sees them.
FID
    The Frechet distance between Gaussian fits of the 2048-d pool features (the global
    average pool after ``Mixed_7c``, "pool3") of an Inception-v3 for the crops of the
    renders and of the photos of one scene: torch-fidelity's ``inception-v3-compat``
    (the TF-FID network, the weights ``pytorch-fid`` and ``torch-fidelity`` use), crops
    quantised to ``uint8`` and resized to 299 x 299 inside the network (TF1-style
    bilinear; non-square crops are stretched). Weights: the models cache; offline presets
    use the same architecture randomly initialised from a seed and are labelled random.
    **Small-sample bias**: a scene has ~40 test views, and a 2048-d covariance estimated
    from 40 samples has rank <= 39. FID is biased upwards at small N (the bias falls
    roughly like 1/N; Chong & Forsyth, "Effectively Unbiased FID", CVPR 2020) and noisy,
    so values are comparable only between methods evaluated on the same views with the
    same protocol. SPIn-NeRF and In-N-Out report it per scene anyway; so do we.
    Computation: in float64, ``tr sqrt(S1 S2)`` is taken from the samples as the nuclear
    norm of ``X1c X2c^T / sqrt((n1-1)(n2-1))`` (``X1c``, ``X2c`` the centred feature
    matrices): the nonzero eigenvalues of ``S1 S2`` are the squared singular values of
    that ``n1 x n2`` matrix, so this is the exact value of what ``scipy.linalg.sqrtm``
    approximates, without its complex round-off and in milliseconds instead of minutes
    (a 2048 x 2048 ``sqrtm`` took 100-140 s on the project's two shared CPU cores). :func:`frechet_distance` is
    the textbook ``sqrtm`` form for statistics given as moments; the tests check both agree.

MUSIQ, which some papers also report, is not computed here.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from innout.errors import StageError
from innout.models import INCEPTION_URL, RANDOM_WEIGHTS_WARNING, VGG16_URL, resolve_device, torch_home
from innout.stage import write_text_atomic

# --------------------------------------------------------------------------- constants

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

LPIPS_BACKBONES = ("vgg", "alex", "random")
LPIPS_MIN_SIDE = 32
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"  # torchvision's AlexNet (not fetched by default)
BACKBONE_FILES = {"vgg": VGG16_URL.rsplit("/", 1)[1], "alex": ALEXNET_URL.rsplit("/", 1)[1]}
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
FID_FEATURE = "2048"  # torch-fidelity's name of the pool3 features
FID_DIMS = 2048

METRICS_COLUMNS = ("scene", "lpips", "fid", "psnr", "ssim",
                   "lpips_before", "fid_before", "psnr_before", "ssim_before", "random_weights")
"""Columns of ``results/metrics.tsv`` (one row per scene). ``*_before``: the same metrics of
the comparison run the workflow names "before" (e.g. the NeRF before refinement)."""

Bbox = tuple[int, int, int, int]


# --------------------------------------------------------------------------- boxes

def mask_bbox(mask: np.ndarray, name: str = "mask") -> Bbox:
    """The bounding box ``(y0, y1, x0, x1)`` (half-open: rows ``y0..y1-1``) of the nonzero
    pixels of an ``HxW`` mask (an ``HxWxC`` mask counts a pixel when any channel is set).
    An empty mask raises ``ValueError`` naming ``name``."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.any(axis=2)
    if m.ndim != 2:
        raise ValueError(f"{name}: expected an HxW mask, got shape {np.asarray(mask).shape}")
    m = m.astype(bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"{name}: the mask is empty, it has no bounding box")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop(img: np.ndarray, bbox: Sequence[int]) -> np.ndarray:
    """``img[y0:y1, x0:x1]`` for a box from :func:`mask_bbox`."""
    y0, y1, x0, x1 = (int(v) for v in bbox)
    return np.asarray(img)[y0:y1, x0:x1]


# --------------------------------------------------------------------------- inputs

def _as_image(img: Any, name: str = "image") -> np.ndarray:
    """float64 ``HxWxC`` (C = 1 or 3) in [0, 1] from a float array in [0, 1] (1e-6 of
    round-off is tolerated and clipped) or ``uint8``."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"{name}: expected HxW or HxWx3, got shape {np.asarray(img).shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == bool or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected float in [0, 1] or uint8, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: has NaN or inf values")
    if a.size and (a.min() < -1e-6 or a.max() > 1.0 + 1e-6):
        raise ValueError(f"{name}: values outside [0, 1] (min {a.min():.4g}, max {a.max():.4g})")
    return np.clip(a, 0.0, 1.0)  # round-off of at most 1e-6 is clipped


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_image(pred, "pred"), _as_image(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt differ in shape: {p.shape} vs {g.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"empty image of shape {p.shape}")
    return p, g


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


# --------------------------------------------------------------------------- PSNR, SSIM

def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, peak 1.0, over all pixels and channels;
    ``inf`` for identical images."""
    p, g = _pair(pred, gt)
    mse = float(np.mean((p - g) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim_window(height: int, width: int) -> int:
    """The averaging window ``s`` of SSIM for an image of this size: 11, or the largest odd
    size that fits (>= 3)."""
    win = min(SSIM_WINDOW, height, width)
    win -= 1 - win % 2  # largest odd number <= win
    if win < 3:
        raise ValueError(f"image of {height}x{width} px is too small for SSIM (needs >= 3 px on each side)")
    return win


def _gaussian(win: int, sigma: float) -> np.ndarray:
    x = np.arange(win, dtype=np.float64) - (win - 1) / 2
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Structural similarity (module docstring: Gaussian window 11, sigma 1.5, K1 0.01,
    K2 0.03, L 1, mean over the valid positions and the channels). Identical images give 1."""
    p, g = _pair(pred, gt)
    h, w = p.shape[:2]
    r = ssim_window(h, w) // 2
    kernel = _gaussian(SSIM_WINDOW, SSIM_SIGMA)
    c1, c2 = (SSIM_K1 * 1.0) ** 2, (SSIM_K2 * 1.0) ** 2

    def smooth(a: np.ndarray) -> np.ndarray:
        out = ndimage.correlate1d(a, kernel, axis=0, mode="reflect")
        out = ndimage.correlate1d(out, kernel, axis=1, mode="reflect")
        return out[r:h - r, r:w - r]  # positions whose window lies inside the image

    values = []
    for c in range(p.shape[2]):
        x, y = p[:, :, c], g[:, :, c]
        mx, my = smooth(x), smooth(y)
        vx, vy, vxy = smooth(x * x) - mx * mx, smooth(y * y) - my * my, smooth(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(float(s.mean()))
    return float(np.mean(values))


# --------------------------------------------------------------------------- helpers

def checkpoint_path(cache_dir: str | Path | None, filename: str, what: str) -> Path:
    """``<cache_dir>/torch/hub/checkpoints/<filename>`` (where the ``models`` rule puts the
    torch.hub checkpoints); a one-line ``StageError`` naming the file when it is absent."""
    if cache_dir is None:
        raise StageError("evaluate", f"{what}: no models cache_dir given (it holds torch/hub/checkpoints/{filename})")
    path = torch_home(cache_dir) / "hub" / "checkpoints" / filename
    if not path.is_file():
        raise StageError("evaluate", f"{what} weights missing: {path} (run the `models` rule first; nothing is downloaded here)")
    return path


def _to_tensor(a: np.ndarray, device: Any):
    import torch

    return torch.from_numpy(np.ascontiguousarray(_rgb(a).transpose(2, 0, 1))).float()[None].to(device)


# --------------------------------------------------------------------------- LPIPS

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
        import torch

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
        import torch
        import torch.nn.functional as F

        p, g = _pair(pred, gt)
        a, b = _to_tensor(p, self.device), _to_tensor(g, self.device)
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
    import torch

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
    import torch

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
    import torch

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


# --------------------------------------------------------------------------- FID

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64, with
    ``scipy.linalg.sqrtm`` (the pytorch-fid recipe: when the product is singular enough for
    ``sqrtm`` to fail, ``eps * I`` is added to both covariances; the real part is kept)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(np.real(covmean)))


def frechet_distance_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussian fits (mean, unbiased covariance) of two feature
    sets ``(n1, d)`` and ``(n2, d)``, each n >= 2, exactly, in float64:
    ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 ||X1c X2c^T||_* / sqrt((n1 - 1)(n2 - 1))``.
    Cost O(n1 n2 d): meant for the few dozen views of a scene (module docstring).
    Never negative beyond round-off; clipped at 0."""
    a, b = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with equal d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(a)} and {len(b)}")
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    ac, bc = a - mu1, b - mu2
    n1, n2 = len(a) - 1, len(b) - 1
    trace_sqrt = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / math.sqrt(n1 * n2)
    diff = mu1 - mu2
    value = diff @ diff + (ac * ac).sum() / n1 + (bc * bc).sum() / n2 - 2.0 * trace_sqrt
    return max(0.0, float(value))


class FidMetric:
    """FID between the crops of the renders and of the photos of one scene (module
    docstring): torch-fidelity's ``inception-v3-compat``, 2048-d pool3 features.

    ``random_weights=False`` reads ``<cache_dir>/torch/hub/checkpoints/`` + :data:`INCEPTION_FILE`
    (the ``models`` rule's download; a missing file is a one-line error, never a download);
    ``random_weights=True`` builds the same network with seeded random weights (conv:
    Kaiming-normal for ReLU, batch norms the identity, fc: N(0, 0.01)) for offline presets."""

    def __init__(self, random_weights: bool = False, cache_dir: str | Path | None = None, device: str = "cpu", *,
                 seed: int = 0, batch_size: int = 8):
        self.random_weights, self.seed, self.batch_size = bool(random_weights), int(seed), int(batch_size)
        self.device = resolve_device(device)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise StageError("evaluate", "FID needs the torch-fidelity package (pip install torch-fidelity)") from err
        if self.random_weights:
            self.network = _random_inception(FeatureExtractorInceptionV3, self.seed)
            self.description = f"FID: inception-v3-compat (torch-fidelity) with RANDOM weights (seed {self.seed}), 2048-d pool3"
        else:
            path = checkpoint_path(cache_dir, INCEPTION_FILE, "FID Inception")
            self.network = FeatureExtractorInceptionV3("inception-v3-compat", [FID_FEATURE],
                                                       feature_extractor_weights_path=str(path))
            self.description = f"FID: inception-v3-compat (torch-fidelity, {path.name}), 2048-d pool3"
        self.network = self.network.to(self.device).eval()
        self.cache_size = 1024  # remembered feature vectors (16 kB each)
        self._cache: dict[tuple, np.ndarray] = {}

    def features(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """``(n, 2048)`` float64 pool3 features; images of any size (resized to 299 inside),
        quantised to ``uint8`` as the network expects; equal sizes are batched. Features are
        remembered by image content (the photos' crops recur when a scene's "before" and
        "after" renders are scored against them), up to :attr:`cache_size` images."""
        import torch

        quantised = [np.round(_rgb(_as_image(im, f"image {i}")) * 255.0).astype(np.uint8) for i, im in enumerate(images)]
        keys = [(q.shape, hashlib.sha1(q.tobytes()).hexdigest()) for q in quantised]
        found = {k: self._cache[k] for k in keys if k in self._cache}
        todo: dict[tuple, list[int]] = {}  # image shape -> one index per distinct new image
        pending: set[tuple] = set()
        for i, (q, key) in enumerate(zip(quantised, keys)):
            if key not in found and key not in pending:
                pending.add(key)
                todo.setdefault(q.shape, []).append(i)
        with torch.no_grad():
            for indices in todo.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start:start + self.batch_size]
                    batch = torch.from_numpy(np.stack([quantised[i].transpose(2, 0, 1) for i in chunk])).to(self.device)
                    (feats,) = self.network(batch)
                    for i, f in zip(chunk, feats.double().cpu().numpy()):
                        found[keys[i]] = f
                        if len(self._cache) >= self.cache_size:
                            self._cache.pop(next(iter(self._cache)))  # oldest first
                        self._cache[keys[i]] = f
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, FID_DIMS))

    def score(self, preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> float:
        """FID between two image sets (each >= 2 images; small-sample bias: module docstring)."""
        if len(preds) < 2 or len(gts) < 2:
            raise ValueError(f"FID needs at least 2 images per set, got {len(preds)} and {len(gts)}")
        return frechet_distance_from_features(self.features(preds), self.features(gts))


def _random_inception(cls: type, seed: int) -> Any:
    """torch-fidelity's Inception with seeded random weights. Its constructor always loads
    a state dict (from a path, else from the internet); it is given an in-memory empty
    one, and the subclass's ``load_state_dict`` initialises the weights instead."""
    import torch

    class RandomInceptionV3(cls):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: D401 (torch signature)
            if state_dict:
                raise RuntimeError("the random Inception takes no weights")
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for module in self.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=g)
                        if module.bias is not None:
                            module.bias.zero_()
                    elif isinstance(module, torch.nn.BatchNorm2d):
                        module.reset_parameters()  # weight 1, bias 0, running mean 0, variance 1
                    elif isinstance(module, torch.nn.Linear):
                        torch.nn.init.normal_(module.weight, 0.0, 0.01, generator=g)
                        module.bias.zero_()
            self.innout_random_init = seed
            return torch.nn.modules.module._IncompatibleKeys([], [])

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    network = RandomInceptionV3("inception-v3-compat", [FID_FEATURE], feature_extractor_weights_path=empty)
    if getattr(network, "innout_random_init", None) != seed:
        raise RuntimeError("torch-fidelity's Inception did not initialise through load_state_dict (version change?)")
    return network


# --------------------------------------------------------------------------- a scene

def evaluate_views(renders: Mapping[str, np.ndarray], gts: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                   lpips: LpipsMetric | None, fid: FidMetric | None) -> dict:
    """Metrics of one scene's test views, each computed inside the bounding box of that
    view's mask (SPIn-NeRF protocol).

    ``renders``, ``gts``, ``masks``: by view name, the same names in all three; images
    ``HxWx3`` (float in [0, 1] or uint8), masks ``HxW`` (nonzero = object). ``lpips`` /
    ``fid`` may be None to skip that metric (its values are then None).

    Returns ``{"views": {name: {"lpips", "psnr", "ssim", "bbox": [y0, y1, x0, x1]}},
    "lpips", "psnr", "ssim"`` (means over views; one perfect view makes the PSNR mean
    ``inf``), ``"fid"`` (over the set of crops), ``"n_views", "random_weights",
    "warning", "metrics"`` (which networks, in words)}``."""
    names = sorted(gts)
    if set(renders) != set(names) or set(masks) != set(names):
        missing = {"renders": sorted(set(names) - set(renders)), "masks": sorted(set(names) - set(masks)),
                   "gts": sorted((set(renders) | set(masks)) - set(names))}
        raise ValueError("views differ between renders, gts and masks: "
                         + "; ".join(f"missing in {k}: {', '.join(v)}" for k, v in missing.items() if v))
    if not names:
        raise ValueError("no test views to evaluate")
    views: dict[str, dict] = {}
    pred_crops, gt_crops = [], []
    for name in names:
        render, gt, mask = np.asarray(renders[name]), np.asarray(gts[name]), np.asarray(masks[name])
        if render.shape != gt.shape:
            raise ValueError(f"{name}: render {render.shape} and ground truth {gt.shape} differ in shape")
        if mask.shape[:2] != gt.shape[:2]:
            raise ValueError(f"{name}: mask {mask.shape} does not match the image {gt.shape}")
        box = mask_bbox(mask, f"{name} mask")
        p, g = _pair(crop(render, box), crop(gt, box))
        pred_crops.append(p)
        gt_crops.append(g)
        views[name] = {"lpips": lpips(p, g) if lpips is not None else None,
                       "psnr": psnr(p, g), "ssim": ssim(p, g), "bbox": list(box)}

    def mean(key: str) -> float | None:
        values = [v[key] for v in views.values()]
        return None if any(v is None for v in values) else float(np.mean(values))

    random_weights = bool((lpips is not None and lpips.random_weights) or (fid is not None and fid.random_weights))
    return {
        "views": views,
        "lpips": mean("lpips"),
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "fid": fid.score(pred_crops, gt_crops) if fid is not None else None,
        "n_views": len(names),
        "random_weights": random_weights,
        "warning": RANDOM_WEIGHTS_WARNING if random_weights else None,
        "metrics": {"protocol": "SPIn-NeRF: inside the bounding box of each test view's mask",
                    "lpips": lpips.description if lpips is not None else None,
                    "fid": fid.description if fid is not None else None,
                    "ssim": f"Gaussian window {SSIM_WINDOW} sigma {SSIM_SIGMA}, K1 {SSIM_K1} K2 {SSIM_K2}, RGB mean",
                    "psnr": "peak 1.0, mean over views"},
    }


def metrics_from_config(models_cfg: Any, evaluate_cfg: Any = None, device: str = "cpu") -> tuple[LpipsMetric, FidMetric | None]:
    """The LPIPS and FID metrics of a method config's ``models`` and ``evaluate`` sections:
    LPIPS with ``lpips_backbone``; FID (None when ``evaluate.fid`` is false) random exactly
    when the model set's metric backbones are (``innout.models.random_metric_backbones``).
    Both read ``cache_dir``."""
    from innout.models import random_metric_backbones

    def _get(cfg: Any, key: str, default: Any = None) -> Any:
        return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)

    cache_dir = _get(models_cfg, "cache_dir")
    lpips = LpipsMetric(str(_get(models_cfg, "lpips_backbone", "vgg")), cache_dir, device,
                        min_side=int(_get(evaluate_cfg, "lpips_min_side", LPIPS_MIN_SIDE)))
    fid = None
    if bool(_get(evaluate_cfg, "fid", True)):
        fid = FidMetric(random_metric_backbones(models_cfg), cache_dir, device, batch_size=int(_get(evaluate_cfg, "fid_batch_size", 8)))
    return lpips, fid


# --------------------------------------------------------------------------- table

def scene_row(scene: str, result: Mapping[str, Any], before: Mapping[str, Any] | None = None) -> dict:
    """One ``metrics.tsv`` row from :func:`evaluate_views` results (``before``: the same
    for the comparison run, or None)."""
    row: dict[str, Any] = {"scene": scene}
    for key in ("lpips", "fid", "psnr", "ssim"):
        row[key] = result.get(key)
        row[f"{key}_before"] = before.get(key) if before is not None else None
    row["random_weights"] = bool(result.get("random_weights")) or bool(before is not None and before.get("random_weights"))
    return row


def _cell(value: Any) -> str:
    if value is None:
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "NA"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    text = str(value)
    if any(c in text for c in "\t\n\r"):
        raise ValueError(f"a metrics cell cannot hold tabs or newlines: {text!r}")
    return text


def metrics_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """Tab-separated ``results/metrics.tsv`` text: a header of :data:`METRICS_COLUMNS`
    (then any further keys, in order of first appearance), one line per row. Missing
    values and None / NaN are ``NA``; floats have 6 significant digits; booleans are
    ``true`` / ``false``; the text ends with a newline."""
    rows = list(rows)
    columns = list(METRICS_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(c)) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the stage

METRIC_KEYS = ("lpips", "psnr", "ssim", "fid")


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    from innout.errors import InputError

    if not Path(path).is_file():
        raise InputError(path, "render not found")
    return np.asarray(Image.open(path).convert("RGB"))


def _read_mask(path: Path | None, frame_name: str, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    from innout.errors import InputError

    if path is None or not Path(path).is_file():
        raise InputError(path or frame_name, f"test view {frame_name} has no object mask: the protocol's box comes from it")
    m = np.asarray(Image.open(path))
    m = (m[..., 0] if m.ndim == 3 else m) > 0
    if m.shape != shape:
        raise InputError(path, f"mask is {m.shape[1]}x{m.shape[0]}, its image {shape[1]}x{shape[0]}")
    return m


def _scene_metrics(result: Mapping[str, Any]) -> dict:
    return {"lpips": result["lpips"], "psnr": result["psnr"], "ssim": result["ssim"], "fid": result["fid"],
            "per_view": result["views"], "n_views": result["n_views"]}


def run_evaluate(transforms: Path, renders_dir: Path, before_dir: Path, out_json: Path, cfg: Any, log: Any = None,
                 comparison_png: Path | None = None, upstream_summary: Path | None = None) -> dict:
    """The SPIn-NeRF metrics of a scene (module docstring) into ``out_json``.

    ``renders_dir``: the final NeRF's renders of the ground-truth test cameras
    (``<name>.png``, the render stage's ``test/rgb``); ``before_dir``: the same for the
    comparison run, the pre-trained NeRF (pretrain's ``renders/test/rgb``). Ground truth:
    the test views' photos, the box: each test view's object mask. Views with an empty
    mask have no box and are left out (listed in ``skipped_views``). A scene without
    ground-truth test views gets every metric None and a ``reason``.

    ``comparison_png``: also draw ground truth | before | after of a few test views with
    the box outlined (the report's picture). ``upstream_summary``: a summary.json whose
    ``random_weights`` carries over (the render stage's)."""
    import json
    import logging

    from innout.models import is_random
    from innout.pretrain import read_scene

    log = log or logging.getLogger("innout.evaluate")
    _, _, _, test = read_scene(Path(transforms))
    upstream = json.loads(Path(upstream_summary).read_text()) if upstream_summary and Path(upstream_summary).is_file() else {}
    random_upstream = bool(is_random(cfg.models)) or bool(upstream.get("random_weights"))
    gts, masks, after, before, skipped = {}, {}, {}, {}, []
    for f in test:
        gt = _read_rgb(f.image)
        mask = _read_mask(f.object_mask, f.name, gt.shape[:2])
        if not mask.any():
            log.warning("test view %s: empty mask, no box to evaluate in; left out", f.name)
            skipped.append(f.name)
            continue
        gts[f.name], masks[f.name] = gt, mask
        after[f.name] = _read_rgb(Path(renders_dir) / f"{f.name}.png")
        before[f.name] = _read_rgb(Path(before_dir) / f"{f.name}.png")
    if not gts:
        reason = "the scene has no ground-truth test views" if not test else "every test view's mask is empty"
        log.info("evaluate: %s; metrics are null", reason)
        metrics = {**{k: None for k in METRIC_KEYS}, "per_view": {}, "n_views": 0, "reason": reason,
                   "random_weights": random_upstream, "warning": RANDOM_WEIGHTS_WARNING if random_upstream else None,
                   "before": {**{k: None for k in METRIC_KEYS}, "per_view": {}, "n_views": 0}, "skipped_views": skipped}
    else:
        lpips, fid = metrics_from_config(cfg.models, cfg.evaluate, cfg.device)
        if fid is not None and len(gts) < 2:
            log.warning("FID needs at least 2 test views, the scene has %d: FID is null", len(gts))
            fid = None
        log.info("evaluate: %d test views; %s", len(gts), lpips.description)
        result_after = evaluate_views(after, gts, masks, lpips, fid)
        result_before = evaluate_views(before, gts, masks, lpips, fid)
        random_weights = bool(result_after["random_weights"]) or random_upstream
        metrics = {
            **_scene_metrics(result_after),
            "reason": None,
            "random_weights": random_weights,
            "warning": RANDOM_WEIGHTS_WARNING if random_weights else None,
            "protocol": "SPIn-NeRF: renders of the ground-truth test cameras against the photos, inside the bounding box "
                        "of each test view's mask; LPIPS/PSNR/SSIM per view and their mean, FID over the scene's crops",
            "metrics": result_after["metrics"],
            "before": {**_scene_metrics(result_before), "what": "the pre-trained NeRF (geometry stage, object still in it)"},
            "skipped_views": skipped,
        }
        log.info("after: LPIPS %s PSNR %s SSIM %s FID %s | before: LPIPS %s PSNR %s SSIM %s FID %s",
                 *(_fmt(metrics[k]) for k in METRIC_KEYS), *(_fmt(metrics["before"][k]) for k in METRIC_KEYS))
    write_text_atomic(out_json, json.dumps(metrics, indent=1) + "\n")  # PSNR inf is written as Infinity
    if comparison_png is not None:
        comparison_sheet(gts, masks, before, after, metrics, Path(comparison_png))
    return metrics


def _fmt(value: Any) -> str:
    return "NA" if value is None else f"{value:.4g}"


def comparison_sheet(gts: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray],
                     after: Mapping[str, np.ndarray], metrics: Mapping[str, Any], out_png: Path, n_views: int = 6) -> None:
    """ground truth | pre-trained NeRF | final NeRF for up to ``n_views`` test views, the
    evaluation box drawn in red on each, per-view PSNR/LPIPS in the captions; a red
    banner when the metrics were made with random weights. A placeholder picture saying
    so when there is nothing to compare."""
    from PIL import Image, ImageDraw

    from innout.viz import contact_sheet

    names = sorted(gts)
    if len(names) > n_views:
        names = [names[i] for i in np.linspace(0, len(names) - 1, n_views).round().astype(int)]
    tiles = []
    for name in names:
        y0, y1, x0, x1 = mask_bbox(masks[name])
        per_view = metrics["per_view"][name]
        per_before = metrics["before"]["per_view"][name]
        for img, label, m in ((gts[name], f"{name}: ground truth", None), (before[name], "before", per_before),
                              (after[name], "after", per_view)):
            shown = Image.fromarray(np.asarray(img, dtype=np.uint8))
            ImageDraw.Draw(shown).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 40, 40))
            text = label if m is None else f"{label}: {m['psnr']:.1f} dB, LPIPS {_fmt(m['lpips'])}"
            tiles.append((np.asarray(shown), text))
    sheet = contact_sheet(tiles, columns=3, tile_width=240) if tiles else Image.new("RGB", (480, 60), "white")
    if not tiles:
        ImageDraw.Draw(sheet).text((8, 24), f"no comparison: {metrics.get('reason')}", fill="black")
    if metrics.get("random_weights"):
        sheet = with_banner(sheet, f"WARNING: {RANDOM_WEIGHTS_WARNING}")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)


def with_banner(image: Any, text: str) -> Any:
    """The image with a red strip carrying ``text`` on top (random-weight results)."""
    from PIL import Image, ImageDraw

    strip = 22
    out = Image.new("RGB", (image.width, image.height + strip), (176, 0, 32))
    out.paste(image, (0, strip))
    ImageDraw.Draw(out).text((6, 5), text, fill="white")
    return out


def metrics_html(rows: Sequence[Mapping[str, Any]], warning: str | None = None) -> str:
    """The metrics table (:data:`METRICS_COLUMNS`) as a small HTML page for the report."""
    import html

    columns = list(METRICS_COLUMNS)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    banner = (f'<p style="background:#b00020;color:#fff;padding:6px 10px;font-weight:bold">WARNING: {html.escape(warning)}</p>'
              if warning else "")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>metrics</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #999;padding:3px 8px;text-align:right}"
            "table{border-collapse:collapse}</style></head>\n<body>\n" + banner +
            "<p>SPIn-NeRF protocol: test renders against ground truth inside each test view's mask box. "
            "LPIPS and FID: lower is better; PSNR (dB) and SSIM: higher is better. <i>_before</i>: the pre-trained "
            "NeRF with the object still in it.</p>\n"
            f"<table id=\"metrics\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n</body></html>\n")


def write_metrics_table(metrics_files: Mapping[str, Path], out_tsv: Path, out_html: Path | None = None) -> list[dict]:
    """``results/metrics.tsv`` (and its HTML page) from each scene's metrics.json."""
    import json

    rows = []
    for scene, path in metrics_files.items():
        m = json.loads(Path(path).read_text())
        rows.append(scene_row(scene, m, m.get("before")))
    write_text_atomic(out_tsv, metrics_table(rows))
    if out_html is not None:
        warning = RANDOM_WEIGHTS_WARNING if any(r["random_weights"] for r in rows) else None
        Path(out_html).write_text(metrics_html(rows, warning))
    return rows
