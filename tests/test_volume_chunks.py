"""3-D chunked denoising: a window of a volume (Z, Y, X) from the region its plan reads,
chunked along Z as well as Y and X, equals the volume denoised whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asn2n_dask import InferConfig
from asn2n_dask.blend import predict_tiled_volume
from asn2n_dask.config import NormConfig, RiskThresholds
from asn2n_dask.errors import ConfigError
from asn2n_dask.model import build_unet3d
from asn2n_dask.pairs import make_volume_twins
from asn2n_dask.plan import AxisPlan, WindowPlan, Windows, axis_stride
from asn2n_dask.predict import VOLUME_RISK, clamp_output, denoise_window_3d, network_fn, volume_tile_fn
from asn2n_dask.risk import FrameStats, assess_risk
from asn2n_dask.stats import ChannelStats, channel_stats

INFER = InferConfig(tile=16, batch=8)
TILE_Z = 8
SHAPE = (12, 40, 48)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def net():
    """A random tiny 3-D U-Net (Z pooled once: sizes multiples of (2, 2, 2)) whose
    residual is made large enough to show: about 20 input units on these volumes."""
    torch.manual_seed(0)
    net = build_unet3d("tiny3d", TILE_Z).eval()
    with torch.no_grad():
        net.head.bias.zero_()
        net.head.weight.mul_(10.0)
    return net


def smooth_volume(dz: float = 2.0) -> np.ndarray:
    z, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    return (200 + dz * z + 30 * np.sin(x / 6) * np.cos(y / 5)).astype(np.float32)


def noisy_volume() -> np.ndarray:
    return np.random.default_rng(0).poisson(smooth_volume(5.0)).astype(np.uint16)


def stats_of(vol: np.ndarray) -> ChannelStats:
    return channel_stats(vol[None], NormConfig())[0]


def axis_plans(shape: tuple[int, ...], chunks: tuple[int, ...], tile_z: int = TILE_Z,
               infer: InferConfig = INFER, patch: int = 1) -> list[AxisPlan]:
    """The Z, Y and X axes of a 3-D run, as :func:`asn2n_dask.plan.make_plan` makes them
    (without its smallest-chunk rule, so that 12 slices can be cut in several chunks), with
    risk patches of ``patch`` pixels along Y and X."""
    tiles = [(tile_z, axis_stride(tile_z, infer.overlap), 1), (infer.tile, infer.stride, patch),
             (infer.tile, infer.stride, patch)]
    return [AxisPlan(a, n, min(c, n), *t) for a, n, c, t in zip("ZYX", shape, chunks, tiles)]


def window_plans(shape: tuple[int, ...], chunks: tuple[int, ...], **kw) -> list[WindowPlan]:
    """Each chunk's window plan, as :meth:`asn2n_dask.plan.Plan.window_plan` builds it."""
    axes = axis_plans(shape, chunks, **kw)
    plans = []
    for w in Windows(shape, tuple(a.chunk for a in axes)):
        r = [a.region(w[2 * i], w[2 * i + 1]) for i, a in enumerate(axes)]
        plans.append(WindowPlan(w, tuple(x[0] for x in r), tuple(x[1] for x in r), tuple(x[2] for x in r)))
    return plans


