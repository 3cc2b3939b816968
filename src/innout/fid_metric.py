"""The FID metric of the evaluation.

FID
    The Frechet distance between Gaussian fits of the 2048-d pool features (the global
    average pool after ``Mixed_7c``, "pool3") of an Inception-v3 for the crops of the
    renders and of the photos of one scene: torch-fidelity's ``inception-v3-compat``
    (the TF-FID network, the weights ``pytorch-fid`` and ``torch-fidelity`` use), crops
    quantised to ``uint8`` and resized to 299 x 299 inside the network (TF1-style
    bilinear; non-square crops are stretched). Weights: the models cache; offline model
    sets (``fid_backbone: random``) use the same architecture randomly initialised from a
    seed, and results say ``fid_backbone: random``.
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
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from scipy import linalg

from innout.devices import resolve_device
from innout.errors import StageError
from innout.image_metrics import as_image, checkpoint_path, rgb3
from innout.models import INCEPTION_URL
from innout.provenance import RANDOM_BACKBONE

INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]


FID_FEATURE = "2048"  # torch-fidelity's name of the pool3 features


FID_DIMS = 2048


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64, with
    ``scipy.linalg.sqrtm`` (the pytorch-fid recipe: when the product is singular enough for
    ``sqrtm`` to fail, ``eps * I`` is added to both covariances; the real part is kept)."""

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
        self.backbone = RANDOM_BACKBONE if self.random_weights else "inception"
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

        quantised = [np.round(rgb3(as_image(im, f"image {i}")) * 255.0).astype(np.uint8) for i, im in enumerate(images)]
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
