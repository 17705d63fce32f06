"""Frozen, typed, closed configuration objects.

Every default lives here, once.  Each object validates itself on construction, rejects
unknown keys when read back from JSON (:meth:`from_dict`), and round-trips through
:meth:`to_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Literal, TypeVar, get_args

from .errors import ConfigError

__all__ = [
    "NormMode",
    "BlendMode",
    "InferOn",
    "NormRange",
    "LossKind",
    "Preset",
    "Precision",
    "RiskEstimator",
    "TtaCopies",
    "OutputDtype",
    "OmeVersion",
    "PRESETS",
    "Preset3d",
    "AnyPreset",
    "PRESETS_3D",
    "VolumeTrainConfig",
    "DepthAxis",
    "VolumeSpec",
    "RiskThresholds",
    "NormConfig",
    "TrainConfig",
    "InferConfig",
    "parse_choice",
]

NormMode = Literal["adaptive", "local", "global", "dataset"]
AdaptiveWeight = Literal["range", "signal", "class"]
BlendMode = Literal["gaussian", "uniform", "none"]
InferOn = Literal["twins", "raw"]
#: Which intensity range new data is normalised on (:func:`asn2n_dask.method.normalisation_range`).
NormRange = Literal["auto", "model", "data"]
RiskEstimator = Literal["auto", "reference", "noise-aware"]
LossKind = Literal["l1", "l2"]
Preset = Literal["tiny", "small", "paper"]
Preset3d = Literal["tiny3d", "small3d", "large3d"]
#: Every preset, 2-D then 3-D (``asn2n fit --preset`` takes either kind, by ``--dims``).
AnyPreset = Literal[Preset, Preset3d]
#: The axis a 3-D network sees as depth: ``Z`` (volumes), or ``T`` (an x-y-t stack seen as
#: one volume per channel).
DepthAxis = Literal["Z", "T"]
Precision = Literal["fp32", "bf16"]
#: Flipped/rotated copies averaged by test-time augmentation.
TtaCopies = Literal[1, 2, 4, 8]
#: Output dtype: float32 in input units, or the input's own dtype (rounded and clipped).
OutputDtype = Literal["float32", "input"]
#: OME-Zarr version of a .zarr output: 0.5 (Zarr v3) or 0.4 (Zarr v2).
OmeVersion = Literal["0.5", "0.4"]

#: U-Net channel widths per level, from the top level down to the bottleneck.
PRESETS: dict[str, tuple[int, ...]] = {
    "tiny": (8, 16),
    "small": (32, 64, 128),
    "paper": (64, 128, 256, 512, 512),
}

#: 3-D U-Net channel widths per level (:class:`asn2n_dask.model.UNet3d`), from the top level
#: down to the bottleneck.  Y and X are halved at every level; Z only where
#: :func:`asn2n_dask.model.pooling_kernels` decides (long enough, not too coarse).
#:
#: * ``tiny3d``: tests and examples (a few thousand parameters).
#: * ``small3d``: CPU training, with :class:`VolumeTrainConfig`'s default sub-volume of
#:   16x64x64 voxels and batch 4 (two twins each): a step saves about 0.3 GiB of
#:   activations for its backward pass and the process peaked under 1 GiB, far inside
#:   24 GB of RAM; the CPU's time (about 180 GFLOP a step, forward and backward), not
#:   its memory, limits it.
#: * ``large3d``: one GPU, on sub-volumes of 32x128x128 voxels and batch 4: about 5 GiB
#:   of saved activations a step (counted on torch's meta device, not yet measured on a
#:   GPU), within a 24 GB GPU with the backward pass.
PRESETS_3D: dict[str, tuple[int, ...]] = {
    "tiny3d": (4, 8),
    "small3d": (16, 32, 64),
    "large3d": (32, 64, 128, 256),
}

#: Upper bounds of sizes (pixels, patches, tiles): beyond them a run would exhaust memory
#: or time long before it finished, so they are refused on construction.
MAX_TILE = 4096
#: Smallest inference tile side, in pixels.
MIN_TILE = 8
MAX_PATCH = 1024
MAX_BATCH = 4096
#: Largest seed: torch's generator takes a signed 64-bit integer
MAX_SEED = 2**63 - 1
MAX_OVERLAP = 0.9
#: Smallest distance between tile origins, in pixels (every pixel is computed about
#: ``(tile / stride)**2`` times).
MIN_STRIDE = 2
#: The smallest ``--memory-limit`` of a worker, in bytes: below it a worker pauses before
#: its first task and the run waits for ever.
MIN_MEMORY_LIMIT = 256 * 2**20

T = TypeVar("T")


def parse_choice(value: str, choices: Any, what: str) -> str:
    """Return ``value`` lower-cased if it is one of the ``Literal`` ``choices``.

    Raises
    ------
    ConfigError
        Naming the option, the value and the allowed choices.
    """
    allowed = get_args(choices)
    v = str(value).lower()
    if v not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}; got {value!r}.")
    return v


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}.")
    return cls(**data)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def _types(obj: Any, ints: tuple[str, ...] = (), reals: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> None:
    """Refuse fields of the wrong type (an option read back from JSON may be anything):
    ``ints`` whole numbers, ``reals`` finite numbers (None allowed where the default is
    None), ``flags`` booleans."""
    def what(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 40 else text[:37] + "..."

    for name in ints:
        v = getattr(obj, name)
        _check(isinstance(v, Integral) and not isinstance(v, bool), f"{name} must be a whole number; got {what(v)}.")
    for name in reals:
        v = getattr(obj, name)
        if v is None and getattr(type(obj), name, 0) is None:
            continue
        _check(isinstance(v, Real) and not isinstance(v, bool) and _finite(v),
               f"{name} must be a finite number; got {what(v)}.")
    for name in flags:
        v = getattr(obj, name)
        _check(isinstance(v, bool), f"{name} must be true or false; got {what(v)}.")


@dataclass(frozen=True)
class RiskThresholds:
    """Thresholds of the risk classes, on patches of the [0, 1]-scaled image.

    A patch is *weak background* (class 1) when ``(mean <= bg_mean and std <= bg_std)``
    or ``(skew <= bg_skew and std <= bg_std_skew)``; *sparse bright* (class 2) when
    ``mean <= sb_mean and std >= sb_std and skew >= sb_skew``; otherwise *safe* (0).

    ``estimator="reference"`` is the published rule: the [0, 1] scale runs from the
    image minimum to the ``clip_percentile`` percentile and ``std`` is the patch's plain
    standard deviation.  ``"noise-aware"`` is for raw low-photon camera frames, where
    that rule calls every patch safe (camera noise alone exceeds ``bg_std`` and the
    background sits well above the noise-driven minimum): the scale starts at the
    ``floor_percentile`` percentile, and ``std`` is the signal's, the patch variance
    minus its noise variance (estimated from the 2x2 diagonal differences).

    ``"auto"`` (the default) picks one of the two per channel from the data: the
    reference rule, unless the channel's pixel noise alone, measured on the reference
    scale (the lower quartile over patches of the diagonal-difference estimate),
    exceeds ``bg_std``.  Such a channel has no patch the reference rule could call weak
    background, whatever it shows, so the noise-aware estimator is used instead
    (:func:`asn2n_dask.risk.resolve_estimator`).  Training resolves it once per channel
    (:func:`asn2n_dask.method.decide_method`) and the model keeps the choice, so
    inference uses the estimator the network was trained with.
    """

    patch: int = 64
    clip_percentile: float = 99.99
    bg_mean: float = 0.2
    bg_std: float = 0.028
    bg_skew: float = 0.0
    bg_std_skew: float = 0.05
    sb_mean: float = 0.3
    sb_std: float = 0.075
    sb_skew: float = 3.0
    dataset_ratio: float = 0.10
    estimator: RiskEstimator = "auto"
    floor_percentile: float = 1.0

    def __post_init__(self) -> None:
        _types(self, ints=("patch",), reals=("clip_percentile", "bg_mean", "bg_std", "bg_skew", "bg_std_skew",
                                             "sb_mean", "sb_std", "sb_skew", "dataset_ratio", "floor_percentile"))
        _check(self.patch >= 4, f"risk patch size must be at least 4 pixels; got {self.patch}.")
        _check(50.0 < self.clip_percentile <= 100.0,
               f"clip percentile must be in (50, 100]; got {self.clip_percentile}.")
        _check(0.0 <= self.dataset_ratio <= 1.0,
               f"dataset high-risk ratio must be in [0, 1]; got {self.dataset_ratio}.")
        object.__setattr__(self, "estimator", parse_choice(self.estimator, RiskEstimator, "risk estimator"))
        _check(0.0 <= self.floor_percentile < self.clip_percentile,
               f"risk floor percentile must be in [0, clip percentile); got {self.floor_percentile}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskThresholds:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class NormConfig:
    """How images are brought to the network's range, and back.

    Attributes
    ----------
    mode
        ``global`` (default): one scale for the image.  ``adaptive``: high-risk patches
        use the image-wise global scale, safe patches move towards their own local scale
        by ``adaptive_weight``, blended smoothly.  ``local``: every patch its own scale.
        ``dataset``: ``global`` when more than ``risk.dataset_ratio`` of all patches are
        high-risk, else ``local``.  ``global`` is the default because no scene measured
        so far (real widefield frames, dense and sparse simulations, and the mixed scene
        built for ``adaptive``, over five training seeds) scored higher with another mode
        (``benchmarks/results/quality.md``, ``realdata.md``).
    low_percentile, high_percentile
        Percentiles of the image (global scale) or patch (local scale) mapped to 0 and 1.
    min_range_fraction
        A local scale is never narrower than this fraction of the global range, so that
        flat patches are not stretched onto their noise.
    adaptive_weight
        How far a safe patch moves from the global range towards its own under
        ``adaptive`` (:func:`asn2n_dask.normalize.local_weight`): ``range`` (default), by
        the share of its local (min-max) range that its pixel noise does not explain, so
        a patch whose extremes are set by noise keeps the global range and clean
        structure takes its own; ``signal``, by the share of its variance that is signal;
        ``class``, all the way (the published rule).  High-risk patches take the global
        range either way.  On the mixed benchmark scene ``range`` scored 33.55 dB,
        ``signal`` 32.59, ``class`` (= ``local`` there) 29.30, ``global`` 33.60; on the
        sparse frame, without the floor below, ``range`` 40.6 and ``signal`` 40.0 against
        41.98 with it (``benchmarks/results/quality.md``).
    adaptive_floor
        ``adaptive`` on data the dataset rule calls high-risk (more than
        ``risk.dataset_ratio`` of its patches at risk, e.g. sparse objects on a dark
        background): the safe patches' local scale is never narrower than this fraction
        of the global range.  At 1 (the default) every patch of such data takes the
        global range, and ``adaptive`` equals ``global`` there: on the sparse benchmark
        frame, letting its few safe patches move towards their own ranges scored 40.6 dB
        (``range``) and 40.0 dB (``signal``), against 41.98 with the floor.  Data
        the rule calls low-risk is not affected.  Models saved without
        ``adaptive_weight`` load with ``class`` and their own floor, as they were trained.
    """

    mode: NormMode = "global"
    low_percentile: float = 0.0
    high_percentile: float = 99.99
    min_range_fraction: float = 0.05
    adaptive_floor: float = 1.0
    adaptive_weight: AdaptiveWeight = "range"
    risk: RiskThresholds = field(default_factory=RiskThresholds)

    def __post_init__(self) -> None:
        _types(self, reals=("low_percentile", "high_percentile", "min_range_fraction", "adaptive_floor"))
        object.__setattr__(self, "mode", parse_choice(self.mode, NormMode, "normalisation mode"))
        object.__setattr__(self, "adaptive_weight",
                           parse_choice(self.adaptive_weight, AdaptiveWeight, "adaptive weight"))
        _check(0.0 <= self.low_percentile < self.high_percentile <= 100.0,
               "normalisation percentiles must satisfy 0 <= low < high <= 100; "
               f"got {self.low_percentile}, {self.high_percentile}.")
        _check(0.0 < self.min_range_fraction <= 1.0,
               f"min_range_fraction must be in (0, 1]; got {self.min_range_fraction}.")
        _check(0.0 < self.adaptive_floor <= 1.0, f"adaptive_floor must be in (0, 1]; got {self.adaptive_floor}.")
        if isinstance(self.risk, dict):
            object.__setattr__(self, "risk", RiskThresholds.from_dict(self.risk))
        _check(isinstance(self.risk, RiskThresholds), f"risk must be risk thresholds; got {self.risk!r:.40}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormConfig:
        if "adaptive_weight" not in data:  # saved before the option: the rule it was trained with
            data = {"adaptive_weight": "class", "adaptive_floor": 1.0, **data}
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    """Options of self-constrained Noise2Noise training (one network per channel).

    Attributes
    ----------
    preset
        Network size: ``tiny`` (tests), ``small`` (the default, on CPU and GPU), ``paper``
        (the SN2N paper's width; on the W2S real frames, 12000 steps on a GPU, it scored
        0.7 and 1.7 dB below ``small`` with more false objects).
    steps, patch, batch, lr
        Optimiser steps, training patch side (at most 1024), patches per step (at most
        4096), Adam learning rate
        (cosine-decayed to 5% of it).
    loss, consistency
        ``l1`` or ``l2`` twin-to-twin loss, and the weight of ``|f(A) - f(B)|``
        (default 0: on real widefield frames a weight smoothed away structure the
        averaged reference holds; see the README's Measured section).
    val_fraction, val_every, checkpoint_every
        Share of the data's regions (chosen by position) held out for validation; how
        often validation runs (the best weights are kept) and a checkpoint is written.
    patience
        Stop when the validation loss has not improved for this many checks (0: never).
    seed
        Seeds initialisation, patch sampling and augmentation, once.
    risk_share
        Share of each batch's patches centred on high-risk (weak background or sparse
        bright) patches; ``None`` keeps the data's own share.
    offset_jitter
        Each training patch and its twin are shifted by one offset drawn uniformly from
        ``[-offset_jitter, offset_jitter]`` (normalised units: fractions of the range), so
        the network learns not to depend on where intensities sit in its range, as when
        the camera offset drifts.  0 (default): off.  On a 5-photon crop (600 steps)
        0.05 kept psnr within 1.4 dB over offsets of -2 to +2 ADU (30 ADU range) where
        no jitter lost up to 8.5 dB, at 0.7 dB below it without drift
        (``benchmarks/results/quality.md``, ``jitter`` rows).
    precision, compile
        ``bf16``: autocast the network to bfloat16 (for GPUs); ``fp32`` otherwise.
        ``compile``: ``torch.compile`` the network (the first step's kernels from the
        compile cache of :mod:`asn2n_dask.compiled` when one process trains).
    norm
        Normalisation options, used again at inference.
    """

    preset: Preset = "small"
    steps: int = 3000
    patch: int = 96
    batch: int = 8
    lr: float = 1e-3
    loss: LossKind = "l1"
    consistency: float = 0.0
    val_fraction: float = 0.1
    val_every: int = 250
    checkpoint_every: int = 500
    patience: int = 0
    seed: int = 0
    risk_share: float | None = None
    offset_jitter: float = 0.0
    precision: Precision = "fp32"
    compile: bool = False
    norm: NormConfig = field(default_factory=NormConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preset", parse_choice(self.preset, Preset, "preset"))
        object.__setattr__(self, "loss", parse_choice(self.loss, LossKind, "loss"))
        if isinstance(self.norm, dict):
            object.__setattr__(self, "norm", NormConfig.from_dict(self.norm))
        _check(isinstance(self.norm, NormConfig), f"norm must be normalisation options; got {self.norm!r:.40}.")
        _types(self, ints=("steps", "patch", "batch", "val_every", "checkpoint_every", "patience", "seed"),
               reals=("lr", "consistency", "val_fraction", "risk_share", "offset_jitter"), flags=("compile",))
        _check(self.steps >= 1, f"steps must be at least 1; got {self.steps}.")
        depth = len(PRESETS[self.preset]) - 1
        _check(self.patch >= 2 ** depth * 4 and self.patch % 2 ** depth == 0,
               f"training patch must be a multiple of {2 ** depth} and at least "
               f"{2 ** depth * 4} for preset {self.preset}; got {self.patch}.")
        _check(self.patch <= MAX_PATCH, f"training patch must be at most {MAX_PATCH} pixels; got {self.patch}.")
        _check(1 <= self.batch <= MAX_BATCH, f"batch must be between 1 and {MAX_BATCH}; got {self.batch}.")
        object.__setattr__(self, "precision", parse_choice(self.precision, Precision, "precision"))
        _check(self.patience >= 0, f"patience must be >= 0; got {self.patience}.")
        _check(0 <= self.seed <= MAX_SEED, f"seed must be from 0 to {MAX_SEED}; got {self.seed}.")
        _check(self.risk_share is None or 0.0 <= self.risk_share <= 1.0,
               f"risk share must be in [0, 1]; got {self.risk_share}.")
        _check(self.lr > 0, f"learning rate must be positive; got {self.lr}.")
        _check(self.consistency >= 0, f"consistency weight must be >= 0; got {self.consistency}.")
        _check(0.0 <= self.offset_jitter <= 0.5, f"offset jitter must be in [0, 0.5]; got {self.offset_jitter}.")
        _check(0.0 <= self.val_fraction < 0.5, f"val_fraction must be in [0, 0.5); got {self.val_fraction}.")
        _check(self.val_every >= 1 and self.checkpoint_every >= 1,
               "val_every and checkpoint_every must be at least 1.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {k: v for k, v in data.items() if k != "max_frames"}  # models written before lazy sampling
        return _from_dict(cls, data)


@dataclass(frozen=True)
class InferConfig:
    """Options of tiled inference with weighted blending.

    Attributes
    ----------
    tile
        Tile side in pixels, 8 to 4096.  Tiles are anchored to the frame origin.
    overlap
        Fraction of a tile shared with its neighbour, in [0, 0.9]; neighbouring tiles
        stay at least 2 pixels apart.
    blend
        ``gaussian`` (2-D Gaussian weights), ``uniform`` (plain average) or ``none``
        (each pixel from the one tile whose core holds it).
    sigma_fraction
        Gaussian sigma as a fraction of the tile side (default 1/8).
    weight_floor
        Smallest Gaussian weight, relative to the centre, so weights never vanish.
    infer_on
        ``twins``: average the network's output on the two twins of each tile (the
        domain it was trained on); ``raw``: apply it to the tile itself, whose noise
        the network never saw in training: it scores far lower (W2S real frames: 22.4 dB
        against 32.8 with ``twins``, 800-step model; a simulated 5-photon crop: 19.0
        against 27.3) and is there to time the network alone.
    tta
        Test-time augmentation: the network is applied to 1, 2, 4 or 8 flipped/rotated
        copies of each view and the results, turned back, are averaged.
    batch
        Tiles per forward pass (each tile is two network inputs with ``infer_on="twins"``),
        at most 4096.
    device
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    precision
        Arithmetic of the network on CUDA: ``bf16`` (autocast, the default) or ``fp32``.
        On the CPU the network always runs in fp32.
    compile
        On CUDA, compile the network with ``torch.compile``: about twice the network's
        speed.  The kernels are compiled once per machine and kept in a cache
        (:mod:`asn2n_dask.compiled`), so only the first run with a given torch, GPU
        model, network, tile, tile batch and precision pays the compilation (a minute
        or so).  Ignored on the CPU.
    norm_range
        The intensity range each channel is normalised on
        (:func:`asn2n_dask.method.normalisation_range`): ``model``, the range of the
        model's training data, so the network sees intensities as it was trained on them;
        ``data``, the range of the data being denoised; ``auto`` (default), the model's
        unless the two ranges overlap by less than half the narrower one (data unlike the
        training data, e.g. another camera offset), then the data's with a warning.  The
        ranges are extreme percentiles (by default the minimum): on low-photon frames
        they move by an ADU or two between acquisitions, and a network normalised on a
        range 1 ADU off its training range lost 2 to 5 dB on 5-photon frames.
    """

    tile: int = 128
    overlap: float = 0.5
    blend: BlendMode = "gaussian"
    sigma_fraction: float = 0.125
    weight_floor: float = 1e-3
    infer_on: InferOn = "twins"
    tta: int = 1
    batch: int = 16
    device: str = "auto"
    precision: Precision = "bf16"
    compile: bool = False
    norm_range: NormRange = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "blend", parse_choice(self.blend, BlendMode, "blend"))
        object.__setattr__(self, "norm_range", parse_choice(self.norm_range, NormRange, "normalisation range"))
        object.__setattr__(self, "infer_on", parse_choice(self.infer_on, InferOn, "infer-on"))
        object.__setattr__(self, "precision", parse_choice(self.precision, Precision, "precision"))
        _types(self, ints=("tile", "tta", "batch"), reals=("overlap", "sigma_fraction", "weight_floor"),
               flags=("compile",))
        _check(isinstance(self.device, str), f"device must be auto, cpu or cuda[:N]; got {self.device!r:.40}.")
        _check(MIN_TILE <= self.tile <= MAX_TILE, f"tile must be between {MIN_TILE} and {MAX_TILE} pixels; got "
               f"{self.tile}.")
        _check(0.0 <= self.overlap <= MAX_OVERLAP, f"overlap must be in [0, {MAX_OVERLAP}]; got {self.overlap}.")
        _check(self.stride >= MIN_STRIDE,
               f"tiles {self.tile} px wide at {self.overlap} overlap are {self.stride} px apart, fewer than "
               f"{MIN_STRIDE}; use a lower overlap or a larger tile.")
        _check(self.sigma_fraction > 0, f"sigma fraction must be positive; got {self.sigma_fraction}.")
        _check(0.0 < self.weight_floor <= 1.0, f"weight floor must be in (0, 1]; got {self.weight_floor}.")
        _check(1 <= self.batch <= MAX_BATCH, f"tile batch must be between 1 and {MAX_BATCH}; got {self.batch}.")
        _check(self.tta in get_args(TtaCopies), f"tta must be 1, 2, 4 or 8; got {self.tta}.")
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               f"device must be auto, cpu or cuda[:N]; got {self.device!r}.")

    @property
    def stride(self) -> int:
        """Distance between neighbouring tile origins, in pixels."""
        return max(1, int(round(self.tile * (1.0 - self.overlap))))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class VolumeTrainConfig:
    """Options of self-constrained Noise2Noise training of a 3-D U-Net on one volume.

    The network sees sub-volumes (Z, Y, X) at once; the twins are made slice by slice
    in Y-X (:func:`asn2n_dask.pairs.make_volume_twins`), Z untouched.

    Attributes
    ----------
    preset
        Network size (:data:`PRESETS_3D`): ``tiny3d`` (tests), ``small3d`` (CPU),
        ``large3d`` (one GPU).
    steps, batch, lr
        Optimiser steps, sub-volumes per step (at most 4096), Adam learning rate
        (cosine-decayed to 5% of it).  A default step sees 4 x 16 x 64 x 64 voxels,
        about 3.5 times the pixels of a default 2-D step (8 x 96 x 96), hence fewer
        steps than :class:`TrainConfig`'s.
    patch
        Training sub-volume (Z, Y, X) in voxels; each side at most 1024.  Y and X must
        be multiples of ``2 ** (levels - 1)`` and at least four times that; Z is any
        size from 1 (cut down to the volume's depth, and to a multiple of the Z pooling
        factor the network is given for it).
    anisotropy
        Voxel size along Z over voxel size in Y-X (e.g. 0.15 um / 0.1 um = 1.5): with
        the patch's Z size, it decides at which levels the network also pools Z
        (:func:`asn2n_dask.model.pooling_kernels`).
    loss, consistency
        As :class:`TrainConfig`'s.
    seed
        Seeds initialisation, sub-volume sampling and augmentation, once.
    norm
        Normalisation: the volume's percentile range (``low_percentile`` to
        ``high_percentile``), one scale for the whole volume; only ``global`` mode is
        available for volumes so far.
    """

    preset: Preset3d = "small3d"
    steps: int = 1000
    patch: tuple[int, int, int] = (16, 64, 64)
    batch: int = 4
    lr: float = 1e-3
    anisotropy: float = 1.0
    loss: LossKind = "l1"
    consistency: float = 0.0
    seed: int = 0
    norm: NormConfig = field(default_factory=lambda: NormConfig(mode="global"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "preset", parse_choice(self.preset, Preset3d, "3-D preset"))
        object.__setattr__(self, "loss", parse_choice(self.loss, LossKind, "loss"))
        if isinstance(self.norm, dict):
            object.__setattr__(self, "norm", NormConfig.from_dict(self.norm))
        _check(isinstance(self.norm, NormConfig), f"norm must be normalisation options; got {self.norm!r:.40}.")
        _check(self.norm.mode == "global",
               f"volumes are normalised on one global scale so far; got normalisation mode {self.norm.mode}.")
        _types(self, ints=("steps", "batch", "seed"), reals=("lr", "anisotropy", "consistency"))
        patch = self.patch
        _check(isinstance(patch, (tuple, list)) and len(patch) == 3
               and all(isinstance(v, Integral) and not isinstance(v, bool) for v in patch),
               f"patch must be three whole numbers (Z, Y, X); got {patch!r:.40}.")
        object.__setattr__(self, "patch", tuple(int(v) for v in patch))
        pz, py, px = self.patch
        m = 2 ** (len(PRESETS_3D[self.preset]) - 1)
        _check(pz >= 1 and all(v >= 4 * m and v % m == 0 for v in (py, px)),
               f"training patch must be at least 1 voxel in Z and a multiple of {m}, at least {4 * m}, in Y and X "
               f"for preset {self.preset}; got {pz}x{py}x{px}.")
        _check(max(self.patch) <= MAX_PATCH, f"training patch must be at most {MAX_PATCH} voxels a side; "
               f"got {pz}x{py}x{px}.")
        _check(self.steps >= 1, f"steps must be at least 1; got {self.steps}.")
        _check(1 <= self.batch <= MAX_BATCH, f"batch must be between 1 and {MAX_BATCH}; got {self.batch}.")
        _check(self.lr > 0, f"learning rate must be positive; got {self.lr}.")
        _check(self.anisotropy > 0, f"anisotropy (Z voxel size over Y-X voxel size) must be positive; "
               f"got {self.anisotropy}.")
        _check(self.consistency >= 0, f"consistency weight must be >= 0; got {self.consistency}.")
        _check(0 <= self.seed <= MAX_SEED, f"seed must be from 0 to {MAX_SEED}; got {self.seed}.")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeTrainConfig:
        return _from_dict(cls, data)


#: Pooling kernels (kz, ky, kx) a level of a 3-D U-Net may have.
POOL_KERNELS = ((1, 2, 2), (2, 2, 2))


@dataclass(frozen=True)
class VolumeSpec:
    """How the 3-D networks of a model were built and how they are applied.

    Attributes
    ----------
    preset
        Network size (:data:`PRESETS_3D`).
    patch
        The sub-volume (Z, Y, X) the networks were trained on, in voxels: the training
        option cut down to the data (:func:`asn2n_dask.train3d.volume_patch`).  Its Z
        is the default Z tile at inference.
    anisotropy
        Voxel size along the depth axis over voxel size in Y-X, as trained.
    pools
        Pooling kernel (kz, ky, kx) of each level, each ``(1, 2, 2)`` or ``(2, 2, 2)``
        (:func:`asn2n_dask.model.pooling_kernels` at training time; kept, so that the
        networks are rebuilt as they were trained whatever that rule becomes).
    depth_axis
        ``Z``: the networks see (Z, Y, X) volumes, one per time point and channel;
        ``T``: data without a Z axis, the time axis playing Z, one (T, Y, X) volume per
        channel.

    Examples
    --------
    >>> spec = VolumeSpec("tiny3d", (8, 32, 32), 1.0, ((2, 2, 2),))
    >>> spec.multiple, spec.tile_z
    ((2, 2, 2), 8)
    """

    preset: Preset3d
    patch: tuple[int, int, int]
    anisotropy: float
    pools: tuple[tuple[int, int, int], ...]
    depth_axis: DepthAxis = "Z"

    def __post_init__(self) -> None:
        object.__setattr__(self, "preset", parse_choice(self.preset, Preset3d, "3-D preset"))
        _check(isinstance(self.depth_axis, str) and self.depth_axis.upper() in get_args(DepthAxis),
               f"depth axis must be Z or T; got {self.depth_axis!r:.40}.")
        object.__setattr__(self, "depth_axis", self.depth_axis.upper())
        _types(self, reals=("anisotropy",))
        _check(self.anisotropy > 0, f"anisotropy must be positive; got {self.anisotropy}.")

        def whole(v: Any) -> bool:
            return isinstance(v, Integral) and not isinstance(v, bool)

        patch = self.patch
        _check(isinstance(patch, (tuple, list)) and len(patch) == 3 and all(whole(v) for v in patch)
               and all(1 <= v <= MAX_PATCH for v in patch),
               f"patch must be three whole numbers (Z, Y, X) from 1 to {MAX_PATCH}; got {patch!r:.40}.")
        object.__setattr__(self, "patch", tuple(int(v) for v in patch))
        levels = len(PRESETS_3D[self.preset])
        pools = self.pools
        _check(isinstance(pools, (tuple, list)) and len(pools) == levels - 1
               and all(isinstance(k, (tuple, list)) and tuple(k) in POOL_KERNELS for k in pools),
               f"pools must be {levels - 1} pooling kernel(s) for preset {self.preset}, each [1, 2, 2] or "
               f"[2, 2, 2]; got {pools!r:.60}.")
        object.__setattr__(self, "pools", tuple(tuple(int(v) for v in k) for k in pools))
        bad = [f"{n} {v}" for n, v, m in zip("ZYX", self.patch, self.multiple) if v % m]
        _check(not bad, f"patch {self.patch} does not fit the network: {', '.join(bad)} not a multiple of "
               f"{self.multiple}.")

    @property
    def multiple(self) -> tuple[int, int, int]:
        """Input sizes along (Z, Y, X) must be multiples of these
        (:attr:`asn2n_dask.model.UNet3d.multiple`)."""
        z = y = x = 1
        for kz, ky, kx in self.pools:
            z, y, x = z * kz, y * ky, x * kx
        return z, y, x

    @property
    def tile_z(self) -> int:
        """The default Z tile at inference: the training sub-volume's Z."""
        return self.patch[0]

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "patch": list(self.patch), "anisotropy": self.anisotropy,
                "pools": [list(k) for k in self.pools], "depth_axis": self.depth_axis}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeSpec:
        """Read :meth:`to_dict`'s output.

        Raises
        ------
        ConfigError
            An unknown or missing key, or a value of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a volume description must be an object; got {type(data).__name__}.")
        missing = sorted({f.name for f in dataclasses.fields(cls)} - set(data))
        if missing:
            raise ConfigError(f"a volume description has no key(s) {', '.join(missing)}.")
        return _from_dict(cls, data)
