"""Weighted overlap blending of tiles.

The tiles' positions are :mod:`asn2n_dask.plan`'s (re-exported here): frame-anchored,
every pixel in the central ``stride`` core of exactly one tile, the frame mirrored past
its edges to fill the outer tiles.  Predictions are blended with a weight window per tile and normalised by the summed
weights (overlap-add with ``torch.nn.functional.fold``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from .config import InferConfig
from .plan import (  # noqa: F401  (re-exported: the tile positions, asn2n_dask.blend.window_tiles, ...)
    TileGrid,
    WindowTiles,
    check_tile_frame,
    reflect_index,
    tile_grid,
    window_tiles,
)

__all__ = ["TileGrid", "tile_grid", "blend_window", "reflect_index", "WindowTiles", "window_tiles", "blend_tiles",
           "check_tile", "check_tile_frame", "predict_tiled"]


def blend_window(config: InferConfig) -> NDArray[np.float32]:
    """The weight of each pixel of a tile, shape (tile, tile), peak 1.

    ``gaussian``: a 2-D Gaussian (sigma = ``sigma_fraction * tile``) floored at
    ``weight_floor``; ``uniform``: ones; ``none``: ones on the tile's core, zeros
    elsewhere (every pixel from exactly one tile).
    """
    t, s = config.tile, config.stride
    if config.blend == "uniform":
        return np.ones((t, t), np.float32)
    if config.blend == "none":
        m = (t - s) // 2
        w1 = np.zeros(t)
        w1[m : m + s] = 1.0
    else:
        c = (t - 1) / 2.0
        sigma = config.sigma_fraction * t
        w1 = np.exp(-((np.arange(t) - c) ** 2) / (2 * sigma**2))
    w = np.outer(w1, w1)
    if config.blend == "gaussian":
        w = np.maximum(w, config.weight_floor)
    return w.astype(np.float32)


def blend_tiles(block: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], *, config: InferConfig,
                window: torch.Tensor) -> torch.Tensor:
    """Cut a block into tiles at ``config.stride``, apply ``fn``, blend back.

    Parameters
    ----------
    block : Tensor, shape (K, Hb, Wb)
        ``Hb`` and ``Wb`` of the form ``(count - 1) * stride + tile``.
    fn : callable
        ``(N, K, tile, tile) -> (N, 1, tile, tile)``.
    window : Tensor, shape (tile, tile)
        Blend weights (:func:`blend_window`).

    Returns
    -------
    Tensor, shape (Hb, Wb), float32
        Weighted average of the tiles covering each position.
    """
    k = block.shape[0]
    t, s = config.tile, config.stride
    size = tuple(block.shape[-2:])
    # (K, ny, nx, t, t) strided view -> (ny * nx, K, t, t): one plain copy, row-major tile order
    tiles = block.unfold(1, t, s).unfold(2, t, s).permute(1, 2, 0, 3, 4).reshape(-1, k, t, t)
    outs = []
    for i in range(0, tiles.shape[0], config.batch):
        outs.append(fn(tiles[i : i + config.batch]).float() * window)
    pred = torch.cat(outs).reshape(1, -1, t * t).transpose(1, 2)
    acc = F.fold(pred, output_size=size, kernel_size=t, stride=s)
    wsum = F.fold(window.reshape(1, t * t, 1).expand(1, t * t, tiles.shape[0]), output_size=size,
                  kernel_size=t, stride=s)
    return (acc / wsum)[0, 0]


def check_tile(config: InferConfig, multiple: int) -> None:
    """Refuse a tile side the network cannot take."""
    if config.tile % multiple:
        from .errors import ConfigError

        raise ConfigError(f"tile must be a multiple of {multiple} for this network; got {config.tile}.")


def predict_tiled(image: NDArray[np.floating], fn: Callable[[torch.Tensor], torch.Tensor], *,
                  config: InferConfig = InferConfig(), device: torch.device | str = "cpu",
                  multiple: int = 1) -> NDArray[np.float32]:
    """Apply ``fn`` tile by tile over a frame and blend the tiles back.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (K, H, W)
        The frame, or K co-registered planes of it (e.g. pixels and normalisation
        fields) that ``fn`` receives together.
    fn : callable
        Batched model, ``(N, K, tile, tile) -> (N, 1, tile, tile)`` float32 tensors.
    config : InferConfig
        Tile side, overlap, blend window and batch size.
    device : torch device
        Where the tiles go.
    multiple : int
        The tile side must be a multiple of this (the network's pooling factor).

    Returns
    -------
    ndarray, shape (H, W), float32
        Weighted average of all tiles covering each pixel.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"predict_tiled takes a 2-D frame or a (K, H, W) stack; got shape {np.shape(image)}")
    check_tile(config, multiple)
    _, h, w = img.shape
    ty = window_tiles(h, 0, h, config.tile, config.stride)
    tx = window_tiles(w, 0, w, config.tile, config.stride)
    block = torch.from_numpy(np.ascontiguousarray(img[:, ty.source[:, None], tx.source[None, :]])).to(device)
    win = torch.from_numpy(blend_window(config)).to(device)
    out = blend_tiles(block, fn, config=config, window=win)
    return out[-ty.first : -ty.first + h, -tx.first : -tx.first + w].cpu().numpy()
