"""Pictures for people: before/after figures (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

__all__ = ["before_after_png"]


def before_after_png(noisy: NDArray[np.number], denoised: NDArray[np.number], path: str | Path, *,
                     truth: NDArray[np.number] | None = None, title: str = "") -> Path:
    """Save noisy | denoised (| ground truth) side by side, on one shared intensity scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("noisy input", noisy), ("denoised", denoised)] + ([("ground truth", truth)] if truth is not None else [])
    ref = np.asarray(truth if truth is not None else denoised, dtype=np.float64)
    vmin, vmax = np.percentile(ref, [0.5, 99.8])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3), constrained_layout=True)
    for ax, (name, img) in zip(axes, panels):
        im = ax.imshow(np.asarray(img, dtype=np.float64), cmap="gray", vmin=vmin, vmax=vmax)
        ax.set_title(name)
        ax.set_axis_off()
    fig.colorbar(im, ax=axes, shrink=0.8, label="intensity (input units)")
    if title:
        fig.suptitle(title)
    p = Path(path)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p
