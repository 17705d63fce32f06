"""Self-inspired pair generation: two noisy twins from one noisy frame.

Each 2x2 block ``[[a, b], [c, d]]`` of the frame is split into its two diagonals,
``(a + d) / 2`` and ``(b + c) / 2``.  Both half-size images sample the same content at
the same point (the block centre) but hold independent noise.  They are brought back to
the frame's size by Fourier interpolation (zero-padding the spectrum, as MATLAB's
``interpft``) with a quarter-sample phase shift that puts every output sample on the
frame's own pixel grid, so the twins line up with the frame pixel for pixel.  A mirrored
extension before the transform keeps the interpolation free of wrap-around ringing at
the frame's edges.

Twins are made per tile at inference and per patch in training (the same function on
the same geometry), so a pixel's result depends only on the pixels of the tiles that
cover it: the property that lets a dataset be cut into chunks without changing the
output.

The implementation is the one the exported module scripts (:mod:`asn2n_dask.standalone`),
so the package and its packages make the same twins; :func:`asn2n_dask.testing.make_twins`
is the numpy reference the tests compare it with.
"""

from __future__ import annotations

import torch

from .standalone import self_inspired_twins

__all__ = ["make_twins_torch", "make_volume_twins", "normalised_views"]


def make_twins_torch(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the two self-inspired twins of noisy frames, on any device, batched over leading dims.

    Parameters
    ----------
    frames : Tensor, shape (..., H, W), float32 or float64, H and W >= 2
        Noisy frames in any units; leading dims are independent frames.  An odd last
        row or column takes no part in the diagonal means but is interpolated onto.

    Returns
    -------
    a, b : Tensor, shape (..., H, W), same dtype
        Twins on the frames' pixel grid: the same content, independent noise (each with
        half the variance of the frames' white noise, band-limited).

    Examples
    --------
    >>> import torch
    >>> a, b = make_twins_torch(torch.ones(2, 5, 6, dtype=torch.float64))
    >>> tuple(a.shape), bool(torch.allclose(a, torch.ones_like(a)) and torch.allclose(b, torch.ones_like(b)))
    ((2, 5, 6), True)
    """
    return self_inspired_twins(frames)


def make_volume_twins(volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the two self-inspired twins of noisy volumes: each Z slice split in Y-X.

    Every slice gets the 2x2 diagonal split and Fourier interpolation of
    :func:`make_twins_torch`; nothing mixes slices, so the twins' noise stays
    independent between them and Z keeps the volume's sampling.

    Parameters
    ----------
    volumes : Tensor, shape (..., Z, Y, X), float32 or float64, Y and X >= 2
        Noisy volumes in any units; leading dims are independent volumes.

    Returns
    -------
    a, b : Tensor, shape (..., Z, Y, X), same dtype
        The twins, slice ``z`` of each equal to the twins of slice ``z``.

    Raises
    ------
    ValueError
        Fewer than three dimensions, or Y or X under 2.

    Examples
    --------
    >>> import torch
    >>> a, b = make_volume_twins(torch.zeros(3, 5, 6, dtype=torch.float64))
    >>> tuple(a.shape), tuple(b.shape)
    ((3, 5, 6), (3, 5, 6))
    """
    if volumes.dim() < 3 or volumes.shape[-1] < 2 or volumes.shape[-2] < 2:
        raise ValueError(f"volume twins need (..., Z, Y, X) with Y and X at least 2; got shape "
                         f"{tuple(volumes.shape)}")
    return make_twins_torch(volumes)


def normalised_views(tiles: torch.Tensor, infer_on: str) -> tuple[torch.Tensor, ...]:
    """What the network sees of a batch of tiles (or training patches).

    Parameters
    ----------
    tiles : Tensor, shape (N, 3, t, t)
        Raw pixels, normalisation offset and scale, in input units.
    infer_on : {"twins", "raw"}
        ``twins``: the two twins of each tile (:func:`asn2n_dask.pairs.make_twins_torch`,
        in float64); ``raw``: the tile itself.

    Returns
    -------
    tuple of Tensor, each (N, 1, t, t) float32
        ``(view - offset) / scale`` for each view.
    """
    raw, offset, scale = tiles[:, :1].double(), tiles[:, 1:2].double(), tiles[:, 2:3].double()
    views = make_twins_torch(raw) if infer_on == "twins" else (raw,)
    return tuple(((v - offset) / scale).float() for v in views)
