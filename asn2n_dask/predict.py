"""Denoise one frame: risk -> normalise -> twins and network per tile -> blend -> input units.

No files, no dask: the one-frame step that every larger path (stacks, Zarr chunks)
calls; :func:`denoise_window_3d` is its counterpart for a 3-D network, one window of a
volume (Z, Y, X) on the channel's global intensity scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from .blend import blend_tiles, blend_window, check_tile, check_volume_tile, predict_volume_window
from .config import InferConfig, NormConfig, RiskThresholds
from .method import applied_mode, channel_norm
from .model import channels_last
from .normalize import fields_at, patch_ranges, patch_span, window_fields
from .pairs import make_volume_twins, normalised_views
from .plan import WindowPlan, axis_reads, window_plan
from .risk import assess_risk, assess_risk_torch, noise_level
from .stats import ChannelStats, channel_stats

__all__ = ["resolve_device", "compiles", "network_fn", "normalised_views", "tile_fn", "WindowPlan", "window_plan",
           "patch_span", "axis_reads", "window_fields", "resolved_norm", "denoise_window", "denoise_frame",
           "denoise_window_3d", "slice_risk", "VOLUME_RISK"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    from .errors import ConfigError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is visible; use --device cpu.")
    return torch.device(device)


def compiles(infer: InferConfig, device: torch.device | str) -> bool:
    """Whether ``infer.compile`` compiles the network on ``device``: on CUDA only (on a
    CPU compiled kernels are no faster than eager ones, so the option is ignored)."""
    return infer.compile and torch.device(device).type == "cuda"


def network_fn(net: torch.nn.Module, device: torch.device | str, precision: str = "bf16",
               compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a network for batched inference: no autograd; channels-last memory where it
    is faster (:func:`asn2n_dask.model.channels_last`; a 3-D network's, of
    ``(N, C, Z, Y, X)`` tensors, is ``channels_last_3d``); on CUDA bf16 autocast with
    ``precision="bf16"``, and with ``compile=True`` the network compiled by
    ``torch.compile`` on any device (:func:`asn2n_dask.compiled.compile_network`: its
    kernels compiled once per machine and kept in a cache; on a CPU this needs a C++
    compiler).  :func:`compiles` says where the ``compile`` option of
    :class:`~asn2n_dask.config.InferConfig` applies.  The CPU always computes in fp32.

    A compiled network sees one batch size: a shorter batch (the last of a chunk) is
    padded to the longest one seen, so it is never compiled again.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    amp = cuda and precision == "bf16"
    net = net.to(device).eval()
    nhwc = channels_last(device)
    layout = torch.channels_last_3d if any(p.dim() == 5 for p in net.parameters()) else torch.channels_last
    if nhwc:
        net = net.to(memory_format=layout)  # type: ignore[call-overload]
    run: Callable[[torch.Tensor], torch.Tensor] = net
    compiled = compile
    if compiled:
        from .compiled import compile_network

        run = compile_network(net, device, "bf16" if amp else "fp32")
    longest = 0

    def fn(x: torch.Tensor) -> torch.Tensor:
        nonlocal longest
        n = x.shape[0]
        if compiled:
            longest = max(longest, n)
            if n < longest:
                x = torch.cat([x, x.new_zeros((longest - n, *x.shape[1:]))])
        if nhwc:
            x = x.contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return run(x)[:n].float().contiguous()

    return fn


#: (quarter turns, flip) of each test-time augmentation level.
TTA_TRANSFORMS = {1: [(0, False)], 2: [(0, False), (2, True)], 4: [(k, False) for k in range(4)],
                  8: [(k, f) for f in (False, True) for k in range(4)]}


def tile_fn(net_fn: Callable[[torch.Tensor], torch.Tensor], infer_on: str,
            tta: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-tile step: views (twins or the raw tile), normalisation, network, average.

    Takes ``(N, 3, t, t)`` tiles of (pixels, offset, scale) in input units and returns
    ``(N, 1, t, t)`` predictions in the normalised domain: the mean over the views and
    over ``tta`` flipped/rotated copies of each (turned back before averaging).
    """

    def fn(tiles: torch.Tensor) -> torch.Tensor:
        return views_mean(net_fn, torch.cat(normalised_views(tiles, infer_on)), tiles.shape[0], tta)

    return fn


