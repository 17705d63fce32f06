"""Models on disk: safetensors weights plus one JSON file; loading never unpickles.

A model directory holds ``model.json`` (format, package version, every training
option, and per channel: name, weights file, its SHA-256, the data's normalisation
statistics, the ``dataset`` decision, training history) and one
``channel-<i>.safetensors`` per colour channel.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ._version import __version__
from .config import PRESETS, NormConfig, TrainConfig
from .errors import ConfigError, ModelError
from .model import UNet
from .risk import FrameStats

__all__ = ["ChannelModel", "Model", "save_model", "load_model", "model_is_complete", "MODEL_FORMAT",
           "save_train_state", "load_train_state", "clear_train_state"]

MODEL_FORMAT = "asn2n-dask-model"
FORMAT_VERSION = 1


@dataclass
class ChannelModel:
    """The network of one colour channel and what it was trained on."""

    name: str
    net: UNet
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
    train : TrainConfig
        Every training option (preset, normalisation, loss, seed...).
    channels : list of ChannelModel
        In the order of the input's channel axis (one entry for single-channel data).
    info : dict
        Provenance: inputs, shapes, dtype, per-channel statistics and their digests,
        device, wall time.
    """

    train: TrainConfig
    channels: list[ChannelModel]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def norm(self, channel: int) -> NormConfig:
        """The normalisation of one channel: the training options with the risk
        estimator that channel was trained with (``"auto"`` resolved)."""
        norm = self.train.norm
        est = self.channels[channel].risk_estimator
        return replace(norm, risk=replace(norm.risk, estimator=est))  # type: ignore[arg-type]

    @property
    def multiple(self) -> int:
        return 2 ** (len(PRESETS[self.train.preset]) - 1)


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
        tmp = d / (name + ".tmp")
        state = {k: v.detach().cpu().contiguous() for k, v in ch.net.state_dict().items()}
        save_file(state, str(tmp), metadata={"format": MODEL_FORMAT})
        os.replace(tmp, d / name)
        channels.append({
            "name": ch.name,
            "weights": name,
            "sha256": _sha256(d / name),
            "stats": ch.stats.to_dict(),
            "dataset_mode": ch.dataset_mode,
            "high_risk_ratio": ch.high_risk_ratio,
            "risk_estimator": ch.risk_estimator,
            "steps": ch.steps,
            "best_step": ch.best_step,
            "seconds": ch.seconds,
            "history": ch.history,
            "training": ch.extra,
        })
    doc = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": complete,
        "widths": list(PRESETS[model.train.preset]),
        "train": model.train.to_dict(),
        "channels": channels,
        "provenance": model.info,
    }
    path = d / "model.json"
    _atomic_write_text(path, json.dumps(doc, indent=2))
    return path


def model_is_complete(directory: str | os.PathLike[str]) -> bool:
    """Whether a model directory holds a finished model (not a training checkpoint)."""
    try:
        return bool(json.loads((Path(directory) / "model.json").read_text()).get("complete", True))
    except (OSError, ValueError):
        return False


def load_model(directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Model:
    """Read a model directory written by :func:`save_model`.

    Weights are read with safetensors (no code is ever unpickled) and checked against
    the SHA-256 recorded in ``model.json``.

    Raises
    ------
    ModelError
        When the directory, its JSON or its weights are missing, malformed or altered.
    """
    d = Path(directory)
    path = d / "model.json"
    if not path.is_file():
        raise ModelError(f"no model at {d}: model.json is missing; train one with 'asn2n fit'.")
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != MODEL_FORMAT:
            raise ModelError(f"{path} is not an asn2n-dask model (format {doc.get('format')!r}).")
        if int(doc.get("format_version", -1)) > FORMAT_VERSION:
            raise ModelError(f"{path} was written by a newer asn2n-dask (format {doc['format_version']}); "
                             "upgrade the package.")
        train = TrainConfig.from_dict(doc["train"])
        entries = doc["channels"]
        if not isinstance(entries, list) or not entries:
            raise ModelError(f"{path} lists no channel networks.")
        # models from before the choice was kept per channel used the configured estimator
        default_estimator = train.norm.risk.estimator if train.norm.risk.estimator != "auto" else "reference"
        for e in entries:
            if e.get("risk_estimator", default_estimator) not in ("reference", "noise-aware"):
                raise ModelError(f"{path} names an unknown risk estimator {e.get('risk_estimator')!r}.")
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise ModelError(f"{path} is malformed ({err}); re-train the model with 'asn2n fit'.") from None
    channels: list[ChannelModel] = []
    for e in entries:
        try:
            wpath = d / Path(str(e["weights"])).name
            if not wpath.is_file():
                raise ModelError(f"weights {wpath} listed in {path} are missing.")
            if _sha256(wpath) != e["sha256"]:
                raise ModelError(f"weights {wpath} do not match the checksum in {path}; the file was "
                                 "altered or damaged: re-train or restore the model.")
            net = UNet(PRESETS[train.preset])
            net.load_state_dict(load_file(str(wpath), device="cpu"), strict=True)
        except ModelError:
            raise
        except Exception as exc:  # safetensors / torch errors on a bad file
            raise ModelError(f"cannot load weights from {d} ({type(exc).__name__}: {exc}).") from None
        channels.append(ChannelModel(
            name=str(e.get("name", len(channels))), net=net.to(device).eval(),
            stats=FrameStats.from_dict(e["stats"]), dataset_mode=str(e.get("dataset_mode", "local")),
            high_risk_ratio=float(e.get("high_risk_ratio", 0.0)),
            risk_estimator=str(e.get("risk_estimator", default_estimator)), steps=int(e.get("steps", 0)),
            best_step=e.get("best_step"), seconds=float(e.get("seconds", 0.0)),
            history=list(e.get("history", [])), extra=dict(e.get("training") or {})))
    return Model(train=train, channels=channels, info=dict(doc.get("provenance") or {}))


STATE_JSON = "train-state.json"


def save_train_state(directory: str | os.PathLike[str], job: dict[str, Any], channel: int, state: Any) -> None:
    """Write what :func:`load_train_state` needs to resume training (atomically).

    ``job`` identifies the training (options, data digests, channels); ``channel`` is
    the index of the channel being trained; ``state`` a :class:`asn2n_dask.train.TrainState`.
    """
    d = Path(directory)
    # New weights under a new name, then the JSON that names them, then the old ones go:
    # a crash at any point leaves a consistent pair.
    name = f"train-state-{channel}-{state.step}.safetensors"
    tmp = d / (name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.tensors.items()}, str(tmp), metadata={"format": MODEL_FORMAT})
    os.replace(tmp, d / name)
    doc = {"format": MODEL_FORMAT, "job": job, "channel": channel, "step": state.step, "info": state.info,
           "weights": name, "sha256": _sha256(d / name)}
    _atomic_write_text(d / STATE_JSON, json.dumps(doc))
    for old in d.glob("train-state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_train_state(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], int, Any] | None:
    """``(job, channel, TrainState)`` of the last checkpoint, or None when there is none.

    Raises
    ------
    ModelError
        When the checkpoint is damaged.
    """
    from .train import TrainState

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
