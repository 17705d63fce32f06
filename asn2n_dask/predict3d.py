"""One volume through a 3-D network: normalise -> model -> blend -> input units.

The counterpart of :func:`asn2n_dask.predict.denoise_frame` for the networks of a model
trained on volumes (:class:`asn2n_dask.model.UNet3d`).  A volume is normalised on its
channel's global percentile range (the only normalisation of volumes so far), cut into
``(tile_z, tile, tile)`` tiles that are blended back
(:func:`asn2n_dask.blend.predict_tiled_volume`), brought back into input units and held
within the channel's range as 2-D results are (:func:`asn2n_dask.predict.clamp_output`).
No dask, no files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from .blend import check_tile_frame, predict_tiled_volume
from .config import InferConfig
from .predict import clamp_output, volume_tile_fn
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
    lo, span = stats.norm.lo, stats.norm.span
    scaled = ((vol.astype(np.float64) - lo) / span).astype(np.float32)
    pred = predict_tiled_volume(scaled, volume_tile_fn(fn, infer.infer_on, infer.tta), tile_z=tile_z, config=infer,
                                device=device, multiple=multiple)
    out = clamp_output(pred.astype(np.float64) * span + lo, stats)
    return np.asarray(out, dtype=np.float32)