def views_mean(net_fn: Callable[[torch.Tensor], torch.Tensor], views: torch.Tensor, n: int,
               tta: int = 1) -> torch.Tensor:
    """The network's output averaged over ``views`` (its views of ``n`` tiles, view by
    view along the batch axis) and over ``tta`` turned/flipped copies of each in the last
    two axes (turned back before averaging)."""
    acc = None
    for k, flip in TTA_TRANSFORMS[tta]:
        x = torch.rot90(views.flip(-1) if flip else views, k, dims=(-2, -1))
        y = torch.rot90(net_fn(x), -k, dims=(-2, -1))
        y = y.flip(-1) if flip else y
        acc = y if acc is None else acc + y
    assert acc is not None
    pred = acc / len(TTA_TRANSFORMS[tta])
    return pred.reshape(-1, n, *pred.shape[1:]).mean(0)


def resolved_norm(norm: NormConfig, frames: Sequence[NDArray[np.number]], stats: ChannelStats) -> NormConfig:
    """``norm`` with an ``"auto"`` risk estimator resolved from ``frames`` on the channel's
    reference risk scale (:func:`asn2n_dask.risk.resolve_estimator`); unchanged otherwise.

    A trained model keeps the estimator it resolved for each channel
    (:meth:`asn2n_dask.checkpoint.Model.method`): pass that to classify every chunk alike.
    """
    thr = norm.risk
    return channel_norm(norm, lambda: noise_level(frames, thr.patch, stats.risk_scale(thr)))[0]


