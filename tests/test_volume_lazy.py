"""3-D training read a sub-volume at a time: the same draws, hence the same network, as
the voxels in memory; files and dask arrays never read whole; memory bounded by the batch."""

import tracemalloc

import numpy as np
import pytest
import torch
import zarr

from asn2n_dask import fit
from asn2n_dask.axes import to_volumes
from asn2n_dask.config import VolumeTrainConfig
from asn2n_dask.errors import ConfigError, InputError
from asn2n_dask.risk import FrameStats
from asn2n_dask.source import Selection, Source, open_source
from asn2n_dask.stats_pass import selection_stats
from asn2n_dask.train3d import ArrayVolumes, SourceVolumes, VolumeSampler, fit_volume, sample_volume_patches

TINY3D = VolumeTrainConfig(preset="tiny3d", steps=3, patch=(8, 16, 16), batch=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noisy(shape, seed=0):
    """Poisson noise over a smooth structure, uint16."""
    grid = np.meshgrid(*(np.linspace(0, 3, n) for n in shape[-3:]), indexing="ij")
    clean = 200 + 150 * np.sin(grid[0]) * np.cos(grid[1] + grid[2])
    return np.random.default_rng(seed).poisson(np.broadcast_to(clean, shape)).astype(np.uint16)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def write_zarr(path, data, chunks):
    arr = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[...] = data
    return str(path)


class Plain:
    """The protocol alone: shapes and reads, nothing else (not an ArrayVolumes)."""

    def __init__(self, vols):
        self.vols, self.reads = vols, []

    @property
    def shapes(self):
        return [v.shape for v in self.vols]

    def read(self, i, start, size):
        self.reads.append((i, start, size))
        return self.vols[i][tuple(slice(s, s + n) for s, n in zip(start, size))]


# --- (a) arrays and a sampler over the same voxels: identical draws, losses and weights ------

@pytest.mark.parametrize("n", [1, 3])
def test_a_sampler_draws_the_sub_volumes_the_arrays_give(n):
    vols = [noisy((6, 20, 24), seed=s) for s in range(n)]
    want = sample_volume_patches(vols if n > 1 else vols[0], (4, 8, 8), 9, np.random.default_rng(5))
    plain = Plain(vols)
    assert isinstance(plain, VolumeSampler)
    got = sample_volume_patches(plain, (4, 8, 8), 9, np.random.default_rng(5))
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    assert len(plain.reads) == 9 and all(size == (4, 8, 8) for _, _, size in plain.reads)
    with pytest.raises(ValueError, match="do not fit"):
        sample_volume_patches(Plain([vols[0][:3]]), (4, 8, 8), 1, np.random.default_rng(0))


def test_fit_volume_from_a_sampler_equals_fit_volume_from_the_arrays():
    vols = [noisy((8, 32, 32), seed=1), noisy((8, 32, 48), seed=2) + 100]  # two sizes: the volume draw matters
    stats = FrameStats(150.0, 600.0)
    ref = fit_volume(vols, TINY3D, stats=stats)
    for sampler in (Plain(vols), ArrayVolumes(tuple(vols)),
                    SourceVolumes.of([np.stack(vols[:1]), np.stack(vols[1:])], "TZYX", "Z",
                                     [[range(1), range(8), range(32), range(32)],
                                      [range(1), range(8), range(32), range(48)]])):
        got = fit_volume(sampler, TINY3D, stats=stats)
        assert got.losses == ref.losses and got.patch == ref.patch and got.stats == ref.stats
        same_weights(got.net, ref.net)
    other = fit_volume(vols[::-1], TINY3D, stats=stats)  # the oracle tells volumes apart
    assert other.losses != ref.losses


def test_a_sampler_needs_its_range_and_finite_voxels():
    vols = [noisy((8, 32, 32)).astype(np.float32)]
    with pytest.raises(ConfigError, match="stats="):
        fit_volume(Plain(vols), TINY3D)
    vols[0][:, :, :] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_volume(Plain(vols), TINY3D, stats=FrameStats(0.0, 1.0))
    with pytest.raises(InputError, match="three axes"):
        fit_volume(Plain([np.zeros((32, 32))]), TINY3D, stats=FrameStats(0.0, 1.0))


@pytest.mark.parametrize("axes, shape, depth", [("TZYX", (2, 3, 8, 8), "Z"), ("ZCTYX", (3, 2, 4, 8, 8), "Z"),
                                                 ("CTYX", (2, 5, 8, 8), "T"), ("QTCYX", (2, 5, 3, 8, 8), "T")])
def test_source_volumes_are_to_volumes_in_its_order(axes, shape, depth):
    """The stored axis order stays; the key puts each index where its axis is."""
    data = np.arange(np.prod(shape)).reshape(shape)
    want = to_volumes(data, axes, depth)
    whole = [range(n) for n in shape]
    for c in range(want.shape[0]):
        per = [(c,) if a == "C" else r for a, r in zip(axes, whole)]
        sv = SourceVolumes.of([data, data], axes, depth, [per, per])  # two inputs: one after the other
        assert sv.shapes == [v.shape for v in want[c]] * 2
        for i, v in enumerate(list(want[c]) * 2):
            np.testing.assert_array_equal(sv.read(i, (0, 0, 0), v.shape), v)
            np.testing.assert_array_equal(sv.read(i, (1, 2, 3), (1, 4, 5)), v[1:2, 2:6, 3:8])


# --- (b) a file trains the network the same voxels in memory train ----------------------------

@pytest.mark.parametrize("axes, shape, chunks", [
    ("TCZYX", (2, 1, 64, 64, 64), (1, 1, 8, 32, 32)),
    ("ZTCYX", (16, 2, 2, 32, 48), (4, 1, 1, 16, 16)),  # stored Z first, two channels
])
def test_a_zarr_volume_trains_the_network_of_the_same_array(tmp_path, axes, shape, chunks):
    data = noisy(shape)
    if "C" in axes:  # the second channel brighter: each channel its own range
        data = data + np.uint16(300) * np.arange(shape[axes.index("C")], dtype=np.uint16).reshape(
            [-1 if a == "C" else 1 for a in axes])
    path = write_zarr(tmp_path / "v.zarr", data, chunks)
    from_file = fit(path, axes=axes, dims=3, volume=TINY3D, device="cpu")
    in_memory = fit(data, axes=axes, dims=3, volume=TINY3D, device="cpu")
    assert from_file.n_channels == in_memory.n_channels == shape[axes.index("C")]
    assert from_file.volume == in_memory.volume
    for a, b in zip(from_file.channels, in_memory.channels):
        assert a.stats == b.stats
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        same_weights(a.net, b.net)


def test_files_and_time_ranges_give_their_volumes_in_order(tmp_path):
    """Several inputs' volumes one after the other, a time range's only, each on the
    channel's range over every time point."""
    a, b = noisy((3, 8, 32, 32), seed=3), noisy((2, 8, 32, 32), seed=4) + 50
    pa, pb = write_zarr(tmp_path / "a.zarr", a, (1, 4, 16, 16)), write_zarr(tmp_path / "b.zarr", b, (1, 8, 32, 32))
    model = fit([pa, pb], axes="TZYX", dims=3, volume=TINY3D, device="cpu", time="1:")
    ch = model.channels[0]
    ref = fit_volume([a[1], a[2], b[1]], TINY3D, stats=ch.stats)
    assert [h["train_loss"] for h in ch.history] == ref.losses
    same_weights(ch.net, ref.net)
    whole = fit(np.concatenate([a, b]), axes="TZYX", dims=3, volume=TINY3D, device="cpu")
    assert ch.stats == whole.channels[0].stats  # statistics of every time point
    movie = noisy((7, 32, 32), seed=5)
    pm = write_zarr(tmp_path / "m.zarr", movie, (2, 16, 16))
    as_depth = fit(pm, axes="TYX", dims=3, depth_axis="T", volume=TINY3D, device="cpu", time="2:6")
    ref = fit_volume(movie[2:6], TINY3D, stats=as_depth.channels[0].stats)
    same_weights(as_depth.channels[0].net, ref.net)


def test_a_dask_array_trains_lazily_to_the_numpy_network(monkeypatch):
    import dask.array as da

    data = noisy((2, 8, 32, 32))
    want = fit(data, axes="TZYX", dims=3, volume=TINY3D, device="cpu")
    into_memory = []
    to_numpy = da.Array.__array__

    def counted(self, *args, **kwargs):
        into_memory.append(self.shape)
        return to_numpy(self, *args, **kwargs)

    monkeypatch.setattr(da.Array, "__array__", counted)
    got = fit(da.from_array(data, chunks=(1, 4, 16, 16)), axes="TZYX", dims=3, volume=TINY3D, device="cpu")
    assert got.channels[0].stats == want.channels[0].stats
    same_weights(got.channels[0].net, want.channels[0].net)
    # the channel's method first, from single slices (their pixel noise and patches at risk), then the
    # training sub-volumes: never the array
    slices = [s for s in into_memory if s[0] == 1]
    assert 0 < len(slices) <= 16 and set(slices) == {(1, 32, 32)}
    assert into_memory[len(slices):] == [TINY3D.patch] * (TINY3D.steps * TINY3D.batch)


# --- (c, d) memory and reads: bounded by the sub-volume, not the volume -----------------------

class Counting:
    """A source array that records the shape of every read."""

    def __init__(self, inner, reads):
        self.inner, self.reads = inner, reads

    def __getattr__(self, name):
        if name in ("oindex", "vindex", "blocks") or name.startswith("get_"):  # other ways to read
            self.reads.append((name, None))
        return getattr(self.inner, name)

    def __getitem__(self, key):
        out = np.asarray(self.inner[key])
        self.reads.append((key, out.shape))
        return out


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 256x256x256 uint16 volume (32 MiB) in 16x64x64 chunks, and its statistics from
    one pass."""
    path = tmp_path_factory.mktemp("big") / "big.zarr"
    shape = (1, 1, 256, 256, 256)
    arr = zarr.create_array(store=str(path), shape=shape, chunks=(1, 1, 16, 64, 64), dtype="uint16")
    rng = np.random.default_rng(0)
    for z in range(0, 256, 64):
        arr[:, :, z : z + 64] = rng.poisson(200, (1, 1, 64, 256, 256)).astype(np.uint16)
    stats = selection_stats([open_source(path, "TCZYX")], [Selection()], TINY3D.norm, None)
    return str(path), stats, 2 * int(np.prod(shape))


@pytest.fixture()
def measured(big, monkeypatch):
    """The statistics pass done beforehand (its blocks are its own bound): what follows
    measures the training alone."""
    import asn2n_dask.stats_pass

    monkeypatch.setattr(asn2n_dask.stats_pass, "selection_stats", lambda *a, **k: list(big[1]))
    return big


def test_training_from_a_large_zarr_allocates_far_less_than_the_volume(measured):
    path, _, nbytes = measured
    cfg = VolumeTrainConfig(preset="tiny3d", steps=3, patch=(8, 32, 32), batch=2)
    fit(path, axes="TCZYX", dims=3, volume=cfg, device="cpu")  # imports, first-call set-up
    tracemalloc.start()
    try:
        model = fit(path, axes="TCZYX", dims=3, volume=cfg, device="cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert model.volume is not None and model.volume.patch == (8, 32, 32)
    # numpy's allocations are traced: a read of the whole volume, even in its own dtype, would exceed this
    assert peak < nbytes / 4, f"{peak / 2**20:.1f} MiB traced while training from a {nbytes / 2**20:.0f} MiB volume"


def test_only_sub_volumes_are_read_while_training(measured, monkeypatch):
    path, _, _ = measured
    reads = []
    opened = Source.open
    monkeypatch.setattr(Source, "open", lambda self: Counting(opened(self), reads))
    cfg = VolumeTrainConfig(preset="tiny3d", steps=4, patch=(8, 32, 32), batch=3)
    fit(path, axes="TCZYX", dims=3, volume=cfg, device="cpu")
    # the channel's method from single slices first (at most 8 for its pixel noise, 8 for its patches at
    # risk), then one indexing per sub-volume, nothing else
    slices = [shape for _, shape in reads if shape[0] == 1]
    assert 0 < len(slices) <= 16 and set(slices) == {(1, 256, 256)}
    assert len(reads) == len(slices) + cfg.steps * cfg.batch
    assert all(shape == cfg.patch for _, shape in reads[len(slices):])
    for key, _ in reads:
        assert all(isinstance(k, (int, slice)) for k in key)  # basic indexing: only the chunks under it
