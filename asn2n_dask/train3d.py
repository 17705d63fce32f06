"""Self-constrained Noise2Noise training of a 3-D U-Net on a channel's volumes.

Sub-volumes (Z, Y, X) are drawn at random positions, flipped along random axes (and
turned in Y-X when the patch is square there), split into their twins slice by slice
(:func:`asn2n_dask.pairs.make_volume_twins`) and normalised on the channel's global
percentile range; the network learns twin to twin, both ways, with the loss of 2-D
training (:func:`asn2n_dask.train.self_constrained_loss`).  Library functions only: the
run plan calls them.

The volumes are arrays in memory or a :class:`VolumeSampler`, which reads one
sub-volume at a time: :class:`SourceVolumes` reads each from a file (only the storage
chunks under it) or a dask array, so training memory is bounded by the batch, the
sub-volume and the chunks under it, whatever the data's size.  Both give the same
draws, hence the same network, for the same voxels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray

from .config import PRESETS_3D, NormConfig, VolumeTrainConfig
from .errors import ConfigError, InputError
from .method import ChannelMethod, decide_method
from .model import UNet3d, build_unet3d, pooling_kernels
from .pairs import make_volume_twins
from .risk import FrameStats, assess_risk, frame_stats
from .sampling import channel_noise
from .source import Source, spread
from .stats import ChannelStats
from .train import self_constrained_loss

__all__ = ["VolumeFit", "VolumeSampler", "ArrayVolumes", "SourceVolumes", "VolumeSlices", "volume_method",
           "volume_patch", "sample_volume_patches", "volume_twins_batch", "fit_volume"]

Shape3 = tuple[int, int, int]


@runtime_checkable
class VolumeSampler(Protocol):
    """A channel's volumes, read a sub-volume at a time.

    ``shapes[i]`` is volume ``i``'s (Z, Y, X); ``read(i, start, size)`` returns its
    voxels ``start[k] : start[k] + size[k]`` along each axis, shape ``size``, in input
    units (any real dtype), reading no more than that region needs.
    """

    @property
    def shapes(self) -> Sequence[Shape3]: ...

    def read(self, i: int, start: Shape3, size: Shape3) -> NDArray[Any]: ...


@dataclass(frozen=True)
class ArrayVolumes:
    """Volumes held in memory, each (Z, Y, X): a :class:`VolumeSampler` over arrays."""

    volumes: tuple[NDArray[Any], ...]

    @property
    def shapes(self) -> list[Shape3]:
        return [(int(v.shape[0]), int(v.shape[1]), int(v.shape[2])) for v in self.volumes]

    def read(self, i: int, start: Shape3, size: Shape3) -> NDArray[Any]:
        (z, y, x), (pz, py, px) = start, size
        return self.volumes[i][z : z + pz, y : y + py, x : x + px]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SourceVolumes:
    """One channel's volumes in stacks on disk or in dask arrays, read lazily.

    The volumes are those :func:`asn2n_dask.axes.to_volumes` makes of each input, in
    the same order (the inputs one after the other; within one, its stack axes other
    than the channel and depth axes in C order).  A sub-volume is one basic indexing of
    the input as stored (a file's :meth:`asn2n_dask.source.Source.open`, reading only
    the storage chunks under it; a dask array, computing only its blocks there): the
    axis order of the input stays, the key names each axis where it is.

    Attributes
    ----------
    inputs : tuple
        Per input, a :class:`asn2n_dask.source.Source` (opened where it is read) or an
        array taking numpy basic indexing (a dask array), with axes ``axes``.
    axes : str
        One letter per dimension, ending in ``YX``.
    depth : {"Z", "T"}
        The axis seen as depth.
    index : tuple
        Per input, per stack axis (every axis but Y and X), the indices kept: one for
        ``C``, a unit-step ``range`` for the depth axis.
    """

    inputs: tuple[Any, ...]
    axes: str
    depth: str
    index: tuple[tuple[Sequence[int], ...], ...]

    @classmethod
    def of(cls, inputs: Sequence[Any], axes: str, depth: str,
           indices: Sequence[Sequence[Sequence[int]]]) -> SourceVolumes:
        """The volumes of ``inputs`` within their ``indices``: per input, per axis, the
        indices kept (as :meth:`asn2n_dask.source.Selection.indices` gives them, the
        channel axis narrowed to one channel; those of Y and X are not used)."""
        index = []
        for ind_of in indices:
            per: list[Sequence[int]] = []
            for a, ind in zip(axes[:-2], ind_of[:-2]):
                if a == depth and not (isinstance(ind, range) and ind.step == 1 and len(ind)):
                    raise ValueError(f"the depth axis must be kept as one run of indices; got {ind!r:.80}")
                if a == "C" and len(ind) != 1:
                    raise ValueError(f"one channel's volumes take one index of the channel axis; got {ind!r:.80}")
                per.append(ind if isinstance(ind, range) else tuple(int(i) for i in ind))
            index.append(tuple(per))
        return cls(tuple(inputs), axes, depth, tuple(index))

    @cached_property
    def _others(self) -> list[int]:
        """The stack axes that number the volumes of an input."""
        return [k for k, a in enumerate(self.axes[:-2]) if a not in ("C", self.depth)]

    @cached_property
    def _counts(self) -> list[int]:
        """Volumes per input."""
        return [math.prod(len(idx[k]) for k in self._others) for idx in self.index]

    @cached_property
    def shapes(self) -> list[Shape3]:
        d = self.axes.index(self.depth)
        out: list[Shape3] = []
        for inp, idx, n in zip(self.inputs, self.index, self._counts):
            out += [(len(idx[d]), int(inp.shape[-2]), int(inp.shape[-1]))] * n
        return out

    def read(self, i: int, start: Shape3, size: Shape3) -> NDArray[Any]:
        counts = self._counts
        k = 0
        while i >= counts[k]:
            i, k = i - counts[k], k + 1
        idx, others = self.index[k], self._others
        pos = dict(zip(others, np.unravel_index(i, [len(idx[j]) for j in others]))) if others else {}
        (z, y, x), (pz, py, px) = start, size
        key: list[Any] = []
        for j, a in enumerate(self.axes[:-2]):
            if a == self.depth:
                first = int(idx[j][0])
                key.append(slice(first + z, first + z + pz))
            else:
                key.append(int(idx[j][int(pos.get(j, 0))]))
        inp = self.inputs[k]
        arr = inp.open() if isinstance(inp, Source) else inp
        return np.asarray(arr[tuple(key) + (slice(y, y + py), slice(x, x + px))])


@dataclass(frozen=True)
class VolumeSlices:
    """The slices (along the depth axis) of one volume of a :class:`VolumeSampler` as
    frames, read a window at a time (an :class:`asn2n_dask.sampling.PlaneReader`)."""

    volumes: VolumeSampler
    index: int

    @property
    def n_planes(self) -> int:
        return int(self.volumes.shapes[self.index][0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        _, y, x = self.volumes.shapes[self.index]
        return int(y), int(x)

    @property
    def chunks(self) -> tuple[int, int]:
        return self.frame_shape

    def read(self, plane: int, rows: tuple[int, int], cols: tuple[int, int]) -> NDArray[Any]:
        (y0, y1), (x0, x1) = rows, cols
        return self.volumes.read(self.index, (plane, y0, x0), (1, y1 - y0, x1 - x0))[0]


def volume_method(volumes: Sequence[NDArray[np.number]] | VolumeSampler, stats: ChannelStats, norm: NormConfig,
                  frames: int = 8) -> ChannelMethod:
    """How one channel of volumes is processed, decided once when its 3-D network is fitted.

    The risk classes of a volume are those of its slices, patch by patch as for frames:
    an ``"auto"`` estimator is resolved from the pixel noise of the slices
    (:func:`asn2n_dask.sampling.channel_noise`), and the share of patches at risk is
    measured on ``frames`` slices spread over the volumes, each read whole.  A volume is
    normalised on the channel's global range whatever that share (``dataset_mode``
    ``"global"``): the risk classes say where patch-wise normalisation would have done
    harm, and are written beside the output.
    """
    sampler = volumes if isinstance(volumes, VolumeSampler) else ArrayVolumes(tuple(volumes))
    readers = [VolumeSlices(sampler, i) for i in range(len(sampler.shapes))]
    planes = [(r, p) for r in readers for p in range(r.n_planes)]

    def high_risk_ratio(resolved: NormConfig) -> float:
        scale = stats.risk_scale(resolved.risk)
        maps = []
        for i in spread(len(planes), frames):
            r, p = planes[i]
            (h, w) = r.frame_shape
            maps.append(assess_risk(np.asarray(r.read(p, (0, h), (0, w))), thresholds=resolved.risk,
                                    stats=scale).risk_map.ravel())
        return float(np.mean(np.concatenate(maps) != 0))

    decided = decide_method(norm, stats.norm, noise_sd=lambda: channel_noise(readers, stats, norm.risk, frames),
                            high_risk_ratio=high_risk_ratio)
    return ChannelMethod.of(norm, stats.norm, risk_estimator=decided.risk_estimator, dataset_mode="global",
                            high_risk_ratio=decided.high_risk_ratio, noise_sd=decided.noise_sd, spatial_dims=3)


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


def sample_volume_patches(volumes: NDArray[np.number] | Sequence[NDArray[np.number]] | VolumeSampler,
                          patch: tuple[int, int, int], n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """``n`` sub-volumes of ``patch`` (Z, Y, X) voxels at uniformly random positions.

    Parameters
    ----------
    volumes : ndarray (Z, Y, X), a sequence of them, or a VolumeSampler
        At least ``patch`` along every axis.  From several volumes (a channel's time
        points) each sub-volume comes from one chosen at random, in proportion to its
        number of voxels.  A :class:`VolumeSampler` reads only the sub-volumes drawn;
        the draws depend on the volumes' shapes only, so arrays and a sampler over the
        same voxels give the same sub-volumes.
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
    if isinstance(volumes, VolumeSampler):
        sampler: VolumeSampler = volumes
    else:
        vols = [volumes] if isinstance(volumes, np.ndarray) else list(volumes)
        for v in vols:
            if v.ndim != 3:
                raise ValueError(f"patches of {patch} do not fit a volume of shape {v.shape}")
        sampler = ArrayVolumes(tuple(vols))
    shapes = list(sampler.shapes)
    for shape in shapes:
        if len(shape) != 3 or any(p < 1 or p > s for p, s in zip(patch, shape)):
            raise ValueError(f"patches of {patch} do not fit a volume of shape {tuple(shape)}")
    if len(shapes) == 1:  # the draws of one volume, as they always were
        which = np.zeros(n, np.int64)
    else:
        sizes = np.array([math.prod(shape) for shape in shapes], np.float64)
        which = rng.choice(len(shapes), size=n, p=sizes / sizes.sum())
    out = []
    for i in which:
        z, y, x = (int(rng.integers(0, s - p + 1)) for s, p in zip(shapes[int(i)], patch))
        out.append(np.asarray(sampler.read(int(i), (z, y, x), patch), dtype=np.float64))
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


