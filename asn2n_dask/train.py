"""Self-constrained Noise2Noise training of one network on the frames of one channel.

Patches come from :mod:`asn2n_dask.sampling`: cut lazily from regions of the frames
(any dataset size), normalised by the function inference applies to its tiles, split
into twins; the network learns to map one twin to the other, both ways, with an
optional consistency term that pulls the two predictions together (``--consistency``,
off by default).  Validation patches come
from regions held out by position.  Training can run its sampling in DataLoader worker
processes, resume from its last checkpoint with the same result as an uninterrupted
run, stop early, and run data-parallel (``torch.distributed``, one slice of every
batch per process).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional as F

from .checkpoint import TrainState
from .compiled import cached, entry_parts
from .config import PRESETS, NormConfig, TrainConfig
from .errors import InputError
from .method import ChannelMethod, decide_method
from .model import UNet, build_unet, channels_last
from .sampling import ArrayPlanes, BatchPlan, BatchStream, PlaneReader, RegionSampler, channel_noise, validation_batch
from .stats import ChannelStats, channel_stats

__all__ = ["self_constrained_loss", "jitter_offsets", "TrainResult", "TrainState", "train_channel", "min_train_side",
           "readers_of", "estimate_risk"]

log = logging.getLogger(__name__)

#: Data up to this many pixels per channel is held whole while training (12 bytes a pixel).
POOL_PIXELS = 64 * 2**20

Progress = Callable[[int, int, float], None]
Checkpoint = Callable[["TrainResult", "TrainState"], None]


def self_constrained_loss(pred_a: torch.Tensor, pred_b: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                          *, kind: str = "l1", consistency: float = 0.5) -> torch.Tensor:
    """``D(f(A), B) + D(f(B), A) + consistency * mean|f(A) - f(B)|``, D = L1 or L2."""
    d = F.l1_loss if kind == "l1" else F.mse_loss
    return d(pred_a, b) + d(pred_b, a) + consistency * (pred_a - pred_b).abs().mean()


def jitter_offsets(a: torch.Tensor, b: torch.Tensor, amount: float, *, seed: int, step: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin batches ``(N, C, H, W)`` with one offset per sample, drawn uniformly from
    ``[-amount, amount]`` and added to both twins of it (a drifted camera offset moves the
    noisy frame and its twin together).  The offsets depend on ``seed`` and ``step`` only,
    so a resumed run draws the ones it would have."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    d = ((torch.rand((a.shape[0], 1, 1, 1), generator=g, dtype=torch.float64) * 2 - 1) * amount).to(a.dtype)
    return a + d.to(a.device), b + d.to(b.device)


def min_train_side(preset: str) -> int:
    """Smallest frame side (pixels) a preset can be trained on."""
    return 4 * 2 ** (len(PRESETS[preset]) - 1)


@dataclass
class TrainResult:
    """A trained network and what is known about how it was trained."""

    net: UNet
    #: How the channel is processed (risk estimator, dataset decision, statistics...).
    method: ChannelMethod
    steps: int
    patch: int
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    risk_share: float = 0.0
    data_wait: float = 0.0
    stopped_early: bool = False
    val_patches: NDArray[np.float32] | None = None


def readers_of(frames: Sequence[NDArray[np.number]]) -> list[PlaneReader]:
    """In-memory frames as plane readers (frames of one size share one reader)."""
    by_shape: dict[tuple[int, ...], list[NDArray[np.number]]] = {}
    for f in frames:
        by_shape.setdefault(np.shape(f), []).append(np.asarray(f))
    return [ArrayPlanes(np.stack(v)) for v in by_shape.values()]


def estimate_risk(sampler: RegionSampler, n: int = 256) -> float:
    """High-risk share of a channel's patches: over all regions when there are at most
    ``n``, else over ``n`` regions drawn once with the seed."""
    if sampler.n_regions <= n:
        ks = list(range(sampler.n_regions))
    else:
        ks = sorted(set(int(k) for k in np.random.default_rng([sampler.seed, 4]).integers(0, sampler.n_regions, n)))
    fr = [sampler.load(k).risky_fraction for k in ks]
    return float(np.mean(fr))


def _state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _saved_tensors(net: torch.nn.Module, best_state: dict[str, torch.Tensor] | None,
                   opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """The tensors of a training checkpoint (``net.*``, ``best.*``, ``opt.<param>.<name>``,
    on the CPU) and the optimiser's parameter groups; :func:`_restore_tensors` reads them back."""
    tensors = {f"net.{k}": v for k, v in _state_dict(net).items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for name, v in st.items():
            tensors[f"opt.{idx}.{name}"] = v.detach().cpu().clone()
    return tensors, osd["param_groups"]


def _restore_tensors(resume: TrainState, net: torch.nn.Module, opt: torch.optim.Optimizer,
                     dev: torch.device) -> dict[str, torch.Tensor] | None:
    """Load a checkpoint's network and optimiser state (:func:`_saved_tensors`); returns
    the best weights so far (None: no validation yet)."""
    net.load_state_dict({k[4:]: v for k, v in resume.tensors.items() if k.startswith("net.")})
    best = {k[5:]: v for k, v in resume.tensors.items() if k.startswith("best.")}
    osd: dict[str, Any] = {"state": {}, "param_groups": resume.info["optimizer_groups"]}
    for k, v in resume.tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            osd["state"].setdefault(int(idx), {})[name] = v.to(dev)
    opt.load_state_dict(osd)
    return best or None


def train_channel(data: Sequence[Any], config: TrainConfig = TrainConfig(), *,
                  stats: ChannelStats | None = None, device: torch.device | str = "cpu",
                  progress: Progress | None = None, checkpoint: Checkpoint | None = None,
                  resume: TrainState | None = None, workers: int = 0) -> TrainResult:
    """Train one network on the frames of one channel.

    Parameters
    ----------
    data : sequence of ndarray (H_i, W_i), or of PlaneReader
        The channel's noisy frames in input units (in memory), or readers over frames
        on disk (:class:`asn2n_dask.sampling.SourcePlanes`), read lazily.
    config : TrainConfig
        Preset, steps, patch, loss, seed, normalisation, risk share, patience...
    stats : ChannelStats, optional
        The channel's statistics (the pipeline's reduction pass); computed from
        in-memory frames when not given.
    device : torch device
        Where to train.
    progress : callable, optional
        Called as ``progress(step, total, loss)`` after each step.
    checkpoint : callable, optional
        Called as ``checkpoint(result, state)`` every ``config.checkpoint_every`` steps
        before the last; ``state`` resumes training (``resume=``) exactly there.
    resume : TrainState, optional
        Continue from a checkpoint: the result equals an uninterrupted run.
    workers : int
        DataLoader worker processes cutting patches (0: in this process).  The batches
        do not depend on it.

    Returns
    -------
    TrainResult
        The network holds the best validation weights when a validation split exists,
        else the last ones.
    """
    t0 = time.perf_counter()
    readers: list[PlaneReader] = list(data) if len(data) and hasattr(data[0], "read") else readers_of(list(data))
    multiple = 2 ** (len(PRESETS[config.preset]) - 1)
    smallest = min(min(r.frame_shape) for r in readers)
    need = min_train_side(config.preset)
    if smallest < need:
        raise InputError(f"frames of {smallest} pixels are too small to train preset {config.preset}: "
                         f"it needs at least {need}x{need}; use a smaller preset or larger frames.")
    patch = min(config.patch, smallest // multiple * multiple)
    rank, world = _dist()
    if config.batch % world:
        raise InputError(f"batch {config.batch} does not split over {world} processes; use a multiple of {world}.")
    if stats is None:
        stats = channel_stats(np.concatenate([r.read(p, (0, r.frame_shape[0]), (0, r.frame_shape[1])).ravel()
                                              for r in readers for p in range(r.n_planes)])[None], config.norm)[0]

    samplers: list[RegionSampler] = []

    def high_risk_ratio(norm: NormConfig) -> float:
        """The channel's high-risk share, from the regions training draws, classified with ``norm``."""
        samplers.append(RegionSampler(readers, stats, norm, None, patch, config.seed, config.val_fraction))
        return estimate_risk(samplers[-1])

    method = decide_method(config.norm, stats.norm, noise_sd=lambda: channel_noise(readers, stats, config.norm.risk),
                           high_risk_ratio=high_risk_ratio)
    sampler = samplers[-1]
    sampler.dataset_mode = method.dataset_mode
    va: torch.Tensor | None
    vb: torch.Tensor | None
    val_raw: NDArray[np.float32] | None
    if sampler.has_val:
        va, vb, val_raw = validation_batch(sampler, max(config.batch, 16))
    else:
        log.warning("too little data for a held-out validation set; keeping the last weights")
        va = vb = val_raw = None

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(config.seed)
    net = build_unet(config.preset).to(dev)
    nhwc = channels_last(dev)
    if nhwc:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, fused=True if cuda else None)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps, eta_min=config.lr * 0.05)
    result = TrainResult(net=net, method=method, steps=0, patch=patch, val_patches=val_raw)
    best_loss, best_state, bad = float("inf"), None, 0
    running, n_running, risky_seen, seen, waited = 0.0, 0, 0, 0, 0.0
    start = 0
    if resume is not None:
        info = resume.info
        best_state = _restore_tensors(resume, net, opt, dev)
        sched.load_state_dict(info["scheduler"])
        start = resume.step
        result.history = list(info["history"])
        result.best_step = info["best_step"]
        best_loss = float(info["best_loss"])
        bad = int(info["bad"])
        running, n_running = float(info["running"]), int(info["n_running"])
        risky_seen, seen = int(info["risky_seen"]), int(info["seen"])
        waited = float(info.get("waited", 0.0))
        t0 -= float(info["seconds"])
    model: torch.nn.Module = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if cuda else None)
    if config.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if config.precision == "bf16" else \
        contextlib.nullcontext()

    def loss_of(m: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with amp:
            pred = m(torch.cat([a, b])).float()
        pa, pb = pred[: len(a)], pred[len(a):]
        return self_constrained_loss(pa, pb, a, b, kind=config.loss, consistency=config.consistency)

    # Small data (at most POOL_PIXELS of training regions) is held whole and every batch draws
    # from all of it; bigger data streams through a sliding pool of regions.
    region_px = sum(r.n_planes * r.frame_shape[0] * r.frame_shape[1] for r in readers)
    plan = BatchPlan(config.batch, risk_share=config.risk_share, all_regions=region_px <= POOL_PIXELS)
    stream = BatchStream(sampler, plan, start=start, stop=config.steps, rank=rank, world=world)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None, persistent_workers=False)
    it = iter(loader)
    for step in range(start + 1, config.steps + 1):
        w0 = time.perf_counter()
        i, ta, tb, risky = next(it)
        waited += time.perf_counter() - w0
        if config.offset_jitter > 0:
            ta, tb = jitter_offsets(ta, tb, config.offset_jitter, seed=config.seed, step=step)
        assert i == step - 1, (i, step)
        model.train()
        if cuda:
            ta, tb = ta.pin_memory().to(dev, non_blocking=True), tb.pin_memory().to(dev, non_blocking=True)
        if nhwc:
            ta, tb = ta.contiguous(memory_format=torch.channels_last), tb.contiguous(memory_format=torch.channels_last)
        # a compiled network's first step compiles its forward and backward passes: with
        # their kernels from the cache when another run has compiled them (one process only:
        # ranks of a distributed run must not wait for each other's compilation)
        with (cached(entry_parts(net, dev, torch.cat([ta, tb]), config.precision, "train"))
              if config.compile and world == 1 and step == start + 1 else contextlib.nullcontext()):
            loss = loss_of(model, ta, tb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        sched.step()
        value = loss.detach()
        if world > 1:
            torch.distributed.all_reduce(value)
            value /= world
        running += float(value)
        n_running += 1
        risky_seen += int(risky)
        seen += config.batch
        if progress is not None:
            progress(step, config.steps, running / n_running)
        stop = False
        if step % config.val_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - t0
            row: dict[str, Any] = {"step": step, "train_loss": running / n_running, "val_loss": None,
                                   "seconds": elapsed, "lr": sched.get_last_lr()[0],
                                   "risk_share": risky_seen / max(seen, 1)}
            running, n_running = 0.0, 0
            if va is not None and vb is not None:
                model.eval()
                with torch.no_grad():
                    vloss = float(loss_of(net, va.to(dev), vb.to(dev)))
                row["val_loss"] = vloss
                if vloss < best_loss:
                    best_loss, best_state, bad = vloss, _state_dict(net), 0
                    result.best_step = step
                else:
                    bad += 1
                    stop = config.patience > 0 and bad >= config.patience
                if world > 1:  # every process stops together, on rank 0's decision
                    flag = torch.tensor([int(stop)], device=dev if cuda else "cpu")
                    torch.distributed.broadcast(flag, 0)
                    stop = bool(flag.item())
            result.history.append(row)
        result.steps = step
        if stop:
            result.stopped_early = True
            log.info("validation loss has not improved for %d checks: stopping at step %d", bad, step)
            break
        if checkpoint is not None and step % config.checkpoint_every == 0 and step < config.steps:
            result.seconds = time.perf_counter() - t0
            tensors, groups = _saved_tensors(net, best_state, opt)
            info = {"optimizer_groups": groups, "scheduler": sched.state_dict(),
                    "history": result.history, "best_step": result.best_step, "best_loss": best_loss, "bad": bad,
                    "running": running, "n_running": n_running, "risky_seen": risky_seen, "seen": seen,
                    "seconds": result.seconds, "waited": waited}
            checkpoint(result, TrainState(step, tensors, copy.deepcopy(info)))
    del it, loader
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    result.seconds = time.perf_counter() - t0
    result.risk_share = risky_seen / max(seen, 1)
    result.data_wait = waited / max(result.seconds, 1e-9)
    return result
