"""The 2-D U-Net: one input channel, one output channel, one network per colour channel."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .config import PRESETS

__all__ = ["UNet", "build_unet", "channels_last"]


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
        )


class UNet(nn.Module):
    """A plain 2-D U-Net predicting the clean image as input plus a learned residual.

    Parameters
    ----------
    widths : sequence of int
        Feature channels per level, top to bottleneck; ``len(widths) - 1`` poolings, so
        inputs must be multiples of ``2 ** (len(widths) - 1)`` on each side.

    Shapes
    ------
    ``(N, 1, H, W) -> (N, 1, H, W)``, float, in the normalised range.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"a U-Net needs at least two positive widths; got {widths}")
        self.widths = widths
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(_Block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        for w_skip in reversed(widths[:-1]):
            self.up.append(_Block(cin + w_skip, w_skip))
            cin = w_skip
        self.head = nn.Conv2d(cin, 1, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h)
            if i < len(self.down) - 1:
                skips.append(h)
                h = F.max_pool2d(h, 2)
        for block, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return x + self.head(h)


def build_unet(preset: str) -> UNet:
    """A U-Net of a named preset (``tiny``, ``small``, ``paper``)."""
    return UNet(PRESETS[preset])


def channels_last(device: torch.device | str) -> bool:
    """Whether the network runs in channels-last memory layout on ``device``: on CUDA,
    and on CPUs with oneDNN (x86 and most builds), whose channels-last convolutions are
    faster than the default layout's for these narrow networks (one thread: inference
    2.4x for ``tiny`` and 1.6x for ``small``, a training step 1.9x and 1.2x; ``python
    benchmarks/training.py --stage layout``).  The result is the same network within
    float rounding."""
    dev = torch.device(device)
    return dev.type == "cuda" or (dev.type == "cpu" and torch.backends.mkldnn.is_available())
