"""Share a model: a bioimage.io model package (model format 0.5) of a model directory.

What the package's network computes is all of ``asn2n denoise`` on each image it is
given (:class:`asn2n_dask.standalone.Denoiser`): the image's statistics, risk classes,
the adaptive normalisation with its per-patch fields, frame-anchored tiles, twins, the
U-Net, Gaussian blending, the inverse normalisation and the clamp to the image's range.
The bioimage.io pre- and postprocessing steps (fixed or percentile scaling of a whole
tensor) cannot express the per-patch adaptive normalisation, so the package declares
none: its network takes and returns intensities in the input's own units.  Running the
package on its test input gives ``asn2n denoise`` of that input to float precision; the
packaged README says what differs on other inputs (statistics are per image, not per
channel of a stack).  Each channel's training range goes into the package, which
normalises on it as ``asn2n denoise`` does (``InferConfig.norm_range``).

Pure functions build the parts (:func:`build_denoiser`, :func:`synthetic_frames`,
:func:`cover_image`, :func:`readme`, :func:`describe`); :func:`export_bioimageio` reads
the model directory (and a frame of its training data), writes the files and the zip,
and checks the zip with bioimage.io's own test before putting it in place.
:func:`import_bioimageio` turns such a package back into a model directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray

from ._version import __version__
from .checkpoint import ChannelModel, Model, load_model, save_model
from .config import PRESETS, InferConfig, TrainConfig
from .errors import ConfigError, InputError, ModelError, OutputError
from .risk import FrameStats
from .standalone import ChannelDenoiser, Denoiser

__all__ = ["standalone_kwargs", "build_denoiser", "pick_channels", "synthetic_frames", "cover_image", "readme",
           "describe", "export_bioimageio", "import_bioimageio", "CITATIONS", "TOLERANCE"]

log = logging.getLogger(__name__)

#: The method's publications, cited by every package: (text, DOI, URL).
CITATIONS = (
    ("SN2N: Self-inspired learning for denoising live-cell super-resolution microscopy. Nature Methods (2024).",
     "10.1038/s41592-024-02400-9", None),
    ("Adaptive-SN2N (adaptive self-inspired Noise2Noise with risk-aware normalisation): the authors' reference "
     "implementation, SR-Wiki/aSN2N.", None, "https://github.com/SR-Wiki/aSN2N"),
)

#: (relative, absolute as a fraction of the test output's range) agreement asked of the
#: package's weights with its test output: float32 rounding of values in input units.
TOLERANCE = (1e-5, 1e-5)

#: Names of the files inside a package.
FILES = {"torchscript": "denoiser.pt", "pytorch_state_dict": "weights.pt", "architecture": "asn2n_denoiser.py",
         "test_input": "test_input.npy", "test_output": "test_output.npy", "cover": "cover.png",
         "documentation": "README.md"}

WEIGHT_FORMATS = ("torchscript", "pytorch_state_dict")


def standalone_kwargs(model: Model, channels: Sequence[int], infer: InferConfig) -> dict[str, Any]:
    """The keyword arguments of :class:`asn2n_dask.standalone.Denoiser` for channels of
    ``model`` under ``infer``: plain numbers and strings (they are written into the
    package's description)."""
    norm = model.train.norm
    per_channel = []
    for c in channels:
        method = model.method(c)
        per_channel.append({"mode": method.mode, "min_fraction": method.range_fraction,
                            "estimator": method.risk_estimator, "trained": [method.stats.lo, method.stats.hi]})
    flat = asdict(norm) | asdict(norm.risk)
    used = ("low_percentile", "high_percentile", "adaptive_weight", "patch", "clip_percentile", "floor_percentile",
            "bg_mean", "bg_std", "bg_skew", "bg_std_skew", "sb_mean", "sb_std", "sb_skew")
    return {"widths": list(PRESETS[model.train.preset]), "channels": per_channel, "norm": {k: flat[k] for k in used},
            "infer": {"tile": infer.tile, "stride": infer.stride, "blend": infer.blend,
                      "sigma_fraction": infer.sigma_fraction, "weight_floor": infer.weight_floor,
                      "infer_on": infer.infer_on, "tta": infer.tta, "batch": infer.batch,
                      "norm_range": infer.norm_range}}


def build_denoiser(model: Model, channels: Sequence[int], infer: InferConfig) -> Denoiser:
    """The whole of ``asn2n denoise`` for channels of ``model`` as one torch module
    (:class:`asn2n_dask.standalone.Denoiser`), with the model's weights, in eval mode."""
    den = Denoiser(**standalone_kwargs(model, channels, infer))
    for slot, c in zip(den.channels, channels):
        state = {k: v.detach().cpu() for k, v in model.channels[c].net.state_dict().items()}
        cast(ChannelDenoiser, slot).net.load_state_dict(state)
    return den.eval()


def pick_channels(model: Model, picks: Sequence[str] | None) -> list[int]:
    """Model channels named by ``picks`` (names, else indices), in the order given; all
    when ``picks`` is empty.

    Raises
    ------
    ConfigError
        A pick that is neither a channel name nor an index, or one given twice.
    """
    if not picks:
        return list(range(model.n_channels))
    names = [ch.name for ch in model.channels]
    out = []
    for word in picks:
        if word in names:
            out.append(names.index(word))
        elif word.lstrip("-").isdigit() and -len(names) <= int(word) < len(names):
            out.append(int(word) % len(names))
        else:
            raise ConfigError(f"--channel {word!r} is not a channel of the model (names {', '.join(names)} or "
                              f"indices 0 to {len(names) - 1}).")
    if len(set(out)) != len(out):
        raise ConfigError(f"--channel names a channel twice ({', '.join(picks)}); give each channel once.")
    return out


def synthetic_frames(model: Model, channels: Sequence[int], shape: tuple[int, int]) -> NDArray[np.float32]:
    """Synthetic noisy frames (:func:`asn2n_dask.synthetic.noisy_frame`), one per channel,
    scaled onto the intensity range each channel was trained on (``model.json``'s
    statistics).  Shape ``(C, H, W)``, float32."""
    from .synthetic import noisy_frame

    out = np.empty((len(channels), *shape), np.float32)
    for j, c in enumerate(channels):
        f = noisy_frame(shape, seed=j)[0].astype(np.float64)
        st = model.channels[c].stats
        lo, width = float(f.min()), float(f.max() - f.min())
        out[j] = st.lo + (f - lo) / width * (st.hi - st.lo) if width > 0 and st.hi > st.lo else f
    return out


def _centre_crop(frames: NDArray[Any], size: int) -> NDArray[Any]:
    h, w = frames.shape[-2:]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frames[..., y : y + size, x : x + size]


def cover_image(noisy: NDArray[np.floating], denoised: NDArray[np.floating]) -> NDArray[np.uint8]:
    """Noisy | denoised side by side on one grey scale (the denoised frame's 0.5 and 99.8
    percentiles), cropped square: shape ``(S, 2 S, 3)``, uint8 (bioimage.io asks for a
    2:1 cover)."""
    s = min(noisy.shape[-2:])
    a, b = (np.asarray(_centre_crop(v, s), np.float64) for v in (noisy, denoised))
    lo, hi = np.percentile(b, [0.5, 99.8])
    grey = np.clip((np.concatenate([a, b], axis=1) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.repeat(np.rint(grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def _safe_name(text: str) -> str:
    """A bioimage.io model name: letters, digits, ``_+- ()``, 5 to 64 characters."""
    name = re.sub(r"[^A-Za-z0-9_+\- ()]+", "-", text).strip(" -")
    return (name if len(name) >= 5 else f"Adaptive-SN2N {name}".strip())[:64]


def _min_side(infer: InferConfig) -> int:
    """Smallest image side the package declares: ``asn2n denoise`` takes a tile up to
    twice an image's longer side (and needs images of at least 4x4 pixels)."""
    return max(4, -(-infer.tile // 2))


def readme(model: Model, channels: Sequence[int], infer: InferConfig, *, name: str, test_source: str,
           min_side: int, tolerance: tuple[float, float]) -> str:
    """The package's documentation (Markdown): what the network computes, how to run it,
    what it does not do that ``asn2n denoise`` does, training, validation, citations."""
    t = model.train
    kw = standalone_kwargs(model, channels, infer)
    rows = "\n".join(
        f"| {model.channels[c].name} | {k['mode']} | {k['estimator']} | {k['min_fraction']:g} | "
        f"{model.channels[c].dataset_mode} | {k['trained'][0]:.6g} to {k['trained'][1]:.6g} | "
        f"{model.channels[c].steps} |"
        for c, k in zip(channels, kw["channels"]))
    inputs = ", ".join("an in-memory array" if str(p) == "<array>" else Path(str(p)).name
                       for p in model.info.get("inputs", [])) or "not recorded"
    views = ("split into its two self-inspired twins, each" if infer.infer_on == "twins" else "the tile itself")
    low = "minimum" if t.norm.low_percentile == 0 else f"{t.norm.low_percentile}th percentile"
    unet = (f"{t.preset}: widths {'-'.join(str(w) for w in PRESETS[t.preset])}; {infer.tta} flipped/rotated "
            f"cop{'ies' if infer.tta > 1 else 'y'}")
    range_rule = {
        "auto": "The image is then normalised on its channel's range in the training data instead (the "
                "table's), unless the two ranges overlap by less than half the narrower one (another camera "
                "offset or other units): the network sees intensities where it learned them.",
        "model": "The image is then normalised on its channel's range in the training data instead (the table's).",
        "data": "The image is normalised on that range of its own."}[infer.norm_range]
    cites = "\n".join(f"- {text} {'https://doi.org/' + doi if doi else url}" for text, doi, url in CITATIONS)
    return f"""# {name}

Self-supervised denoising of fluorescence microscopy with **Adaptive-SN2N**, trained with
asn2n-dask and exported by asn2n-dask {__version__}. It learns from the noisy data alone and
does not paint structure into dark background. Intensities stay in the input's units
(ADU, photons): nothing is rescaled to [0, 1].

## What the network computes

The weights (TorchScript `{FILES['torchscript']}`, and a PyTorch state dict `{FILES['pytorch_state_dict']}`
with its architecture `{FILES['architecture']}`, which imports only torch) hold the whole of
`asn2n denoise` for one image, so no bioimage.io pre- or postprocessing is declared: each
image (one batch entry of one channel) goes in and comes out in its own units.

1. The image's statistics: the normalisation range from its {low} to its
   {t.norm.high_percentile}th percentile, and the risk scale from its minimum (noise-aware risk
   estimator: its {t.norm.risk.floor_percentile}th percentile) to its {t.norm.risk.clip_percentile}th percentile.
   {range_rule}
2. Risk classes of every {t.norm.risk.patch}x{t.norm.risk.patch} patch (weak background, sparse bright, safe)
   from its mean, standard deviation and skewness on that scale.
3. A normalisation range per patch, interpolated bilinearly between patch centres
   (`adaptive` moves a safe patch from the image's range towards its own by the share of
   its own that its noise does not explain, never narrower than the table's fraction of
   the image's range: at 1, every patch takes the image's range; risky patches keep it).
4. Tiles of {infer.tile} pixels every {infer.stride} pixels, anchored to the image and mirrored past
   its edges; each tile normalised, {views} passed
   through the channel's U-Net ({unet}), the results averaged.
5. {infer.blend.capitalize()} blending of the tiles, the normalisation inverted, and the result held
   within the image's range widened by a quarter of it.

| channel | normalisation | risk estimator | narrowest local range | dataset decision | training range | steps |
|---|---|---|---|---|---|---|
{rows}

## Use

Input `raw`, axes (batch, channel, y, x), float32 (integer images are converted), each
side at least {min_side} pixels; output `denoised`, the same shape, float32, in the input's
units. Give whole images: every image has its own statistics and risk classes, so a tool
that cuts an image into blocks and runs them one by one changes the result at block
scale. bioimage.io's Python tools run the whole image by default:

```python
from bioimageio.core import predict
denoised = predict(model="this-package.zip", inputs=image)  # image: (1, C, H, W) float32
```

With asn2n-dask, `asn2n import this-package.zip -o model-dir` gives back the model
directory, for `asn2n denoise` on files of any size, on a Dask cluster.

## What is and is not included

Included: everything `asn2n denoise` computes for one image (above), in float32 for the
network and float64 around it. Not included, or different:

- Percentiles come from a sort, exactly; asn2n-dask reads them from histograms, exactly
  for 8- and 16-bit images and to within 2^-32 of the range for others.
- Statistics: `asn2n denoise` normalises every frame of a stack (time points, planes)
  with the statistics of the whole channel; this package takes each image alone, as
  `asn2n denoise` does a single frame. Batch entries never influence each other.
- Precision: `asn2n denoise` on a GPU runs the network in bfloat16 by default
  (`--infer-precision`); this package always runs it in float32, as the CPU path does.
- Not here: reading TIFF/Zarr files, chunked and resumable Dask runs, the OME-Zarr
  output with its risk-label image, the trust report. Memory grows with the image (a
  few float64 copies of it).

## Training

Data: {inputs}. Options: preset {t.preset}, {t.steps} steps, patches {t.patch} px, batch {t.batch},
learning rate {t.lr}, {t.loss} twin-to-twin loss with consistency weight {t.consistency}, seed {t.seed},
normalisation {t.norm.mode} (adaptive weight {t.norm.adaptive_weight}).

## Validation

The test input is {test_source}.
The test output is `asn2n denoise` of that input (asn2n-dask {__version__}, CPU, float32
network): bioimage.io's model test reproduces it with every weight format to within a
relative {tolerance[0]:g} and an absolute {tolerance[1]:g} of the output's range (float32 rounding).

To judge the result on your own data, denoise it and run `asn2n report INPUT DENOISED -o
report/` (asn2n-dask): the residual should look like noise, and Otsu objects in the
background should drop, never rise.

## Citation

{cites}
"""


def describe(model: Model, channels: Sequence[int], infer: InferConfig, folder: Path, *, name: str,
             authors: Sequence[str], license: str, weights: Sequence[str], test_source: str,
             tolerance: tuple[float, float]) -> Any:
    """The bioimage.io model description (``bioimageio.spec`` ModelDescr, format 0.5) of
    the files :data:`FILES` names in ``folder``.  ``tolerance``: the relative and the
    absolute (input units) agreement asked of the weights with the test output."""
    from bioimageio.spec.model import v0_5 as bio

    kw = standalone_kwargs(model, channels, infer)
    names = [model.channels[c].name for c in channels]
    side = bio.ParameterizedSize(min=_min_side(infer), step=1)
    torch_version = bio.Version(torch.__version__.split("+")[0])
    state_dict = bio.PytorchStateDictWeightsDescr(
        source=folder / FILES["pytorch_state_dict"], pytorch_version=torch_version,
        architecture=bio.ArchitectureFromFileDescr(source=folder / FILES["architecture"],
                                                   callable=bio.Identifier("Denoiser"), kwargs=kw),
        comment="asn2n_dask.standalone.Denoiser: the whole of 'asn2n denoise' per image.")
    script = bio.TorchscriptWeightsDescr(
        source=folder / FILES["torchscript"], pytorch_version=torch_version,
        parent="pytorch_state_dict" if "pytorch_state_dict" in weights else None,
        comment="torch.jit.script of asn2n_dask.standalone.Denoiser.")
    t = model.train
    return bio.ModelDescr(
        name=name,
        description=("Self-supervised denoising of fluorescence microscopy (Adaptive-SN2N: risk-aware adaptive "
                     "normalisation, self-inspired Noise2Noise twins, U-Net, blended tiles), trained with asn2n-dask. "
                     "Takes and returns intensities in the input's units."),
        authors=[bio.Author(name=a) for a in authors],
        cite=[bio.CiteEntry(text=text, doi=bio.Doi(doi) if doi else None, url=bio.HttpUrl(url) if url else None)
              for text, doi, url in CITATIONS],
        license=bio.LicenseId(license),
        documentation=bio.FileDescr(source=folder / FILES["documentation"]),
        covers=[bio.FileDescr(source=folder / FILES["cover"])],
        tags=["denoising", "image-restoration", "fluorescence-light-microscopy", "2d", "pytorch", "unet",
              "self-supervised", "noise2noise", "asn2n-dask"],
        inputs=[bio.InputTensorDescr(
            id=bio.TensorId("raw"), description="noisy images in their own units (ADU, photons)",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=names),
                  bio.SpaceInputAxis(id=bio.AxisId("y"), size=side),
                  bio.SpaceInputAxis(id=bio.AxisId("x"), size=side)],
            test_tensor=bio.FileDescr(source=folder / FILES["test_input"]),
            data=bio.IntervalOrRatioDataDescr(type="float32"))],
        outputs=[bio.OutputTensorDescr(
            id=bio.TensorId("denoised"), description="denoised images in the input's units",
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=names),
                  bio.SpaceOutputAxis(id=bio.AxisId("y"), size=bio.SizeReference(
                      tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId("y"))),
                  bio.SpaceOutputAxis(id=bio.AxisId("x"), size=bio.SizeReference(
                      tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId("x")))],
            test_tensor=bio.FileDescr(source=folder / FILES["test_output"]),
            data=bio.IntervalOrRatioDataDescr(type="float32"))],
        weights=bio.WeightsDescr(pytorch_state_dict=state_dict if "pytorch_state_dict" in weights else None,
                                 torchscript=script if "torchscript" in weights else None),
        config=bio.Config.model_validate({
            "bioimageio": {
                "reproducibility_tolerance": [{"relative_tolerance": tolerance[0],
                                               "absolute_tolerance": tolerance[1],
                                               "mismatched_elements_per_million": 0}],
                "architecture_type": "U-Net",
                "architecture_description": "Per image: statistics, risk classes, adaptive normalisation, tiles "
                                            "with self-inspired twins through a 2-D U-Net, Gaussian blending, "
                                            "inverse normalisation.",
                "task": "denoising",
                "modality": "fluorescence microscopy",
                "training": {"training_preprocessing": f"{t.norm.mode} normalisation, self-inspired twins",
                             "training_batch_size": t.batch, "initial_learning_rate": t.lr,
                             "learning_rate_schedule": "cosine decay to 5%", "loss_function": t.loss,
                             "optimizer": "Adam"},
            },
            "asn2n_dask": {"package_version": __version__, "train": t.to_dict(), "infer": infer.to_dict(),
                           "channels": [_channel_record(model.channels[c]) for c in channels],
                           "test_input": test_source},
        }),
    )


def _channel_record(ch: ChannelModel) -> dict[str, Any]:
    """What :func:`import_bioimageio` needs, besides the weights, to rebuild a channel."""
    return {"name": ch.name, "stats": ch.stats.to_dict(), "dataset_mode": ch.dataset_mode,
            "high_risk_ratio": ch.high_risk_ratio, "risk_estimator": ch.risk_estimator, "steps": ch.steps,
            "best_step": ch.best_step, "seconds": ch.seconds}


def _check_metadata(authors: Sequence[str], license: str) -> None:
    """Refuse authors and a licence the bioimage.io description would refuse, in one sentence.

    Raises
    ------
    ConfigError
    """
    from bioimageio.spec.model import v0_5 as bio

    if not authors or not all(str(a).strip() for a in authors):
        raise ConfigError("a bioimage.io package needs at least one author; pass --author 'Your Name'.")
    for a in authors:
        if "/" in a or "\\" in a:
            raise ConfigError(f"--author {a!r} holds a slash, which bioimage.io refuses in names; give the name alone.")
    try:
        bio.LicenseId(license)
    except ValueError:
        raise ConfigError(f"--license must be an SPDX licence identifier (e.g. CC-BY-4.0, MIT, BSD-3-Clause); got "
                          f"{license!r}.") from None


def _bioimageio() -> Any:
    try:
        import bioimageio.core
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise ConfigError("bioimage.io packages need bioimageio.spec and bioimageio.core; install them with "
                          "pip install 'asn2n-dask[bioimageio]'.") from None
    return bioimageio.core


def _training_frames(model: Model, channels: Sequence[int], size: int) -> tuple[NDArray[Any] | None, str]:
    """The first frame of each channel's training data, centre-cropped to at most
    ``size`` pixels a side, when the model records a file that can still be read."""
    from .source import Selection, open_source, sample_planes

    inputs = [str(p) for p in model.info.get("inputs", []) if str(p) != "<array>"]
    if not inputs:
        return None, "an in-memory array"
    path = inputs[0]
    try:
        src = open_source(path, model.info.get("axes"))
        names = [model.channels[c].name for c in channels]
        sel = Selection.parse(src, names if "C" in src.axes else None, model.info.get("time"))
        frames = sample_planes(src, sel, 1)[0][:, 0]
    except (OSError, ValueError) as err:
        return None, f"{Path(path).name}, which cannot be read now ({' '.join(str(err).split())[:200]})"
    return _centre_crop(frames, size), Path(path).name


def export_bioimageio(model_dir: str | os.PathLike[str], output: str | os.PathLike[str], *,
                      channels: Sequence[str] | None = None, authors: Sequence[str] = (),
                      license: str = "CC-BY-4.0", name: str | None = None, infer: InferConfig = InferConfig(),
                      weights: Sequence[str] = WEIGHT_FORMATS, test_size: int = 256, overwrite: bool = False,
                      check: bool = True) -> Path:
    """Write a model directory as a bioimage.io model package (a ``.zip``, model format 0.5).

    The package holds the network (:func:`build_denoiser`) as TorchScript and as a
    PyTorch state dict with its architecture, a test input (a centre crop of the first
    frame of the training data when the model records a readable file, else a synthetic
    frame on each channel's trained range) and its test output (``asn2n denoise`` of it
    on the CPU), a cover, a README and citations.  The zip is checked with
    ``bioimageio.core.test_model`` (every weight format reproduces the test output) before
    it is moved into place; nothing is left behind on failure.

    Parameters
    ----------
    model_dir : path
        A finished model from ``asn2n fit``.
    output : path
        The package to write, ending in ``.zip``.
    channels : sequence of str, optional
        Channel networks to export, by name or index (default all).
    authors : sequence of str
        The package's authors (at least one).
    license : str
        SPDX identifier of the weights' licence.
    name : str, optional
        The model's name (default from the model directory's).
    infer : InferConfig
        Tiles, blending, twins and augmentation the network applies (device and
        precision are ignored: the package runs float32 wherever it is run).
    weights : sequence of {"torchscript", "pytorch_state_dict"}
    test_size : int
        Largest side of the test image, in pixels.
    check : bool
        Run bioimage.io's model test on the package before writing it (``False`` only
        when the caller runs it).

    Returns
    -------
    Path
        The package written.
    """
    core = _bioimageio()
    out = Path(output)
    if out.suffix.lower() != ".zip":
        raise OutputError(f"output {out} must end in .zip (a bioimage.io model package).")
    if out.exists() and not (overwrite and out.is_file()):
        raise OutputError(f"output {out} already exists; pass --overwrite to replace it or choose another path."
                          if not out.is_dir() else f"output {out} is a folder; choose a .zip file path.")
    _check_metadata(authors, license)
    bad = [w for w in weights if w not in WEIGHT_FORMATS]
    if bad or not weights:
        raise ConfigError(f"weight formats must be among {', '.join(WEIGHT_FORMATS)}; got {', '.join(weights)}.")
    model = load_model(model_dir)
    if model.dims != 2:
        raise ModelError(f"the model in {model_dir} holds 3-D networks, which bioimage.io packages do not carry yet; "
                         "export a model trained without --dims 3.")
    picked = pick_channels(model, channels)
    infer = replace(infer, device="cpu", precision="fp32", compile=False)
    from .blend import check_tile

    check_tile(infer, model.multiple)
    frames, where = _training_frames(model, picked, test_size)
    side = _min_side(infer)
    if frames is None:
        log.log(logging.WARNING if "cannot be read" in where else logging.INFO,
                "the test input is a synthetic frame: the training data was %s", where)
        frames = synthetic_frames(model, picked, (test_size, test_size))
        source = (f"a synthetic {test_size}x{test_size} frame (`asn2n_dask.synthetic.noisy_frame`) scaled onto "
                  f"each channel's trained intensity range; the training data was {where}")
    else:
        source = (f"a {frames.shape[-2]}x{frames.shape[-1]} centre crop of the first frame of the training data "
                  f"({where})")
    if min(frames.shape[-2:]) < side:
        raise ConfigError(f"the test image is {frames.shape[-2]}x{frames.shape[-1]} pixels, smaller than {side}, "
                          f"half the tile of {infer.tile}; export with a smaller --tile (at most "
                          f"{2 * min(frames.shape[-2:])}).")
    from .api import denoise_with_risk

    test_in = np.asarray(frames, np.float32)
    test_out = denoise_with_risk(test_in, model, axes="CYX", config=infer, channel_map=picked)[0]
    title = _safe_name(name if name is not None else f"Adaptive-SN2N {Path(model_dir).resolve().name}")
    den = build_denoiser(model, picked, infer)
    from .plots import pyplot

    with tempfile.TemporaryDirectory(prefix="asn2n-export-") as tmp:
        folder = Path(tmp)
        np.save(folder / FILES["test_input"], test_in[None])
        np.save(folder / FILES["test_output"], test_out[None])
        pyplot().imsave(folder / FILES["cover"], cover_image(test_in[0], test_out[0]))
        shutil.copyfile(Path(__file__).with_name("standalone.py"), folder / FILES["architecture"])
        torch.save(den.state_dict(), folder / FILES["pytorch_state_dict"])
        if "torchscript" in weights:
            with _torchscript():
                torch.jit.save(torch.jit.script(den), str(folder / FILES["torchscript"]))
        (folder / FILES["documentation"]).write_text(readme(model, picked, infer, name=title, test_source=source,
                                                           min_side=side, tolerance=TOLERANCE))
        tolerance = (TOLERANCE[0], TOLERANCE[1] * float(np.ptp(test_out)))
        descr = describe(model, picked, infer, folder, name=title, authors=authors, license=license,
                         weights=weights, test_source=source, tolerance=tolerance)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        try:
            core.save_bioimageio_package(descr, output_path=partial)
            summary = _test_package(core, partial) if check else None
            if summary is not None and summary.status != "passed":
                failed = "; ".join(f"{d.name}: {' '.join(e.msg for e in d.errors)[:300]}"
                                   for d in summary.details if d.status == "failed")
                raise ModelError(f"the package does not pass bioimage.io's model test ({failed}); this is a bug, "
                                 "please report it.")
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def _torchscript() -> Iterator[None]:
    """Silence torch's deprecation of TorchScript (``torch.jit.script``, ``save``,
    ``load``): it is the PyTorch format bioimage.io's Java tools (deepImageJ, Fiji) run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def _test_package(core: Any, path: Path) -> Any:
    """``bioimageio.core.test_model`` of a package, leaving this process's random
    generators and torch's determinism setting as they were (the test seeds them)."""
    rng, strict = torch.get_rng_state(), torch.are_deterministic_algorithms_enabled()
    np_rng = np.random.get_state()  # noqa: NPY002 (the legacy global generator, which the test seeds)
    try:
        with _torchscript():
            return core.test_model(path)
    finally:
        torch.set_rng_state(rng)
        np.random.set_state(np_rng)  # noqa: NPY002
        torch.use_deterministic_algorithms(strict)


def import_bioimageio(package: str | os.PathLike[str], model_dir: str | os.PathLike[str], *,
                      overwrite: bool = False) -> Path:
    """Turn a package written by :func:`export_bioimageio` back into a model directory
    (``model.json`` and safetensors weights) that ``asn2n denoise`` uses as the original.

    Raises
    ------
    InputError
        The package is missing, not a bioimage.io model, or not one asn2n-dask exported.
    OutputError
        ``model_dir`` already holds a model (without ``overwrite``).
    """
    _bioimageio()
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model import v0_5 as bio

    src, dest = Path(package), Path(model_dir)
    if not src.is_file():
        raise InputError(f"package {src} does not exist; give the .zip that 'asn2n export' wrote.")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest} is a file; give a directory for the imported model.")
    if (dest / "model.json").exists() and not overwrite:
        raise OutputError(f"a model already exists in {dest}; pass --overwrite to replace it or choose another "
                          "directory.")
    descr: Any
    try:
        descr = load_model_description(src)  # checks every file against its recorded SHA-256
    except (OSError, ValueError):
        descr = None
    if not isinstance(descr, bio.ModelDescr):
        raise InputError(f"{src} is not a bioimage.io model package of format 0.5; give the .zip that 'asn2n "
                         "export' wrote.")
    record = (descr.config.model_extra or {}).get("asn2n_dask")
    weights = descr.weights.pytorch_state_dict
    if not isinstance(record, dict) or weights is None:
        raise InputError(f"{src} was not exported by asn2n-dask (its description has no asn2n_dask section or no "
                         "pytorch_state_dict weights); only such packages can be imported.")
    try:
        train = TrainConfig.from_dict(dict(record["train"]))
        state = torch.load(io.BytesIO(weights.get_reader().read()), map_location="cpu", weights_only=True)
        channels = []
        for i, rec in enumerate(record["channels"]):
            prefix = f"channels.{i}.net."
            from .model import UNet

            net = UNet(PRESETS[train.preset])
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
            channels.append(ChannelModel(
                name=str(rec["name"]), net=net.eval(), stats=FrameStats.from_dict(rec["stats"]),
                dataset_mode=str(rec["dataset_mode"]), high_risk_ratio=float(rec["high_risk_ratio"]),
                risk_estimator=str(rec["risk_estimator"]), steps=int(rec["steps"]),
                best_step=None if rec.get("best_step") is None else int(rec["best_step"]),
                seconds=float(rec["seconds"])))
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as err:
        raise InputError(f"{src} holds an asn2n_dask section or weights this version cannot read "
                         f"({' '.join(str(err).split())[:200]}).") from None
    info = {"imported_from": str(src.resolve()), "exported_by": record.get("package_version")}
    save_model(Model(train=train, channels=channels, info=info), dest)
    return dest
