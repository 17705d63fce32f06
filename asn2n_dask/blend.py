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

__all__ = ["TileGrid", "tile_grid", "blend_window", "reflect_index", "WindowTiles", "window_tiles", "blend_tiles",
           "check_tile", "check_tile_frame", "predict_tiled"]


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


def reflect_index(i: NDArray[np.integer], n: int) -> NDArray[np.int64]:
    """Map frame coordinates outside ``[0, n)`` back inside by mirroring at the edges.

    The same mapping as ``numpy.pad(mode="reflect")`` (edge pixel not repeated, applied
    again for distances beyond the frame); an axis of one pixel maps everything to 0.
    """
    i = np.asarray(i, dtype=np.int64)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j < n, j, period - j)


@dataclass(frozen=True)
class WindowTiles:
    """The tiles one window of a frame needs, along one axis.

    Attributes
    ----------
    first : int
        Origin (frame coordinates, may be negative) of the first tile covering the window.
    count : int
        Number of tiles covering the window.
    span : tuple of int
        ``(first, first + (count - 1) * stride + tile)``: the tiles' extent.
    source : ndarray of int64
        For each position of ``span``, the frame pixel it holds (mirrored at the edges).
    """

    first: int
    count: int
    span: tuple[int, int]
    source: NDArray[np.int64]


def window_tiles(n: int, start: int, stop: int, tile: int, stride: int) -> WindowTiles:
    """The frame-anchored tiles covering ``[start, stop)`` of an axis of length ``n``.

    Every tile of the frame's grid (:func:`tile_grid`) that overlaps the window is
    included, so the window is blended from exactly the tiles, weights and pixels that
    blending the whole frame would use there.
    """
    grid = tile_grid((n, n), tile, stride)
    m = grid.margin
    k0 = max(0, -(-(start + m - tile + 1) // stride))
    k1 = min(grid.counts[0] - 1, (stop - 1 + m) // stride)
    first = k0 * stride - m
    span = (first, k1 * stride - m + tile)
    return WindowTiles(first, k1 - k0 + 1, span, reflect_index(np.arange(*span), n))


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


def check_tile_frame(config: InferConfig, frame_shape: tuple[int, int]) -> None:
    """Refuse a tile far larger than the frame: past twice the frame's longer side (and
    the default 128 pixels), a tile holds only mirror images of the frame.

    Raises
    ------
    ConfigError
    """
    limit = max(128, 2 * max(int(v) for v in frame_shape))
    if config.tile > limit:
        from .errors import ConfigError

        h, w = frame_shape
        raise ConfigError(f"tile {config.tile} px is more than twice the {h}x{w} frame; use --tile {limit} or less "
                          "(beyond the frame a tile holds only its mirror images).")


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