def denoise_chunked(vol: np.ndarray, chunks: tuple[int, ...], fn, stats: ChannelStats, *, multiple=(1, 1, 1),
                    reads: list | None = None, risk: RiskThresholds | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The volume denoised chunk by chunk, each from only the region its plan reads, stitched."""
    out = np.full(vol.shape, np.nan, np.float32)
    labels = np.full(vol.shape, -1, np.int8)
    for wp in window_plans(vol.shape, chunks, patch=1 if risk is None else risk.patch):
        if reads is not None:
            reads.append((wp.window, wp.read))
        region = vol[tuple(slice(a, b) for a, b in wp.read)].copy()
        d, r = denoise_window_3d(region, wp, vol.shape, fn, stats=stats, infer=INFER, tile_z=TILE_Z,
                                 multiple=multiple, risk=risk)
        where = tuple(slice(wp.window[2 * i], wp.window[2 * i + 1]) for i in range(3))
        assert d.shape == r.shape == vol[where].shape and d.dtype == np.float32 and r.dtype == np.int8
        out[where], labels[where] = d, r
    return out, labels


def half_dark_volume() -> np.ndarray:
    """The noisy volume with a dark, flat band along X whose width grows with Z (weak-background
    patches beside safe ones, changing from slice to slice) and a few bright puncta in it."""
    vol = noisy_volume().astype(np.float32)
    rng = np.random.default_rng(2)
    for z in range(SHAPE[0]):
        vol[z, :, : 8 + 2 * z] = rng.poisson(20, (SHAPE[1], 8 + 2 * z))
    vol[3, 4, 2] = vol[9, 30, 5] = 900
    return vol.astype(np.uint16)


def slice_classes(vol: np.ndarray, stats: ChannelStats, thr: RiskThresholds) -> np.ndarray:
    """Each voxel's risk class: its slice classified whole, as a frame, each patch's class spread
    over its pixels."""
    maps = np.stack([assess_risk(s, thresholds=thr, stats=stats.risk_scale(thr)).risk_map for s in vol])
    ys, xs = np.arange(vol.shape[1]) // thr.patch, np.arange(vol.shape[2]) // thr.patch
    return maps[:, ys][:, :, xs]


@pytest.mark.parametrize("chunks", [(5, 16, 24), (7, 13, 20), (12, 40, 48)])
def test_a_volumes_risk_labels_are_its_slices_classes_whatever_the_chunks(net, chunks):
    vol = half_dark_volume()
    stats = stats_of(vol)
    thr = RiskThresholds(patch=8, estimator="reference")
    fn = network_fn(net, "cpu")
    out, labels = denoise_chunked(vol, chunks, fn, stats, multiple=net.multiple, risk=thr)
    want = slice_classes(vol, stats, thr)
    assert {0, 1} <= set(np.unique(want).tolist())  # safe and weak-background patches both
    assert (want[0] != want[-1]).any()  # and they move along Z
    np.testing.assert_array_equal(labels, want)
    # the labels say where patch-wise normalisation would harm; the volume is denoised as without them
    plain, zeros = denoise_chunked(vol, chunks, fn, stats, multiple=net.multiple)
    np.testing.assert_array_equal(out, plain)
    assert (zeros == VOLUME_RISK).all()


def test_risk_labels_need_a_plan_with_whole_risk_patches(net):
    vol = half_dark_volume()
    (wp,) = [w for w in window_plans(SHAPE, (12, 16, 24)) if w.window[2] == 16][:1]  # read from row 16 - halo
    region = vol[tuple(slice(a, b) for a, b in wp.read)]
    with pytest.raises(ValueError, match="whole 8-pixel risk patches"):
        denoise_window_3d(region, wp, SHAPE, network_fn(net, "cpu"), stats=stats_of(vol), infer=INFER,
                          tile_z=TILE_Z, multiple=net.multiple, risk=RiskThresholds(patch=8, estimator="reference"))


@pytest.mark.parametrize("chunks", [(5, 40, 48), (7, 16, 20), (3, 13, 48), (12, 40, 48)])
def test_a_volume_chunked_along_z_y_and_x_equals_the_volume_denoised_whole(net, chunks):
    vol = noisy_volume()
    stats = stats_of(vol)
    fn = network_fn(net, "cpu")
    whole, _ = denoise_chunked(vol, SHAPE, fn, stats, multiple=net.multiple)
    assert np.abs(whole - vol).mean() > 5  # the network changes the volume: there is something to compare
    out, risk = denoise_chunked(vol, chunks, fn, stats, multiple=net.multiple)
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5 * float(np.ptp(vol)))
    assert (risk == VOLUME_RISK).all()


def test_the_whole_volume_window_is_the_tiled_prediction_of_the_normalised_volume(net):
    vol = noisy_volume()
    stats = stats_of(vol)
    fn = network_fn(net, "cpu")
    (wp,) = window_plans(SHAPE, SHAPE)
    got, risk = denoise_window_3d(vol, wp, SHAPE, fn, stats=stats, infer=INFER, tile_z=TILE_Z, multiple=net.multiple)
    lo, span = stats.norm.lo, stats.norm.span
    pred = predict_tiled_volume(((vol - lo) / span).astype(np.float32), volume_tile_fn(fn, INFER.infer_on),
                                tile_z=TILE_Z, config=INFER, multiple=net.multiple)
    want = clamp_output(pred.astype(np.float64) * span + lo, stats)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.ptp(vol)))
    assert risk.shape == SHAPE and (risk == 0).all()


def test_the_network_sees_each_tiles_twins_and_their_outputs_are_averaged():
    tiles = torch.from_numpy(np.random.default_rng(1).normal(size=(3, 1, 4, 8, 8)))
    seen = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x * 2

    out = volume_tile_fn(net, "twins")(tiles)
    a, b = make_volume_twins(tiles.double())
    (x,) = seen
    assert x.shape == (6, 1, 4, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.cat([a, b]).float())
    torch.testing.assert_close(out, (a + b).float())  # the mean of 2a and 2b
    assert not torch.allclose(out, 2 * tiles.float(), atol=1e-3)  # twins, not the tile itself


@pytest.mark.parametrize("tta", [1, 2, 4, 8])
def test_turned_and_flipped_views_are_turned_back_before_averaging(tta):
    tiles = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 1, 3, 8, 8))).float()
    z_ramp = torch.arange(3.0).view(1, 1, 3, 1, 1)
    calls = []

    def net(x: torch.Tensor) -> torch.Tensor:
        # the identity in Y-X (a view not turned back would not give the tile) plus a ramp along Z (which a
        # flip of Z would reverse)
        calls.append(1)
        return x + z_ramp

    out = volume_tile_fn(net, "raw", tta)(tiles)
    assert len(calls) == tta
    torch.testing.assert_close(out, tiles + z_ramp)


@pytest.mark.parametrize("chunks", [SHAPE, (5, 16, 20)])
def test_a_constant_volume_comes_back_constant_in_input_units(chunks):
    vol = np.full(SHAPE, 250, np.uint16)
    own = stats_of(vol)  # a range of one value: the output is held to it
    out, _ = denoise_chunked(vol, chunks, lambda t: t, own)
    np.testing.assert_array_equal(out, 250.0)
    wide = ChannelStats(norm=FrameStats(100.0, 500.0), risk=FrameStats(100.0, 500.0), minimum=90.0, maximum=510.0,
                        count=vol.size)
    out, _ = denoise_chunked(vol, chunks, lambda t: t, wide)  # identity network: the input back
    np.testing.assert_allclose(out, 250.0, rtol=1e-6)
    out, _ = denoise_chunked(vol, chunks, lambda t: t * 0 + 0.25, wide)  # 0.25 of the range above its low end
    np.testing.assert_allclose(out, 200.0, rtol=1e-6)


def test_no_seam_where_z_chunks_meet(net):
    vol = smooth_volume()
    stats = stats_of(vol)
    fn = network_fn(net, "cpu")
    out, _ = denoise_chunked(vol, (6, 40, 48), fn, stats, multiple=net.multiple)
    step = np.abs(np.diff(out.astype(np.float64), axis=0)).mean(axis=(1, 2))  # slice z to z + 1
    sz = axis_stride(TILE_Z, INFER.overlap)
    # the border is between slices 5 and 6; elsewhere at the same place in the Z tile grid
    # (the blend of tiles repeats every Z stride): slices 1 to 2 and 9 to 10
    same_phase = [z for z in range(len(step)) if z % sz == 5 % sz and z != 5]
    assert same_phase == [1, 9]
    elsewhere = float(np.mean(step[same_phase]))
    assert abs(step[5] - elsewhere) <= 0.1 * elsewhere
    # the same volume denoised as two volumes, cut where the chunks meet: a seam
    halves = [denoise_chunked(part, part.shape, fn, stats, multiple=net.multiple)[0] for part in (vol[:6], vol[6:])]
    seam = float(np.abs(halves[1][0] - halves[0][-1]).mean())
    assert abs(seam - elsewhere) > 0.1 * elsewhere


def test_regions_read_stay_within_the_plans_halo_along_every_axis(net):
    vol = noisy_volume()
    reads: list = []
    chunks = (5, 16, 20)
    denoise_chunked(vol, chunks, network_fn(net, "cpu"), stats_of(vol), multiple=net.multiple, reads=reads)
    halo = [a.halo for a in axis_plans(SHAPE, chunks)]
    assert halo[0] > 0  # halos along Z
    assert len(reads) == 3 * 3 * 3
    for window, read in reads:
        for i, (r0, r1) in enumerate(read):
            w0, w1 = window[2 * i], window[2 * i + 1]
            assert max(0, w0 - halo[i]) <= r0 <= w0 and w1 <= r1 <= min(SHAPE[i], w1 + halo[i])
    assert any(r[0][0] < w[0] for w, r in reads) and any(r[0][1] > w[1] for w, r in reads)  # Z halos are read


def test_a_window_refuses_a_region_or_tiles_that_do_not_match(net):
    vol = np.zeros(SHAPE, np.float32)
    stats = stats_of(vol + np.arange(SHAPE[2], dtype=np.float32))
    wp = window_plans(SHAPE, (6, 40, 48))[0]
    region = vol[tuple(slice(a, b) for a, b in wp.read)]
    with pytest.raises(ValueError, match="the plan reads"):
        denoise_window_3d(region[1:], wp, SHAPE, lambda t: t, stats=stats, infer=INFER, tile_z=TILE_Z)
    with pytest.raises(ValueError, match="not tiles of 4"):  # a plan made for another Z tile
        denoise_window_3d(region, wp, SHAPE, lambda t: t, stats=stats, infer=INFER, tile_z=4)
    with pytest.raises(ConfigError, match="Z tile must be a multiple of 2"):
        denoise_window_3d(region, wp, SHAPE, lambda t: t, stats=stats, infer=INFER, tile_z=5, multiple=net.multiple)


# --- the chunked pipeline with a 3-D model -----------------------------------------------

class VolumeModel:
    """A stand-in for a saved 3-D model, as the pipeline uses one: ``dims`` 3, the Z of its
    training sub-volumes (``volume.patch``), one 3-D network per channel, trained on data of
    the range ``trained``."""

    dims = 3

    def __init__(self, net, trained):
        from types import SimpleNamespace

        self.volume = SimpleNamespace(patch=(TILE_Z, 16, 16))
        self.channels = [SimpleNamespace(name="0", net=net, risk_estimator=None)]
        self.train = SimpleNamespace(norm=NormConfig(mode="global", risk=RiskThresholds(patch=16)))
        self.n_channels = 1
        self.trained = trained

    def method(self, channel):
        from asn2n_dask.method import ChannelMethod

        return ChannelMethod.of(self.train.norm, self.trained, risk_estimator="reference", dataset_mode="global",
                                spatial_dims=3)


@pytest.fixture
def volume_run(tmp_path, net, monkeypatch):
    """A (T=1, C=1, Z=36, Y=40, X=48) OME-Zarr, a model folder and the 3-D model it loads as."""
    import asn2n_dask.checkpoint as checkpoint
    from asn2n_dask.io import ImageMeta, write_image

    z, y, x = np.mgrid[0:36, 0:40, 0:48]
    clean = 200 + 3 * z + 30 * np.sin(x / 6) * np.cos(y / 5)
    clean[:, :, :16] = 20  # a dark band: weak-background patches in every slice
    vol = np.random.default_rng(1).poisson(clean).astype(np.uint16)[None, None]
    write_image(tmp_path / "vol.zarr", vol, ImageMeta(axes="TCZYX", format="ome-zarr"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text('{"dims": 3}')
    model = VolumeModel(net, channel_stats(vol[0], NormConfig(mode="global"))[0].norm)  # trained on this volume
    monkeypatch.setattr(checkpoint, "load_model", lambda path, allow_unfinished=False: model)
    return tmp_path, vol, model


def test_a_3d_model_denoises_an_ome_zarr_chunked_along_z_y_and_x_as_the_whole_volume(volume_run):
    import zarr

    from asn2n_dask.pipeline import RunOptions, make_plan, run_pipeline
    from asn2n_dask.source import open_source

    d, vol, model = volume_run
    src = open_source(d / "vol.zarr")
    opts = RunOptions(infer=INFER, chunks=(16, 16, 24))
    s = run_pipeline(src, d / "out.zarr", d / "model", options=opts, client="sync")
    assert s.computed == s.tasks == 3 * 3 * 2 and s.plan["chunks"] == [1, 1, 16, 16, 24]
    assert s.plan["halo"][0] > 0  # chunks read a halo along Z
    root = zarr.open_group(str(d / "out.zarr"), mode="r")
    out = root["0"][...]
    assert out.shape == vol.shape and out.dtype == np.float32 and root["0"].chunks == (1, 1, 16, 16, 24)
    labels = root["labels/risk-0/0"][...]
    assert labels.shape == vol.shape[:1] + vol.shape[2:]
    # each slice's patches classified as a frame's, with the estimator the model resolved for the channel
    thr = model.method(0).norm(model.train.norm).risk
    want_labels = slice_classes(vol[0, 0], channel_stats(vol[0], model.train.norm)[0], thr)
    assert {0, 1} <= set(np.unique(want_labels).tolist())
    np.testing.assert_array_equal(labels[0], want_labels)
    # the whole volume in one window, on the channel's statistics
    stats = channel_stats(vol[0], NormConfig(mode="global"))[0]
    plan = make_plan(src, options=RunOptions(infer=INFER), patch=16, spatial="ZYX", tile_z=TILE_Z)
    assert plan.n_tasks == 1
    want, _ = denoise_window_3d(vol[0, 0], plan.window_plan(0), vol.shape[2:], network_fn(model.channels[0].net, "cpu"),
                                stats=stats, infer=INFER, tile_z=TILE_Z, multiple=model.channels[0].net.multiple)
    assert np.abs(want - vol[0, 0]).mean() > 5
    np.testing.assert_allclose(out[0, 0], want, rtol=0, atol=1e-5 * float(np.ptp(vol)))
    again = run_pipeline(src, d / "out.zarr", d / "model", options=opts, client="sync")
    assert again.already_complete and again.computed == 0


def test_a_3d_output_begun_before_its_labels_held_risk_classes_is_not_resumed(volume_run):
    """An output whose record lacks the risk patch (label images 0 throughout, as 3-D runs wrote
    them before) is refused, not completed into a label image of two kinds."""
    import zarr

    from asn2n_dask.errors import OutputError
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    d, _, _ = volume_run
    src = open_source(d / "vol.zarr")
    opts = RunOptions(infer=INFER, chunks=(16, 16, 24))
    run_pipeline(src, d / "out.zarr", d / "model", options=opts, client="sync")
    root = zarr.open_group(str(d / "out.zarr"), mode="r+")
    asn = dict(root.attrs["asn2n"])
    assert asn["job"]["risk_patch"] == 16
    asn["job"] = {k: v for k, v in asn["job"].items() if k != "risk_patch"}
    asn["fingerprint"] = "from an earlier version"
    root.attrs["asn2n"] = asn
    with pytest.raises(OutputError, match=r"holds a different run \(its options differ \(risk_patch\)\)"):
        run_pipeline(src, d / "out.zarr", d / "model", options=opts, client="sync")


def test_a_3d_model_is_refused_a_run_over_frames(volume_run):
    from asn2n_dask.errors import ModelError
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    d, _, _ = volume_run
    with pytest.raises(ModelError, match="3-D .* over ZYX, not YX"):
        run_pipeline(open_source(d / "vol.zarr"), d / "out.zarr", d / "model", options=RunOptions(infer=INFER),
                     client="sync", spatial="YX")
    assert not (d / "out.zarr").exists()
    from types import SimpleNamespace

    from asn2n_dask.pipeline import parse_spatial

    flat, by_z = SimpleNamespace(dims=2), SimpleNamespace(dims=3, volume=SimpleNamespace(depth_axis="Z"))
    by_t = SimpleNamespace(dims=3, volume=SimpleNamespace(depth_axis="T"))
    assert [parse_spatial(None, m, "m") for m in (flat, by_z, by_t)] == ["YX", "ZYX", "TYX"]
    with pytest.raises(ModelError, match="2-D .* over YX, not ZYX"):
        parse_spatial("ZYX", flat, "m")
    with pytest.raises(ModelError, match=r"3-D \(depth axis T\) .* over TYX, not ZYX"):
        parse_spatial("ZYX", by_t, "m")
