"""A window of a frame computed from its own region equals that window of the whole frame."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asn2n_dask import InferConfig, NormConfig
from asn2n_dask.blend import reflect_index, window_tiles
from asn2n_dask.predict import denoise_frame, denoise_window, network_fn, window_plan
from asn2n_dask.stats import channel_stats


@given(n=st.integers(1, 40), lo=st.integers(-100, 0), span=st.integers(1, 200))
@settings(max_examples=60, deadline=None)
def test_reflect_index_mirrors_like_numpy_pad(n, lo, span):
    data = np.arange(n)
    pad_before, pad_after = -lo, max(0, lo + span - n)
    padded = np.pad(data, (pad_before, pad_after), mode="reflect" if n > 1 else "edge")
    idx = np.arange(lo, lo + span)
    np.testing.assert_array_equal(data[reflect_index(idx, n)], padded[idx + pad_before])


@given(n=st.integers(1, 300), a=st.integers(0, 299), length=st.integers(1, 300),
       tile=st.sampled_from([16, 32, 128]), overlap=st.sampled_from([0.0, 0.5, 0.75]))
@settings(max_examples=80, deadline=None)
def test_window_tiles_are_exactly_the_frame_tiles_overlapping_the_window(n, a, length, tile, overlap):
    a = min(a, n - 1)
    b = min(n, a + length)
    stride = InferConfig(tile=tile, overlap=overlap).stride
    whole = window_tiles(n, 0, n, tile, stride)
    origins = whole.first + stride * np.arange(whole.count)
    want = origins[(origins < b) & (origins + tile > a)]
    got = window_tiles(n, a, b, tile, stride)
    np.testing.assert_array_equal(got.first + stride * np.arange(got.count), want)


@pytest.fixture(scope="module")
def setup(tiny_model, frame):
    img = np.concatenate([frame[0], frame[0][:, ::-1]], axis=1)[:, :203]  # 96 x 203: odd, not tile-aligned
    ch = tiny_model.channels[0]
    fn = network_fn(ch.net, "cpu")
    stats = channel_stats(img[None])[0]
    return img, fn, stats, tiny_model.multiple


@pytest.mark.parametrize("mode", ["adaptive", "local", "global"])
@pytest.mark.parametrize("infer", [InferConfig(tile=32), InferConfig(tile=16, overlap=0.75, blend="uniform")])
def test_any_window_equals_the_same_window_of_the_whole_frame(setup, mode, infer):
    img, fn, stats, mult = setup
    norm = NormConfig(mode=mode)
    whole, whole_risk = denoise_frame(img, fn, stats=stats, norm=norm, infer=infer, multiple=mult)
    h, w = img.shape
    rng = np.random.default_rng(0)
    windows = [(0, 7, 0, 5), (90, 96, 198, 203), (10, 70, 33, 180), (0, h, 0, w)]
    windows += [tuple(int(v) for v in (*sorted(rng.choice(h + 1, 2, replace=False)),
                                       *sorted(rng.choice(w + 1, 2, replace=False)))) for _ in range(4)]
    for y0, y1, x0, x1 in windows:
        plan = window_plan((h, w), (y0, y1, x0, x1), infer, norm.risk.patch)
        (ry0, ry1), (rx0, rx1) = plan.read
        out, risk = denoise_window(img[ry0:ry1, rx0:rx1], plan, (h, w), fn, stats=stats, norm=norm, infer=infer,
                                   multiple=mult)
        np.testing.assert_allclose(out, whole[y0:y1, x0:x1], rtol=0, atol=1e-5 * np.ptp(img))
        np.testing.assert_array_equal(risk, whole_risk[y0:y1, x0:x1])


def test_the_region_read_is_bounded_by_the_tiles_and_one_patch(setup):
    img, fn, stats, mult = setup
    infer = InferConfig(tile=32)
    plan = window_plan((96, 203), (40, 50, 100, 110), infer, 64)
    (ry0, ry1), (rx0, rx1) = plan.read
    assert ry0 <= 40 - infer.tile and rx0 <= 100 - infer.tile
    assert rx1 - rx0 <= 10 + 2 * infer.tile + 2 * 64 + 64


@pytest.mark.parametrize("mode", ["adaptive", "local", "global", "dataset", "adaptive-noise-aware",
                                  "adaptive-high-risk-data"])
def test_the_torch_engine_agrees_with_the_numpy_reference(setup, mode):
    from asn2n_dask import RiskThresholds

    img, fn, stats, mult = setup
    aware = mode.endswith("noise-aware")
    norm = NormConfig(mode="adaptive" if aware or mode.startswith("adaptive") else mode,
                      risk=RiskThresholds(estimator="noise-aware" if aware else "reference"))
    if aware:
        stats = channel_stats(img[None], norm)[0]
    infer = InferConfig(tile=32)
    h, w = img.shape
    for win in [(0, h, 0, w), (30, 77, 101, 203)]:
        plan = window_plan((h, w), win, infer, norm.risk.patch)
        (ry0, ry1), (rx0, rx1) = plan.read
        region = img[ry0:ry1, rx0:rx1]
        kw = dict(stats=stats, norm=norm, infer=infer, multiple=mult,
                  dataset_mode={"dataset": "local", "adaptive-high-risk-data": "global"}.get(mode))
        a, ra = denoise_window(region, plan, (h, w), fn, engine="torch", **kw)
        b, rb = denoise_window(region, plan, (h, w), fn, engine="numpy", **kw)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.ptp(img))
        np.testing.assert_array_equal(ra, rb)
        assert a.dtype == np.float32 and ra.dtype == np.int8


def test_test_time_augmentation_turns_every_copy_back():
    import torch

    from asn2n_dask.predict import tile_fn

    tiles = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    tiles[:, 1], tiles[:, 2] = 0.0, 1.0  # offset 0, scale 1: the views are the raw tiles
    same = tile_fn(lambda x: x, "raw", tta=8)(tiles)
    torch.testing.assert_close(same, tiles[:, :1].float())
    ramp = torch.linspace(0, 1, 16)

    def biased(x):  # not equivariant: the copies disagree, and their mean is the mean of the turned ramps
        return x + ramp

    out = tile_fn(biased, "raw", tta=4)(tiles)
    turned = sum(torch.rot90(ramp.expand(16, 16), -k, dims=(-2, -1)) for k in range(4)) / 4
    torch.testing.assert_close(out, tiles[:, :1].float() + turned)


def test_the_cpu_network_runs_channels_last_and_computes_what_the_plain_layout_does():
    import torch

    from asn2n_dask.model import build_unet, channels_last

    torch.manual_seed(0)
    ref = build_unet("tiny").eval()
    net = build_unet("tiny")
    net.load_state_dict(ref.state_dict())
    x = torch.rand(5, 1, 64, 48)
    fn = network_fn(net, "cpu")
    out = fn(x)
    with torch.no_grad():
        want = ref(x)
    assert channels_last("cpu") == torch.backends.mkldnn.is_available()
    if channels_last("cpu"):
        assert net.down[1][0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not net.down[1][0].weight.is_contiguous()
    assert out.is_contiguous() and out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("engine", ["torch", "numpy"])
def test_a_network_that_extrapolates_cannot_leave_the_input_range_by_more_than_the_margin(engine):
    """A network far from its training data may answer anything; the output stays in the
    channel's units, within OUTPUT_MARGIN of its range, while a sane answer is untouched."""
    from asn2n_dask.predict import OUTPUT_MARGIN

    frame = np.random.default_rng(0).poisson(30.0, (64, 64)).astype(np.uint16) + 100
    stats = channel_stats(frame[None])[0]
    infer = InferConfig(tile=32)
    plan = window_plan(frame.shape, (0, 64, 0, 64), infer, 64)
    span = stats.maximum - stats.minimum
    for value, expect in ((1e6, stats.maximum + OUTPUT_MARGIN * span), (-1e6, stats.minimum - OUTPUT_MARGIN * span)):
        wild = lambda x, v=value: torch.full_like(x, v)  # noqa: E731
        out, _ = denoise_window(frame, plan, frame.shape, wild, stats=stats, infer=infer, engine=engine)
        np.testing.assert_allclose(out, expect, rtol=1e-6)
    same = lambda x: x  # noqa: E731  (the identity: every value inside the range)
    out, _ = denoise_window(frame, plan, frame.shape, same, stats=stats, infer=infer, engine=engine)
    assert stats.minimum - 1 < out.min() and out.max() < stats.maximum + 1
