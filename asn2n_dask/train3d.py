"""Self-constrained Noise2Noise training of a 3-D U-Net on one in-memory volume.

Sub-volumes (Z, Y, X) are drawn at random positions, flipped along random axes (and
turned in Y-X when the patch is square there), split into their twins slice by slice
(:func:`asn2n_dask.pairs.make_volume_twins`) and normalised on the volume's global
percentile range; the network learns twin to twin, both ways, with the loss of 2-D
training (:func:`asn2n_dask.train.self_constrained_loss`).  Library functions only: the
run plan calls them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from .config import PRESETS_3D, VolumeTrainConfig
from .errors import InputError
from .model import UNet3d, build_unet3d, pooling_kernels
from .pairs import make_volume_twins
from .risk import FrameStats, frame_stats
from .train import self_constrained_loss

__all__ = ["VolumeFit", "volume_patch", "sample_volume_patches", "volume_twins_batch", "fit_volume"]


@dataclass
class VolumeFit:
    """A 3-D network trained on a volume, and how.

    Attributes
    ----------
    net : UNet3d
        The trained network (eval mode, on the training device).
    stats : FrameStats
        The volume's normalisation range, input units: the network sees
        ``(v - stats.lo) / stats.span``.
    patch : (int, int, int)
        The sub-volume (Z, Y, X) it was trained on.
    losses : list of float
        The training loss of each step.
    seconds : float
        Wall time of the training.
    """

    net: UNet3d
    stats: FrameStats
    patch: tuple[int, int, int]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def volume_patch(shape: tuple[int, int, int], config: VolumeTrainConfig) -> tuple[int, int, int]:
    """The training sub-volume for a volume of ``shape`` (Z, Y, X).

    ``config.patch`` cut down to the volume, Y and X to multiples of the network's
    Y-X factor, and Z to a multiple of the Z pooling :func:`asn2n_dask.model.pooling_kernels`
    chooses for that depth and ``config.anisotropy``.

    Raises
    ------
    InputError
        Y or X smaller than the preset's smallest patch.
    """
    levels = len(PRESETS_3D[config.preset])
    m = 2 ** (levels - 1)
    z, y, x = (int(v) for v in shape)
    if min(y, x) < 4 * m:
        raise InputError(f"a {z}x{y}x{x} volume is too small in Y-X to train preset {config.preset}: it needs "
                         f"at least {4 * m}x{4 * m} voxels per slice; use a smaller preset or a larger volume.")
    pz = min(config.patch[0], z)
    mz = int(np.prod([k[0] for k in pooling_kernels(levels, pz, config.anisotropy)]))
    return pz // mz * mz, min(config.patch[1], y // m * m), min(config.patch[2], x // m * m)


def sample_volume_patches(volumes: NDArray[np.number] | Sequence[NDArray[np.number]], patch: tuple[int, int, int],
                          n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """``n`` sub-volumes of ``patch`` (Z, Y, X) voxels at uniformly random positions.

    Parameters
    ----------
    volumes : ndarray (Z, Y, X), or a sequence of them
        At least ``patch`` along every axis.  From several volumes (a channel's time
        points) each sub-volume comes from one chosen at random, in proportion to its
        number of voxels.
    patch : (int, int, int)
        Sub-volume size.
    n : int
        How many.
    rng : numpy Generator
        Draws the volumes and positions.

    Returns
    -------
    ndarray, shape (n, pz, py, px), float64
        Copies of the sub-volumes, input units.
    """
    vols = [volumes] if isinstance(volumes, np.ndarray) else list(volumes)
    for v in vols:
        if v.ndim != 3 or any(p < 1 or p > s for p, s in zip(patch, v.shape)):
            raise ValueError(f"patches of {patch} do not fit a volume of shape {v.shape}")
    if len(vols) == 1:  # the draws of one volume, as they always were
        which = np.zeros(n, np.int64)
    else:
        sizes = np.array([v.size for v in vols], np.float64)
        which = rng.choice(len(vols), size=n, p=sizes / sizes.sum())
    pz, py, px = patch
    out = []
    for i in which:
        v = vols[int(i)]
        z, y, x = (int(rng.integers(0, s - p + 1)) for s, p in zip(v.shape, patch))
        out.append(np.asarray(v[z : z + pz, y : y + py, x : x + px], dtype=np.float64))
    return np.stack(out)


def volume_twins_batch(patches: NDArray[np.floating], stats: FrameStats,
                       rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's training pair of a batch of sub-volumes.

    Each sub-volume is flipped along each axis with probability 1/2 and, when square in
    Y-X, turned by a random multiple of 90 degrees in Y-X (Z stays Z: the anisotropy is
    kept); then split into its twins in float64 and normalised.

    Returns
    -------
    a, b : Tensor, shape (N, 1, pz, py, px), float32
        ``(twin - stats.lo) / stats.span``.
    """
    out = []
    square = patches.shape[-1] == patches.shape[-2]
    for p in patches:
        for axis in range(3):
            if rng.integers(0, 2):
                p = np.flip(p, axis)
        if square:
            p = np.rot90(p, int(rng.integers(0, 4)), axes=(1, 2))
        out.append(np.ascontiguousarray(p))
    a, b = make_volume_twins(torch.from_numpy(np.stack(out)).double())
    return tuple(((v - stats.lo) / stats.span).float().unsqueeze(1) for v in (a, b))  # type: ignore[return-value]


