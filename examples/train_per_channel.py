"""Train one network per colour channel of an OME-Zarr time-lapse, and look at how it went.

    python examples/train_per_channel.py [OUT_DIR] [--frames T] [--size N] [--steps N]

Makes a small dual-colour OME-Zarr with channel names (replace it with your own store),
trains a network for each channel on patches read lazily from it (a third of them
centred on high-risk background), and prints the per-channel results: steps, best
validation step, where the training curves and before/after montages are.  Interrupt
it and run it again: training resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from asn2n_dask import TrainConfig, fit
from asn2n_dask.io import ImageMeta, write_image
from asn2n_dask.synthetic import noisy_frame


def make_movie(path: Path, frames: int, size: int) -> None:
    data = np.stack([np.stack([noisy_frame((size, size), photons=p * 0.98**t, seed=3 * t + c)[0]
                               for c, p in enumerate((12.0, 4.0))]) for t in range(frames)])
    write_image(path, data, ImageMeta(axes="TCYX", format="ome-zarr", channel_names=("tubulin", "mito")))


def main(out: Path, frames: int, size: int, steps: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    src = out / "movie.zarr"
    if not src.exists():
        make_movie(src, frames, size)
    models = out / "models"
    resume = (models / "train-state.json").is_file()
    cfg = TrainConfig(preset="tiny", steps=steps, patch=64, batch=4, val_every=max(1, steps // 5),
                      checkpoint_every=max(1, steps // 3), risk_share=0.33)
    model = fit(str(src), config=cfg, model_dir=models, resume=resume)
    for i, ch in enumerate(model.channels):
        print(f"channel {ch.name}: {ch.steps} steps, best at step {ch.best_step}, "
              f"high-risk share seen {ch.extra['risk_share_seen']:.2f}; "
              f"curves {models / f'curves-{i}.png'}, montage {models / f'montage-{i}.png'}")
    print(f"model: {models} (denoise with: asn2n denoise {src} -o denoised.zarr --model {models})")
    return models


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=Path("per-channel-example"))
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    main(a.out, a.frames, a.size, a.steps)
