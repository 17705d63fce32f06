"""The compile cache: kernels compiled once per machine, a bad entry never stops a run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asn2n_dask import compiled
from asn2n_dask.compiled import MAGIC, cache_root, entry_parts, entry_path, load_entry
from asn2n_dask.config import InferConfig
from asn2n_dask.model import build_unet
from asn2n_dask.predict import compiles

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    compiled._warned.clear()


def test_cache_root_from_environment_or_per_user_directory(tmp_path: Path) -> None:
    assert cache_root({"ASN2N_COMPILE_CACHE": str(tmp_path)}) == tmp_path
    assert cache_root({"ASN2N_COMPILE_CACHE": "off"}) is None
    import platformdirs

    default = cache_root({})
    assert default == Path(platformdirs.user_cache_dir("asn2n-dask", appauthor=False)) / "compile"
    assert cache_root({"ASN2N_COMPILE_CACHE": ""}) == default


def test_entries_keyed_by_network_shape_input_and_precision_not_weights() -> None:
    x = torch.zeros(4, 1, 32, 32)
    torch.manual_seed(0)
    a = entry_parts(build_unet("tiny"), CPU, x, "fp32")
    torch.manual_seed(1)
    assert entry_parts(build_unet("tiny"), CPU, x, "fp32") == a  # other weights, same kernels
    root = Path("/cache")
    path = entry_path(root, a)
    assert path.parent.parent == root and torch.__version__ in path.parent.name
    assert compiled.device_kind(CPU) in path.parent.name
    others = [entry_parts(build_unet("small"), CPU, x, "fp32"), entry_parts(build_unet("tiny"), CPU, x[:2], "fp32"),
              entry_parts(build_unet("tiny"), CPU, torch.zeros(4, 1, 64, 64), "fp32"),
              entry_parts(build_unet("tiny"), CPU, x, "bf16"), {**a, "torch": "0.0.1"}, {**a, "device": "cuda-X-sm90"}]
    paths = {entry_path(root, p) for p in others}
    assert len(paths) == len(others) and path not in paths


def _entry(path: Path, parts: dict, payload: bytes) -> None:
    import hashlib

    path.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({"parts": parts, "sha256": hashlib.sha256(payload).hexdigest()}).encode()
    path.write_bytes(MAGIC + head + b"\n" + payload)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "unreadable by torch"])
def test_bad_entry_is_ignored_with_one_warning(tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    parts = entry_parts(build_unet("tiny"), CPU, torch.zeros(2, 1, 32, 32), "fp32")
    path = entry_path(tmp_path, parts)
    if kind == "garbage":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\x00\x01 not an entry")
    elif kind == "truncated":
        _entry(path, parts, b"x" * 100)
        path.write_bytes(path.read_bytes()[:-10])
    elif kind == "foreign":
        _entry(path, {**parts, "torch": "0.0.1"}, b"x")
    else:
        _entry(path, parts, b"not torch's format")
    with caplog.at_level(logging.WARNING, logger="asn2n_dask.compiled"):
        assert load_entry(path, parts) is False
        assert load_entry(path, parts) is False
    assert len(caplog.records) == 1 and "ignoring compile cache entry" in caplog.records[0].getMessage()


def test_missing_entry_loads_nothing_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parts = entry_parts(build_unet("tiny"), CPU, torch.zeros(2, 1, 32, 32), "fp32")
    with caplog.at_level(logging.WARNING):
        assert load_entry(entry_path(tmp_path, parts), parts) is False
    assert not caplog.records


def test_unusable_cache_directory_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    parts = entry_parts(build_unet("tiny"), CPU, torch.zeros(2, 1, 32, 32), "fp32")
    with caplog.at_level(logging.WARNING, logger="asn2n_dask.compiled"):
        for _ in range(2):
            with compiled._entry_lock(entry_path(blocker, parts)) as usable:
                assert usable is False
    assert len(caplog.records) == 1 and "cannot be used" in caplog.records[0].getMessage()


def test_compile_option_applies_on_cuda_only() -> None:
    assert compiles(InferConfig(compile=True), "cuda") is True
    assert compiles(InferConfig(compile=True), "cpu") is False
    assert compiles(InferConfig(compile=False), "cuda") is False


CHILD = """
import json, sys
import torch
from torch._dynamo.utils import counters
from asn2n_dask.model import build_unet
from asn2n_dask.predict import network_fn
torch.manual_seed(int(sys.argv[1]))
net = build_unet("tiny")
x = torch.randn(4, 1, 32, 32)
with torch.inference_mode():
    eager = net(x)
y = network_fn(net, "cpu", "fp32", compile=True)(x)
print(json.dumps({"inductor": dict(counters["inductor"]), "aot": dict(counters["aot_autograd"]),
                  "error": float((y - eager).abs().max())}))
"""


def _child(seed: int, cache: Path, inductor: Path) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ASN2N_COMPILE_CACHE": str(cache),
           "TORCHINDUCTOR_CACHE_DIR": str(inductor), "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(seed)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.mark.skipif(not compiled.has_cpp_compiler(), reason="Inductor on a CPU needs a C++ compiler")
def test_second_process_compiles_nothing(tmp_path: Path) -> None:
    """A fresh process with the cache warmed by another (with other weights, and its own
    empty Inductor directory, so only this cache can serve it) compiles no graph; a
    corrupt entry found by the first is replaced, with one warning."""
    cache = tmp_path / "cache"
    parts = entry_parts(build_unet("tiny"), CPU, torch.zeros(4, 1, 32, 32), "fp32")
    path = entry_path(cache, parts)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"corrupt")
    cold, err = _child(0, cache, tmp_path / "inductor-1")
    assert cold["inductor"].get("fxgraph_cache_miss", 0) >= 1 and cold["error"] < 1e-4
    assert err.count("ignoring compile cache entry") == 1
    assert path.read_bytes().startswith(MAGIC)
    warm, err = _child(1, cache, tmp_path / "inductor-2")
    assert warm["inductor"].get("fxgraph_cache_miss", 0) == 0 and warm["inductor"].get("fxgraph_cache_hit", 0) >= 1
    assert warm["aot"].get("autograd_cache_miss", 0) == 0 and warm["aot"].get("autograd_cache_hit", 0) >= 1
    assert warm["error"] < 1e-4 and "compile cache" not in err


def test_a_compiled_training_run_compiles_its_first_step_through_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first step (forward and backward) runs inside the cache entry of the training
    input; later steps do not touch the cache.  (torch.compile is replaced by the
    network itself: what is checked is where the cache is used, not compilation.)"""
    import contextlib

    import numpy as np

    from asn2n_dask import train
    from asn2n_dask.config import TrainConfig

    entries: list[dict] = []

    @contextlib.contextmanager
    def record(parts: dict, root: object = "default"):  # type: ignore[no-untyped-def]
        entries.append(parts)
        yield

    monkeypatch.setattr(train, "cached", record)
    monkeypatch.setattr(torch, "compile", lambda m, **k: m)
    frame = np.random.default_rng(0).poisson(20, (64, 64)).astype(np.uint16)
    train.train_channel([frame], TrainConfig(preset="tiny", steps=3, patch=32, batch=2, val_every=3, compile=True))
    assert [(p["mode"], p["input"], p["widths"]) for p in entries] == [("train", [4, 1, 32, 32], [8, 16])]
    entries.clear()
    train.train_channel([frame], TrainConfig(preset="tiny", steps=3, patch=32, batch=2, val_every=3))
    assert entries == []
