"""One error grammar for the whole package.

Every message says what was expected, what was found and what to do about it, in one
sentence.  The command line prints ``str(error)`` and exits with status 2; it never
shows a traceback for these.
"""

from __future__ import annotations

__all__ = [
    "Asn2nError",
    "InputError",
    "ModelError",
    "OutputError",
    "ConfigError",
]


class Asn2nError(Exception):
    """Base class of every error the package raises on purpose."""


class InputError(Asn2nError, ValueError):
    """The input image or file cannot be used (missing, wrong dtype, NaN, too small...)."""


class ModelError(Asn2nError, ValueError):
    """A model directory is missing, malformed, or does not fit the input."""


class OutputError(Asn2nError, ValueError):
    """The output path cannot be written (exists, equals the input, bad extension...)."""


class ConfigError(Asn2nError, ValueError):
    """An option is out of range or not one of the allowed choices."""
