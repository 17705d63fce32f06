"""Weighted overlap blending of tiles.

The tiles' positions are :mod:`asn2n_dask.plan`'s (re-exported here): frame-anchored,
every pixel in the central ``stride`` core of exactly one tile, the frame mirrored past
its edges to fill the outer tiles.  Predictions are blended with a weight window per tile and normalised by the summed
weights (overlap-add with ``torch.nn.functional.fold``).

Volumes (Z, Y, X) are tiled the same way along each of the three axes, with a tile
size of their own along Z; the weight window is the product of the axes' 1-D windows
(:func:`blend_window_3d`).  One function blends any window of a volume from the region
holding its tiles (:func:`predict_volume_window`); a whole volume is the window that
covers it (:func:`predict_tiled_volume`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from .config import BlendMode, InferConfig
from .errors import ConfigError
from .plan import (  # noqa: F401  (re-exported: the tile positions, asn2n_dask.blend.window_tiles, ...)
    TileGrid,
    WindowTiles,
    axis_stride,
    check_tile_frame,
    check_tile_z,
    reflect_index,
    tile_grid,
    window_tiles,
)

__all__ = ["TileGrid", "tile_grid", "blend_window", "reflect_index", "WindowTiles", "window_tiles", "blend_tiles",
           "check_tile", "check_tile_frame", "predict_tiled", "axis_stride", "window_1d", "blend_window_3d",
           "check_volume_tile", "predict_volume_window", "predict_tiled_volume"]


def blend_window(config: InferConfig) -> NDArray[np.float32]:
    """The weight of each pixel of a tile, shape (tile, tile), peak 1.

    ``gaussian``: a 2-D Gaussian (sigma = ``sigma_fraction * tile``) floored at
    ``weight_floor``; ``uniform``: ones; ``none``: ones on the tile's core, zeros
    elsewhere (every pixel from exactly one tile).
    """
    w1 = window_1d(config.tile, config.stride, config.blend, config.sigma_fraction)
    w = np.outer(w1, w1)
    if config.blend == "gaussian":
        w = np.maximum(w, config.weight_floor)
    return w.astype(np.float32)


def window_1d(tile: int, stride: int, blend: BlendMode, sigma_fraction: float) -> NDArray[np.float64]:
    """The blend weight along one axis of a tile, shape (tile,), peak 1 (before the floor).

    ``gaussian``: ``exp(-(i - c)**2 / (2 sigma**2))`` with ``c`` the tile's centre and
    ``sigma = sigma_fraction * tile``; ``uniform``: ones; ``none``: ones on the core
    (``stride`` positions after ``(tile - stride) // 2``), zeros elsewhere.
    """
    if blend == "uniform":
        return np.ones(tile)
    if blend == "none":
        m = (tile - stride) // 2
        w1 = np.zeros(tile)
        w1[m : m + stride] = 1.0
        return w1
    c = (tile - 1) / 2.0
    sigma = sigma_fraction * tile
    return np.exp(-((np.arange(tile) - c) ** 2) / (2 * sigma**2))


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


def blend_window_3d(config: InferConfig, tile_z: int) -> NDArray[np.float32]:
    """The weight of each voxel of a (tile_z, tile, tile) tile, peak 1.

    The product of the 1-D windows of Z (``tile_z`` at :func:`axis_stride` of it) and
    of Y and X (:func:`blend_window`'s), floored at ``weight_floor`` for ``gaussian``;
    with ``tile_z`` 1 it is :func:`blend_window` itself.
    """
    wz = window_1d(tile_z, axis_stride(tile_z, config.overlap), config.blend, config.sigma_fraction)
    wyx = window_1d(config.tile, config.stride, config.blend, config.sigma_fraction)
    w = wz[:, None, None] * np.outer(wyx, wyx)[None]
    if config.blend == "gaussian":
        w = np.maximum(w, config.weight_floor)
    return w.astype(np.float32)


def check_volume_tile(config: InferConfig, tile_z: object, multiple: Sequence[int] = (1, 1, 1)) -> int:
    """Refuse tiles of ``(tile_z, config.tile, config.tile)`` voxels a 3-D network cannot
    take: ``tile_z`` out of range (:func:`asn2n_dask.plan.check_tile_z`), or a side that is
    not a multiple of the matching entry of ``multiple`` (Z, Y, X:
    :attr:`asn2n_dask.model.UNet3d.multiple`).  Returns ``tile_z``.

    Raises
    ------
    ConfigError
    """
    tz = check_tile_z(tile_z)
    if tz % multiple[0]:
        raise ConfigError(f"Z tile must be a multiple of {multiple[0]} for this network; got {tz}.")
    check_tile(config, multiple[1])
    check_tile(config, multiple[2])
    return tz


def predict_volume_window(region: torch.Tensor, tiles: Sequence[WindowTiles], read: Sequence[tuple[int, int]],
                          window: Sequence[int], fn: Callable[[torch.Tensor], torch.Tensor], *, tile_z: int,
                          config: InferConfig = InferConfig()) -> torch.Tensor:
    """Apply ``fn`` to the tiles covering one window of a volume and blend them there.

    The tiles are the volume's (anchored to its origin, mirrored past its edges:
    :func:`~asn2n_dask.plan.window_tiles` along each axis, ``tile_z`` slices at
    :func:`axis_stride` of it along Z, ``config.tile`` at ``config.stride`` along Y and
    X), so the window equals that part of the whole volume blended at once.  Every voxel
    is the weighted average (:func:`blend_window_3d`) of the tiles covering it, summed in
    float64 in the same order whatever the window: a constant comes back exactly.

    Parameters
    ----------
    region : Tensor, shape (K, rz, ry, rx)
        The volume (or K co-registered volumes that ``fn`` receives together) over the
        voxels ``read``, float32, on the working device.
    tiles : (WindowTiles, WindowTiles, WindowTiles)
        The tiles covering the window along Z, Y and X.
    read : ((int, int), (int, int), (int, int))
        The volume's slices, rows and columns ``[start, stop)`` that ``region`` holds;
        they must hold every voxel of the tiles.
    window : (z0, z1, y0, y1, x0, x1)
        The voxels computed, volume coordinates.
    fn : callable
        Batched model, ``(N, K, tile_z, tile, tile) -> (N, 1, tile_z, tile, tile)``.
    tile_z : int
        Tile size along Z.
    config : InferConfig
        Y-X tile side, overlap (all axes), blend window and tiles per call.

    Returns
    -------
    Tensor, shape (z1 - z0, y1 - y0, x1 - x0), float32, on ``region``'s device
    """
    dev = region.device
    t = config.tile
    sizes, strides = (tile_z, t, t), (axis_stride(tile_z, config.overlap), config.stride, config.stride)
    index = []
    for a, (ti, (r0, r1), n, st) in enumerate(zip(tiles, read, sizes, strides)):
        if ti.span[1] - ti.span[0] != (ti.count - 1) * st + n:
            raise ValueError(f"axis {a}: {ti.count} tiles spanning {ti.span} are not tiles of {n} at stride {st}")
        if r1 - r0 != region.shape[1 + a] or ti.source.min() < r0 or ti.source.max() >= r1:
            raise ValueError(f"axis {a}: a region of {region.shape[1 + a]} read from [{r0}, {r1}) does not hold "
                             f"the tiles' voxels {int(ti.source.min())}..{int(ti.source.max())}")
        index.append(torch.from_numpy(ti.source - r0).to(dev))
    block = region.index_select(1, index[0]).index_select(2, index[1]).index_select(3, index[2])
    tz, (az, ay, ax), (sz, s, _) = tile_z, tiles, strides
    win64 = torch.from_numpy(blend_window_3d(config, tz)).to(dev).double()
    acc = torch.zeros(block.shape[1:], dtype=torch.float64, device=dev)
    wsum = torch.zeros_like(acc)
    origins = [(iz * sz, iy * s, ix * s) for iz in range(az.count) for iy in range(ay.count)
               for ix in range(ax.count)]
    for i in range(0, len(origins), config.batch):
        batch = origins[i : i + config.batch]
        part = torch.stack([block[:, z : z + tz, y : y + t, x : x + t] for z, y, x in batch])
        pred = fn(part).float()[:, 0].double() * win64
        for (z, y, x), p in zip(batch, pred):
            acc[z : z + tz, y : y + t, x : x + t] += p
            wsum[z : z + tz, y : y + t, x : x + t] += win64
    crop = tuple(slice(window[2 * a] - ti.first, window[2 * a + 1] - ti.first) for a, ti in enumerate(tiles))
    return (acc[crop] / wsum[crop]).float()


def predict_tiled_volume(volume: NDArray[np.floating], fn: Callable[[torch.Tensor], torch.Tensor], *,
                         tile_z: int, config: InferConfig = InferConfig(), device: torch.device | str = "cpu",
                         multiple: tuple[int, int, int] = (1, 1, 1)) -> NDArray[np.float32]:
    """Apply ``fn`` tile by tile over a volume and blend the tiles back.

    Tiles are ``(tile_z, config.tile, config.tile)`` voxels at ``config.overlap`` along
    every axis, anchored to the volume's origin and mirrored past its edges, as
    :func:`predict_tiled` places them in Y and X; every voxel is the weighted average
    (:func:`blend_window_3d`) of the tiles covering it: :func:`predict_volume_window` of
    the window that covers the volume.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X) or (K, Z, Y, X)
        The volume, or K co-registered volumes of it that ``fn`` receives together.
    fn : callable
        Batched model, ``(N, K, tile_z, tile, tile) -> (N, 1, tile_z, tile, tile)``
        float32 tensors.
    tile_z : int
        Tile size along Z, 1 to 4096.
    config : InferConfig
        Y-X tile side, overlap (all axes), blend window and tiles per call.
    device : torch device
        Where the tiles go.
    multiple : (int, int, int)
        Tile sizes along (Z, Y, X) must be multiples of these
        (:attr:`asn2n_dask.model.UNet3d.multiple`).

    Returns
    -------
    ndarray, shape (Z, Y, X), float32

    Raises
    ------
    ConfigError
        A tile size the network cannot take, or ``tile_z`` out of range.
    """
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim == 3:
        vol = vol[None]
    if vol.ndim != 4:
        raise ValueError(f"predict_tiled_volume takes a (Z, Y, X) volume or a (K, Z, Y, X) stack; got shape "
                         f"{np.shape(volume)}")
    tz = check_volume_tile(config, tile_z, multiple)
    shape = vol.shape[1:]
    steps = ((tz, axis_stride(tz, config.overlap)), (config.tile, config.stride), (config.tile, config.stride))
    tiles = [window_tiles(n, 0, n, t, st) for n, (t, st) in zip(shape, steps)]
    region = torch.from_numpy(np.ascontiguousarray(vol)).to(device)
    whole = tuple(v for n in shape for v in (0, n))
    out = predict_volume_window(region, tiles, [(0, n) for n in shape], whole, fn, tile_z=tz, config=config)
    return out.cpu().numpy()
