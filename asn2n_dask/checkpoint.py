"""Models on disk: safetensors weights plus one JSON file; loading never unpickles.

A model directory holds ``model.json`` (format, package version, every training
option, and per channel: name, weights file, its SHA-256, the data's normalisation
statistics, the ``dataset`` decision, the risk estimator, the whole
:class:`asn2n_dask.method.ChannelMethod` as ``method``, training history) and one
``channel-<i>.safetensors`` per colour channel.  Files written before ``method`` was
kept load with the method their other fields give.

A model of 3-D networks (:class:`asn2n_dask.model.UNet3d`) says ``"dims": 3`` and
``"format_version": 2``, keeps its :class:`asn2n_dask.config.VolumeTrainConfig` as
``train`` and how its networks are built and applied
(:class:`asn2n_dask.config.VolumeSpec`) as ``volume``::

    "dims": 3,
    "volume": {"preset": "small3d", "patch": [16, 64, 64], "anisotropy": 1.0,
               "pools": [[2, 2, 2], [1, 2, 2]], "depth_axis": "Z"}

A ``model.json`` without ``dims`` is a model of 2-D networks, written and read as before
3-D models existed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from ._version import __version__
from .config import PRESETS, PRESETS_3D, NormConfig, TrainConfig, VolumeSpec, VolumeTrainConfig
from .errors import ConfigError, ModelError
from .method import ChannelMethod
from .model import UNet, UNet3d
from .risk import FrameStats

__all__ = ["ChannelModel", "Model", "save_model", "load_model", "model_is_complete", "MODEL_FORMAT",
           "TrainState", "save_train_state", "load_train_state", "clear_train_state"]

MODEL_FORMAT = "asn2n-dask-model"
#: The newest format this version reads: 1 for 2-D models (written as they always were),
#: 2 for 3-D ones, so that a version without 3-D models refuses them in one sentence.
FORMAT_VERSION = 2
FORMAT_VERSION_2D = 1


@dataclass
class ChannelModel:
    """The network of one colour channel and what it was trained on.

    ``stats``, ``dataset_mode``, ``high_risk_ratio`` and ``risk_estimator`` (with
    ``extra["risk_noise_sd"]``) are what training decided for the channel; read them
    together as :meth:`Model.method`.
    """

    name: str
    net: UNet | UNet3d
    stats: FrameStats
    dataset_mode: str = "local"
    high_risk_ratio: float = 0.0
    #: The risk estimator this channel was trained with (the resolved ``"auto"``).
    risk_estimator: str = "reference"
    steps: int = 0
    best_step: int | None = None
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Model:
    """A trained Adaptive-SN2N model: one network per colour channel.

    Attributes
    ----------
    train : TrainConfig or VolumeTrainConfig
        Every training option (preset, normalisation, loss, seed...): a
        :class:`TrainConfig` for 2-D networks, a :class:`VolumeTrainConfig` for 3-D ones.
    channels : list of ChannelModel
        In the order of the input's channel axis (one entry for single-channel data).
    info : dict
        Provenance: inputs, shapes, dtype, per-channel statistics and their digests,
        device, wall time.
    volume : VolumeSpec or None
        3-D networks: how they were built and are applied (preset, training sub-volume,
        anisotropy, pooling kernels, depth axis); None for 2-D networks.
    """

    train: TrainConfig | VolumeTrainConfig
    channels: list[ChannelModel]
    info: dict[str, Any] = field(default_factory=dict)
    volume: VolumeSpec | None = None

    def __post_init__(self) -> None:
        if (self.volume is None) != isinstance(self.train, TrainConfig):
            raise ConfigError("a model of 2-D networks has a TrainConfig and no volume description, one of 3-D "
                              "networks a VolumeTrainConfig and a VolumeSpec; got "
                              f"{type(self.train).__name__} and {type(self.volume).__name__}.")

    @property
    def dims(self) -> int:
        """Spatial axes the networks see at once: 2 (frames, Y-X) or 3 (volumes)."""
        return 2 if self.volume is None else 3

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def method(self, channel: int) -> ChannelMethod:
        """How one channel is processed, as decided when it was trained
        (:func:`asn2n_dask.method.decide_method`)."""
        ch = self.channels[channel]
        noise = ch.extra.get("risk_noise_sd")
        return ChannelMethod.of(self.train.norm, ch.stats, risk_estimator=ch.risk_estimator,
                                dataset_mode=ch.dataset_mode, high_risk_ratio=ch.high_risk_ratio,
                                noise_sd=None if noise is None else float(noise), spatial_dims=self.dims)

    def norm(self, channel: int) -> NormConfig:
        """The normalisation of one channel: the training options with the risk
        estimator that channel was trained with (``"auto"`` resolved)."""
        return self.method(channel).norm(self.train.norm)

    @property
    def multiple(self) -> int:
        """Frame sides (Y and X) must be multiples of this; a 3-D network's three
        multiples are ``volume.multiple``."""
        if self.volume is not None:
            return self.volume.multiple[1]
        return 2 ** (len(PRESETS[self.train.preset]) - 1)

    @property
    def widths(self) -> tuple[int, ...]:
        """Feature channels per level of every channel's network."""
        return PRESETS_3D[self.train.preset] if self.volume is not None else PRESETS[self.train.preset]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors as safetensors, atomically, with the permissions of any file this
    process creates (0644 under the usual umask: safetensors' own ``save_file`` makes
    files only their owner can read)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(save(tensors, metadata={"format": MODEL_FORMAT}))
    os.replace(tmp, path)


