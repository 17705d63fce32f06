"""Lazy, risk-stratified training patches from data of any size.

Nothing is loaded whole.  A channel's frames (every plane of every time point) are cut
into *regions*: windows aligned to the storage chunks.  Training draws a few regions at
a time (a *block*), reads each with the margin its normalisation fields need, computes
risk classes and fields with :func:`asn2n_dask.normalize.window_fields` (the function
inference uses on its tiles), and cuts many patches from them before moving on, so
reads stay chunk-local and memory stays bounded by the block, whatever the dataset size.

Every batch is a pure function of ``(seed, batch index)``: training in DataLoader
worker processes, resuming after a crash, or splitting a batch over data-parallel
processes all see exactly the same patches.  Validation regions are chosen by
position (a hash of their coordinates) and never trained on.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from .config import NormConfig, RiskThresholds
from .method import channel_norm
from .normalize import patch_span, window_fields
from .pairs import normalised_views
from .risk import noise_level
from .source import spread
from .stats import ChannelStats

__all__ = ["PlaneReader", "ArrayPlanes", "SourcePlanes", "Region", "RegionSampler", "BatchStream", "region_side",
           "channel_noise"]

log = logging.getLogger(__name__)

#: Largest region side read at once (pixels).
MAX_REGION = 1024


class PlaneReader(Protocol):
    """Frames of one channel, addressable by plane number, read a window at a time."""

    @property
    def n_planes(self) -> int: ...

    @property
    def frame_shape(self) -> tuple[int, int]: ...

    @property
    def chunks(self) -> tuple[int, int]: ...

    def read(self, plane: int, rows: tuple[int, int], cols: tuple[int, int]) -> NDArray[Any]: ...


@dataclass(frozen=True)
class ArrayPlanes:
    """Frames held in memory, shape (P, H, W)."""

    planes: NDArray[Any]

    @property
    def n_planes(self) -> int:
        return int(self.planes.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.planes.shape[1]), int(self.planes.shape[2])

    @property
    def chunks(self) -> tuple[int, int]:
        return 128, 128

    def read(self, plane: int, rows: tuple[int, int], cols: tuple[int, int]) -> NDArray[Any]:
        return np.asarray(self.planes[plane, rows[0] : rows[1], cols[0] : cols[1]])


@dataclass(frozen=True)
class SourcePlanes:
    """The planes of one channel of a file on disk (:class:`asn2n_dask.source.Source`).

    Attributes
    ----------
    source : Source
    index : tuple of tuple of int
        Per non-YX axis of the source, the indices used (the channel axis holds one).
    """

    source: Any
    index: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, source: Any, selection: Any, channel: int) -> SourcePlanes:
        """Planes of source channel ``channel`` (a source index) within ``selection``."""
        idx = selection.indices(source)
        out = []
        for ax, ind in zip(source.axes[:-2], idx[:-2]):
            out.append((int(channel),) if ax == "C" else tuple(int(i) for i in ind))
        return cls(source, tuple(out))

    @property
    def n_planes(self) -> int:
        return int(np.prod([len(i) for i in self.index])) if self.index else 1

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.source.shape[-2]), int(self.source.shape[-1])

    @property
    def chunks(self) -> tuple[int, int]:
        return int(self.source.chunks[-2]), int(self.source.chunks[-1])

    def key(self, plane: int) -> tuple[int, ...]:
        pos = np.unravel_index(plane, [len(i) for i in self.index]) if self.index else ()
        return tuple(ind[int(p)] for ind, p in zip(self.index, pos))

    def read(self, plane: int, rows: tuple[int, int], cols: tuple[int, int]) -> NDArray[Any]:
        arr = self.source.open()
        return np.asarray(arr[self.key(plane) + (slice(*rows), slice(*cols))])


def region_side(chunk: int, n: int, patch: int) -> int:
    """Region side along an axis: whole storage chunks, at least two patches, at most
    :data:`MAX_REGION` (a divisor of a larger chunk), never more than the axis."""
    side = chunk
    if side > MAX_REGION:
        side = -(-side // -(-side // MAX_REGION))
    if side < 2 * patch:
        side = chunk * -(-2 * patch // chunk)
    return max(patch, min(side, n))


def _cells(n: int, side: int, patch: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cells of ``side`` along an axis; a last cell shorter than a patch
    is merged into the one before."""
    cells = [(a, min(a + side, n)) for a in range(0, n, side)]
    if len(cells) > 1 and cells[-1][1] - cells[-1][0] < patch:
        cells[-2] = (cells[-2][0], n)
        cells.pop()
    return cells


@dataclass(frozen=True)
class Region:
    """One region: reader number, plane, and window ``(y0, y1, x0, x1)`` in the frame."""

    reader: int
    plane: int
    window: tuple[int, int, int, int]