def fit_volume(volume: NDArray[np.number] | Sequence[NDArray[np.number]],
               config: VolumeTrainConfig = VolumeTrainConfig(), *,
               stats: FrameStats | None = None, device: torch.device | str = "cpu",
               progress: Callable[[int, int, float], None] | None = None) -> VolumeFit:
    """Train a 3-D U-Net on the sub-volumes of one channel's noisy volumes.

    Parameters
    ----------
    volume : ndarray (Z, Y, X) or (N, Z, Y, X), or a sequence of (Z, Y, X) arrays
        One channel's noisy volume, or its volumes at several time points (an x-y-t
        stack with T as Z is one volume), in input units, finite; Y and X at least four
        times the preset's Y-X pooling factor.  Each step's sub-volumes come from the
        volumes in proportion to their sizes.
    config : VolumeTrainConfig
        Preset, steps, sub-volume, batch, anisotropy, loss, seed, percentiles.
    stats : FrameStats, optional
        The normalisation range (a channel's, from a reduction over more data); by
        default the ``config.norm`` percentiles of all the volumes together.
    device : torch device
        Where to train.
    progress : callable, optional
        Called as ``progress(step, total, loss)`` after each step.

    Returns
    -------
    VolumeFit
        The network after the last step, with its patch, statistics and losses.

    Raises
    ------
    InputError
        Not 3-D volumes, non-finite values, or a volume too small for the preset.
    """
    t0 = time.perf_counter()
    if isinstance(volume, np.ndarray) and volume.ndim == 4:
        vols = list(volume)
    elif isinstance(volume, np.ndarray) or not isinstance(volume, Sequence):
        vols = [np.asarray(volume)]
    else:
        vols = [np.asarray(v) for v in volume]
    if not vols:
        raise InputError("no volume to train on.")
    for vol in vols:
        if vol.ndim != 3:
            raise InputError(f"a volume must have three axes (Z, Y, X); got shape {vol.shape}: pass one channel "
                             "and one time point.")
        if not np.issubdtype(vol.dtype, np.number) or np.issubdtype(vol.dtype, np.complexfloating):
            raise InputError(f"a volume must hold real numbers; got dtype {vol.dtype}.")
        if not np.isfinite(vol).all():
            raise InputError("the volume holds NaN or infinite values; replace them before training.")
    zs, ys, xs = (int(min(v.shape[i] for v in vols)) for i in range(3))
    patch = volume_patch((zs, ys, xs), config)
    if stats is None:
        both = vols[0] if len(vols) == 1 else np.concatenate([v.ravel() for v in vols])
        stats = frame_stats(both, low=config.norm.low_percentile, high=config.norm.high_percentile)
    dev = torch.device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 3])
    net = build_unet3d(config.preset, patch[0], config.anisotropy).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps, eta_min=config.lr * 0.05)
    fit = VolumeFit(net=net, stats=stats, patch=patch)
    net.train()
    for step in range(1, config.steps + 1):
        a, b = volume_twins_batch(sample_volume_patches(vols, patch, config.batch, rng), stats, rng)
        a, b = a.to(dev), b.to(dev)
        pred = net(torch.cat([a, b]))
        loss = self_constrained_loss(pred[: len(a)], pred[len(a):], a, b, kind=config.loss,
                                     consistency=config.consistency)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        fit.losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, config.steps, fit.losses[-1])
    net.eval()
    fit.seconds = time.perf_counter() - t0
    return fit
