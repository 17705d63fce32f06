"""Denoise a noisy TIFF with a model trained on the image itself, from Python.

    python examples/denoise_tiff.py [OUT_DIR] [--steps N]

Makes a synthetic noisy frame (replace it with ``tifffile.imread("yours.tif")``), fits
a model, denoises, and writes the result and a before/after PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from asn2n_dask import InferConfig, TrainConfig, denoise, fit
from asn2n_dask.plots import before_after_png
from asn2n_dask.synthetic import noisy_frame


def main(out: Path, steps: int, preset: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    noisy, truth = noisy_frame((192, 192), photons=8.0, seed=1)
    model = fit(noisy, config=TrainConfig(preset=preset, steps=steps, patch=64, batch=8),
                model_dir=out / "model")
    clean = denoise(noisy, model, config=InferConfig(tile=64))
    tifffile.imwrite(out / "denoised.tif", clean)
    err_in = np.sqrt(np.mean((noisy - truth) ** 2))
    err_out = np.sqrt(np.mean((clean - truth) ** 2))
    print(f"RMSE to ground truth: noisy {err_in:.2f} ADU, denoised {err_out:.2f} ADU")
    return before_after_png(noisy, clean, out / "before_after.png", truth=truth)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("example-output"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--preset", default="tiny")
    a = ap.parse_args()
    print(main(a.out, a.steps, a.preset))
