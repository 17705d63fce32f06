"""Compiled networks whose kernels are compiled once per machine, not once per process.

``torch.compile`` traces a network and has Inductor generate and compile kernels for it:
tens of seconds for a U-Net, paid by every process (every Dask worker, every run).
:func:`compile_network` keeps what Inductor produced in a persistent per-user cache
(``torch.compiler.save_cache_artifacts``, the "mega-cache": generated kernels,
AOTAutograd and autotuning results) and loads it before compiling, so a later process
with the same torch, device, network shape, input shape and precision finds every
kernel already built and compiles nothing (Dynamo still traces the network, a few
seconds).  Workers of one run share the cache: the first to need an entry compiles it
under a file lock while the others wait, then load it.

The cache lives in ``ASN2N_COMPILE_CACHE`` when that is set (``off`` disables it),
else in the user's cache directory (``~/.cache/asn2n-dask/compile`` on Linux).  Its
path is written nowhere else.  An entry that is unreadable, corrupt, or made for other
software is ignored with one warning and rebuilt; the cache never stops a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["CACHE_ENV", "cache_root", "device_kind", "has_cpp_compiler", "entry_parts", "entry_path",
           "cached", "compile_network", "load_entry", "save_entry"]

log = logging.getLogger(__name__)

#: Environment variable naming the cache directory (``off`` disables the cache).
CACHE_ENV = "ASN2N_COMPILE_CACHE"
#: First bytes of every cache entry; a file without them is not one of ours.
MAGIC = b"ASN2N-COMPILE-CACHE 1\n"
#: Seconds a process waits for another one compiling the same entry before compiling too.
LOCK_TIMEOUT = 900.0

_warned: set[str] = set()


def _warn_once(what: str, message: str, *args: Any) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning(message, *args)


def cache_root(environ: dict[str, str] | None = None) -> Path | None:
    """The directory of compiled kernels, or ``None`` when the cache is off.

    ``$ASN2N_COMPILE_CACHE`` when set and not empty (``off``, ``none``, ``0``: no
    cache), else ``compile`` in the per-user cache directory of ``platformdirs``.
    """
    env = os.environ if environ is None else environ
    value = env.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "none", "0", "false"):
        return None
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("asn2n-dask", appauthor=False)) / "compile"


def has_cpp_compiler() -> bool:
    """Whether Inductor finds the C++ compiler it builds CPU kernels with."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:
        return False
    return True


def device_kind(device: torch.device) -> str:
    """What compiled kernels depend on in a device: the GPU model and compute capability,
    or the CPU architecture and vector instruction set."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-{torch.cuda.get_device_name(device)}-sm{major}{minor}"
    return f"{device.type}-{platform.machine()}-{torch.backends.cpu.get_cpu_capability()}"


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text)


def entry_parts(net: torch.nn.Module, device: torch.device, x: torch.Tensor, precision: str,
                mode: str = "infer") -> dict[str, Any]:
    """Everything a cache entry is keyed by: the software, the device kind, what is
    compiled (``infer``: the forward pass; ``train``: forward and backward), the network's
    layers (widths and parameter shapes, not values: weights are inputs of the compiled
    code, so one entry serves every trained model of a preset), the input's shape,
    dtype and memory layout, and the arithmetic."""
    from ._version import __version__

    layers = [(name, list(p.shape), str(p.dtype)) for name, p in net.state_dict().items()]
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return {
        "torch": torch.__version__,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "asn2n_dask": __version__,
        "device": device_kind(device),
        "mode": mode,
        "network": type(net).__name__,
        "widths": list(getattr(net, "widths", [])),
        "layers": hashlib.sha256(json.dumps(layers).encode()).hexdigest()[:16],
        "input": list(x.shape),
        "dtype": str(x.dtype),
        "layout": "channels_last" if nhwc else "contiguous",
        "precision": precision,
    }


def entry_path(root: Path, parts: dict[str, Any]) -> Path:
    """Where the entry for ``parts`` lives under ``root``: a folder per torch version and
    device kind, a readable file name per network, input and precision, ended by a hash
    of all the parts."""
    folder = _clean(f"torch-{parts['torch']}-py{parts['python']}-{parts['device']}")
    widths = "-".join(str(w) for w in parts["widths"]) or parts["network"]
    shape = "x".join(str(s) for s in parts["input"])
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    name = _clean(f"{parts['mode']}-unet-{widths}_in-{shape}_{parts['precision']}_{parts['layout']}_{digest}.bin")
    return root / folder / name


def load_entry(path: Path, parts: dict[str, Any]) -> bool:
    """Load the kernels of a cache entry into torch's caches; ``False`` (with one warning
    when the entry exists but cannot be used) when there is nothing to load."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as e:
        _warn_once(str(path), "compile cache entry %s cannot be read (%s); compiling without it", path, e)
        return False
    try:
        if not data.startswith(MAGIC):
            raise ValueError("not a cache entry of this package")
        head, _, payload = data[len(MAGIC):].partition(b"\n")
        meta = json.loads(head)
        if meta.get("parts") != parts:
            raise ValueError("made for another torch, device or network")
        if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            raise ValueError("its checksum does not match (a truncated or corrupt file)")
        quiet = logging.getLogger("torch.compiler._cache")  # its own warning would be a second one
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            if torch.compiler.load_cache_artifacts(payload) is None:
                raise ValueError("torch could not read it")
        finally:
            quiet.setLevel(level)
    except Exception as e:  # a cache never stops a run
        _warn_once(str(path), "ignoring compile cache entry %s: %s; compiling again and replacing it", path, e)
        return False
    return True


