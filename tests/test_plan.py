"""The run's plan: one frozen object per spatial axis, the plan their product."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from asn2n_dask.config import InferConfig
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
