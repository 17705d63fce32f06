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
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from .errors import InputError

__all__ = ["fourier_upsample", "diagonal_halves", "make_twins", "make_twins_torch"]

Float = NDArray[np.floating]


def fourier_upsample(x: NDArray[np.floating], n_out: int, *, axis: int, offset: float = 0.5) -> Float:
    """Upsample by two along ``axis`` with Fourier interpolation, on the frame's grid.

    Parameters
    ----------
    x : ndarray, shape (..., n, ...)
        Half-resolution samples.  Sample ``i`` sits at full-resolution coordinate
        ``2 * i + offset``.
    n_out : int
        Number of full-resolution samples wanted, ``2n`` or ``2n + 1``.
    axis : int
        Axis to resample.
    offset : float
        Position of half-resolution sample 0 on the full-resolution grid (0.5 for the
        centre of a 2x2 block).

    Returns
    -------
    ndarray, shape (..., n_out, ...), float64
        The band-limited interpolant evaluated at full-resolution coordinates
        ``0 .. n_out - 1``.
    """
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    n = x.shape[-1]
    if n_out > 4 * n:
        raise ValueError(f"n_out={n_out} is more than twice the extended length of {n} samples")
    ext = np.concatenate([x, x[..., ::-1]], axis=-1)  # period 2n, continuous
    spec = np.fft.rfft(ext, axis=-1)  # bins 0..n
    out_spec = np.zeros(x.shape[:-1] + (2 * n + 1,), dtype=np.complex128)
    out_spec[..., : n + 1] = spec
    out_spec[..., n] *= 0.5  # split the Nyquist bin between +n and -n, as interpft does
    # Output sample j sits at half-resolution position (j - offset) / 2: shift the
    # interpolant by offset / 2 samples (period 2n).
    k = np.arange(2 * n + 1)
    out_spec *= np.exp(-2j * np.pi * k * (offset / 2.0) / (2 * n))
    up = np.fft.irfft(out_spec, n=4 * n, axis=-1) * 2.0
    return np.moveaxis(up[..., :n_out], -1, axis)


def diagonal_halves(frame: NDArray[np.number]) -> tuple[Float, Float]:
    """Average the two diagonals of every 2x2 block.

    Parameters
    ----------
    frame : ndarray, shape (..., H, W)
        Noisy frame(s), any real dtype, in input units.  An odd last row or column is
        not used.

    Returns
    -------
    a, b : ndarray, shape (..., H // 2, W // 2), float64
        ``a = (top-left + bottom-right) / 2`` and ``b = (top-right + bottom-left) / 2``.
    """
    f = np.asarray(frame, dtype=np.float64)
    h, w = f.shape[-2] // 2 * 2, f.shape[-1] // 2 * 2
    if h < 2 or w < 2:
        raise InputError(f"a frame needs at least 2x2 pixels to make twins; got {f.shape[-2:]}.")
    f = f[..., :h, :w]
    a = 0.5 * (f[..., 0::2, 0::2] + f[..., 1::2, 1::2])
    b = 0.5 * (f[..., 0::2, 1::2] + f[..., 1::2, 0::2])
    return a, b


def make_twins(frame: NDArray[np.number]) -> tuple[Float, Float]:
    """Make the two self-inspired twins of a noisy frame.

    Parameters
    ----------
    frame : ndarray, shape (..., H, W)
        Noisy frame(s) in input units (photons, ADU...).  Any ``H, W >= 2``, odd sizes
        included; leading axes are independent frames.

    Returns
    -------
    a, b : ndarray, shape (..., H, W), float64
        Twins in the frame's units and on its pixel grid: the same content, independent
        noise (each with half the variance of the frame's white noise, band-limited).

    Examples
    --------
    >>> import numpy as np
    >>> a, b = make_twins(np.ones((5, 6)))
    >>> a.shape, bool(np.allclose(a, 1) and np.allclose(b, 1))
    ((5, 6), True)
    """
    f = np.asarray(frame)
    H, W = f.shape[-2:]
    halves = diagonal_halves(f)
    return tuple(  # type: ignore[return-value]
        fourier_upsample(fourier_upsample(h, H, axis=-2), W, axis=-1) for h in halves
    )


def _upsample_torch(x: torch.Tensor, n_out: int, dim: int, offset: float = 0.5) -> torch.Tensor:
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    ext = torch.cat([x, x.flip(-1)], dim=-1)
    spec = torch.fft.rfft(ext, dim=-1)
    out_spec = torch.zeros(x.shape[:-1] + (2 * n + 1,), dtype=spec.dtype, device=x.device)
    out_spec[..., : n + 1] = spec
    out_spec[..., n] *= 0.5
    k = torch.arange(2 * n + 1, device=x.device, dtype=x.dtype)
    out_spec = out_spec * torch.polar(torch.ones_like(k), -2 * np.pi * k * (offset / 2.0) / (2 * n))
    up = torch.fft.irfft(out_spec, n=4 * n, dim=-1) * 2.0
    return up[..., :n_out].movedim(-1, dim)


def make_twins_torch(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`make_twins` in torch, on any device, batched over leading dims.

    Parameters
    ----------
    frames : Tensor, shape (..., H, W), float32 or float64, H and W >= 2

    Returns
    -------
    a, b : Tensor, shape (..., H, W), same dtype
    """
    H, W = frames.shape[-2:]
    f = frames[..., : H // 2 * 2, : W // 2 * 2]
    a = 0.5 * (f[..., 0::2, 0::2] + f[..., 1::2, 1::2])
    b = 0.5 * (f[..., 0::2, 1::2] + f[..., 1::2, 0::2])
    return tuple(_upsample_torch(_upsample_torch(h, H, -2), W, -1) for h in (a, b))  # type: ignore[return-value]
