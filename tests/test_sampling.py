"""Lazy, stratified patch sampling: reads, regions, normalisation, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asn2n_dask import TrainConfig
from asn2n_dask.config import NormConfig, RiskThresholds
from asn2n_dask.sampling import ArrayPlanes, BatchPlan, BatchStream, RegionSampler, SourcePlanes, region_side
from asn2n_dask.stats import channel_stats


def _sampler(planes, patch=32, seed=0, val=0.1, norm=NormConfig()):
    stats = channel_stats(planes[None], norm)[0]
    return RegionSampler([ArrayPlanes(planes)], stats, norm, None, patch, seed, val)


def _halves(n=4, h=256, w=256, seed=0):
    """Frames whose left half is flat dark background (weak-background risk) and right
    half bright texture (safe)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w), np.float32)
    out[:, :, : w // 2] = 100 + rng.normal(0, 1, (n, h, w // 2))
    out[:, :, w // 2 :] = 100 + 900 * rng.random((n, h, w // 2))
    return out


def test_region_sides_follow_the_storage_chunks():
    assert region_side(512, 4096, 96) == 512
    assert region_side(64, 4096, 96) == 192  # whole chunks, at least two patches
    assert region_side(4096, 4096, 96) == 1024  # a divisor of a big chunk
    assert region_side(512, 100, 96) == 100


def test_regions_tile_every_frame_and_validation_regions_are_never_trained_on():
    planes = np.zeros((3, 300, 260), np.float32)
    s = _sampler(planes, val=0.2)
    covered = np.zeros(planes.shape, int)
    for k in range(s.n_regions):
        r = s.region(k)
        y0, y1, x0, x1 = r.window
        covered[r.plane, y0:y1, x0:x1] += 1
    assert (covered == 1).all()
    val = {k for k in range(s.n_regions) if s.is_val(k)}
    assert 0 < len(val) < s.n_regions
    drawn = s.draw(np.random.default_rng(1), 2000)
    assert not val & set(drawn) and set(drawn) == set(range(s.n_regions)) - val
    stream = BatchStream(s, BatchPlan(batch=4, regions_per_block=3, batches_per_block=2))
    for g in range(20):
        assert not {reg.k for reg in stream.block(g)} & val


def test_region_fields_equal_the_fields_of_the_whole_frame():
    """Training and inference normalise with one code path: a region's fields are the
    whole frame's fields at the same pixels."""
    from asn2n_dask.predict import patch_span, window_fields

    frame = _halves(1, 320, 300)[0]
    norm = NormConfig(mode="adaptive")
    s = _sampler(frame[None], norm=norm, val=0.0)
    h, w = frame.shape
    whole = torch.from_numpy(frame.astype(np.float64))
    patches = (patch_span(h, 0, h - 1, 64), patch_span(w, 0, w - 1, 64))
    _, off, scale = window_fields(whole, (h, w), patches, np.arange(h), np.arange(w), stats=s.stats, norm=s.norm,
                                  dataset_mode=None)
    for k in range(s.n_regions):
        reg = s.load(k)
        y0, y1, x0, x1 = s.region(k).window
        np.testing.assert_allclose(reg.planes[0], frame[y0:y1, x0:x1])
        np.testing.assert_allclose(reg.planes[1], off[y0:y1, x0:x1].numpy(), rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(reg.planes[2], scale[y0:y1, x0:x1].numpy(), rtol=1e-6)


def test_training_twins_are_what_inference_feeds_the_network():
    from asn2n_dask.predict import normalised_views

    s = _sampler(_halves(2), val=0.0)
    stream = BatchStream(s, BatchPlan(batch=6))
    pos, rng, _ = stream.positions(3)
    k, flip, swap = rng.integers(0, 4, 6), rng.integers(0, 2, 6).astype(bool), rng.integers(0, 2, 6).astype(bool)
    crops = []
    for j, (reg, y, x) in enumerate(pos):
        c = reg.planes[:, y : y + 32, x : x + 32]
        crops.append(np.rot90(c[..., ::-1] if flip[j] else c, int(k[j]), axes=(-2, -1)))
    a, b = normalised_views(torch.from_numpy(np.ascontiguousarray(np.stack(crops))), "twins")
    i, ta, tb, _ = stream.batch(3)
    s_ = torch.from_numpy(swap)[:, None, None, None]
    assert i == 3
    assert torch.equal(ta, torch.where(s_, b, a)) and torch.equal(tb, torch.where(s_, a, b))


def test_twins_of_a_patch_are_colocated_and_augmented_alike():
    yy, xx = np.mgrid[:128, :128]
    smooth = (1000 + 300 * np.sin(yy / 12.0) + 300 * np.cos(xx / 15.0)).astype(np.float32)
    s = _sampler(smooth[None], val=0.0, norm=NormConfig(mode="global"))
    stream = BatchStream(s, BatchPlan(batch=16))
    _, ta, tb, _ = stream.batch(0)
    assert (ta - tb).abs().max() < 0.02  # same content, same orientation
    _, ta2, _, _ = stream.batch(1)
    assert not torch.allclose(ta, ta2)


@pytest.mark.parametrize("share", [0.2, 0.8])
def test_stratification_gets_the_requested_risk_share(share):
    s = _sampler(_halves(4), val=0.0)
    natural = BatchStream(s, BatchPlan(batch=32))
    stream = BatchStream(s, BatchPlan(batch=32, risk_share=share))
    got = np.mean([stream.batch(i)[3] / 32 for i in range(60)])
    assert abs(got - share) < 0.04
    nat = np.mean([natural.batch(i)[3] / 32 for i in range(60)])
    assert 0.35 < nat < 0.65  # the left half is weak background


def test_stratified_patch_centres_really_are_high_risk():
    s = _sampler(_halves(2), val=0.0)
    stream = BatchStream(s, BatchPlan(batch=64, risk_share=1.0))
    pos, _, risky = stream.positions(0)
    assert risky == 64
    assert all(x + 16 < 128 for _, _, x in pos)  # centres in the dark (left) half


def test_batches_are_a_function_of_seed_and_index_whatever_the_loader_workers():
    s = _sampler(_halves(3), val=0.1)
    plan = BatchPlan(batch=4, regions_per_block=2, batches_per_block=3)
    direct = [BatchStream(s, plan).batch(i) for i in range(5, 13)]
    loader = torch.utils.data.DataLoader(BatchStream(s, plan, start=5, stop=13), batch_size=None, num_workers=2)
    for (i0, a0, b0, r0), (i1, a1, b1, r1) in zip(direct, loader):
        assert i0 == i1 and r0 == r1
        assert torch.equal(a0, a1) and torch.equal(b0, b1)
    other = BatchStream(_sampler(_halves(3), val=0.1, seed=1), plan).batch(5)
    assert not torch.equal(other[1], direct[0][1])


def test_data_parallel_slices_make_up_the_whole_batch():
    s = _sampler(_halves(2), val=0.0)
    plan = BatchPlan(batch=6)
    whole = BatchStream(s, plan).batch(4)
    parts = [BatchStream(s, plan, rank=r, world=2).batch(4) for r in range(2)]
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    assert torch.equal(torch.cat([p[2] for p in parts]), whole[2])


class _CountingArray:
    """A zarr array whose reads are recorded (as the storage chunks they touch)."""

    def __init__(self, arr):
        self.arr, self.chunks_read = arr, set()

    def __getitem__(self, key):
        t, c, ys, xs = key
        cy, cx = self.arr.chunks[-2:]
        for iy in range(ys.start // cy, -(-ys.stop // cy)):
            for ix in range(xs.start // cx, -(-xs.stop // cx)):
                self.chunks_read.add((t, c, iy, ix))
        return self.arr[key]


class _Src:
    def __init__(self, arr):
        self.shape, self.chunks, self.axes, self.counter = arr.shape, arr.chunks, "TCYX", _CountingArray(arr)

    def open(self):
        return self.counter


def test_sampling_reads_only_the_chunks_under_its_regions(tmp_path):
    import zarr

    from asn2n_dask.predict import patch_span
    from asn2n_dask.sampling import LoadedRegion

    data = np.random.default_rng(0).poisson(20, (30, 2, 256, 256)).astype(np.uint16)
    arr = zarr.create_array(str(tmp_path / "d.zarr"), shape=data.shape, chunks=(1, 1, 64, 64), dtype="uint16")
    arr[...] = data
    src = _Src(zarr.open_array(str(tmp_path / "d.zarr"), mode="r"))
    reader = SourcePlanes(src, (tuple(range(30)), (1,)))
    # a set estimator: "auto" would also read the central windows its noise measure needs, once
    norm = NormConfig(risk=RiskThresholds(estimator="reference"))
    stats = channel_stats(data[:, 1][None], norm)[0]
    s = RegionSampler([reader], stats, norm, None, 32, 0, 0.1)
    stream = BatchStream(s, BatchPlan(batch=8, regions_per_block=2, batches_per_block=4))
    loaded: list[LoadedRegion] = []
    for i in range(8):  # two blocks
        stream.batch(i)
    for g in range(2):
        loaded += stream.block(g)
    want = set()
    for reg in loaded:
        r = s.region(reg.k)
        y0, y1, x0, x1 = r.window
        (p0, p1), (q0, q1) = patch_span(256, y0, y1 - 1, 64), patch_span(256, x0, x1 - 1, 64)
        for iy in range(p0, p1):
            for ix in range(q0, q1):
                want.add((r.plane, 1, iy, ix))
    assert src.counter.chunks_read == want
    assert len(want) < 0.1 * 30 * 16  # 4 regions and their margins: a few of the channel's 480 chunks
    np.testing.assert_array_equal(loaded[0].planes[0], data[s.region(loaded[0].k).plane, 1][
        slice(*s.region(loaded[0].k).window[:2]), slice(*s.region(loaded[0].k).window[2:])])


def test_train_config_rejects_a_bad_risk_share():
    from asn2n_dask.errors import ConfigError

    with pytest.raises(ConfigError, match="risk share"):
        TrainConfig(risk_share=1.5)