def save_model(model: Model, directory: str | os.PathLike[str], *, complete: bool = True) -> Path:
    """Write ``model`` to ``directory`` (created if needed; files replaced atomically).

    ``complete=False`` marks a checkpoint written while training is still going on.

    Returns
    -------
    Path
        The ``model.json`` written.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    channels = []
    for i, ch in enumerate(model.channels):
        name = f"channel-{i}.safetensors"
        _write_tensors(d / name, {k: v.detach().cpu().contiguous() for k, v in ch.net.state_dict().items()})
        channels.append({
            "name": ch.name,
            "weights": name,
            "sha256": _sha256(d / name),
            "stats": ch.stats.to_dict(),
            "dataset_mode": ch.dataset_mode,
            "high_risk_ratio": ch.high_risk_ratio,
            "risk_estimator": ch.risk_estimator,
            "method": model.method(i).to_dict(),
            "steps": ch.steps,
            "best_step": ch.best_step,
            "seconds": ch.seconds,
            "history": ch.history,
            "training": ch.extra,
        })
    doc: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION_2D if model.volume is None else FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
    }
    if model.volume is not None:  # 2-D models: no key of their own, as before 3-D models existed
        doc["dims"] = 3
    doc["widths"] = list(model.widths)
    doc["train"] = model.train.to_dict()
    if model.volume is not None:
        doc["volume"] = model.volume.to_dict()
    doc["channels"] = channels
    doc["provenance"] = model.info
    path = d / "model.json"
    _atomic_write_text(path, json.dumps(doc, indent=2))
    return path


def _marked_unfinished(path: Path) -> bool:
    """Whether a readable model.json says its training has not finished (a malformed one
    is left to the full check)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("complete", True) is False


def _progress_of(directory: Path) -> str:
    """How far an unfinished training got, in words."""
    try:
        doc = json.loads((directory / "model.json").read_text())
        total = int(doc["train"]["steps"])
        chans = doc["channels"]
        last = chans[-1]
        where = f" in channel {len(chans)}" if len(chans) > 1 else ""
        return f"step {int(last.get('steps', 0))} of {total}{where}, {len(chans) - 1} channel(s) finished before it"
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "its progress is unreadable"


