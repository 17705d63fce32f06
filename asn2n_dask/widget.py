"""The napari dock widget, ``Plugins > asn2n-dask > Denoise``: fit a model on the current
image layer, denoise the current layer with a model folder, and show the risk classes the
model normalised it with as a labels layer.

The work runs in a thread (napari's ``thread_worker``) through the package's verbs
(:func:`asn2n_dask.api.fit` and :func:`asn2n_dask.api.denoise_with_risk`, the array
form of :func:`asn2n_dask.api.denoise`, which also gives the risk classes), so the
viewer stays responsive; a progress bar follows the steps and frames, and ``Stop`` ends
a job at its next step.  A refusal of the package (:class:`asn2n_dask.errors.Asn2nError`)
is one line in napari's notifications, never a traceback.

A layer is taken as one channel: every axis before its frame's two is a plane (``YX``,
``TYX`` or ``TZYX``), normalised with the statistics of all of them, as the command
line does for one channel of a stack.  Layers of several channels are the split ones
napari and the plugin's reader make (one layer per channel).  A model of several
channels denoises the layer with the network of the channel the layer is named after.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from numpy.typing import NDArray

from .config import (
    MAX_BATCH,
    MAX_PATCH,
    MAX_TILE,
    InferConfig,
    NormConfig,
    NormMode,
    Preset,
    RiskEstimator,
    RiskThresholds,
    TrainConfig,
)
from .errors import Asn2nError, InputError, ModelError, OutputError

__all__ = ["DenoiseWidget", "check_new_folder", "layer_axes", "network_of"]

log = logging.getLogger(__name__)

TRAIN = TrainConfig()
INFER = InferConfig()

#: A layer's axes by its number of dimensions: the planes of one channel, then the frame.
LAYER_AXES = {2: "YX", 3: "TYX", 4: "TZYX"}


class _Stopped(Asn2nError):
    """The job was stopped from the widget."""


def layer_axes(ndim: int, rgb: bool = False) -> str:
    """The axes a layer of ``ndim`` dimensions is taken with (one channel).

    Raises
    ------
    InputError
        An RGB layer, or one of more than 4 dimensions.
    """
    if rgb:
        raise InputError("an RGB layer cannot be denoised: open each colour as its own layer (one channel each).")
    if ndim not in LAYER_AXES:
        raise InputError(f"the layer has {ndim} dimensions; the widget takes 2 to 4 (planes of one channel, then Y "
                         "and X): split its channels (napari's 'Split Stack') or use 'asn2n denoise' on the file.")
    return LAYER_AXES[ndim]


def network_of(model: Any, name: str) -> int:
    """The network of ``model`` for a layer named ``name``: the only one, else the one of
    the channel the name ends with (``"mito"``, ``"input mito"``, ``"cells: mito"``).

    Raises
    ------
    ModelError
        A model of several channels, none of which names the layer.
    """
    names = [ch.name for ch in model.channels]
    if len(names) == 1:
        return 0
    for i, n in enumerate(names):
        if name == n or name.endswith((f" {n}", f":{n}")):
            return i
    raise ModelError(f"the model has networks for channels {', '.join(names)}, and the layer {name!r} names none of "
                     "them; rename the layer after its channel.")


def check_new_folder(folder: Path) -> None:
    """Refuse a model folder to fit into that is a file or holds anything (a model, a
    stopped training's checkpoint, or files of another kind that fitting would mix its
    own with).

    Raises
    ------
    OutputError
    """
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"model folder {folder} is a file; choose a new or empty folder.")
    if folder.is_dir() and any(folder.iterdir()):
        what = "a model" if (folder / "model.json").exists() else "files"
        raise OutputError(f"model folder {folder} already holds {what}; choose a new or empty folder for Fit to "
                          "write its model, training curves and montages in.")


def _fit_job(data: Any, axes: str, name: str, config: TrainConfig, model_dir: Path,
             progress: Callable[[str, int, int], None]) -> str:
    """Train on a layer's array and save the model (in the worker thread)."""
    from .api import fit
    from .io import output_lock

    with output_lock(model_dir):
        check_new_folder(model_dir)  # again, under the lock
        fit(np.asarray(data), axes=axes, config=config, channel_names=[name], model_dir=model_dir,
            progress=progress)
    return f"model written to {model_dir}"


