"""The 3-D core: volume twins, the 3-D U-Net, tiled 3-D prediction and training on a volume."""

import numpy as np
import pytest
import torch

from asn2n_dask import InferConfig
from asn2n_dask.blend import blend_window, blend_window_3d, predict_tiled, predict_tiled_volume, reflect_index
from asn2n_dask.config import PRESETS_3D, VolumeTrainConfig
from asn2n_dask.errors import ConfigError, InputError
from asn2n_dask.model import MIN_POOLED_Z, UNet, UNet3d, build_unet3d, pooling_kernels
from asn2n_dask.pairs import make_twins_torch, make_volume_twins
from asn2n_dask.risk import FrameStats
from asn2n_dask.testing import make_twins
from asn2n_dask.train3d import fit_volume, sample_volume_patches, volume_patch, volume_twins_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- twins -----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 16, 16), (3, 17, 23), (1, 2, 9), (2, 3, 5, 12, 10)])
def test_volume_twins_are_the_frame_twins_slice_by_slice(shape):
    x = np.random.default_rng(0).poisson(7.0, shape).astype(np.float64)
    a, b = make_volume_twins(torch.from_numpy(x))
    assert a.shape == b.shape == torch.Size(shape)  # odd Y-X sizes kept
    flat = x.reshape(-1, *shape[-2:])
    for i, frame in enumerate(flat):  # against the numpy reference, one slice at a time
        ra, rb = make_twins(frame)
        np.testing.assert_allclose(a.numpy().reshape(flat.shape)[i], ra, atol=1e-10)
        np.testing.assert_allclose(b.numpy().reshape(flat.shape)[i], rb, atol=1e-10)


def test_volume_twins_do_not_mix_slices():
    x = torch.zeros(5, 16, 16, dtype=torch.float64)
    x[2] = torch.from_numpy(np.random.default_rng(1).normal(size=(16, 16)))
    a, b = make_volume_twins(x)
    for v in (a, b):
        assert v[[0, 1, 3, 4]].abs().max() == 0
        assert v[2].abs().max() > 0.1
    ta, _ = make_twins_torch(x[2])
    torch.testing.assert_close(a[2], ta)


def test_volume_twins_of_pure_noise_are_uncorrelated():
    noise = torch.from_numpy(np.random.default_rng(2).normal(size=(8, 96, 96)))
    a, b = make_volume_twins(noise)
    r = np.corrcoef(a.numpy().ravel(), b.numpy().ravel())[0, 1]
    assert abs(r) < 0.02
    assert 0.4 < float(a.var()) < 0.6 and 0.4 < float(b.var()) < 0.6  # half the variance each
    # nor along Z: slice z of one twin against slice z + 1 of the other
    rz = np.corrcoef(a[:-1].numpy().ravel(), b[1:].numpy().ravel())[0, 1]
    assert abs(rz) < 0.02


@pytest.mark.parametrize("shape", [(16, 16), (3, 1, 16), (3, 16, 1)])
def test_volume_twins_refuse_frames_and_thin_slices(shape):
    with pytest.raises(ValueError, match="Z, Y, X"):
        make_volume_twins(torch.zeros(shape))


# --- the 3-D U-Net ---------------------------------------------------------------------

@pytest.mark.parametrize(("levels", "z", "aniso", "expected"), [
    (4, 32, 1.0, ((2, 2, 2),) * 3),
    (4, 32, 3.0, ((1, 2, 2), (2, 2, 2), (2, 2, 2))),  # Z coarse: Y-X first, then both
    (4, 32, 2.0, ((1, 2, 2), (2, 2, 2), (2, 2, 2))),  # twice as coarse is not "less than twice"
    (4, 32, 1.9, ((2, 2, 2),) * 3),
    (4, 16, 1.0, ((2, 2, 2), (2, 2, 2), (1, 2, 2))),  # 16 -> 8 -> 4, then no fewer than 4 slices
    (3, 8, 1.0, ((2, 2, 2), (1, 2, 2))),
    (4, 7, 1.0, ((1, 2, 2),) * 3),
    (4, 40, 8.0, ((1, 2, 2), (1, 2, 2), (1, 2, 2))),  # Z spacing 8 vs 1, 2, 4: never under twice
])
def test_pooling_kernels_follow_the_rule(levels, z, aniso, expected):
    assert pooling_kernels(levels, z, aniso) == expected


