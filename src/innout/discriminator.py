"""The StyleGAN2-style patch discriminator of the refine stage's adversarial loss
(:mod:`innout.patch_losses`).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

_ACT_GAIN = math.sqrt(2.0)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * _ACT_GAIN


class _Conv(nn.Module):
    """Conv2d with StyleGAN2's equalized learning rate (weights N(0, 1) scaled by
    1/sqrt(fan_in) at run time) or, with ``equalized=False``, the same initial
    function with the scale folded into the stored weights."""

    def __init__(self, c_in: int, c_out: int, k: int, bias: bool = True, equalized: bool = True):
        super().__init__()
        scale = 1.0 / math.sqrt(c_in * k * k)
        self.scale = scale if equalized else 1.0
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k) * (1.0 if equalized else scale))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.padding = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class _Linear(nn.Module):
    def __init__(self, c_in: int, c_out: int, equalized: bool = True):
        super().__init__()
        scale = 1.0 / math.sqrt(c_in)
        self.scale = scale if equalized else 1.0
        self.weight = nn.Parameter(torch.randn(c_out, c_in) * (1.0 if equalized else scale))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class _BlurDown(nn.Module):
    """Low-pass [1, 3, 3, 1] (outer product, normalised) then stride 2: halves H and W."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(k, k)
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.kernel.expand(c, 1, 4, 4).to(x.dtype), stride=2, padding=1, groups=c)


class _ResBlock(nn.Module):
    """StyleGAN2 residual D block: conv3x3 -> act -> blur-down -> conv3x3 -> act, plus a
    skip blur-down -> 1x1 conv, summed and scaled by 1/sqrt(2)."""

    def __init__(self, c_in: int, c_out: int, equalized: bool):
        super().__init__()
        self.conv0 = _Conv(c_in, c_in, 3, equalized=equalized)
        self.conv1 = _Conv(c_in, c_out, 3, equalized=equalized)
        self.skip = _Conv(c_in, c_out, 1, bias=False, equalized=equalized)
        self.down = _BlurDown()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _act(self.conv1(self.down(_act(self.conv0(x)))))
        s = self.skip(self.down(x))
        return (y + s) * (1.0 / math.sqrt(2.0))


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the std of features over groups of samples, averaged over
    channels and pixels (StyleGAN2). The group is the largest divisor of the batch size
    not above ``group_size``."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.reshape(g, n // g, c, h, w).float()
    y = y - y.mean(dim=0)
    std = (y.square().mean(dim=0) + 1e-8).sqrt()  # (n/g, c, h, w)
    std = std.mean(dim=(1, 2, 3)).to(x.dtype)  # (n/g,)
    std = std.reshape(1, n // g, 1, 1, 1).expand(g, n // g, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, std], dim=1)


class Discriminator(nn.Module):
    """StyleGAN2-style residual discriminator on ``tile`` x ``tile`` RGB images in [0, 1].

    fromRGB (1x1) at ``channels``; residual blocks halving the resolution down to 4 x 4,
    channels doubling per halving up to ``max_channels``; minibatch-stddev; conv3x3;
    FC -> FC -> one logit per image. Leaky ReLU 0.2 (gain sqrt 2), blur [1,3,3,1]
    downsampling, equalized learning rate (``equalized``)."""

    def __init__(self, channels: int = 256, tile: int = 64, max_channels: int = 512, mbstd_group: int = 4, equalized: bool = True):
        super().__init__()
        if tile < 8 or tile & (tile - 1):
            raise ValueError(f"tile must be a power of two >= 8, got {tile}")
        self.tile = int(tile)
        self.mbstd_group = int(mbstd_group)

        def ch(res: int) -> int:
            return int(min(max_channels, channels * (tile // res)))

        self.from_rgb = _Conv(3, ch(tile), 1, equalized=equalized)
        blocks = []
        res = tile
        while res > 4:
            blocks.append(_ResBlock(ch(res), ch(res // 2), equalized))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        c = ch(4)
        self.conv = _Conv(c + 1, c, 3, equalized=equalized)
        self.fc = _Linear(c * 16, c, equalized=equalized)
        self.out = _Linear(c, 1, equalized=equalized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` of images ``(N, 3, tile, tile)`` in [0, 1]."""
        if x.shape[-2:] != (self.tile, self.tile):
            raise ValueError(f"the discriminator takes {self.tile} x {self.tile} tiles, got {tuple(x.shape[-2:])}")
        h = _act(self.from_rgb(x * 2.0 - 1.0))
        for block in self.blocks:
            h = block(h)
        h = minibatch_stddev(h, self.mbstd_group)
        h = _act(self.conv(h))
        h = _act(self.fc(h.flatten(1)))
        return self.out(h).reshape(-1)


@contextlib.contextmanager
def frozen(module: Any) -> Iterator[None]:
    """Parameters of ``module`` without gradients inside the block (restored after);
    anything that is not an ``nn.Module`` (None, a plain callable) passes through."""
    if not isinstance(module, nn.Module):
        yield
        return
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)