def _denoise_job(data: Any, axes: str, name: str, model_dir: Path, config: InferConfig,
                 progress: Callable[[str, int, int], None]) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """Denoise a layer's array with the model in ``model_dir`` (in the worker thread)."""
    from .api import denoise_with_risk
    from .checkpoint import load_model

    model = load_model(model_dir)
    return denoise_with_risk(np.asarray(data), model, axes=axes, config=config, progress=progress,
                             channel_map=[network_of(model, name)])


@dataclass(frozen=True)
class _Refused:
    """The package's error a job raised, returned rather than raised: it is shown as one
    line, not relayed with its traceback as napari's workers relay any other exception
    (and a worker raises an exception it is returned)."""

    error: Asn2nError


def _guarded(job: Callable[..., Any], *args: Any) -> Any:
    """``job(*args)``, or :class:`_Refused` of the package's error it raised."""
    try:
        return job(*args)
    except Asn2nError as e:
        return _Refused(e)


class DenoiseWidget(Container):
    """Fit, denoise and risk on napari's current image layer.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers it works on (napari passes it by this name).

    Attributes
    ----------
    worker : napari worker or None
        The job running now.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        from superqt.utils import ensure_main_thread

        self.viewer = napari_viewer
        self.worker: Any = None
        self._stop = threading.Event()
        self._show_step = ensure_main_thread(self._step)
        self.model_dir = FileEdit(mode=FileDialogMode.EXISTING_DIRECTORY, label="model folder",
                                  tooltip="Fit writes its model here (a new or empty folder); Denoise reads the "
                                  "model here.")
        self.preset = ComboBox(choices=get_args(Preset), value=TRAIN.preset, label="preset",
                               tooltip="Network size: tiny (tests), small (CPU), paper (GPU).")
        self.steps = SpinBox(value=TRAIN.steps, min=1, max=10_000_000, label="steps", tooltip="Training steps.")
        self.patch = SpinBox(value=TRAIN.patch, min=8, max=MAX_PATCH, step=8, label="patch",
                             tooltip="Training patch side in pixels.")
        self.batch = SpinBox(value=TRAIN.batch, min=1, max=MAX_BATCH, label="batch", tooltip="Patches per step.")
        self.norm = ComboBox(choices=get_args(NormMode), value=TRAIN.norm.mode, label="norm",
                             tooltip="Normalisation: global (frame-wise, the default), adaptive (risky "
                             "patches global, safe ones towards their own range), local, dataset.")
        self.risk_estimator = ComboBox(choices=get_args(RiskEstimator), value=TRAIN.norm.risk.estimator,
                                       label="risk estimator",
                                       tooltip="auto decides per channel; reference is the published rule; "
                                       "noise-aware corrects patch statistics for pixel noise.")
        self.fit_button = PushButton(text="Fit", tooltip="Train a model on the current image layer.")
        self.tile = SpinBox(value=INFER.tile, min=8, max=MAX_TILE, label="tile", tooltip="Inference tile side.")
        self.denoise_button = PushButton(text="Denoise",
                                         tooltip="Denoise the current image layer; add it and its risk labels.")
        self.stop_button = PushButton(text="Stop", enabled=False, tooltip="End the job at its next step.")
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # a long message wraps instead of widening the dock
        self.extend([self.model_dir, self.preset, self.steps, self.patch, self.batch, self.norm,
                     self.risk_estimator, self.fit_button, self.tile, self.denoise_button, self.stop_button,
                     self.progress, self.status])
        self.fit_button.changed.connect(self.fit)
        self.denoise_button.changed.connect(self.denoise)
        self.stop_button.changed.connect(self.stop)

    # ------------------------------------------------------------ actions
    def fit(self) -> None:
        """Train a model on the current image layer into the model folder."""
        try:
            layer, data, axes = self._current()
            folder = self._folder()
            check_new_folder(folder)
            config = replace(TRAIN, preset=self.preset.value, steps=int(self.steps.value),
                             patch=int(self.patch.value), batch=int(self.batch.value),
                             norm=NormConfig(mode=self.norm.value,
                                             risk=RiskThresholds(estimator=self.risk_estimator.value)))
        except Asn2nError as e:
            self._refuse(e)
            return
        self._start(f"fitting on {layer.name}", self._fitted, _fit_job, data, axes, layer.name, config, folder)

    def denoise(self) -> None:
        """Denoise the current image layer with the model in the model folder; add the
        result and its risk classes as layers beside it (or replace earlier ones)."""
        try:
            layer, data, axes = self._current()
            folder = self._folder()
            config = replace(INFER, tile=int(self.tile.value))
        except Asn2nError as e:
            self._refuse(e)
            return
        done = self._denoised(layer)
        self._start(f"denoising {layer.name}", done, _denoise_job, data, axes, layer.name, folder, config)

    def stop(self) -> None:
        """End the running job at its next step."""
        if self.worker is not None:
            self._stop.set()
            self.status.value = "stopping..."

    # ------------------------------------------------------------ helpers
    def _current(self) -> tuple[Any, Any, str]:
        """The current layer, its array (level 0 of a multiscale one) and axes."""
        from napari.layers import Image

        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Image):
            raise InputError("select an image layer first (the current layer is "
                             f"{'none' if layer is None else repr(layer.name)}).")
        data = layer.data[0] if layer.multiscale else layer.data
        return layer, data, layer_axes(np.ndim(data), layer.rgb)

    def _folder(self) -> Path:
        text = str(self.model_dir.line_edit.value).strip()  # FileEdit shows an empty field as "."
        if text in ("", "."):
            raise InputError("choose a model folder first.")
        return Path(os.path.expanduser(text))

    def _start(self, what: str, done: Callable[[Any], None], job: Callable[..., Any], *args: Any) -> None:
        from napari.qt.threading import thread_worker

        if self.worker is not None:
            self._refuse(InputError("a job is running; wait for it or stop it first."))
            return
        self._stop.clear()
        # an error the package did not foresee: napari's worker shows it with its traceback, and
        # connecting "errored" here keeps the worker from raising it again in Qt's event loop
        worker = thread_worker(_guarded, start_thread=False, connect={
            "returned": lambda result: self._returned(result, done), "errored": self._errored,
            "finished": self._finished})(job, *args, self._progress)
        self.worker = worker
        self._busy(True)
        self.status.value = what
        self.progress.value = 0
        worker.start()

    def _progress(self, what: str, done: int, total: int) -> None:
        """The jobs' progress callback (in the worker thread)."""
        if self._stop.is_set():
            raise _Stopped(f"{what} stopped at {done} of {total}.")
        self._show_step(what, done, total)

    def _step(self, what: str, done: int, total: int) -> None:
        self.progress.max = max(int(total), 1)
        self.progress.value = min(int(done), self.progress.max)
        self.status.value = f"{what}: {done} of {total}"

    def _returned(self, result: Any, done: Callable[[Any], None]) -> None:
        if isinstance(result, _Refused) and isinstance(result.error, _Stopped):
            from napari.utils.notifications import show_info

            self.status.value = str(result.error)
            show_info(str(result.error))
        elif isinstance(result, _Refused):
            self._refuse(result.error)
        else:
            done(result)

    def _errored(self, error: Exception) -> None:
        """An error the package did not foresee (napari's worker shows it with its
        traceback): the status line says the job failed."""
        self.status.value = f"failed: {type(error).__name__}"

    def _finished(self) -> None:
        self.worker = None
        self._busy(False)

    def _busy(self, busy: bool) -> None:
        self.fit_button.enabled = self.denoise_button.enabled = not busy
        self.stop_button.enabled = busy

    def _refuse(self, error: Asn2nError) -> None:
        """One line in napari's notifications and the status line."""
        from napari.utils.notifications import show_error

        message = " ".join(str(error).split())
        self.status.value = message
        show_error(message)

    def _fitted(self, message: str) -> None:
        self.status.value = message
        self.progress.value = self.progress.max

    def _denoised(self, layer: Any) -> Callable[[tuple[NDArray[np.float32], NDArray[np.int8]]], None]:
        """What to do with a denoised layer: add (or replace) ``<name> denoised`` and
        ``<name> risk`` with the source layer's scale, translation and contrast limits."""
        place = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
        limits = tuple(layer.contrast_limits)

        def add(result: tuple[NDArray[np.float32], NDArray[np.int8]]) -> None:
            out, risk = result
            self._put(out, f"{layer.name} denoised", "image", {**place, "contrast_limits": limits,
                                                               "colormap": layer.colormap.name})
            self._put(risk.astype(np.uint8), f"{layer.name} risk", "labels", {**place, "opacity": 0.4})
            self.status.value = f"denoised {layer.name}"
            self.progress.value = self.progress.max

        return add

    def _put(self, data: Any, name: str, layer_type: str, kwargs: dict[str, Any]) -> None:
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
        else:
            getattr(self.viewer, f"add_{layer_type}")(data, name=name, **kwargs)
