"""The 2-D U-Net: one input channel, one output channel, one network per colour channel."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import PRESETS
from .standalone import UNet as _ScriptableUNet

__all__ = ["UNet", "build_unet", "channels_last"]


class UNet(_ScriptableUNet):
    """A plain 2-D U-Net predicting the clean image as input plus a learned residual.

    The layers and forward pass are :class:`asn2n_dask.standalone.UNet`'s (one definition,
    which the exported bioimage.io package carries as its torch-only architecture); this
    class checks the widths and says which input sides it takes.

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
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"a U-Net needs at least two positive widths; got {widths}")
        super().__init__(list(widths))
        self.widths = widths

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.widths) - 1)


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