def test_pooling_kernels_keep_at_least_min_slices():
    for z in range(1, 80):
        for aniso in (0.5, 1.0, 1.5, 3.0):
            kernels = pooling_kernels(5, z, aniso)
            nz = 2 ** sum(k[0] == 2 for k in kernels)
            assert nz == 1 or z // nz >= MIN_POOLED_Z


@pytest.mark.parametrize(("z", "y", "x"), [(8, 16, 24), (16, 32, 16), (4, 8, 8)])
def test_unet3d_keeps_the_shape_for_multiples(z, y, x):
    net = UNet3d((4, 8, 8), ((2, 2, 2), (1, 2, 2)))
    assert net.multiple == (2, 4, 4)
    out = net(torch.randn(2, 1, z, y, x))
    assert out.shape == (2, 1, z, y, x)


@pytest.mark.parametrize("z", [1, 2, 3, 5])
def test_unet3d_on_a_few_slices_pools_y_x_only(z):
    net = build_unet3d("small3d", z)
    assert net.kernels == ((1, 2, 2), (1, 2, 2))
    assert net.multiple == (1, 4, 4)
    x = torch.randn(1, 1, z, 16, 16)
    assert net(x).shape == x.shape


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_unet3d_is_scriptable_and_scripts_to_the_same_function():
    net = build_unet3d("tiny3d", 8).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, 8, 16, 16)
    torch.testing.assert_close(scripted(x), net(x))


def test_unet3d_has_the_2d_blocks_names_and_three_times_their_kernel_weights():
    widths = (8, 16, 32)
    n3, n2 = UNet3d(widths), UNet(widths)
    assert list(n3.state_dict()) == list(n2.state_dict())
    for (name, p3), p2 in zip(n3.state_dict().items(), n2.state_dict().values()):
        if name.startswith("head"):
            assert p3.numel() == p2.numel()  # 1x1x1 against 1x1
        else:
            assert p3.numel() == (3 * p2.numel() if p3.dim() == 5 else p2.numel())


def test_presets_3d_have_sane_sizes():
    sizes = {name: n_params(UNet3d(w)) for name, w in PRESETS_3D.items()}
    assert sizes["tiny3d"] < 10_000 < sizes["small3d"] < 1_000_000 < sizes["large3d"] < 20_000_000
    for name in PRESETS_3D:
        net = build_unet3d(name, 32)
        assert len(net.kernels) == len(PRESETS_3D[name]) - 1


def test_unet3d_refuses_bad_kernels():
    with pytest.raises(ValueError, match="pooling kernels"):
        UNet3d((4, 8), ((2, 1, 2),))
    with pytest.raises(ValueError, match="pooling kernels"):
        UNet3d((4, 8, 16), ((1, 2, 2),))


