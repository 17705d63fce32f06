"""Self-constrained Noise2Noise training of one network on the frames of one channel.

Each frame is risk-assessed and its normalisation fields computed; random patches of
the raw frame (with their fields, flipped and rotated alike) are split into twins and
normalised by the same function inference applies to each tile, and the network learns
to map one twin to the other, both ways, with a consistency term that pulls the two
predictions together.
"""

from __future__ import annotations

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

from .config import PRESETS, TrainConfig
from .errors import InputError
from .model import UNet, build_unet
from .normalize import norm_params
from .predict import normalised_views
from .risk import FrameStats, assess_risk, dataset_decision
from .stats import channel_stats

__all__ = ["self_constrained_loss", "TrainResult", "PatchSampler", "train_channel", "min_train_side"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]
Checkpoint = Callable[["TrainResult"], None]


def self_constrained_loss(pred_a: torch.Tensor, pred_b: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                          *, kind: str = "l1", consistency: float = 0.5) -> torch.Tensor:
    """``D(f(A), B) + D(f(B), A) + consistency * mean|f(A) - f(B)|``, D = L1 or L2."""
    d = F.l1_loss if kind == "l1" else F.mse_loss
    return d(pred_a, b) + d(pred_b, a) + consistency * (pred_a - pred_b).abs().mean()


def min_train_side(preset: str) -> int:
    """Smallest frame side (pixels) a preset can be trained on."""
    return 4 * 2 ** (len(PRESETS[preset]) - 1)


