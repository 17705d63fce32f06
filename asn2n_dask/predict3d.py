"""One volume through a 3-D network: normalise -> model -> blend -> input units.

The counterpart of :func:`asn2n_dask.predict.denoise_frame` for the networks of a model
trained on volumes (:class:`asn2n_dask.model.UNet3d`).  A volume is normalised on its
channel's global percentile range (the only normalisation of volumes so far), cut into
``(tile_z, tile, tile)`` tiles that are blended back, brought back into input units and
held within the channel's range as 2-D results are: the window of
:func:`asn2n_dask.predict.denoise_window_3d` that covers the volume, so a volume in memory
and the chunked route give the same numbers.  No dask, no files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from .blend import check_tile_frame
from .config import InferConfig
from .plan import WindowPlan, axis_stride, axis_window, check_tile_z
from .predict import denoise_window_3d
from .stats import ChannelStats

__all__ = ["denoise_volume"]


def denoise_volume(volume: NDArray[np.number], fn: Callable[[torch.Tensor], torch.Tensor], *,
                   stats: ChannelStats, infer: InferConfig = InferConfig(), tile_z: int,
                   device: torch.device | str = "cpu",
                   multiple: tuple[int, int, int] = (1, 1, 1)) -> NDArray[np.float32]:
    """Denoise one volume of a channel with a 3-D network, in the volume's own units.

    Parameters
    ----------
    volume : ndarray, shape (D, Y, X)
        Noisy volume in input units: Z slices, or the time points of an x-y-t stack
        seen as one volume.
    fn : callable
        The network, batched: ``(N, 1, tz, t, t) -> (N, 1, tz, t, t)`` float32
        (:func:`asn2n_dask.predict.network_fn`), applied to each tile's views
        (:func:`asn2n_dask.predict.volume_tile_fn`).
    stats : ChannelStats
        Statistics of the volume's channel (all its volumes): ``stats.norm`` is mapped
        to [0, 1], and the result is held within ``stats``' range
        (:func:`asn2n_dask.predict.clamp_output`).
    infer : InferConfig
        Y-X tile, overlap (every axis), blend, views (``infer_on``), ``tta``, tiles per
        call.
    tile_z : int
        Tile size along the depth axis: a multiple of ``multiple[0]``; a model's
        training sub-volume's (:attr:`asn2n_dask.config.VolumeSpec.tile_z`) by default.
    device : torch device
        Where the tiles go.
    multiple : (int, int, int)
        The network's size multiples (:attr:`asn2n_dask.config.VolumeSpec.multiple`).

    Returns
    -------
    ndarray, shape (D, Y, X), float32
        Input units.

    Raises
    ------
    ConfigError
        A tile the network cannot take, or one far larger than the volume's slices.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"denoise_volume takes one (D, Y, X) volume; got shape {vol.shape}")
    check_tile_frame(infer, vol.shape[-2:])
    nz, ny, nx = vol.shape
    tz = check_tile_z(tile_z)
    axes = [axis_window(nz, 0, nz, tz, axis_stride(tz, infer.overlap), 1),
            axis_window(ny, 0, ny, infer.tile, infer.stride, 1), axis_window(nx, 0, nx, infer.tile, infer.stride, 1)]
    whole = WindowPlan((0, nz, 0, ny, 0, nx), tuple(a[0] for a in axes), tuple(a[1] for a in axes),
                       tuple(a[2] for a in axes))  # the window that covers the volume
    return denoise_window_3d(vol, whole, (nz, ny, nx), fn, stats=stats, infer=infer, tile_z=tz, device=device,
                             multiple=multiple)[0]