def test_unet3d_overfits_a_tiny_volume():
    torch.manual_seed(0)
    net = build_unet3d("tiny3d", 4)
    z, y, x = np.mgrid[0:4, 0:16, 0:16]
    clean = torch.from_numpy(np.sin(x / 3.0) * np.cos(y / 4.0) + 0.2 * z).float()[None, None]
    noisy = clean + 0.3 * torch.randn_like(clean)
    target = 0.5 * clean - 0.25  # far from the input: the residual path alone cannot reach it
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(net(noisy), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


# --- tiled prediction over a volume ----------------------------------------------------

def loop_oracle_3d(vol: np.ndarray, fn, tile_z: int, cfg: InferConfig) -> np.ndarray:
    """Plain-loop reference: mirror-pad, every tile of the grid, weighted sums."""
    def axis(n, t, s):
        m = (t - s) // 2
        count = max(1, -(-n // s))
        return m, count, np.arange(-m, (count - 1) * s - m + t)

    sz = max(1, int(round(tile_z * (1 - cfg.overlap))))
    geo = [axis(vol.shape[0], tile_z, sz), axis(vol.shape[1], cfg.tile, cfg.stride),
           axis(vol.shape[2], cfg.tile, cfg.stride)]
    idx = [reflect_index(g[2], n) for g, n in zip(geo, vol.shape)]
    pad = vol[np.ix_(*idx)].astype(np.float64)
    acc, wsum = np.zeros(pad.shape), np.zeros(pad.shape)
    w = blend_window_3d(cfg, tile_z).astype(np.float64)
    t = cfg.tile
    for kz in range(geo[0][1]):
        for ky in range(geo[1][1]):
            for kx in range(geo[2][1]):
                z, y, x = kz * sz, ky * cfg.stride, kx * cfg.stride
                tile = torch.from_numpy(pad[z : z + tile_z, y : y + t, x : x + t].astype(np.float32))
                acc[z : z + tile_z, y : y + t, x : x + t] += w * fn(tile[None, None])[0, 0].numpy()
                wsum[z : z + tile_z, y : y + t, x : x + t] += w
    with np.errstate(invalid="ignore"):  # "none": padding outside every core has no weight
        out = acc / wsum
    (mz, _, _), (my, _, _), (mx, _, _) = geo
    return out[mz : mz + vol.shape[0], my : my + vol.shape[1], mx : mx + vol.shape[2]]


def positional(t: torch.Tensor) -> torch.Tensor:
    """Depends on the position inside the tile, so blending matters."""
    rz = torch.linspace(0, 1, t.shape[-3])[:, None, None]
    rx = torch.linspace(0, 1, t.shape[-1])
    return t[:, :1] * 2 + rz + rx


def test_blend_window_3d_is_positive_and_reduces_to_the_2d_one():
    for blend in ("gaussian", "uniform"):
        cfg = InferConfig(tile=16, blend=blend)
        for tz in (1, 2, 5, 8):
            w = blend_window_3d(cfg, tz)
            assert w.shape == (tz, 16, 16) and (w > 0).all() and w.max() <= 1.0
        np.testing.assert_array_equal(blend_window_3d(cfg, 1)[0], blend_window(cfg))
    w = blend_window_3d(InferConfig(tile=16), 8)
    assert w[3:5, 7:9, 7:9].min() == w.max()  # peak at the centre
    assert w[0, 0, 0] == InferConfig().weight_floor


@pytest.mark.parametrize("blend", ["gaussian", "uniform", "none"])
@pytest.mark.parametrize(("shape", "tile_z"), [((7, 30, 21), 4), ((1, 20, 20), 1), ((3, 17, 9), 8), ((12, 8, 40), 6)])
def test_identity_network_returns_the_volume(blend, shape, tile_z):
    vol = np.random.default_rng(sum(shape)).normal(500, 100, shape).astype(np.float32)
    out = predict_tiled_volume(vol, lambda t: t, tile_z=tile_z, config=InferConfig(tile=8, blend=blend, batch=5))
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, vol, rtol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "uniform", "none"])
def test_constant_volume_through_a_constant_network_comes_back_exactly(blend):
    vol = np.full((9, 20, 13), 123.25, np.float32)
    out = predict_tiled_volume(vol, lambda t: t * 0 + 7.5, tile_z=4, config=InferConfig(tile=8, blend=blend))
    np.testing.assert_array_equal(out, 7.5)
    out = predict_tiled_volume(vol, lambda t: t, tile_z=4, config=InferConfig(tile=8, blend=blend))
    np.testing.assert_array_equal(out, vol)


@pytest.mark.parametrize("blend", ["gaussian", "uniform", "none"])
def test_tiled_volume_equals_the_plain_loop_reference(blend):
    vol = np.random.default_rng(3).normal(size=(10, 19, 26)).astype(np.float32)
    cfg = InferConfig(tile=8, blend=blend, batch=3)
    out = predict_tiled_volume(vol, positional, tile_z=4, config=cfg)
    np.testing.assert_allclose(out, loop_oracle_3d(vol, positional, 4, cfg), rtol=1e-5, atol=1e-5)


def test_one_slice_tiles_equal_the_2d_prediction_slice_by_slice():
    vol = np.random.default_rng(4).normal(size=(3, 21, 30)).astype(np.float32)
    cfg = InferConfig(tile=8, batch=4)
    out = predict_tiled_volume(vol, positional, tile_z=1, config=cfg)
    for z in range(3):
        ref = predict_tiled(vol[z], lambda t: positional(t[:, :, None])[:, :, 0], config=cfg)
        np.testing.assert_allclose(out[z], ref, rtol=1e-6, atol=1e-6)


def test_identity_result_does_not_depend_on_the_tile_sizes():
    vol = np.random.default_rng(5).normal(size=(11, 24, 18)).astype(np.float32)
    outs = [predict_tiled_volume(vol, lambda t: t, tile_z=tz, config=InferConfig(tile=ty))
            for tz in (1, 2, 4, 16) for ty in (8, 16, 32)]
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-6)