@dataclass
class TrainResult:
    """A trained network and what is known about how it was trained."""

    net: UNet
    stats: FrameStats
    dataset_mode: str
    high_risk_ratio: float
    steps: int
    patch: int
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class PatchSampler:
    """Random, augmented patches of noisy frames, turned into normalised twin pairs.

    Each patch is cut from the raw frame together with its normalisation fields, flipped
    and rotated, split into its two twins and normalised: exactly what inference does to
    a tile (:func:`asn2n_dask.predict.normalised_views`), so training and inference see
    the same kind of input.  Seeded once.

    Parameters
    ----------
    planes : sequence of ndarray, shape (3, H_i, W_i)
        Per frame: raw pixels, normalisation offset and scale (input units).
    patch : int
        Patch side.
    rows : sequence of (int, int)
        Per frame, the row range ``[start, stop)`` patches may be drawn from.
    rng : numpy Generator
    """

    def __init__(self, planes: Sequence[NDArray[np.floating]], patch: int, rows: Sequence[tuple[int, int]],
                 rng: np.random.Generator) -> None:
        self.planes, self.patch, self.rows, self.rng = planes, patch, rows, rng
        self.frames = [i for i, (r0, r1) in enumerate(rows) if r1 - r0 >= patch]
        weights = np.array([(rows[i][1] - rows[i][0]) * planes[i].shape[-1] for i in self.frames], float)
        self.p = weights / weights.sum() if len(self.frames) else weights

    def __len__(self) -> int:
        return len(self.frames)

    def positions(self, n: int) -> list[tuple[int, int, int]]:
        """``n`` random (frame, y, x) patch origins."""
        out = []
        for i in self.rng.choice(self.frames, size=n, p=self.p):
            r0, r1 = self.rows[i]
            y = int(self.rng.integers(r0, r1 - self.patch + 1))
            x = int(self.rng.integers(0, self.planes[i].shape[-1] - self.patch + 1))
            out.append((int(i), y, x))
        return out

    def crops(self, positions: list[tuple[int, int, int]], *, augment: bool = True) -> torch.Tensor:
        """(n, 3, patch, patch) float64 crops of (raw, offset, scale), augmented alike."""
        p = self.patch
        out = torch.from_numpy(np.stack([self.planes[i][:, y : y + p, x : x + p] for i, y, x in positions])
                               .astype(np.float64))
        if augment:
            k = self.rng.integers(0, 4, len(positions))
            flip = self.rng.integers(0, 2, len(positions)).astype(bool)
            out = torch.stack([torch.rot90(q.flip(-1) if f else q, int(kk), dims=(-2, -1))
                               for q, kk, f in zip(out, k, flip)])
        return out

    def batch(self, n: int, *, augment: bool = True,
              positions: list[tuple[int, int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (n, 1, patch, patch) float32 tensors: the normalised twins of each patch."""
        crops = self.crops(positions if positions is not None else self.positions(n), augment=augment)
        ta, tb = normalised_views(crops, "twins")
        if augment and self.rng.random() < 0.5:  # which twin plays input is arbitrary
            ta, tb = tb, ta
        return ta, tb


def _prepare(frames: Sequence[NDArray[np.number]], config: TrainConfig) -> tuple[
        list[NDArray[np.float32]], FrameStats, str, float]:
    # The channel's statistics, risk and normalisation fields exactly as inference makes them.
    cs = channel_stats(np.concatenate([np.asarray(f).ravel() for f in frames])[None], config.norm)[0]
    reports = [assess_risk(f, thresholds=config.norm.risk, stats=cs.risk) for f in frames]
    decision = dataset_decision(reports, config.norm.risk)
    planes = []
    for f, r in zip(frames, reports):
        params = norm_params(f, config=config.norm, stats=cs.norm, risk=r, dataset_mode=decision)
        planes.append(np.stack([np.asarray(f, np.float32), params.offset, params.scale]).astype(np.float32))
    ratio = float(np.mean(np.concatenate([r.risk_map.ravel() != 0 for r in reports])))
    return planes, cs.norm, decision, ratio


def train_channel(frames: Sequence[NDArray[np.number]], config: TrainConfig = TrainConfig(), *,
                  device: torch.device | str = "cpu", progress: Progress | None = None,
                  checkpoint: Checkpoint | None = None) -> TrainResult:
    """Train one network on the frames of one channel.

    Parameters
    ----------
    frames : sequence of ndarray, shape (H_i, W_i)
        Noisy frames of one colour channel, in input units, finite.
    config : TrainConfig
        Preset, steps, patch, loss, seed, normalisation...
    device : torch device
        Where to train.
    progress : callable, optional
        Called as ``progress(step, total, loss)`` after each step.
    checkpoint : callable, optional
        Called with the current :class:`TrainResult` every ``config.checkpoint_every``
        steps before the last (the network holds the weights of that moment).

    Returns
    -------
    TrainResult
        The network holds the best validation weights when a validation split exists,
        else the last ones.
    """
    t0 = time.perf_counter()
    multiple = 2 ** (len(PRESETS[config.preset]) - 1)
    smallest = min(min(np.shape(f)) for f in frames)
    need = min_train_side(config.preset)
    if smallest < need:
        raise InputError(f"frames of {smallest} pixels are too small to train preset {config.preset}: "
                         f"it needs at least {need}x{need}; use a smaller preset or larger frames.")
    patch = min(config.patch, smallest // multiple * multiple)

    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    planes, stats, decision, ratio = _prepare(frames, config)

    # Validation: the bottom rows of each frame tall enough to spare a patch there.
    rows, val_rows = [], []
    for pl in planes:
        h = pl.shape[-2]
        n_val = int(round(h * config.val_fraction))
        if config.val_fraction > 0 and n_val >= patch and h - n_val >= patch:
            rows.append((0, h - n_val))
            val_rows.append((h - n_val, h))
        else:
            rows.append((0, h))
            val_rows.append((0, 0))
    sampler = PatchSampler(planes, patch, rows, rng)
    val_sampler = PatchSampler(planes, patch, val_rows, np.random.default_rng(config.seed + 1))
    val_pos = val_sampler.positions(max(config.batch, 16)) if len(val_sampler) else []
    if not val_pos:
        log.warning("frames too small for a validation split; keeping the last weights")

    dev = torch.device(device)
    net = build_unet(config.preset).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps, eta_min=config.lr * 0.05)
    result = TrainResult(net=net, stats=stats, dataset_mode=decision, high_risk_ratio=ratio,
                         steps=0, patch=patch)
    best_loss, best_state = float("inf"), None
    running, n_running = 0.0, 0

    def loss_of(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self_constrained_loss(net(a), net(b), a, b, kind=config.loss, consistency=config.consistency)

    for step in range(1, config.steps + 1):
        net.train()
        ta, tb = sampler.batch(config.batch)
        loss = loss_of(ta.to(dev), tb.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        n_running += 1
        if progress is not None:
            progress(step, config.steps, running / n_running)
        if step % config.val_every == 0 or step == config.steps:
            row: dict[str, Any] = {"step": step, "train_loss": running / n_running, "val_loss": None,
                                   "seconds": time.perf_counter() - t0}
            running, n_running = 0.0, 0
            if val_pos:
                net.eval()
                va, vb = val_sampler.batch(len(val_pos), augment=False, positions=val_pos)
                with torch.no_grad():
                    vloss = float(loss_of(va.to(dev), vb.to(dev)))
                row["val_loss"] = vloss
                if vloss < best_loss:
                    best_loss, best_state = vloss, copy.deepcopy(net.state_dict())
                    result.best_step = step
            result.history.append(row)
        result.steps = step
        if checkpoint is not None and step % config.checkpoint_every == 0 and step < config.steps:
            result.seconds = time.perf_counter() - t0
            checkpoint(result)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    result.seconds = time.perf_counter() - t0
    return result