def denoise_window(region: NDArray[np.number], plan: WindowPlan, frame_shape: tuple[int, int],
                   fn: Callable[[torch.Tensor], torch.Tensor], *, stats: ChannelStats,
                   norm: NormConfig = NormConfig(), infer: InferConfig = InferConfig(),
                   device: torch.device | str = "cpu", multiple: int = 1,
                   dataset_mode: str | None = None,
                   engine: str = "torch") -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """Denoise one window of a frame from the region :func:`window_plan` asks for.

    risk -> normalisation fields -> per tile: twins, normalise, network, average ->
    Gaussian blend -> back to input units.  A whole frame is the window that covers it.
    With ``engine="torch"`` every step runs on ``device`` (one copy of the region in,
    one copy of the result out); ``engine="numpy"`` is the reference implementation
    (risk and normalisation in numpy), equal within float tolerance.

    Parameters
    ----------
    region : ndarray, shape (read_y1 - read_y0, read_x1 - read_x0)
        The frame's pixels over ``plan.read``, input units.
    plan : WindowPlan
    frame_shape : (int, int)
        The whole frame's (H, W).
    fn : callable
        Batched network (:func:`network_fn`) on normalised tiles.
    stats : ChannelStats
        Statistics of the frame's whole channel (:func:`asn2n_dask.stats.channel_stats`).
    norm, infer : NormConfig, InferConfig
        An ``"auto"`` risk estimator is resolved from this region alone
        (:func:`resolved_norm`).
    dataset_mode : {"global", "local"}, optional
        The model's dataset decision, for ``norm.mode == "dataset"``.
    engine : {"torch", "numpy"}
        Where risk and normalisation are computed (see above).

    Returns
    -------
    denoised : ndarray, shape (y1 - y0, x1 - x0), float32, input units
    risk : ndarray, same shape, int8
        Risk class of each pixel's patch (0 safe, 1 weak background, 2 sparse bright).
    """
    check_tile(infer, multiple)
    (ry0, ry1), (rx0, rx1) = plan.read
    if region.shape != (ry1 - ry0, rx1 - rx0):
        raise ValueError(f"region has shape {region.shape}; the plan reads {(ry1 - ry0, rx1 - rx0)}")
    norm = resolved_norm(norm, [region], stats)
    if engine == "numpy":
        return _denoise_window_numpy(region, plan, frame_shape, fn, stats=stats, norm=norm, infer=infer,
                                     device=device, dataset_mode=dataset_mode)
    if engine != "torch":
        raise ValueError(f"engine must be torch or numpy; got {engine!r}")
    dev = torch.device(device)
    patch = norm.risk.patch
    img = _to_device(region, dev)  # the one copy in
    ty, tx = plan.tiles
    py, px = plan.patches
    risk_map, offset, scale = window_fields(img, frame_shape, (py, px), ty.source, tx.source, stats=stats,
                                            norm=norm, dataset_mode=dataset_mode)
    rows = torch.from_numpy(ty.source - ry0).to(dev)
    cols = torch.from_numpy(tx.source - rx0).to(dev)
    raw = img.index_select(0, rows).index_select(1, cols)
    block = torch.stack([raw, offset, scale]).float()
    win = torch.from_numpy(blend_window(infer)).to(dev)
    pred = blend_tiles(block, tile_fn(fn, infer.infer_on, infer.tta), config=infer, window=win)
    y0, y1, x0, x1 = plan.window
    ys, xs = slice(y0 - ty.first, y1 - ty.first), slice(x0 - tx.first, x1 - tx.first)
    out = clamp_output((pred[ys, xs].double() * scale[ys, xs] + offset[ys, xs]), stats).float()
    ly = torch.from_numpy((np.arange(y0, y1) - ry0) // patch).to(dev)
    lx = torch.from_numpy((np.arange(x0, x1) - rx0) // patch).to(dev)
    labels = risk_map.index_select(0, ly).index_select(1, lx)
    return _to_host(out), _to_host(labels)  # the one copy out


def _to_device(region: NDArray[np.number], dev: torch.device) -> torch.Tensor:
    """A region as a float64 tensor on ``dev``: one copy, through pinned memory to a GPU."""
    region = np.asarray(region)
    host = torch.from_numpy(np.ascontiguousarray(region, dtype=region.dtype.newbyteorder("=")))
    if dev.type == "cuda":
        host = host.pin_memory()
    return host.to(dev, non_blocking=True).double()


#: The risk label of every voxel a 3-D network denoises when no risk thresholds are
#: given (:func:`denoise_window_3d`): 0, nothing flagged.
VOLUME_RISK = 0


def volume_tile_fn(net_fn: Callable[[torch.Tensor], torch.Tensor], infer_on: str,
                   tta: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-tile step of a 3-D network: views, network, average.

    Takes ``(N, 1, tz, t, t)`` tiles on the normalised scale and returns the mean of the
    network's output over the views of each: its twins (``infer_on="twins"``, slice by
    slice in Y-X, :func:`asn2n_dask.pairs.make_volume_twins`: the pairs the network was
    trained on) or the tile itself (``"raw"``), each also turned and flipped in Y-X
    ``tta`` ways (turned back before averaging; Z is never flipped: the PSF and the
    sampling along it differ from Y-X).  The global normalisation is affine and the
    twins are linear and keep constants, so twins of normalised tiles are the
    normalised twins.
    """

    def fn(tiles: torch.Tensor) -> torch.Tensor:
        views = torch.cat(make_volume_twins(tiles.double())).float() if infer_on == "twins" else tiles.float()
        return views_mean(net_fn, views, tiles.shape[0], tta)

    return fn


def denoise_window_3d(region: NDArray[np.number], plan: WindowPlan, frame_shape: tuple[int, int, int],
                      fn: Callable[[torch.Tensor], torch.Tensor], *, stats: ChannelStats,
                      infer: InferConfig = InferConfig(), tile_z: int, device: torch.device | str = "cpu",
                      multiple: tuple[int, int, int] = (1, 1, 1),
                      risk: RiskThresholds | None = None) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """Denoise one window of a volume with a 3-D network, from the region its plan reads.

    Normalise on the channel's global range -> tiles of ``(tile_z, infer.tile,
    infer.tile)`` voxels anchored to the volume's origin and mirrored past its edges ->
    network -> weighted blend (:func:`asn2n_dask.blend.predict_volume_window`, the
    function that blends a whole volume) -> back to input units, held in the channel's
    range (:func:`clamp_output`).  Every step runs on ``device``, one copy of the region
    in and one of the result out.  The window's result depends only on its region and
    ``stats``, so a volume denoised window by window equals the volume denoised whole.

    The network sees the views of each tile :func:`volume_tile_fn` makes (by default
    its twins, the domain it was trained on) and their outputs are averaged.

    Parameters
    ----------
    region : ndarray, shape (read_z1 - read_z0, read_y1 - read_y0, read_x1 - read_x0)
        The volume's voxels over ``plan.read``, input units.
    plan : WindowPlan
        The window's tiles and region along Z, Y and X, with the Z tile ``tile_z``
        (:meth:`asn2n_dask.plan.Plan.window_plan` of a plan over ``"ZYX"``).
    frame_shape : (int, int, int)
        The whole volume's (Z, Y, X).
    fn : callable
        Batched 3-D network (:func:`network_fn`) on ``(N, 1, tile_z, tile, tile)`` tiles
        of the normalised scale.
    stats : ChannelStats
        Statistics of the whole channel: the network sees ``(v - stats.norm.lo) /
        stats.norm.span``, as in training (:func:`asn2n_dask.train3d.volume_twins_batch`).
    infer : InferConfig
        Y-X tile side, overlap (every axis), blending, tiles per call, the views the
        network sees (``infer_on``, ``tta``: :func:`volume_tile_fn`).
    tile_z : int
        Tile size along Z, slices (the network's training sub-volume's Z).
    device : torch device
    multiple : (int, int, int)
        The network's size factors along Z, Y and X (:attr:`asn2n_dask.model.UNet3d.multiple`).
    risk : RiskThresholds, optional
        The channel's risk thresholds, estimator resolved (:meth:`asn2n_dask.checkpoint.Model.norm`):
        each slice's patches of ``risk.patch`` x ``risk.patch`` pixels are classified as a frame's
        are (:func:`asn2n_dask.risk.assess_risk_torch`), which needs a plan built with that patch
        side along Y and X.  They do not change the denoising: a volume is normalised on its
        channel's global range.

    Returns
    -------
    denoised : ndarray, shape (z1 - z0, y1 - y0, x1 - x0), float32, input units
    risk : ndarray, same shape, int8
        Risk class of each voxel's patch in its slice (0 safe, 1 weak background, 2 sparse
        bright); :data:`VOLUME_RISK` everywhere without ``risk``.

    Raises
    ------
    ConfigError
        Tiles the network cannot take.
    ValueError
        A region, plan or volume shape that do not match.
    """
    tz = check_volume_tile(infer, tile_z, multiple)
    if len(frame_shape) != 3 or len(plan.window) != 6 or len(plan.read) != 3:
        raise ValueError(f"a 3-D window needs a (Z, Y, X) volume and a plan over three axes; got volume "
                         f"{frame_shape} and window {plan.window}")
    want = tuple(b - a for a, b in plan.read)
    if region.shape != want:
        raise ValueError(f"region has shape {region.shape}; the plan reads {want}")
    if any(not 0 <= a <= b <= n for (a, b), n in zip(plan.read, frame_shape)):
        raise ValueError(f"the plan reads {plan.read}, outside a volume of {frame_shape}")
    dev = torch.device(device)
    lo, span = stats.norm.lo, stats.norm.span
    img = _to_device(region, dev)  # the one copy in
    pred = predict_volume_window(((img - lo) / span).float()[None], plan.tiles, plan.read, plan.window,
                                 volume_tile_fn(fn, infer.infer_on, infer.tta), tile_z=tz, config=infer)
    out = clamp_output(pred.double() * span + lo, stats).float()
    if risk is None:
        return _to_host(out), np.full(out.shape, VOLUME_RISK, np.int8)  # the one copy out
    return _to_host(out), _to_host(slice_risk(img, plan, frame_shape, stats, risk))


def slice_risk(img: torch.Tensor, plan: WindowPlan, frame_shape: tuple[int, int, int], stats: ChannelStats,
               risk: RiskThresholds) -> torch.Tensor:
    """Risk labels of a 3-D window: each of its slices' patches classified as a frame's.

    ``img`` holds the volume over ``plan.read``, whose Y-X extent must be whole patches of
    ``risk.patch`` (a plan built with that patch side: the last patch of a row or column
    may stop at the volume's edge), so a patch's class depends on its pixels alone and a
    volume labelled window by window is labelled as whole.
    """
    patch = risk.patch
    (rz0, _), (ry0, ry1), (rx0, rx1) = plan.read
    for (a, b), n in zip(((ry0, ry1), (rx0, rx1)), frame_shape[1:]):
        if a % patch or (b % patch and b != n):
            raise ValueError(f"the plan reads [{a}, {b}) along an axis of {n}: not whole {patch}-pixel risk "
                             "patches; build it with the risk patch side")
    z0, z1, y0, y1, x0, x1 = plan.window
    dev = img.device
    scale = stats.risk_scale(risk)
    ly = torch.from_numpy((np.arange(y0, y1) - ry0) // patch).to(dev)
    lx = torch.from_numpy((np.arange(x0, x1) - rx0) // patch).to(dev)
    labels = torch.empty((z1 - z0, y1 - y0, x1 - x0), dtype=torch.int8, device=dev)
    for k, z in enumerate(range(z0, z1)):
        risk_map = assess_risk_torch(img[z - rz0], scale, risk)
        labels[k] = risk_map.index_select(0, ly).index_select(1, lx)
    return labels


#: How far beyond the channel's data range (as a fraction of it) a denoised value may go.
OUTPUT_MARGIN = 0.25


def clamp_output(out: Any, stats: ChannelStats) -> Any:
    """Denoised intensities (tensor or array, input units) held within the channel's range
    widened by :data:`OUTPUT_MARGIN` of it on each side.  Noise removal never moves a
    value that far; a network applied to data unlike its training data can, and its
    output must stay in the input's units and range."""
    span = max(stats.maximum - stats.minimum, 0.0)
    lo, hi = stats.minimum - OUTPUT_MARGIN * span, stats.maximum + OUTPUT_MARGIN * span
    return out.clamp(lo, hi) if isinstance(out, torch.Tensor) else np.clip(out, lo, hi)


def _to_host(t: torch.Tensor) -> NDArray[Any]:
    """A device tensor as a numpy array, through pinned memory from a GPU (several times
    faster than a copy to pageable memory)."""
    if t.device.type != "cuda":
        return t.numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host.numpy()


def _denoise_window_numpy(region: NDArray[np.number], plan: WindowPlan, frame_shape: tuple[int, int],
                          fn: Callable[[torch.Tensor], torch.Tensor], *, stats: ChannelStats, norm: NormConfig,
                          infer: InferConfig, device: torch.device | str,
                          dataset_mode: str | None) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """The numpy reference of :func:`denoise_window` (risk and fields in numpy, network in torch)."""
    (ry0, _), (rx0, _) = plan.read
    patch = norm.risk.patch
    img = np.asarray(region, dtype=np.float64)
    risk = assess_risk(img, thresholds=norm.risk, stats=stats.risk_scale(norm.risk))
    mode, frac = applied_mode(norm, dataset_mode, risk.high_risk_ratio)
    lo, hi = patch_ranges(img, stats.norm, norm, mode, risk.risk_map, frac)
    ty, tx = plan.tiles
    first = (plan.patches[0][0], plan.patches[1][0])
    offset, scale = fields_at(lo, hi, ty.source, tx.source, frame_shape, patch, first, frac * stats.norm.span)
    raw = img[ty.source[:, None] - ry0, tx.source[None, :] - rx0]
    dev = torch.device(device)
    block = torch.from_numpy(np.stack([raw, offset, scale]).astype(np.float32)).to(dev)
    win = torch.from_numpy(blend_window(infer)).to(dev)
    pred = blend_tiles(block, tile_fn(fn, infer.infer_on, infer.tta), config=infer,
                       window=win).double().cpu().numpy()
    y0, y1, x0, x1 = plan.window
    ys, xs = slice(y0 - ty.first, y1 - ty.first), slice(x0 - tx.first, x1 - tx.first)
    out = clamp_output(pred[ys, xs] * scale[ys, xs] + offset[ys, xs], stats)
    labels = risk.risk_map[(np.arange(y0, y1) - ry0)[:, None] // patch, (np.arange(x0, x1) - rx0)[None, :] // patch]
    return out.astype(np.float32), labels


def denoise_frame(frame: NDArray[np.number], fn: Callable[[torch.Tensor], torch.Tensor], *,
                  stats: ChannelStats | None = None, norm: NormConfig = NormConfig(),
                  infer: InferConfig = InferConfig(), device: torch.device | str = "cpu", multiple: int = 1,
                  dataset_mode: str | None = None) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """Denoise one whole 2-D frame (the window that covers it) in the frame's own units.

    Parameters
    ----------
    frame : ndarray, shape (H, W)
        Noisy frame in input units.
    stats : ChannelStats, optional
        Statistics of the frame's channel (default: of this frame alone).
    Other parameters as :func:`denoise_window`.

    Returns
    -------
    denoised : ndarray, shape (H, W), float32
    risk : ndarray, shape (H, W), int8
    """
    img = np.asarray(frame)
    h, w = img.shape
    if stats is None:
        stats = channel_stats(img[None], norm)[0]
    plan = window_plan((h, w), (0, h, 0, w), infer, norm.risk.patch)
    return denoise_window(img, plan, (h, w), fn, stats=stats, norm=norm, infer=infer, device=device,
                          multiple=multiple, dataset_mode=dataset_mode)
