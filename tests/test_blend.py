import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asn2n_dask import InferConfig
from asn2n_dask.blend import blend_window, predict_tiled, tile_grid


def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def loop_oracle(img: np.ndarray, fn, cfg: InferConfig) -> np.ndarray:
    """Plain-loop reference of tiled weighted blending."""
    g = tile_grid(img.shape, cfg.tile, cfg.stride)
    pad = np.pad(img.astype(np.float32), tuple(zip(g.pad_before, g.pad_after)), mode="reflect")
    acc = np.zeros(pad.shape)
    wsum = np.zeros(pad.shape)
    w = blend_window(cfg)
    t = cfg.tile
    for oy in g.origins(0):
        for ox in g.origins(1):
            y, x = oy + g.margin, ox + g.margin
            tile = torch.from_numpy(pad[y : y + t, x : x + t].copy())[None, None]
            acc[y : y + t, x : x + t] += w * fn(tile)[0, 0].numpy()
            wsum[y : y + t, x : x + t] += w
    h, wd = img.shape
    return (acc / np.maximum(wsum, 1e-30))[g.margin : g.margin + h, g.margin : g.margin + wd]


@pytest.mark.parametrize("blend", ["gaussian", "uniform", "none"])
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.sampled_from([8, 16, 32]),
       overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75]))
@settings(max_examples=25, deadline=None)
def test_identity_model_returns_the_input_for_any_size(blend, h, w, tile, overlap):
    img = np.random.default_rng(h * w).normal(size=(h, w)).astype(np.float32) * 100 + 500
    out = predict_tiled(img, identity, config=InferConfig(tile=tile, overlap=overlap, blend=blend))
    np.testing.assert_allclose(out, img, rtol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "uniform", "none"])
def test_constant_image_blends_to_itself(blend):
    img = np.full((70, 45), 123.25, np.float32)
    out = predict_tiled(img, lambda t: t * 0 + 7.5, config=InferConfig(tile=16, blend=blend))
    np.testing.assert_allclose(out, 7.5, rtol=1e-6)


@pytest.mark.parametrize("shape", [(50, 77), (64, 64), (5, 200)])
def test_every_pixel_is_covered_and_none_uses_exactly_one_tile(shape):
    cfg = InferConfig(tile=16, overlap=0.5, blend="none")
    g = tile_grid(shape, cfg.tile, cfg.stride)
    count = np.zeros(shape, int)
    cover = np.zeros(shape, int)
    w = blend_window(cfg)
    for oy in g.origins(0):
        for ox in g.origins(1):
            ys = slice(max(oy, 0), min(oy + 16, shape[0]))
            xs = slice(max(ox, 0), min(ox + 16, shape[1]))
            cover[ys, xs] += 1
            wt = w[ys.start - oy : ys.stop - oy, xs.start - ox : xs.stop - ox]
            count[ys, xs] += (wt > 0).astype(int)
    assert (cover >= 1).all()
    assert (count == 1).all()


def test_fold_blending_equals_the_plain_loop_reference():
    img = np.random.default_rng(0).normal(size=(61, 83)).astype(np.float32)

    def fn(t: torch.Tensor) -> torch.Tensor:  # position-dependent, so blending matters
        ramp = torch.linspace(0, 1, t.shape[-1])
        return t * 2 + ramp

    for blend in ("gaussian", "uniform", "none"):
        cfg = InferConfig(tile=16, blend=blend, batch=5)
        np.testing.assert_allclose(predict_tiled(img, fn, config=cfg), loop_oracle(img, fn, cfg), rtol=1e-5,
                                   atol=1e-5)


def test_tiles_are_anchored_to_the_frame_origin():
    a = tile_grid((1000, 300), 128, 64)
    b = tile_grid((4000, 77), 128, 64)
    np.testing.assert_array_equal(a.origins(0), b.origins(0)[: len(a.origins(0))])
    assert a.origins(0)[0] == -32


def test_gaussian_window_keeps_a_floor():
    w = blend_window(InferConfig(tile=64))
    assert w.max() == pytest.approx(1.0, abs=0.02)
    assert w.min() == pytest.approx(1e-3)