def model_is_complete(directory: str | os.PathLike[str]) -> bool:
    """Whether a model directory holds a finished model (not a training checkpoint)."""
    try:
        return bool(json.loads((Path(directory) / "model.json").read_text()).get("complete", True))
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def load_model(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu",
               allow_unfinished: bool = False) -> Model:
    """Read a model directory written by :func:`save_model`.

    Weights are read with safetensors (no code is ever unpickled) and checked against
    the SHA-256 recorded in ``model.json``.  A checkpoint of a training that has not
    finished is refused unless ``allow_unfinished``.

    Raises
    ------
    ModelError
        When the directory, its JSON or its weights are missing, malformed or altered.
    """
    d = Path(directory)
    path = d / "model.json"
    if not path.is_file():
        raise ModelError(f"no model at {d}: model.json is missing; train one with 'asn2n fit'.")
    if not allow_unfinished and _marked_unfinished(path):
        raise ModelError(f"the model in {d} is a checkpoint of a training that did not finish ({_progress_of(d)}); "
                         "finish it with 'asn2n fit ... --resume', or pass --allow-unfinished to use it as it is.")
    doc, train, volume, fields = _read_model_json(path)
    channels: list[ChannelModel] = []
    for e, f in zip(doc["channels"], fields):
        try:
            wpath = d / Path(e["weights"]).name
            if not wpath.is_file():
                raise ModelError(f"weights {wpath} listed in {path} are missing.")
            if _sha256(wpath) != e["sha256"]:
                raise ModelError(f"weights {wpath} do not match the checksum in {path}; the file was "
                                 "altered or damaged: re-train or restore the model.")
            net: UNet | UNet3d = UNet(PRESETS[train.preset]) if volume is None else \
                UNet3d(PRESETS_3D[volume.preset], volume.pools)
            net.load_state_dict(load_file(str(wpath), device="cpu"), strict=True)
        except ModelError:
            raise
        except Exception as exc:  # safetensors / torch errors on a bad file
            why = " ".join(str(exc).split())
            why = why if len(why) <= 200 else why[:197] + "..."
            raise ModelError(f"cannot load weights from {d} ({type(exc).__name__}: {why}); re-train the model with "
                             "'asn2n fit' or restore it.") from None
        channels.append(ChannelModel(net=net.to(device).eval(), **f))
    return Model(train=train, channels=channels, info=dict(doc.get("provenance") or {}), volume=volume)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_model_json(path: Path) -> tuple[dict[str, Any], TrainConfig | VolumeTrainConfig, VolumeSpec | None,
                                          list[dict[str, Any]]]:
    """``model.json`` read and every field checked: the document, the training options,
    the 3-D networks' description (None for 2-D ones) and, per channel, the
    :class:`ChannelModel` fields besides the network.

    Raises
    ------
    ModelError
        Naming the field that is missing, of the wrong type or out of range.
    """
    import math
    from numbers import Integral, Real

    def bad(field: str, expected: str, got: Any) -> ModelError:
        return ModelError(f"{path}: {field} must be {expected}, not {_short(got)}; re-train the model with 'asn2n "
                          "fit' or restore its model.json.")

    def integer(field: str, v: Any, low: int = 0) -> int:
        if not isinstance(v, Integral) or isinstance(v, bool) or v < low:
            raise bad(field, f"an integer >= {low}", v)
        return int(v)

    def real(field: str, v: Any, low: float = 0.0, high: float = math.inf) -> float:
        try:
            ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and low <= float(v) <= high
        except OverflowError:  # an integer too large for a float
            ok = False
        if not ok:
            raise bad(field, f"a number in [{low}, {high}]", v)
        return float(v)

    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"{path} cannot be read ({type(err).__name__}); restore the model or re-train it with "
                         "'asn2n fit'.") from None
    except (ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else "not valid JSON"
        raise ModelError(f"{path} is {why}; restore the model or re-train it with 'asn2n fit'.") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path} must hold a JSON object, not {type(doc).__name__}; restore the model or re-train "
                         "it with 'asn2n fit'.")
    if doc.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path} is not an asn2n-dask model (format {_short(doc.get('format'))}).")
    version = integer("format_version", doc.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer asn2n-dask (format {version}); upgrade the package.")
    dims = doc.get("dims", 2)  # absent: a 2-D model, as every model was before 3-D ones
    if dims not in (2, 3) or isinstance(dims, bool):
        raise bad("dims", "2 (frames) or 3 (volumes)", dims)
    if dims == 2 and "volume" in doc:
        raise bad("volume", "absent from a model of 2-D networks (dims 2)", doc["volume"])
    if not isinstance(doc.get("train"), dict):
        raise bad("train", "an object of training options", doc.get("train"))

    def invalid(field: str, err: Exception) -> ModelError:
        return ModelError(f"{path}: field {field} is not valid ({' '.join(str(err).split()).rstrip('.')}); re-train "
                          "the model with 'asn2n fit' or restore its model.json.")

    train: TrainConfig | VolumeTrainConfig
    volume: VolumeSpec | None = None
    try:
        train = TrainConfig.from_dict(doc["train"]) if dims == 2 else VolumeTrainConfig.from_dict(doc["train"])
    except (ConfigError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise invalid("train", err) from None
    if dims == 3:
        assert isinstance(train, VolumeTrainConfig)
        if not isinstance(doc.get("volume"), dict):
            raise bad("volume", "an object describing the 3-D networks", doc.get("volume"))
        try:
            volume = VolumeSpec.from_dict(doc["volume"])
        except (ConfigError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise invalid("volume", err) from None
        for key in ("preset", "anisotropy"):
            if getattr(volume, key) != getattr(train, key):
                raise bad(f"volume.{key}", f"the training option's {getattr(train, key)!r}",
                          getattr(volume, key))
    entries = doc.get("channels")
    if not isinstance(entries, list) or not entries:
        raise bad("channels", "a non-empty list of channel networks", entries)
    if not isinstance(doc.get("provenance", {}), (dict, type(None))):
        raise bad("provenance", "an object", doc.get("provenance"))
    fields = []
    for i, e in enumerate(entries):
        at = f"channels[{i}]"
        if not isinstance(e, dict):
            raise bad(at, "an object", e)
        name = e.get("name", str(i))
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise bad(f"{at}.name", "a string", name)
        for key in ("weights", "sha256"):
            if not isinstance(e.get(key), str) or not e[key]:
                raise bad(f"{at}.{key}", "a string", e.get(key))
        stats = e.get("stats")
        if not isinstance(stats, dict):
            raise bad(f"{at}.stats", "an object with lo and hi", stats)
        lo, hi = (real(f"{at}.stats.{k}", stats.get(k), -math.inf) for k in ("lo", "hi"))
        if hi < lo:
            raise bad(f"{at}.stats", "lo <= hi", stats)
        mode = e.get("dataset_mode", "local")
        if mode not in ("local", "global"):
            raise bad(f"{at}.dataset_mode", "local or global", mode)
        estimator = e.get("risk_estimator")  # None: saved before it was kept per channel (ChannelMethod.of)
        if estimator is not None and estimator not in ("reference", "noise-aware"):
            raise ModelError(f"{path} names an unknown risk estimator {_short(estimator)} ({at}.risk_estimator); "
                             "re-train the model with 'asn2n fit'.")
        best = e.get("best_step")
        history = e.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise bad(f"{at}.history", "a list of objects", history)
        extra = e.get("training") or {}
        if not isinstance(extra, dict):
            raise bad(f"{at}.training", "an object", extra)
        ratio = real(f"{at}.high_risk_ratio", e.get("high_risk_ratio", 0.0), 0.0, 1.0)
        noise = extra.get("risk_noise_sd")
        if noise is not None:
            noise = real(f"{at}.training.risk_noise_sd", noise)
        if dims == 3 and mode != "global":
            raise bad(f"{at}.dataset_mode", "global for a model of 3-D networks", mode)
        # the channel's method, from the fields above (as every model.json has them)
        method = ChannelMethod.of(train.norm, FrameStats(lo=lo, hi=hi), risk_estimator=estimator,
                                  dataset_mode=mode, high_risk_ratio=ratio, noise_sd=noise, spatial_dims=dims)
        if "method" in e:  # ... and as saved whole since it is kept: the two must agree
            try:
                saved = ChannelMethod.from_dict(e["method"])
            except (ConfigError, TypeError, ValueError, OverflowError) as err:
                raise ModelError(f"{path}: field {at}.method is not valid ({' '.join(str(err).split()).rstrip('.')}"
                                 "); re-train the model with 'asn2n fit' or restore its model.json.") from None
            if saved != method:
                raise ModelError(f"{path}: {at}.method ({_short(saved.to_dict())}) disagrees with the channel's "
                                 "other fields and the training options; re-train the model with 'asn2n fit' or "
                                 "restore its model.json.")
        fields.append({
            "name": str(name), "stats": method.stats, "dataset_mode": method.dataset_mode,
            "high_risk_ratio": method.high_risk_ratio,
            "risk_estimator": method.risk_estimator, "steps": integer(f"{at}.steps", e.get("steps", 0)),
            "best_step": None if best is None else integer(f"{at}.best_step", best),
            "seconds": real(f"{at}.seconds", e.get("seconds", 0.0)), "history": list(history), "extra": dict(extra)})
    return doc, train, volume, fields


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped.

    ``tensors`` (network, best network, optimiser moments) go to safetensors, the rest
    to JSON; nothing is pickled.
    """

    step: int
    tensors: dict[str, torch.Tensor]
    info: dict[str, Any]


STATE_JSON = "train-state.json"


def save_train_state(directory: str | os.PathLike[str], job: dict[str, Any], channel: int,
                     state: TrainState) -> None:
    """Write what :func:`load_train_state` needs to resume training (atomically).

    ``job`` identifies the training (options, data digests, channels); ``channel`` is
    the index of the channel being trained; ``state`` a :class:`TrainState`.
    """
    d = Path(directory)
    # New weights under a new name, then the JSON that names them, then the old ones go:
    # a crash at any point leaves a consistent pair.
    name = f"train-state-{channel}-{state.step}.safetensors"
    _write_tensors(d / name, {k: v.contiguous() for k, v in state.tensors.items()})
    doc = {"format": MODEL_FORMAT, "job": job, "channel": channel, "step": state.step, "info": state.info,
           "weights": name, "sha256": _sha256(d / name)}
    _atomic_write_text(d / STATE_JSON, json.dumps(doc))
    for old in d.glob("train-state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_train_state(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], int, TrainState] | None:
    """``(job, channel, TrainState)`` of the last checkpoint, or None when there is none.

    Raises
    ------
    ModelError
        When the checkpoint is damaged.
    """
    d = Path(directory)
    if not (d / STATE_JSON).is_file():
        return None
    try:
        doc = json.loads((d / STATE_JSON).read_text())
        weights = d / Path(str(doc["weights"])).name
        if _sha256(weights) != doc["sha256"]:
            raise ModelError(f"the training checkpoint in {d} is damaged (checksum mismatch); start again with "
                             "--overwrite.")
        tensors = load_file(str(weights), device="cpu")
        return doc["job"], int(doc["channel"]), TrainState(int(doc["step"]), tensors, doc["info"])
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot read the training checkpoint in {d} ({type(exc).__name__}: {exc}); start again "
                         "with --overwrite.") from None


def clear_train_state(directory: str | os.PathLike[str]) -> None:
    """Remove the resume files once training has finished."""
    d = Path(directory)
    (d / STATE_JSON).unlink(missing_ok=True)
    for old in d.glob("train-state-*.safetensors"):
        old.unlink(missing_ok=True)
