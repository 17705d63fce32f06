import numpy as np
import pytest
import torch

from asn2n_dask import TrainConfig, load_model
from asn2n_dask.errors import ConfigError, InputError
from asn2n_dask.train import self_constrained_loss, train_channel


def test_loss_is_the_self_constrained_formula():
    g = torch.Generator().manual_seed(0)
    pa, pb, a, b = (torch.rand(2, 1, 8, 8, generator=g) for _ in range(4))
    want = (pa - b).abs().mean() + (pb - a).abs().mean() + 0.5 * (pa - pb).abs().mean()
    assert float(self_constrained_loss(pa, pb, a, b)) == pytest.approx(float(want))
    want2 = ((pa - b) ** 2).mean() + ((pb - a) ** 2).mean() + 0.1 * (pa - pb).abs().mean()
    assert float(self_constrained_loss(pa, pb, a, b, kind="l2", consistency=0.1)) == pytest.approx(float(want2))


def test_training_is_deterministic_for_a_seed(frame):
    cfg = TrainConfig(preset="tiny", steps=6, patch=32, batch=2, val_every=3)
    r1 = train_channel([frame[0]], cfg)
    r2 = train_channel([frame[0]], cfg)
    for (k, v1), v2 in zip(r1.net.state_dict().items(), r2.net.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert [h["train_loss"] for h in r1.history] == [h["train_loss"] for h in r2.history]
    r3 = train_channel([frame[0]], TrainConfig(preset="tiny", steps=6, patch=32, batch=2, val_every=3, seed=1))
    assert not torch.equal(next(iter(r3.net.state_dict().values())), next(iter(r1.net.state_dict().values())))


def test_validation_split_keeps_the_best_weights_and_checkpoints_are_written(frame, tmp_path):
    seen = []
    big = np.tile(frame[0], (4, 1))  # 384 rows: room for a validation strip
    cfg = TrainConfig(preset="tiny", steps=8, patch=32, batch=2, val_every=2, checkpoint_every=3)
    r = train_channel([big], cfg, checkpoint=lambda res, st: seen.append(st.step))
    assert seen == [3, 6]
    vals = [h["val_loss"] for h in r.history]
    assert all(v is not None for v in vals)
    assert r.best_step == r.history[int(np.argmin(vals))]["step"]


def test_frames_smaller_than_the_preset_allows_are_refused():
    with pytest.raises(InputError, match="too small"):
        train_channel([np.ones((10, 10))], TrainConfig(preset="small", patch=32))


def test_fit_writes_a_model_that_loads_back(frame, tmp_path):
    from asn2n_dask import fit

    stack = np.stack([frame[0], frame[0][::-1]])
    m = fit(stack, axes="CYX", channel_names=["er", "mito"],
            config=TrainConfig(preset="tiny", steps=4, patch=32, batch=2), model_dir=tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert [c.name for c in back.channels] == ["er", "mito"]
    for c0, c1 in zip(m.channels, back.channels):
        for v0, v1 in zip(c0.net.state_dict().values(), c1.net.state_dict().values()):
            assert torch.equal(v0, v1)
        assert c1.stats == c0.stats
    assert back.train == m.train


def test_offset_jitter_moves_both_twins_of_a_sample_together():
    from asn2n_dask.train import jitter_offsets

    a, b = torch.rand(64, 1, 8, 8), torch.rand(64, 1, 8, 8)
    ja, jb = jitter_offsets(a, b, 0.05, seed=3, step=7)
    da, db = ja - a, jb - b
    torch.testing.assert_close(da, db)  # the same offset for a patch and its twin
    per_sample = da[:, 0, 0, 0]
    torch.testing.assert_close(da, per_sample[:, None, None, None].expand_as(da))  # constant over each patch
    assert per_sample.abs().max() <= 0.05 and per_sample.std() > 0.01  # within the bound, and drawn
    again = jitter_offsets(a, b, 0.05, seed=3, step=7)[0]
    assert torch.equal(again, ja)  # a resumed run draws the same offsets for a step
    assert not torch.equal(jitter_offsets(a, b, 0.05, seed=3, step=8)[0], ja)


def test_offset_jitter_changes_training_and_is_kept_in_the_model(frame, tmp_path):
    from asn2n_dask import fit

    cfg = TrainConfig(preset="tiny", steps=6, patch=32, batch=4, val_every=3)
    plain = fit(frame[0], config=cfg)
    jittered = fit(frame[0], config=TrainConfig(**{**cfg.to_dict(), "offset_jitter": 0.1}))
    w0, w1 = (next(m.channels[0].net.parameters()).detach() for m in (plain, jittered))
    assert not torch.equal(w0, w1)
    from asn2n_dask import save_model

    save_model(jittered, tmp_path / "m")
    assert load_model(tmp_path / "m").train.offset_jitter == 0.1
    with pytest.raises(ConfigError, match="offset jitter must be in"):
        TrainConfig(offset_jitter=0.9)