def save_entry(path: Path, parts: dict[str, Any]) -> bool:
    """Write what this process compiled so far as the entry ``path`` (atomically);
    ``False`` with one warning when it cannot be written."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return False
    payload = saved[0]
    head = json.dumps({"parts": parts, "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(MAGIC + head + b"\n" + payload)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        _warn_once(str(path), "cannot write compile cache entry %s (%s); the next process compiles again", path, e)
        return False
    return True


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[bool]:
    """Hold the entry's file lock (other processes compiling it wait); yields whether the
    cache can be used at all (``False`` when its folder cannot be made or locked)."""
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT)
        lock.acquire()
    except Timeout:
        _warn_once(str(path), "another process has compiled %s for %.0f s; compiling here too", path, LOCK_TIMEOUT)
        yield True
        return
    except OSError as e:
        _warn_once(str(path.parent), "compile cache %s cannot be used (%s); compiling without it", path.parent, e)
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextlib.contextmanager
def cached(parts: dict[str, Any], root: Path | None | str = "default") -> Iterator[None]:
    """Run the block that compiles (the first call of a compiled network, or a training
    step with its backward pass) with the cache entry of ``parts`` loaded before it and,
    when nothing could be loaded, saved after it; other processes wanting the same entry
    wait meanwhile.  ``root``: cache directory (``"default"``: :func:`cache_root`;
    ``None``: no cache)."""
    base = cache_root() if isinstance(root, str) and root == "default" else (Path(root) if root else None)
    if base is None:
        yield
        return
    path = entry_path(base, parts)
    with _entry_lock(path) as usable:
        loaded = usable and load_entry(path, parts)
        yield
        if usable and not loaded:
            save_entry(path, parts)


def compile_network(net: torch.nn.Module, device: torch.device, precision: str,
                    root: Path | None | str = "default") -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile(net)`` for fixed input shapes, its kernels kept in the cache.

    The first call with each new input shape (the one that compiles) runs :func:`cached`.

    Parameters
    ----------
    net : Module
        On ``device``, in eval mode.
    device : torch.device
    precision : str
        The arithmetic the network is called under (``bf16`` autocast or ``fp32``): part
        of the key, since autocast changes the compiled code.
    root : Path, str or None
        Cache directory; ``"default"``: :func:`cache_root`; ``None``: no cache.
    """
    run = torch.compile(net, dynamic=False)
    seen: set[tuple[int, ...]] = set()

    def fn(x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape in seen:
            return run(x)  # type: ignore[no-any-return]
        seen.add(shape)
        with cached(entry_parts(net, device, x, precision), root):
            return run(x)  # type: ignore[no-any-return]

    return fn