def fit_volume(volume: NDArray[np.number] | Sequence[NDArray[np.number]] | VolumeSampler,
               config: VolumeTrainConfig = VolumeTrainConfig(), *,
               stats: FrameStats | None = None, device: torch.device | str = "cpu",
               progress: Callable[[int, int, float], None] | None = None) -> VolumeFit:
    """Train a 3-D U-Net on the sub-volumes of one channel's noisy volumes.

    Parameters
    ----------
    volume : ndarray (Z, Y, X) or (N, Z, Y, X), a sequence of (Z, Y, X) arrays, or a VolumeSampler
        One channel's noisy volume, or its volumes at several time points (an x-y-t
        stack with T as Z is one volume), in input units, finite; Y and X at least four
        times the preset's Y-X pooling factor.  Each step's sub-volumes come from the
        volumes in proportion to their sizes.  A :class:`VolumeSampler` (volumes in a
        file: :class:`SourceVolumes`) is read one sub-volume at a time, never whole:
        memory is bounded by the batch and the sub-volume (and the storage chunks
        under it); it takes the same draws, so it trains the same network as the same
        voxels in memory.
    config : VolumeTrainConfig
        Preset, steps, sub-volume, batch, anisotropy, loss, seed, percentiles.
    stats : FrameStats, optional
        The normalisation range (a channel's, from a reduction over more data); by
        default the ``config.norm`` percentiles of all the volumes together (arrays
        only: a sampler needs the range given, e.g. from
        :func:`asn2n_dask.stats_pass.selection_stats`).
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
        Not 3-D volumes, non-finite values (a sampler's: in a sub-volume read), or a
        volume too small for the preset.
    ConfigError
        A sampler without ``stats``.
    """
    t0 = time.perf_counter()
    lazy = isinstance(volume, VolumeSampler)
    vols: NDArray[Any] | Sequence[NDArray[Any]] | VolumeSampler
    if isinstance(volume, VolumeSampler):
        vols = volume
        shapes = [tuple(int(v) for v in s) for s in volume.shapes]
        for shape in shapes:
            if len(shape) != 3:
                raise InputError(f"a volume must have three axes (Z, Y, X); got shape {shape}: pass one channel "
                                 "and one time point.")
        if stats is None:
            raise ConfigError("volumes read a sub-volume at a time need their normalisation range (stats=...); "
                              "compute it with asn2n_dask.stats_pass.selection_stats or channel_stats.")
    else:
        if isinstance(volume, np.ndarray) and volume.ndim == 4:
            arrays = list(volume)
        elif isinstance(volume, np.ndarray) or not isinstance(volume, Sequence):
            arrays = [np.asarray(volume)]
        else:
            arrays = [np.asarray(v) for v in volume]
        for vol in arrays:
            if vol.ndim != 3:
                raise InputError(f"a volume must have three axes (Z, Y, X); got shape {vol.shape}: pass one "
                                 "channel and one time point.")
            if not np.issubdtype(vol.dtype, np.number) or np.issubdtype(vol.dtype, np.complexfloating):
                raise InputError(f"a volume must hold real numbers; got dtype {vol.dtype}.")
            if not np.isfinite(vol).all():
                raise InputError("the volume holds NaN or infinite values; replace them before training.")
        vols, shapes = arrays, [v.shape for v in arrays]
    if not shapes:
        raise InputError("no volume to train on.")
    zs, ys, xs = (int(min(s[i] for s in shapes)) for i in range(3))
    patch = volume_patch((zs, ys, xs), config)
    if stats is None:  # arrays (a sampler was refused above)
        both = arrays[0] if len(arrays) == 1 else np.concatenate([v.ravel() for v in arrays])
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
        patches = sample_volume_patches(vols, patch, config.batch, rng)
        if lazy and not np.isfinite(patches).all():  # arrays were checked whole; a sampler's reads are checked
            raise InputError("the volumes hold NaN or infinite values; replace them before training.")
        a, b = volume_twins_batch(patches, stats, rng)
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