def _unit(seed: int, *key: int) -> float:
    """A deterministic number in [0, 1) for a seed and a tuple of integers."""
    h = hashlib.blake2b(np.array([seed, *key], np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def channel_noise(readers: Sequence[PlaneReader], stats: ChannelStats, thresholds: RiskThresholds,
                  frames: int = 8, side: int = 1024) -> float:
    """Pixel noise of a channel on its reference risk scale (:func:`asn2n_dask.risk.noise_level`).

    Measured on at most ``frames`` planes spread evenly over the channel, each through
    its central window of at most ``side`` x ``side`` pixels: hundreds of patches, and
    cheap on a dataset of any size.
    """
    planes = [(r, p) for r in readers for p in range(r.n_planes)]
    picks = spread(len(planes), frames)
    windows = []
    for i in picks:
        r, p = planes[i]
        (h, w), sy, sx = r.frame_shape, min(side, r.frame_shape[0]), min(side, r.frame_shape[1])
        y0, x0 = (h - sy) // 2, (w - sx) // 2
        windows.append(np.asarray(r.read(p, (y0, y0 + sy), (x0, x0 + sx))))
    return noise_level(windows, thresholds.patch, stats.risk_scale(thresholds))



class RegionSampler:
    """Regions of a channel, split by position into training and validation, and the
    per-block loading of their pixels, fields and risk classes.

    Parameters
    ----------
    readers : sequence of PlaneReader
        The channel's frames (one reader per input).
    stats : ChannelStats
        The channel's statistics (the reduction pass the pipeline makes).
    norm : NormConfig
        An ``"auto"`` risk estimator is resolved here, once for the channel
        (:func:`channel_noise`, :func:`asn2n_dask.method.channel_norm`; training passes
        the channel's method instead); ``self.norm`` holds the result and
        ``self.risk_noise`` the noise that decided it (NaN when the estimator was set).
    dataset_mode : {"global", "local"}, optional
        The ``dataset`` decision, for ``norm.mode == "dataset"``.
    patch : int
        Patch side.
    seed : int
    val_fraction : float
        Share of regions held out for validation.
    """

    def __init__(self, readers: Sequence[PlaneReader], stats: ChannelStats, norm: NormConfig,
                 dataset_mode: str | None, patch: int, seed: int, val_fraction: float) -> None:
        self.readers, self.stats = list(readers), stats
        self.norm, noise = channel_norm(norm, lambda: channel_noise(self.readers, stats, norm.risk))
        self.risk_noise = float("nan") if noise is None else noise
        self.dataset_mode, self.patch, self.seed = dataset_mode, patch, seed
        self.grids: list[tuple[list[tuple[int, int]], list[tuple[int, int]]]] = []
        counts = []
        for r in self.readers:
            (h, w), (cy, cx) = r.frame_shape, r.chunks
            gy = _cells(h, region_side(cy, h, patch), patch)
            gx = _cells(w, region_side(cx, w, patch), patch)
            self.grids.append((gy, gx))
            counts.append(r.n_planes * len(gy) * len(gx))
        self.counts = np.array(counts, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])
        self.n_regions = int(self.offsets[-1])
        self._val = self._split(val_fraction)

    # -- regions ------------------------------------------------------------------
    def region(self, k: int) -> Region:
        """Region number ``k`` (over all readers, planes and cells)."""
        ri = int(np.searchsorted(self.offsets, k, side="right")) - 1
        gy, gx = self.grids[ri]
        plane, cell = divmod(k - int(self.offsets[ri]), len(gy) * len(gx))
        iy, ix = divmod(cell, len(gx))
        return Region(ri, int(plane), (*gy[iy], *gx[ix]))

    def _split(self, fraction: float) -> frozenset[int] | float:
        """Validation regions: an exact share of a small set, a hash threshold for a big one."""
        if fraction <= 0 or self.n_regions < 2:
            return frozenset()
        if self.n_regions <= 4096:
            u = np.array([_unit(self.seed, k) for k in range(self.n_regions)])
            n_val = min(self.n_regions - 1, max(1, int(round(fraction * self.n_regions))))
            return frozenset(int(k) for k in np.argsort(u, kind="stable")[:n_val])
        # Many regions: a hash threshold; make sure it holds some region (else no validation).
        if not any(_unit(self.seed, k) < fraction for k in range(min(self.n_regions, 1 << 16))):
            return frozenset()
        return fraction

    def is_val(self, k: int) -> bool:
        if isinstance(self._val, frozenset):
            return k in self._val
        return _unit(self.seed, k) < self._val

    @property
    def has_val(self) -> bool:
        return bool(self._val)

    def draw(self, rng: np.random.Generator, n: int, *, val: bool = False) -> list[int]:
        """``n`` region numbers from the training (or validation) regions, uniformly."""
        if val and isinstance(self._val, frozenset):
            pool = sorted(self._val)
            return [pool[int(i)] for i in rng.integers(0, len(pool), n)]
        out: list[int] = []
        while len(out) < n:
            k = int(rng.integers(0, self.n_regions))
            if self.is_val(k) == val:
                out.append(k)
        return out

    # -- pixels -------------------------------------------------------------------
    def load(self, k: int) -> LoadedRegion:
        """Read region ``k`` with the margin its fields need; compute fields and classes."""
        reg = self.region(k)
        reader = self.readers[reg.reader]
        frame = reader.frame_shape
        y0, y1, x0, x1 = reg.window
        p = self.norm.risk.patch
        patches = (patch_span(frame[0], y0, y1 - 1, p), patch_span(frame[1], x0, x1 - 1, p))
        (p0, p1), (q0, q1) = patches
        rows, cols = (p0 * p, min(p1 * p, frame[0])), (q0 * p, min(q1 * p, frame[1]))
        raw = np.asarray(reader.read(reg.plane, rows, cols))
        img = torch.from_numpy(np.ascontiguousarray(raw, dtype=raw.dtype.newbyteorder("="))).double()
        risk, offset, scale = window_fields(img, frame, patches, np.arange(y0, y1), np.arange(x0, x1),
                                            stats=self.stats, norm=self.norm, dataset_mode=self.dataset_mode)
        core = img[y0 - rows[0] : y1 - rows[0], x0 - cols[0] : x1 - cols[0]]
        ly = torch.from_numpy((np.arange(y0, y1) - rows[0]) // p)
        lx = torch.from_numpy((np.arange(x0, x1) - cols[0]) // p)
        labels = risk.index_select(0, ly).index_select(1, lx).numpy()
        planes = torch.stack([core, offset, scale]).float().numpy()
        return LoadedRegion(k, planes, labels, self.patch)


class LoadedRegion:
    """A region's (raw, offset, scale) planes and the patch origins of each risk kind."""

    def __init__(self, k: int, planes: NDArray[np.float32], labels: NDArray[np.int8], patch: int) -> None:
        self.k, self.planes, self.patch = k, planes, patch
        self.risky_fraction = float(np.mean(labels != 0))
        h, w = labels.shape
        c = patch // 2
        # A patch's class is the class under its centre; origins (y, x) keep it inside.
        centre = labels[c : h - patch + c + 1, c : w - patch + c + 1] != 0
        self.shape = centre.shape
        self.risky = np.flatnonzero(centre.ravel()).astype(np.int32)
        self.safe = np.flatnonzero(~centre.ravel()).astype(np.int32)

    def origin(self, flat: int) -> tuple[int, int]:
        y, x = divmod(int(flat), self.shape[1])
        return y, x


@dataclass(frozen=True)
class BatchPlan:
    """How batches are cut from blocks of regions."""

    batch: int
    regions_per_block: int = 8
    batches_per_block: int = 16
    pool_blocks: int = 4
    risk_share: float | None = None
    all_regions: bool = False


class BatchStream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Training batches ``start, start + 1, ...``: ``(index, twin_a, twin_b, n_risky)``.

    Blocks of ``regions_per_block`` regions are drawn with ``(seed, block)``; batch
    ``i`` draws its patches from the pool of the last ``pool_blocks`` blocks up to block
    ``i // batches_per_block`` (a sliding pool: each region serves
    ``pool_blocks * batches_per_block`` batches, mixed with the others), and its
    patches, augmentations and which twin is the input are drawn with ``(seed, i)``.
    With ``all_regions`` (data small enough to hold), every batch draws from all the
    training regions.  With ``risk_share`` set, that share of
    each batch's patches is centred on high-risk (weak background or sparse bright)
    patches, the rest on safe ones (as far as the block holds each kind).  In
    DataLoader worker ``w`` of ``W`` the stream yields batches ``start + w, start + w + W...``,
    so the loader's round-robin order is ``start, start + 1, ...`` again.  With
    ``world > 1`` (data-parallel), each process keeps its ``rank``-th slice of every
    batch.
    """

    def __init__(self, sampler: RegionSampler, plan: BatchPlan, *, start: int = 0, stop: int | None = None,
                 rank: int = 0, world: int = 1) -> None:
        super().__init__()
        if plan.batch % world:
            raise ValueError(f"batch {plan.batch} does not split over {world} processes")
        self.sampler, self.plan, self.start, self.stop = sampler, plan, start, stop
        self.rank, self.world = rank, world
        self._cache: OrderedDict[int, list[LoadedRegion]] = OrderedDict()

    def block(self, g: int) -> list[LoadedRegion]:
        """The regions of block ``g`` (the blocks of the current pool are kept)."""
        if g not in self._cache:
            rng = np.random.default_rng([self.sampler.seed, 2, g])
            self._cache[g] = [self.sampler.load(k) for k in self.sampler.draw(rng, self.plan.regions_per_block)]
            while len(self._cache) > self.plan.pool_blocks + 1:
                self._cache.popitem(last=False)
        return self._cache[g]

    def pool(self, i: int) -> list[LoadedRegion]:
        """The regions batch ``i`` draws from."""
        if self.plan.all_regions:  # small data: every training region, every batch
            if -1 not in self._cache:
                self._cache[-1] = [self.sampler.load(k) for k in range(self.sampler.n_regions)
                                   if not self.sampler.is_val(k)]
            return self._cache[-1]
        g = i // self.plan.batches_per_block
        return [r for b in range(max(0, g - self.plan.pool_blocks + 1), g + 1) for r in self.block(b)]

    def positions(self, i: int) -> tuple[list[tuple[LoadedRegion, int, int]], np.random.Generator, int]:
        """Patches of batch ``i`` (region, y, x), its generator, and how many are risky."""
        regions = self.pool(i)
        rng = np.random.default_rng([self.sampler.seed, 1, i])
        n = self.plan.batch
        share = self.plan.risk_share
        if share is None:
            kinds = None
        else:
            kinds = rng.random(n) < share  # True: a high-risk patch
        out, risky = [], 0
        n_r = np.array([len(r.risky) for r in regions])
        n_s = np.array([len(r.safe) for r in regions])
        for j in range(n):
            want_risky = None if kinds is None else bool(kinds[j])
            if want_risky is True and n_r.sum() == 0 or want_risky is False and n_s.sum() == 0:
                want_risky = None  # the block holds none of that kind
            if want_risky is None:
                tot = n_r + n_s
                ri = int(rng.choice(len(regions), p=tot / tot.sum()))
                flat = int(rng.integers(0, tot[ri]))
                reg = regions[ri]
                pos = reg.risky[flat] if flat < n_r[ri] else reg.safe[flat - n_r[ri]]
                risky += int(flat < n_r[ri])
            else:
                counts = n_r if want_risky else n_s
                ri = int(rng.choice(len(regions), p=counts / counts.sum()))
                reg = regions[ri]
                pool = reg.risky if want_risky else reg.safe
                pos = pool[int(rng.integers(0, len(pool)))]
                risky += int(want_risky)
            y, x = reg.origin(int(pos))
            out.append((reg, y, x))
        return out, rng, risky

    def batch(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, int]:
        pos, rng, risky = self.positions(i)
        n, p = len(pos), self.sampler.patch
        k = rng.integers(0, 4, n)
        flip = rng.integers(0, 2, n).astype(bool)
        swap = rng.integers(0, 2, n).astype(bool)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        crops = []
        for j in range(lo, hi):
            reg, y, x = pos[j]
            c = reg.planes[:, y : y + p, x : x + p]
            c = np.rot90(c[..., ::-1] if flip[j] else c, int(k[j]), axes=(-2, -1))
            crops.append(c)
        ta, tb = normalised_views(torch.from_numpy(np.ascontiguousarray(np.stack(crops))), "twins")
        s = torch.from_numpy(swap[lo:hi])[:, None, None, None]
        return i, torch.where(s, tb, ta), torch.where(s, ta, tb), risky

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, int]]:
        info = torch.utils.data.get_worker_info()
        w, n_w = (info.id, info.num_workers) if info is not None else (0, 1)
        i = self.start + w
        while self.stop is None or i < self.stop:
            yield self.batch(i)
            i += n_w


def validation_batch(sampler: RegionSampler, n: int) -> tuple[torch.Tensor, torch.Tensor, NDArray[np.float32]]:
    """``n`` fixed patches from validation regions, not augmented: their twins and raw pixels."""
    rng = np.random.default_rng([sampler.seed, 3])
    ks = sorted(set(sampler.draw(rng, min(n, 8), val=True)))
    regions = [sampler.load(k) for k in ks]
    crops = []
    p = sampler.patch
    for j in range(n):
        reg = regions[j % len(regions)]
        tot = len(reg.risky) + len(reg.safe)
        flat = int(rng.integers(0, tot))
        y, x = reg.origin(int(np.concatenate([reg.risky, reg.safe])[flat]))
        crops.append(reg.planes[:, y : y + p, x : x + p])
    arr = np.stack(crops)
    ta, tb = normalised_views(torch.from_numpy(arr), "twins")
    return ta, tb, arr
