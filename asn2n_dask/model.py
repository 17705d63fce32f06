"""The U-Nets: one input channel, one output channel, one network per colour channel.

:class:`UNet` sees 2-D frames; :class:`UNet3d` sees (Z, Y, X) sub-volumes, pooling Z
only at the levels :func:`pooling_kernels` chooses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import PRESETS, PRESETS_3D
from .standalone import UNet as _ScriptableUNet
from .standalone import UNet3d as _ScriptableUNet3d

__all__ = ["UNet", "build_unet", "channels_last", "UNet3d", "build_unet3d", "pooling_kernels", "MIN_POOLED_Z"]

#: Z is pooled only where at least this many slices remain after the pooling.
MIN_POOLED_Z = 4


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


def pooling_kernels(levels: int, z_size: int, anisotropy: float = 1.0) -> tuple[tuple[int, int, int], ...]:
    """The pooling kernel (kz, ky, kx) of each level of a 3-D U-Net.

    Y and X are halved at every level.  Z is halved too where both hold:

    * the Z voxel size at that level is less than twice the Y-X one (with the input's
      sizes ``anisotropy`` and 1, each doubled by every pooling along its axis); coarser
      Z is left alone while Y-X catch up, as nnU-Net does;
    * at least :data:`MIN_POOLED_Z` slices remain after it (``z_size // 2 >=
      MIN_POOLED_Z`` at that level), so short stacks, down to one slice, pool Y-X only.

    Parameters
    ----------
    levels : int
        Levels of the network (``len(widths)``); there are ``levels - 1`` poolings.
    z_size : int
        Slices of the sub-volumes the network is trained on.
    anisotropy : float
        Voxel size along Z over voxel size in Y-X.

    Returns
    -------
    tuple of (int, int, int)
        One kernel per pooling, each ``(1, 2, 2)`` or ``(2, 2, 2)``.

    Examples
    --------
    >>> pooling_kernels(4, 32)
    ((2, 2, 2), (2, 2, 2), (2, 2, 2))
    >>> pooling_kernels(4, 32, anisotropy=3.0)
    ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    >>> pooling_kernels(3, 5)
    ((1, 2, 2), (1, 2, 2))
    """
    if levels < 1 or z_size < 1 or not anisotropy > 0:
        raise ValueError(f"pooling needs levels >= 1, z_size >= 1 and anisotropy > 0; "
                         f"got {levels}, {z_size}, {anisotropy}")
    kernels: list[tuple[int, int, int]] = []
    dz, dxy, z = float(anisotropy), 1.0, int(z_size)
    for _ in range(levels - 1):
        kz = 2 if dz < 2 * dxy and z // 2 >= MIN_POOLED_Z else 1
        kernels.append((kz, 2, 2))
        dz, dxy, z = dz * kz, dxy * 2, z // kz
    return tuple(kernels)


class UNet3d(_ScriptableUNet3d):
    """A 3-D U-Net predicting the clean volume as input plus a learned residual.

    The layers and forward pass are :class:`asn2n_dask.standalone.UNet3d`'s (TorchScript
    ready, the same block names as the 2-D network's); this class checks the widths and
    pooling kernels and says which input sizes it takes.

    Parameters
    ----------
    widths : sequence of int
        Feature channels per level, top to bottleneck.
    pools : sequence of (int, int, int), optional
        Pooling kernel (kz, ky, kx) of each of the ``len(widths) - 1`` levels, each
        ``(1, 2, 2)`` or ``(2, 2, 2)`` (:func:`pooling_kernels`); default: Y-X only.

    Shapes
    ------
    ``(N, 1, Z, Y, X) -> (N, 1, Z, Y, X)``, float, in the normalised range; each of Z,
    Y, X a multiple of the matching entry of :attr:`multiple`.
    """

    def __init__(self, widths: Sequence[int], pools: Sequence[Sequence[int]] | None = None) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"a U-Net needs at least two positive widths; got {widths}")
        kernels = tuple(tuple(int(k) for k in p) for p in pools) if pools is not None else \
            ((1, 2, 2),) * (len(widths) - 1)
        if len(kernels) != len(widths) - 1 or any(k not in ((1, 2, 2), (2, 2, 2)) for k in kernels):
            raise ValueError(f"a {len(widths)}-level 3-D U-Net needs {len(widths) - 1} pooling kernels, each "
                             f"(1, 2, 2) or (2, 2, 2); got {kernels}")
        super().__init__(list(widths), [list(k) for k in kernels])
        self.widths = widths
        self.kernels: tuple[tuple[int, ...], ...] = kernels

    @property
    def multiple(self) -> tuple[int, int, int]:
        """Input sizes along (Z, Y, X) must be multiples of these."""
        z = y = x = 1
        for kz, ky, kx in self.kernels:
            z, y, x = z * kz, y * ky, x * kx
        return z, y, x


def build_unet3d(preset: str, z_size: int, anisotropy: float = 1.0) -> UNet3d:
    """A 3-D U-Net of a named preset (``tiny3d``, ``small3d``, ``large3d``) for
    sub-volumes of ``z_size`` slices at ``anisotropy`` (:func:`pooling_kernels`)."""
    widths = PRESETS_3D[preset]
    return UNet3d(widths, pooling_kernels(len(widths), z_size, anisotropy))


def channels_last(device: torch.device | str) -> bool:
    """Whether the network runs in channels-last memory layout on ``device``: on CUDA,
    and on CPUs with oneDNN (x86 and most builds), whose channels-last convolutions are
    faster than the default layout's for these narrow networks (one thread: inference
    2.4x for ``tiny`` and 1.6x for ``small``, a training step 1.9x and 1.2x; ``python
    benchmarks/training.py --stage layout``).  The result is the same network within
    float rounding."""
    dev = torch.device(device)
    return dev.type == "cuda" or (dev.type == "cpu" and torch.backends.mkldnn.is_available())
