"""asn2n-dask: Adaptive-SN2N self-supervised denoising for fluorescence microscopy.

The verbs::

    from asn2n_dask import fit, denoise, load_model, assess_risk, make_report

work on numpy arrays and files; the ``asn2n`` command line is a thin shell over them.
"""

from ._version import __version__
from .api import assess_risk, denoise, fit, risk_summary
from .checkpoint import Model, load_model, save_model
from .config import InferConfig, NormConfig, RiskThresholds, TrainConfig, VolumeTrainConfig
from .errors import Asn2nError
from .report import make_report

__all__ = [
    "__version__",
    "fit",
    "denoise",
    "load_model",
    "save_model",
    "assess_risk",
    "risk_summary",
    "make_report",
    "Model",
    "TrainConfig",
    "VolumeTrainConfig",
    "InferConfig",
    "NormConfig",
    "RiskThresholds",
    "Asn2nError",
]
