"""Reference oracles for the tests: plain numpy versions of what the package computes in torch.

The package has one implementation of each step, in torch (it runs on any device and
inside the exported TorchScript module).  The functions here restate a step from its
definition, slowly and in float64, so that the tests can check the package against an
independent reading of the method; nothing in the package calls them.

* :func:`make_twins` (with :func:`diagonal_halves` and :func:`fourier_upsample`): the
  self-inspired twins of a frame, for :func:`asn2n_dask.pairs.make_twins_torch`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .errors import InputError

__all__ = ["fourier_upsample", "diagonal_halves", "make_twins"]

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