def test_co_registered_volumes_reach_the_network_together():
    vol = np.random.default_rng(6).normal(size=(2, 5, 12, 12)).astype(np.float32)
    out = predict_tiled_volume(vol, lambda t: t[:, :1] - t[:, 1:], tile_z=2, config=InferConfig(tile=8))
    np.testing.assert_allclose(out, vol[0] - vol[1], rtol=1e-5, atol=1e-5)


def test_tiled_volume_refuses_tiles_the_network_cannot_take():
    vol = np.zeros((4, 16, 16), np.float32)
    with pytest.raises(ConfigError, match="Z tile must be a multiple of 2"):
        predict_tiled_volume(vol, lambda t: t, tile_z=3, multiple=(2, 4, 4))
    with pytest.raises(ConfigError, match="tile must be a multiple of 16"):
        predict_tiled_volume(vol, lambda t: t, tile_z=4, config=InferConfig(tile=8), multiple=(1, 16, 16))
    with pytest.raises(ConfigError, match="between 1 and"):
        predict_tiled_volume(vol, lambda t: t, tile_z=0)


def test_a_3d_network_runs_through_tiled_prediction():
    net = build_unet3d("tiny3d", 8).eval()
    vol = np.random.default_rng(7).normal(size=(8, 20, 20)).astype(np.float32)
    with torch.no_grad():
        out = predict_tiled_volume(vol, net, tile_z=8, config=InferConfig(tile=16), multiple=net.multiple)
    assert out.shape == vol.shape and np.isfinite(out).all()


# --- training on a volume --------------------------------------------------------------

def test_volume_train_config_checks_and_round_trips():
    cfg = VolumeTrainConfig(preset="tiny3d", patch=[4, 16, 16], steps=3)
    assert cfg.patch == (4, 16, 16)
    assert VolumeTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="multiple of 4"):
        VolumeTrainConfig(preset="small3d", patch=(8, 30, 32))
    with pytest.raises(ConfigError, match="anisotropy"):
        VolumeTrainConfig(anisotropy=0.0)
    with pytest.raises(ConfigError, match="global scale"):
        VolumeTrainConfig(norm={"mode": "adaptive"})
    with pytest.raises(ConfigError, match="unknown"):
        VolumeTrainConfig.from_dict({"tile": 3})


@pytest.mark.parametrize(("shape", "patch", "aniso", "expected"), [
    ((48, 256, 256), (16, 64, 64), 1.5, (16, 64, 64)),
    ((5, 40, 50), (16, 64, 64), 1.0, (5, 40, 48)),  # Z cut to the volume, Y-X to multiples of 4
    ((9, 64, 64), (16, 64, 64), 1.0, (8, 64, 64)),  # 9 slices pool Z once: a multiple of 2
])
def test_volume_patch_fits_the_volume_and_the_network(shape, patch, aniso, expected):
    cfg = VolumeTrainConfig(preset="small3d", patch=patch, anisotropy=aniso)
    got = volume_patch(shape, cfg)
    assert got == expected
    net = build_unet3d("small3d", got[0], aniso)
    assert all(p % m == 0 for p, m in zip(got, net.multiple))


