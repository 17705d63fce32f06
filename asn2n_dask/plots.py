"""Pictures for people: before/after figures (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["before_after_png", "curves_png", "montage_png", "pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure as PNG and free it."""
    p = Path(path)
    fig.savefig(p, dpi=dpi)
    pyplot().close(fig)
    return p


def before_after_png(noisy: NDArray[np.number], denoised: NDArray[np.number], path: str | Path, *,
                     truth: NDArray[np.number] | None = None, title: str = "") -> Path:
    """Save noisy | denoised (| ground truth) side by side, on one shared intensity scale."""
    plt = pyplot()

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
    return save_figure(fig, path)


def curves_png(history: list[dict], path: str | Path, *, title: str = "") -> Path:
    """Training and validation loss against steps (log scale), one figure."""
    plt = pyplot()

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    ax.plot(steps, [h["train_loss"] for h in history], "o-", label="training (mean since last check)")
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), "s-", label="validation (held-out regions)")
        best = min(val, key=lambda v: v[1])
        ax.axvline(best[0], color="grey", ls=":", label=f"best: step {best[0]}")
    ax.set_xlabel("step")
    ax.set_ylabel("self-constrained loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def montage_png(noisy: NDArray[np.number], denoised: NDArray[np.number], path: str | Path, *,
                title: str = "") -> Path:
    """Patches before (top row) and after (bottom row), each pair on its own scale."""
    plt = pyplot()

    n = len(noisy)
    fig, axes = plt.subplots(2, n, figsize=(2 * n, 4.4), constrained_layout=True, squeeze=False)
    for j in range(n):
        lo, hi = np.percentile(np.asarray(denoised[j], np.float64), [0.5, 99.8])
        for row, img in enumerate((noisy[j], denoised[j])):
            axes[row, j].imshow(np.asarray(img, np.float64), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
            axes[row, j].set_axis_off()
    axes[0, 0].set_title("noisy", loc="left")
    axes[1, 0].set_title("denoised", loc="left")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
