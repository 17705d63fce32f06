"""Denoise a dual-colour time-lapse stored as Zarr, chunk by chunk, with the Python API.

    python examples/denoise_timelapse.py [OUT_DIR] [--frames T] [--size N] [--steps N]

Makes a small synthetic (t, c, y, x) time-lapse Zarr (replace it with your own store),
trains one network per channel on patches read lazily from it, denoises the whole store on an
embedded Dask cluster into OME-Zarr (with a risk label image per channel), writes an HTML report
on the result, and prints where things are.  Run it twice: the second run finds the
output complete and does nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import zarr

from asn2n_dask import InferConfig, TrainConfig, denoise, fit, make_report
from asn2n_dask.synthetic import noisy_frame


def make_timelapse(path: Path, frames: int, size: int) -> None:
    """(t, c, y, x) uint16: channel 0 brighter, channel 1 dimmer and bleaching."""
    data = np.stack([np.stack([noisy_frame((size, size), photons=p * (0.97**t), seed=t * 2 + c)[0]
                               for c, p in enumerate((12.0, 5.0))]) for t in range(frames)])
    root = zarr.open_group(str(path), mode="w")
    arr = root.create_array("noisy", shape=data.shape, chunks=(1, 1, size // 2, size // 2), dtype=data.dtype,
                            dimension_names=["t", "c", "y", "x"])
    arr[...] = data


def main(out: Path, frames: int, size: int, steps: int, workers: int | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    src = out / "timelapse.zarr"
    if not src.exists():
        make_timelapse(src, frames, size)
    noisy = zarr.open_group(str(src), mode="r")["noisy"]
    model_dir = out / "model"
    if not (model_dir / "model.json").exists():
        # patches are read lazily from the store, one network per channel
        fit(str(src), config=TrainConfig(preset="tiny", steps=steps, patch=64, batch=4), model_dir=model_dir)
    result = out / "denoised.zarr"
    summary = denoise(str(src), str(result), model=str(model_dir), config=InferConfig(tile=64), workers=workers)
    print(f"input:    {src} {noisy.shape} {noisy.dtype}")
    print(f"output:   {result} ({summary.computed} chunks computed, {summary.skipped} already done)")
    risk = zarr.open_group(str(result), mode="r")["labels"].attrs["ome"]["labels"]  # one per channel
    print(f"risk map: {', '.join(f'{result}/labels/{name}' for name in risk)}")
    make_report(src, result, out / "report", model_dir=model_dir, overwrite=True)
    print(f"report:   {out / 'report' / 'report.html'} (open it in a browser)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=Path("timelapse-example"))
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=None)
    a = ap.parse_args()
    main(a.out, a.frames, a.size, a.steps, a.workers)
