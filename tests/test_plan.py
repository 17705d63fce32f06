"""The run's plan: one frozen object per spatial axis, the plan their product."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from asn2n_dask.config import InferConfig
from asn2n_dask.errors import ConfigError
from asn2n_dask.plan import AxisPlan, RunOptions, Windows, make_plan, window_plan
from asn2n_dask.source import open_source

INFER = InferConfig(tile=32)


@pytest.mark.parametrize("frame,chunk", [((37, 50), (16, 20)), ((5, 37, 50), (2, 16, 20)), ((9,), (4,))])
def test_windows_cover_every_pixel_once_in_any_number_of_axes(frame, chunk):
    wins = Windows(frame, chunk)
    count = np.zeros(frame, np.int8)
    for k, w in enumerate(wins):
        assert wins.number(wins.position(k)) == k
        count[tuple(slice(w[2 * i], w[2 * i + 1]) for i in range(len(frame)))] += 1
    assert (count == 1).all()
    assert len(wins) == int(np.prod(wins.grid)) and wins[-1] == wins[len(wins) - 1]


@pytest.fixture
def plan(tmp_path):
    zarr.create_array(str(tmp_path / "in.zarr"), shape=(2, 3, 150, 97), chunks=(1, 1, 64, 64), dtype="uint16",
                      dimension_names=["t", "c", "y", "x"])
    return make_plan(open_source(tmp_path / "in.zarr"), options=RunOptions(infer=INFER, chunks=(40, 32)), patch=16)


def test_a_plan_is_one_axis_plan_per_spatial_axis(plan):
    assert [a.name for a in plan.spatial] == ["Y", "X"]
    assert plan.shape == (2, 3, 150, 97) and plan.chunks == (1, 1, 40, 32) and plan.grid == (4, 4)
    alone = [AxisPlan(n, size, c, INFER.tile, INFER.stride, 16) for n, size, c in (("Y", 150, 40), ("X", 97, 32))]
    assert plan.spatial == tuple(alone)
    assert plan.halo == (alone[0].halo, alone[1].halo) and plan.to_dict()["halo"] == list(plan.halo)
    assert plan.bytes_read() == alone[0].reads().total * alone[1].reads().total * 6 * 2


def test_a_chunks_region_is_the_product_of_its_axes_regions(plan):
    for k, w in enumerate(plan.windows):
        got = plan.window_plan(k)
        want = window_plan(plan.frame_shape, w, plan.infer, plan.patch)
        assert (got.window, got.patches, got.read) == (want.window, want.patches, want.read)
        assert [t.span for t in got.tiles] == [t.span for t in want.tiles]
        iy, ix = plan.windows.position(k)
        assert got.read[0] == plan.spatial[0].region(*plan.spatial[0].window(iy))[2]
        assert got.read[1] == plan.spatial[1].region(*plan.spatial[1].window(ix))[2]
        assert plan.window_slices(k) == (slice(w[0], w[1]), slice(w[2], w[3]))


def test_an_axis_plan_refuses_a_chunk_past_its_axis():
    with pytest.raises(ValueError, match="chunk"):
        AxisPlan("Y", 10, 11, 32, 16, 16)


@pytest.fixture
def volume_source(tmp_path):
    zarr.create_array(str(tmp_path / "vol.zarr"), shape=(2, 1, 40, 50, 60), chunks=(1, 1, 8, 32, 32),
                      dtype="uint16", dimension_names=["t", "c", "z", "y", "x"])
    return open_source(tmp_path / "vol.zarr")


def test_a_plan_over_z_y_x_tiles_z_with_its_own_tile_and_reads_halos_along_z(volume_source):
    opts = RunOptions(infer=INFER, chunks=(16, 20, 24))
    plan = make_plan(volume_source, options=opts, patch=1, spatial="ZYX", tile_z=8)
    assert [a.name for a in plan.spatial] == ["Z", "Y", "X"] and plan.tile_z == 8
    assert plan.shape == (2, 1, 40, 50, 60) and plan.chunks == (1, 1, 16, 20, 24) and plan.grid == (3, 3, 3)
    z = plan.spatial[0]
    assert (z.tile, z.stride, z.patch) == (8, 4, 1)  # the Z tile at the run's overlap, no patches along Z
    assert [(a.tile, a.stride) for a in plan.spatial[1:]] == [(INFER.tile, INFER.stride)] * 2
    assert plan.n_tasks == 2 * 27 and plan.label_axes == "TZYX"
    assert plan.halo[0] == z.halo > 0
    for k, w in enumerate(plan.windows):
        wp = plan.window_plan(k)
        (r0, r1), (t0, t1) = wp.read[0], wp.tiles[0].span
        assert r0 <= max(0, w[0] - z.margin) and r1 >= min(40, w[1] + z.margin)  # the halo along Z
        assert r0 >= w[0] - plan.halo[0] and r1 <= w[1] + plan.halo[0]
        assert t1 - t0 == (wp.tiles[0].count - 1) * 4 + 8
        assert plan.window_slices(k) == tuple(slice(w[2 * i], w[2 * i + 1]) for i in range(3))
    assert "8 x 32 x 32 voxels (Z Y X)" in plan.describe() and "no normalisation patches" in plan.describe()


def test_a_plan_over_z_y_x_takes_the_inputs_chunks_and_refuses_a_missing_z_tile(volume_source):
    plan = make_plan(volume_source, options=RunOptions(infer=INFER), patch=1, spatial="ZYX", tile_z=8)
    assert plan.chunks == (1, 1, 40, 50, 60)  # the input's, at least the default's lower bound: the whole volume
    with pytest.raises(ConfigError, match="Z tile"):
        make_plan(volume_source, options=RunOptions(infer=INFER), spatial="ZYX")
    with pytest.raises(ConfigError, match="Z tile"):
        make_plan(volume_source, options=RunOptions(infer=INFER), tile_z=8)
    with pytest.raises(ConfigError, match="between 1 and"):
        make_plan(volume_source, options=RunOptions(infer=INFER), spatial="ZYX", tile_z=0)
    yx = make_plan(volume_source, options=RunOptions(infer=INFER, chunks=(20, 24)), spatial="ZYX", tile_z=8)
    assert yx.chunks == (1, 1, 40, 20, 24)  # Y-X given: Z as by default (here the whole depth)
    deep = make_plan(volume_source, options=RunOptions(infer=INFER, chunks=(16, 20, 24)), spatial="ZYX", tile_z=8)
    assert deep.chunks == (1, 1, 16, 20, 24)
    with pytest.raises(ConfigError, match="one size per axis of YX"):
        make_plan(volume_source, options=RunOptions(infer=INFER, chunks=(16, 20, 24)), spatial="YX")
    with pytest.raises(ConfigError, match="two positive sizes"):
        RunOptions(chunks=(1, 2, 3, 4))


def test_a_deep_volume_is_chunked_along_z_by_default(tmp_path):
    from asn2n_dask.plan import DEFAULT_CHUNK_Z

    for src_z, want in ((1, DEFAULT_CHUNK_Z[0]), (128, 128), (1000, DEFAULT_CHUNK_Z[1])):
        zarr.create_array(str(tmp_path / f"{src_z}.zarr"), shape=(1, 1, 1000, 64, 64), chunks=(1, 1, src_z, 64, 64),
                          dtype="uint16", dimension_names=["t", "c", "z", "y", "x"])
        plan = make_plan(open_source(tmp_path / f"{src_z}.zarr"), options=RunOptions(infer=INFER), patch=1,
                         spatial="ZYX", tile_z=8)
        assert plan.chunks == (1, 1, want, 64, 64), src_z  # the input's Z chunk within the bounds
