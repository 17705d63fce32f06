"""Denoise one frame: risk -> normalise -> network on tiles -> blend -> back to input units.

No files, no dask: the one-frame step that every larger path (stacks, Zarr chunks)
calls.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from .blend import predict_tiled
from .config import InferConfig, NormConfig
from .normalize import denormalize, norm_params, normalize
from .pairs import make_twins
from .risk import RiskReport, assess_risk

__all__ = ["resolve_device", "network_fn", "denoise_frame"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    from .errors import ConfigError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is visible; use --device cpu.")
    return torch.device(device)


def network_fn(net: torch.nn.Module, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a network for batched inference: no autograd, bf16 autocast on CUDA."""
    net = net.to(device).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                    enabled=device.type == "cuda"):
            return net(x).float()

    return fn


def denoise_frame(frame: NDArray[np.number], fn: Callable[[torch.Tensor], torch.Tensor], *,
                  norm: NormConfig = NormConfig(), infer: InferConfig = InferConfig(),
                  device: torch.device | str = "cpu", multiple: int = 1,
                  dataset_mode: str | None = None) -> tuple[NDArray[np.float32], RiskReport]:
    """Denoise one 2-D frame and return it in the frame's own units.

    Parameters
    ----------
    frame : ndarray, shape (H, W)
        Noisy frame in input units (any real dtype), finite.
    fn : callable
        Batched network in the normalised domain (see :func:`network_fn`).
    norm : NormConfig
        Normalisation mode and thresholds (the model's training options).
    infer : InferConfig
        Tiling, blending, inference domain.
    device : torch device
        Where tiles are processed.
    multiple : int
        Tile sides must be multiples of this (the network's pooling factor).
    dataset_mode : {"global", "local"}, optional
        Decision of ``dataset`` mode, taken once for the training data.

    Returns
    -------
    denoised : ndarray, shape (H, W), float32
        In the frame's units (offset and scale preserved).
    risk : RiskReport
        The frame's risk map.
    """
    img = np.asarray(frame, dtype=np.float64)
    risk = assess_risk(img, thresholds=norm.risk)
    params = norm_params(img, config=norm, risk=risk, dataset_mode=dataset_mode)
    views = make_twins(img) if infer.infer_on == "twins" else (img,)
    acc = np.zeros(img.shape, np.float64)
    for view in views:
        acc += predict_tiled(normalize(view, params), fn, config=infer, device=device, multiple=multiple)
    out = denormalize(acc / len(views), params)
    return out.astype(np.float32), risk
