"""Tiling geometry and weighted overlap blending.

Tiles of side ``tile`` sit at origins ``k * stride - margin`` on each axis, with
``margin = (tile - stride) // 2``: the grid depends on frame coordinates alone, never on
how the data is cut into chunks, and every pixel lies in the central ``stride`` core of
exactly one tile.  The frame is mirrored past its edges to fill the outer tiles.
Predictions are blended with a weight window per tile and normalised by the summed
weights (overlap-add with ``torch.nn.functional.fold``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from .config import InferConfig

__all__ = ["TileGrid", "tile_grid", "blend_window", "predict_tiled"]


@dataclass(frozen=True)
class TileGrid:
    """Tile geometry along both axes of one frame.

    Attributes
    ----------
    tile, stride, margin : int
        Tile side, distance between origins, and the part of a tile before its core.
    counts : tuple of int
        Tiles along Y and X.
    pad_before, pad_after : tuple of int
        Mirror padding of the frame along Y and X.
    """

    tile: int
    stride: int
    margin: int
    counts: tuple[int, int]
    pad_before: tuple[int, int]
    pad_after: tuple[int, int]

    def origins(self, axis: int) -> NDArray[np.int64]:
        """Tile origins along ``axis`` (0 = Y, 1 = X) in frame coordinates."""
        return np.arange(self.counts[axis]) * self.stride - self.margin


def tile_grid(shape: tuple[int, int], tile: int, stride: int) -> TileGrid:
    """The tile grid of a frame of ``shape`` (H, W)."""
    margin = (tile - stride) // 2
    counts = tuple(max(1, -(-n // stride)) for n in shape)
    after = tuple((c - 1) * stride - margin + tile - n for c, n in zip(counts, shape))
    return TileGrid(tile, stride, margin, (counts[0], counts[1]), (margin, margin), (after[0], after[1]))


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


def predict_tiled(image: NDArray[np.floating], fn: Callable[[torch.Tensor], torch.Tensor], *,
                  config: InferConfig = InferConfig(), device: torch.device | str = "cpu",
                  multiple: int = 1) -> NDArray[np.float32]:
    """Apply ``fn`` tile by tile over a frame and blend the tiles back.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The frame, in the range ``fn`` expects.
    fn : callable
        Batched model, ``(N, 1, tile, tile) -> (N, 1, tile, tile)`` float32 tensors.
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
    if img.ndim != 2:
        raise ValueError(f"predict_tiled takes one 2-D frame; got shape {img.shape}")
    if config.tile % multiple:
        from .errors import ConfigError

        raise ConfigError(f"tile must be a multiple of {multiple} for this network; got {config.tile}.")
    grid = tile_grid(img.shape, config.tile, config.stride)
    padded = np.pad(img, tuple(zip(grid.pad_before, grid.pad_after)), mode="reflect" if min(img.shape) > 1 else "edge")
    x = torch.from_numpy(np.ascontiguousarray(padded)).to(device)[None, None]
    t, s = grid.tile, grid.stride
    tiles = F.unfold(x, kernel_size=t, stride=s).transpose(1, 2).reshape(-1, 1, t, t)
    window = torch.from_numpy(blend_window(config)).to(device)
    outs = []
    for i in range(0, tiles.shape[0], config.batch):
        y = fn(tiles[i : i + config.batch]).float()
        outs.append(y * window)
    pred = torch.cat(outs).reshape(1, -1, t * t).transpose(1, 2)
    size = padded.shape
    acc = F.fold(pred, output_size=size, kernel_size=t, stride=s)
    wsum = F.fold(window.reshape(1, t * t, 1).expand(1, t * t, tiles.shape[0]), output_size=size,
                  kernel_size=t, stride=s)
    (py, px) = grid.pad_before
    h, w = img.shape
    out = (acc / wsum)[0, 0, py : py + h, px : px + w]
    return out.cpu().numpy()