def test_sampled_patches_are_sub_volumes():
    vol = np.arange(6 * 10 * 12, dtype=np.uint16).reshape(6, 10, 12)
    p = sample_volume_patches(vol, (3, 4, 5), 7, np.random.default_rng(0))
    assert p.shape == (7, 3, 4, 5) and p.dtype == np.float64
    for q in p:
        z, r = divmod(int(q[0, 0, 0]), 120)
        y, x = divmod(r, 12)
        np.testing.assert_array_equal(q, vol[z : z + 3, y : y + 4, x : x + 5])
    with pytest.raises(ValueError, match="do not fit"):
        sample_volume_patches(vol, (7, 4, 5), 1, np.random.default_rng(0))


def test_patches_from_several_volumes_come_from_each_in_proportion():
    small = np.zeros((4, 8, 8), np.uint16)
    large = np.ones((4, 8, 24), np.uint16)  # three times the voxels
    p = sample_volume_patches([small, large], (2, 4, 4), 4000, np.random.default_rng(0))
    share = float((p[:, 0, 0, 0] == 1).mean())
    assert abs(share - 0.75) < 0.03
    assert all(len(np.unique(q)) == 1 for q in p)  # each patch from one volume
    with pytest.raises(ValueError, match="do not fit"):
        sample_volume_patches([large, small[:1]], (2, 4, 4), 1, np.random.default_rng(0))


def test_twin_batch_is_normalised_and_shaped_for_the_network():
    patches = np.full((3, 2, 8, 8), 150.0)
    a, b = volume_twins_batch(patches, FrameStats(100.0, 200.0), np.random.default_rng(0))
    assert a.shape == b.shape == (3, 1, 2, 8, 8) and a.dtype == torch.float32
    torch.testing.assert_close(a, torch.full_like(a, 0.5))
    torch.testing.assert_close(b, torch.full_like(b, 0.5))


def noisy_volume(seed: int = 0) -> np.ndarray:
    z, y, x = np.mgrid[0:8, 0:32, 0:32]
    clean = 100 + 60 * (np.sin(x / 4.0) * np.cos(y / 5.0) > 0.3) + 5 * z
    return np.random.default_rng(seed).poisson(clean).astype(np.uint16)


def test_fit_volume_reduces_the_loss():
    cfg = VolumeTrainConfig(preset="tiny3d", patch=(8, 16, 16), batch=2, steps=40, lr=3e-3)
    fit = fit_volume(noisy_volume(), cfg)
    assert len(fit.losses) == 40 and fit.patch == (8, 16, 16)
    assert np.mean(fit.losses[-8:]) < 0.8 * np.mean(fit.losses[:8])
    assert not fit.net.training


def test_fit_volume_is_seeded():
    cfg = VolumeTrainConfig(preset="tiny3d", patch=(4, 16, 16), batch=2, steps=2)
    a, b = fit_volume(noisy_volume(), cfg), fit_volume(noisy_volume(), cfg)
    assert a.losses == b.losses
    for p, q in zip(a.net.parameters(), b.net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_fit_volume_trains_on_several_time_points_with_their_joint_range():
    cfg = VolumeTrainConfig(preset="tiny3d", patch=(4, 16, 16), batch=2, steps=2)
    dim, bright = noisy_volume(0), noisy_volume(1) + 1000
    fit = fit_volume(np.stack([dim, bright]), cfg)
    assert fit.stats.lo <= dim.min() + 1 and fit.stats.hi >= 1000  # the range spans both volumes
    same = fit_volume([dim, bright], cfg)
    assert same.losses == fit.losses
    one = fit_volume(dim, cfg)
    assert one.stats.hi < 1000


@pytest.mark.parametrize(("shape", "match"), [((32, 32), "three axes"), ((4, 6, 32), "too small in Y-X")])
def test_fit_volume_refuses_what_it_cannot_train_on(shape, match):
    with pytest.raises(InputError, match=match):
        fit_volume(np.zeros(shape), VolumeTrainConfig(preset="tiny3d", patch=(4, 16, 16), steps=1))


def test_fit_volume_refuses_nan():
    vol = noisy_volume().astype(np.float32)
    vol[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_volume(vol, VolumeTrainConfig(preset="tiny3d", patch=(4, 16, 16), steps=1))
