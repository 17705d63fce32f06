import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asn2n_dask import NormConfig
from asn2n_dask.normalize import denormalize, interp_matrix, norm_params, normalize
from asn2n_dask.risk import assess_risk

MODES = ["adaptive", "local", "global", "dataset"]

images = hnp.arrays(
    np.float64,
    st.tuples(st.integers(4, 150), st.integers(4, 150)),
    elements=st.floats(0, 60000, allow_nan=False, width=32),
)


@given(images, st.sampled_from(MODES))
@settings(max_examples=60, deadline=None)
def test_normalise_then_invert_is_the_identity(img, mode):
    p = norm_params(img, config=NormConfig(mode=mode))
    back = denormalize(normalize(img, p), p)
    tol = 1e-6 * max(1.0, np.abs(img).max())
    np.testing.assert_allclose(back, img, atol=tol + 1e-7 * np.abs(p.scale).max() * 10)
    assert (p.scale > 0).all()


def scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 1, (192, 192))
    img[:, 128:] += 300 + 200 * np.sin(np.arange(64) / 2.0)
    return img


def test_adaptive_uses_the_global_scale_on_risky_patches_and_local_on_safe():
    img = scene()
    cfg = NormConfig(mode="adaptive")
    risk = assess_risk(img)
    assert (risk.risk_map[:, 0] != 0).all() and (risk.risk_map[:, 2] == 0).all()
    ad = norm_params(img, config=cfg, risk=risk)
    gl = norm_params(img, config=NormConfig(mode="global"))
    lo = norm_params(img, config=NormConfig(mode="local"))
    # deep inside the risky region the adaptive transform is the global one
    np.testing.assert_allclose(ad.scale[:96, :32], gl.scale[:96, :32])
    np.testing.assert_allclose(ad.offset[:96, :32], gl.offset[:96, :32])
    # inside the safe region it is the local one
    np.testing.assert_allclose(ad.scale[:, 160:], lo.scale[:, 160:])
    # local mode stretches the dark background far more than adaptive does
    assert normalize(img, lo)[:, :64].std() > 5 * normalize(img, ad)[:, :64].std()


def test_the_transform_is_smooth_without_block_edges():
    p = norm_params(scene(), config=NormConfig(mode="adaptive"))
    for field in (p.scale, p.offset):
        steps = np.abs(np.diff(field, axis=1))
        # the largest pixel-to-pixel change is a small share of the total change
        assert steps.max() < 0.05 * (field.max() - field.min())


@pytest.mark.parametrize("n,patch", [(1, 64), (64, 64), (65, 64), (200, 64), (10, 4)])
def test_interpolation_rows_sum_to_one(n, patch):
    m = interp_matrix(n, patch)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert (m >= 0).all()


def test_dataset_mode_follows_the_given_decision():
    img = scene()
    g = norm_params(img, config=NormConfig(mode="dataset"), dataset_mode="global")
    l_ = norm_params(img, config=NormConfig(mode="dataset"), dataset_mode="local")
    assert g.mode == "global" and l_.mode == "local"
    assert np.ptp(g.scale) == 0 and np.ptp(l_.scale) > 0


def test_on_high_risk_data_adaptive_shifts_safe_patches_but_never_stretches_them():
    img = scene()
    cfg = NormConfig(mode="adaptive")
    risk = assess_risk(img)
    span = norm_params(img, config=NormConfig(mode="global")).scale[0, 0]
    low = norm_params(img, config=cfg, risk=risk, dataset_mode="local")  # data the dataset rule calls low-risk
    high = norm_params(img, config=cfg, risk=risk, dataset_mode="global")  # ... and high-risk
    assert low.scale[:, 160:].min() < 0.9 * span  # safe patches keep their local stretch
    assert high.scale.min() >= span * (1 - 1e-12)  # never narrower than the global range
    assert np.abs(high.offset[:, 160:] - low.offset[:, 160:]).max() > 1.0  # but their own placement
    np.testing.assert_allclose(denormalize(normalize(img, high), high), img, atol=1e-6 * np.abs(img).max())
    np.testing.assert_array_equal(norm_params(img, config=cfg, risk=risk).scale, low.scale)
    half = norm_params(img, config=NormConfig(mode="adaptive", adaptive_floor=0.5), risk=risk, dataset_mode="global")
    assert span * 0.5 * (1 - 1e-12) <= half.scale.min() < 0.9 * span
