#!/usr/bin/env python3
"""GPU benchmarks: per-chunk throughput, the pipeline on a GPU worker, training speed.

Stages::

    python benchmarks/gpu.py --stage kernel     # one 2048^2 chunk: presets x fp32/bf16 x tile batch
    python benchmarks/gpu.py --stage pipeline   # the Dask pipeline on one GPU worker, 1/2/4 threads
    python benchmarks/gpu.py --stage train      # training steps/s: presets x fp32/bf16 (x compile)
    python benchmarks/gpu.py --stage compile    # first-task latency: eager, compiled cold, compiled warm cache
    python benchmarks/gpu.py --stage e2e        # asn2n run / asn2n denoise from the command line, defaults
    python benchmarks/gpu.py --stage report

Writes ``benchmarks/results/gpu.json`` and ``gpu.md``.  Needs a CUDA GPU.  Networks are
untrained (speed does not depend on the weights); data is ``simulate.py timelapse``.
``benchmarks/gpu_check.sh`` runs the compile and e2e stages in about ten minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import RESULTS, ROOT, SHARED, WORK, model_dir, timelapse  # noqa: E402

from asn2n_dask import InferConfig, TrainConfig  # noqa: E402
from asn2n_dask.model import build_unet  # noqa: E402
from asn2n_dask.predict import denoise_window, network_fn, tile_fn, window_plan  # noqa: E402
from asn2n_dask.stats import channel_stats  # noqa: E402
from asn2n_dask.synthetic import noisy_frame  # noqa: E402

TB_PIXELS = 1e12 / 2  # 1 TB of uint16
DEVICE = "cuda"  # --device cpu only to check the script itself on a small size


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn, min_seconds: float = 2.0) -> float:
    """Seconds per call of ``fn`` after one warm-up call (which also tunes cuDNN)."""
    fn()
    _sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync()
        if time.perf_counter() - t0 >= min_seconds:
            return (time.perf_counter() - t0) / n


def _kernel_row(img, stats, net, preset: str, precision: str, batch: int, compile: bool) -> dict:
    side = img.shape[0]
    fn = network_fn(net, DEVICE, precision, compile)
    infer = InferConfig(batch=batch, precision=precision, compile=compile)
    plan = window_plan((side, side), (0, side, 0, side), infer, 64)
    n_tiles = plan.tiles[0].count * plan.tiles[1].count
    t0 = time.perf_counter()
    denoise_window(img, plan, (side, side), fn, stats=stats, infer=infer, device=DEVICE, multiple=net.multiple)
    first = time.perf_counter() - t0
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    secs = _timed(
        lambda: denoise_window(
            img, plan, (side, side), fn, stats=stats, infer=infer, device=DEVICE, multiple=net.multiple
        )
    )
    x = torch.randn(batch, 3, infer.tile, infer.tile, device=DEVICE).abs() + 0.5
    per_tile = tile_fn(fn, infer.infer_on)
    net_secs = _timed(lambda: per_tile(x), 1.0) * n_tiles / batch
    row = {
        "preset": preset,
        "precision": precision,
        "batch": batch,
        "compile": compile,
        "side": side,
        "tiles": n_tiles,
        "first_call_seconds": first,
        "seconds": secs,
        "mpx_s": side * side / secs / 1e6,
        "network_seconds": net_secs,
        "network_share": net_secs / secs,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3 if DEVICE == "cuda" else 0.0,
    }
    row["tb_hours"] = TB_PIXELS / (row["mpx_s"] * 1e6) / 3600
    print(row, flush=True)
    return row


def stage_kernel(presets: list[str], batches: list[int], side: int, compiled: list[str]) -> dict:
    """The whole per-chunk work (risk, fields, twins, network, blend, back to units) on
    one ``side``^2 window, and twins plus network alone on the same tiles; eager for
    every preset, precision and tile batch, compiled (bf16, largest batch) for
    ``compiled`` presets."""
    img = noisy_frame((side, side), photons=5.0, seed=0)[0]
    stats = channel_stats(img[None])[0]
    rows = {}
    for preset in presets:
        torch.manual_seed(0)
        net = build_unet(preset)
        for precision in ("fp32", "bf16"):
            for batch in batches:
                rows[f"kernel {preset} {precision} batch {batch}"] = _kernel_row(
                    img, stats, net, preset, precision, batch, False
                )
        if preset in compiled:
            rows[f"kernel {preset} bf16 batch {max(batches)} compiled"] = _kernel_row(
                img, stats, net, preset, "bf16", max(batches), True
            )
    return rows


def stage_pipeline(
    shape: tuple[int, int, int, int], preset: str, batch: int, threads: list[int], chunks: int, compile: bool
) -> dict:
    """The real pipeline (statistics pass, plan, one task per chunk, zarr in and out) on
    one GPU worker process with 1, 2 or 4 threads (chunks in flight)."""
    from asn2n_dask.cluster import dask_client
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    src = timelapse(shape, (1, 1, 1024, 1024))
    mdir = model_dir(preset)
    source = open_source(src)
    px = int(np.prod(source.shape))
    rows = {}
    for t in threads:
        opts = RunOptions(
            infer=InferConfig(device=DEVICE, batch=batch, compile=compile), chunks=(chunks, chunks), overwrite=True
        )
        with dask_client(workers=1, threads=t, echo=lambda m: None) as (client, torch_threads):
            t0 = time.perf_counter()
            s = run_pipeline(
                source,
                WORK / "gpu-out.zarr",
                mdir,
                options=opts,
                client=client,
                echo=lambda m: None,
                torch_threads=torch_threads,
            )
            secs = time.perf_counter() - t0
        row = {
            "preset": preset,
            "batch": batch,
            "compile": compile,
            "threads": t,
            "chunks": chunks,
            "shape": list(shape),
            "tasks": s.tasks,
            "seconds": secs,
            "stats_seconds": s.stats_seconds,
            "mpx_s": px / secs / 1e6,
            "mpx_s_without_stats": px / (secs - s.stats_seconds) / 1e6,
        }
        rows[f"pipeline {preset} batch {batch} {t} thread(s)" + (" compiled" if compile else "")] = row
        print(row, flush=True)
    return rows


def stage_train(presets: list[str], steps: int, batch: int, compile_preset: str | None) -> dict:
    """Training steps per second on one GPU (patches of 96^2, twins made on the GPU)."""
    from asn2n_dask.train import train_channel

    img = noisy_frame((2048, 2048), photons=5.0, seed=1)[0]
    rows = {}
    runs = [(p, prec, False) for p in presets for prec in ("fp32", "bf16")]
    if compile_preset:
        runs.append((compile_preset, "bf16", True))
    for preset, precision, comp in runs:
        warm = steps // 4
        cfg = TrainConfig(preset=preset, steps=steps, batch=batch, val_every=warm, precision=precision, compile=comp)
        res = train_channel([img], cfg, device=DEVICE)
        h = {r["step"]: r["seconds"] for r in res.history}
        per_step = (h[steps] - h[warm]) / (steps - warm)
        row = {
            "preset": preset,
            "precision": precision,
            "compile": comp,
            "batch": batch,
            "patch": cfg.patch,
            "steps_s": 1 / per_step,
            "patches_s": batch / per_step,
            "first_steps_s": h[warm],
        }
        rows[f"train {preset} {precision}" + (" compiled" if comp else "")] = row
        print(row, flush=True)
    return rows


# ------------------------------------------------------------------ provenance
def provenance(command: str, seconds: float | None) -> dict:
    """What made a row: the command, the commit (``-dirty`` with uncommitted changes to
    tracked files outside the records), the machine and its GPU, the wall time."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "none (--device cpu: a check of the script)"
    return {"command": command, "commit": git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else ""),
            "wall_s": seconds, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": f"{platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()}, GPU {gpu})",
            "torch": torch.__version__}


# ------------------------------------------------------------------ compile: first-task latency
FIRST_TASK = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from torch._dynamo.utils import counters
from asn2n_dask import InferConfig
from asn2n_dask.model import build_unet
from asn2n_dask.predict import denoise_window, network_fn, window_plan
from asn2n_dask.stats import channel_stats
from asn2n_dask.synthetic import noisy_frame
device, preset, side, batch, compile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
img = noisy_frame((side, side), photons=5.0, seed=0)[0]
stats = channel_stats(img[None])[0]
net = build_unet(preset)
infer = InferConfig(batch=batch, compile=compile, device=device)
plan = window_plan((side, side), (0, side, 0, side), infer, 64)
t1 = time.perf_counter()
fn = network_fn(net, device, infer.precision, compile)
task = lambda: denoise_window(img, plan, (side, side), fn, stats=stats, infer=infer, device=device,
                              multiple=net.multiple)
task()
t2 = time.perf_counter()
task()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_task_s": t2 - t1, "second_task_s": t3 - t2,
                  "fxgraph_cache_miss": counters["inductor"].get("fxgraph_cache_miss", 0),
                  "fxgraph_cache_hit": counters["inductor"].get("fxgraph_cache_hit", 0),
                  "autograd_cache_miss": counters["aot_autograd"].get("autograd_cache_miss", 0),
                  "autograd_cache_hit": counters["aot_autograd"].get("autograd_cache_hit", 0)}))
"""


def stage_compile(preset: str, side: int, batch: int, argv: str) -> dict:
    """First-task latency of a fresh process (one ``side``^2 window, the per-chunk work of
    the pipeline): eager; compiled with empty caches; compiled with this package's
    compile cache warmed by the previous process but an empty Inductor directory of its
    own (as on another node, or after /tmp was cleared); compiled with both warm (a
    second run on the same machine)."""
    work = Path(tempfile.mkdtemp(prefix="asn2n-compile-", dir=WORK))
    cache = work / "cache"
    runs = [("eager", False, "i0"), ("compiled, cold caches", True, "i1"),
            ("compiled, warm package cache, empty Inductor directory", True, "i2"),
            ("compiled, both caches warm", True, "i2")]
    rows = {}
    for name, comp, inductor in runs:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ASN2N_COMPILE_CACHE": str(cache),
               "TORCHINDUCTOR_CACHE_DIR": str(work / inductor)}
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", FIRST_TASK, DEVICE, preset, str(side), str(batch),
                            "1" if comp else "0"], env=env, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"compile stage, {name}: {r.stderr[-2000:]}")
        row = {**provenance(argv, secs), "preset": preset, "side": side, "batch": batch, "compile": comp,
               "process_s": secs, **json.loads(r.stdout.strip().splitlines()[-1])}
        rows[f"compile {preset} batch {batch}: {name}"] = row
        print(name, row, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


# ------------------------------------------------------------------ e2e: the command line, default options
def _simulate(out: Path, frames: int, side: int) -> float:
    """A (frames, 2, side, side) uint16 ``simulate.py timelapse`` Zarr (input chunks
    1024^2), made by parallel processes (parts of the time axis, each a different seed)
    whose chunk files are then moved into one array.  Returns the seconds taken."""
    t0 = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    procs = max(1, min(frames, (os.cpu_count() or 2) - 1))
    bounds = np.linspace(0, frames, procs + 1).astype(int)
    parts = [out.with_name(f"{out.name}.part{k}") for k in range(procs)]
    chunk = min(1024, side)
    jobs = [subprocess.Popen([sys.executable, str(SHARED / "simulate.py"), "timelapse", "--out", str(part),
                              "--shape", str(b - a), "2", str(side), str(side), "--chunks", "1", "1", str(chunk),
                              str(chunk), "--no-gt", "--seed", str(k)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL)
            for k, (part, a, b) in enumerate(zip(parts, bounds[:-1], bounds[1:]))]
    if any(j.wait() for j in jobs):
        sys.exit("simulate.py timelapse failed")
    shutil.move(parts[0], out)
    meta = json.loads((out / "noisy" / "zarr.json").read_text())
    meta["shape"][0] = frames
    (out / "noisy" / "zarr.json").write_text(json.dumps(meta))
    for part, a in zip(parts[1:], bounds[1:-1]):
        for t in sorted((part / "noisy" / "c").iterdir(), key=lambda q: int(q.name)):
            (out / "noisy" / "c" / str(int(t.name) + a)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(t, out / "noisy" / "c" / str(int(t.name) + a))
        shutil.rmtree(part)
    return time.perf_counter() - t0


def _repeat(base: Path, out: Path, times: int) -> None:
    """``base`` repeated ``times`` along T, its chunk files hard-linked (no copy)."""
    if out.exists():
        shutil.rmtree(out)
    frames = json.loads((base / "noisy" / "zarr.json").read_text())["shape"][0]
    shutil.copytree(base, out, ignore=lambda d, names: ["c"] if Path(d).name == "noisy" else [])
    meta = json.loads((out / "noisy" / "zarr.json").read_text())
    meta["shape"][0] = frames * times
    (out / "noisy" / "zarr.json").write_text(json.dumps(meta))
    for k in range(times):
        for t in (base / "noisy" / "c").iterdir():
            shutil.copytree(t, out / "noisy" / "c" / str(int(t.name) + k * frames), copy_function=os.link)


class TreePeak:
    """Peak resident memory of a process and all its descendants, and peak GPU memory in
    use on the machine (``nvidia-smi``, less what was in use before), sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.rss = 0
        self.gpu_mib = 0.0
        self.gpu_base = self._gpu()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def _gpu() -> float:
        if DEVICE != "cuda" or not shutil.which("nvidia-smi"):
            return 0.0
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True)
        return float(sum(float(v) for v in r.stdout.split() if v.strip())) if r.returncode == 0 else 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.proc, *self.proc.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except Exception:
                        pass
            except Exception:
                pass
            self.rss = max(self.rss, total)
            self.gpu_mib = max(self.gpu_mib, self._gpu() - self.gpu_base)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def _cli(args: list[str]) -> dict:
    """Run ``asn2n ARGS`` as a user would; its wall time, peak RSS (all its processes)
    and peak GPU memory."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "asn2n_dask", *args], env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = TreePeak(proc.pid)
    rc = proc.wait()
    peak.stop()
    if rc:
        sys.exit(f"asn2n {' '.join(args)} failed ({rc})")
    return {"cli": "asn2n " + " ".join(args), "seconds": time.perf_counter() - t0,
            "peak_rss_gib": peak.rss / 1024**3, "peak_gpu_gib": peak.gpu_mib / 1024}


def _breakdown(out: Path, mdir: Path) -> dict:
    """Where the time of a finished output went: the statistics pass (its attributes),
    and reading, denoising and writing summed over the chunk records (task seconds:
    several chunks are in flight at once); the network's part of the denoising is
    estimated by timing the network alone on as many tile batches on this device."""
    import zarr

    from asn2n_dask.checkpoint import load_model
    from asn2n_dask.pipeline import PROGRESS_DIR

    attrs = dict(zarr.open_group(str(out), mode="r").attrs)["asn2n"]
    recs = [json.loads(p.read_text()).get("seconds", {}) for p in (out / PROGRESS_DIR).glob("*.json")]
    sums = {k: float(sum(r.get(k, 0.0) for r in recs)) for k in ("read", "denoise", "write")}
    infer = InferConfig(**attrs["infer"])
    tiles = 0
    from asn2n_dask.pipeline import RunOptions, make_plan  # the run's plan: its chunks and their tiles
    from asn2n_dask.source import open_source

    plan = make_plan(open_source(Path(attrs["input"])), options=RunOptions(infer=infer))
    for k in range(plan.grid[0] * plan.grid[1]):
        wp = plan.window_plan(k)
        tiles += wp.tiles[0].count * wp.tiles[1].count
    tiles *= plan.n_tasks // (plan.grid[0] * plan.grid[1])
    model = load_model(mdir)
    dev = "cuda" if DEVICE == "cuda" else "cpu"
    fn = tile_fn(network_fn(model.channels[0].net, dev, infer.precision), infer.infer_on, infer.tta)
    x = torch.rand(infer.batch, 3, infer.tile, infer.tile, device=dev) + 0.5
    net_s = _timed(lambda: fn(x), 1.0) * tiles / infer.batch
    return {"stats_s": attrs.get("stats_seconds"), "read_task_s": sums["read"], "denoise_task_s": sums["denoise"],
            "network_task_s_est": net_s, "risk_norm_blend_task_s_est": max(sums["denoise"] - net_s, 0.0),
            "write_task_s": sums["write"], "tiles": tiles, "tile_batch": infer.batch, "tile": infer.tile}


def stage_e2e(gb: float, big_gb: float, budget_s: float, train_args: list[str], side: int, argv: str) -> dict:
    """The command line with default options on ``simulate.py timelapse`` data: ``asn2n
    run`` (fit, then denoise) on ``gb`` GB of uint16, ``asn2n denoise`` of the same data
    with that model, then ``asn2n denoise`` of the largest size up to ``big_gb`` GB that
    the time left of ``budget_s`` allows at the rate just measured (the base data
    repeated along T: hard links, no new simulation)."""
    t_start = time.perf_counter()
    work = WORK / "e2e"
    work.mkdir(parents=True, exist_ok=True)
    frame_bytes = 2 * side * side * 2
    frames = max(2, int(round(gb * 1e9 / frame_bytes)))
    base = work / f"tl-{frames}x2x{side}x{side}.zarr"
    sim_s = _simulate(base, frames, side)
    px = frames * 2 * side * side
    rows = {}

    def put(name: str, row: dict, out: Path, mdir: Path, pixels: int, gbytes: float) -> None:
        row.update({"pixels": pixels, "input_gb": gbytes, "mpx_s": pixels / row["seconds"] / 1e6,
                    **_breakdown(out, mdir)})
        rows[name] = {**provenance(argv, row["seconds"]), **row}
        print(name, rows[name], flush=True)

    mdir = work / "run.zarr.model"
    shutil.rmtree(mdir, ignore_errors=True)
    r = _cli(["run", str(base), "-o", str(work / "run.zarr"), "--overwrite", *train_args])
    info = json.loads((mdir / "model.json").read_text())
    r["train_s"] = float(sum(c.get("seconds", 0.0) for c in info["channels"]))
    r["simulate_s"] = sim_s
    put(f"e2e asn2n run {gb:g} GB", r, work / "run.zarr", mdir, px, px * 2 / 1e9)
    shutil.rmtree(work / "run.zarr", ignore_errors=True)
    d = _cli(["denoise", str(base), "-m", str(mdir), "-o", str(work / "small.zarr"), "--overwrite"])
    put(f"e2e asn2n denoise {gb:g} GB", d, work / "small.zarr", mdir, px, px * 2 / 1e9)
    shutil.rmtree(work / "small.zarr", ignore_errors=True)
    left = budget_s - (time.perf_counter() - t_start)
    rate = px / d["seconds"]  # pixels per second of a whole denoise command at the small size
    times = int(min(big_gb / max(px * 2 / 1e9, 1e-12), 0.8 * left * rate / px))
    if times >= 2:
        big = work / f"tl-{frames * times}x2x{side}x{side}.zarr"
        _repeat(base, big, times)
        b = _cli(["denoise", str(big), "-m", str(mdir), "-o", str(work / "big.zarr"), "--overwrite"])
        put(f"e2e asn2n denoise {px * times * 2 / 1e9:.3g} GB", b, work / "big.zarr", mdir, px * times,
            px * times * 2 / 1e9)
        shutil.rmtree(work / "big.zarr", ignore_errors=True)
        shutil.rmtree(big, ignore_errors=True)
    else:
        print(f"no larger size fits the {budget_s:.0f} s budget ({left:.0f} s left)", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--stage", nargs="+", default=["kernel", "pipeline", "train"],
        choices=["kernel", "pipeline", "train", "compile", "e2e", "report"]
    )
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256], help="tiles per network call")
    ap.add_argument("--side", type=int, default=2048, help="kernel: chunk side")
    ap.add_argument("--compiled", nargs="*", default=["small", "paper"], help="kernel: presets also compiled")
    ap.add_argument("--shape", type=int, nargs=4, default=[16, 2, 2048, 2048], help="pipeline data (T C Y X)")
    ap.add_argument("--pipeline-batch", type=int, default=256)
    ap.add_argument("--pipeline-compile", action="store_true", help="pipeline: compile the network")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--chunks", type=int, default=2048, help="pipeline output chunk side")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--compile", default="small", help="preset also trained with torch.compile ('' for none)")
    ap.add_argument("--compile-preset", default="small", help="compile: preset of the first-task latency")
    ap.add_argument("--compile-batch", type=int, default=InferConfig().batch, help="compile: tile batch")
    ap.add_argument("--e2e-gb", type=float, default=1.0, help="e2e: GB of uint16 for asn2n run and denoise")
    ap.add_argument("--e2e-big-gb", type=float, default=10.0, help="e2e: largest GB for the second denoise")
    ap.add_argument("--e2e-budget", type=float, default=420.0, help="e2e: seconds the stage may take in all")
    ap.add_argument("--e2e-side", type=int, default=2048, help="e2e: frame side (2 channels per time point)")
    ap.add_argument("--e2e-train", default="", help="e2e: extra options of asn2n run (default: none, the "
                    "defaults; e.g. '--preset tiny --steps 3' for a check on the CPU)")
    ap.add_argument("--results", help="write rows to this JSON file (default: results/gpu.json)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the script, not a result")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.results) if args.results else RESULTS / ("gpu.json" if DEVICE == "cuda" else "gpu-cpu-check.json")
    argv = " ".join(["python benchmarks/gpu.py", *sys.argv[1:]])
    rows = json.loads(path.read_text()) if path.exists() else {}
    stages = set(args.stage)
    if stages - {"report"}:
        if DEVICE == "cuda" and not torch.cuda.is_available():
            sys.exit("these benchmarks need a CUDA GPU.")
        rows["device"] = {
            "name": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if DEVICE == "cuda" else None,
        }

    def put(new: dict) -> None:
        rows.update(new)
        path.write_text(json.dumps(rows, indent=1))

    if "kernel" in stages:
        put(stage_kernel(args.presets, args.batches, args.side, args.compiled))
    if "pipeline" in stages:
        put(
            stage_pipeline(
                tuple(args.shape),
                args.presets[0],
                args.pipeline_batch,
                args.threads,
                args.chunks,
                args.pipeline_compile,
            )
        )
    if "train" in stages:
        put(stage_train(args.presets, args.train_steps, args.train_batch, args.compile or None))
    if "compile" in stages:
        put(stage_compile(args.compile_preset, args.side, args.compile_batch, argv))
    if "e2e" in stages:
        put(stage_e2e(args.e2e_gb, args.e2e_big_gb, args.e2e_budget, args.e2e_train.split(), args.e2e_side, argv))
    report(rows, path.with_suffix(".md"))


def _section(title: str, intro: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section: heading, explanation, one table."""
    return [f"## {title}", "", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def report(rows: dict, out: Path) -> None:
    dev = rows.get("device", {})
    lines = [
        "# GPU benchmarks",
        "",
        f"Command: `python benchmarks/gpu.py`. Device: {dev.get('name', '?')}, torch {dev.get('torch', '?')}, "
        f"CUDA {dev.get('cuda', '?')}. Untrained networks of each preset (speed does not depend on the "
        "weights); tiles 128 px at 50% overlap, twins inference (two network inputs per tile).",
        "",
    ]
    kern = [r for k, r in rows.items() if k.startswith("kernel")]
    if kern:
        lines += _section(
            "One chunk, all of the per-chunk work on the GPU",
            "A 2048 x 2048 uint16 window: one copy in, risk classes, normalisation fields, twins, network, "
            "Gaussian blend, back to input units, one copy out. *Twins + network share*: the time of the "
            "twins, their normalisation and the network alone on the same number of tiles, over the whole. "
            "*First call*: includes cuDNN tuning, and compilation when compiled. *1 TB*: hours for 5e11 uint16 "
            "pixels at this rate.",
            ["preset", "precision", "tile batch", "compiled", "first call s", "Mpx/s", "twins + network share",
             "peak GPU GiB", "1 TB hours"],
            [[r["preset"], r["precision"], str(r["batch"]), str(r.get("compile", False)),
              f"{r.get('first_call_seconds', float('nan')):.1f}", f"{r['mpx_s']:.1f}", f"{r['network_share']:.2f}",
              f"{r['peak_gpu_gib']:.2f}", f"{r['tb_hours']:.1f}"] for r in kern])
    pipe = [(k, r) for k, r in rows.items() if k.startswith("pipeline")]
    if pipe:
        lines += _section(
            "The pipeline on one GPU worker",
            "`run_pipeline` on a `simulate.py timelapse` Zarr (input chunks 1024^2), one worker process "
            "holding the GPU; threads = chunks in flight (reading and writing overlap the GPU).",
            ["run", "compiled", "shape", "output chunks", "threads", "tasks", "seconds", "stats pass s", "Mpx/s",
             "Mpx/s without the stats pass"],
            [[k, str(r.get("compile", False)), str(tuple(r["shape"])), str(r["chunks"]), str(r["threads"]),
              str(r["tasks"]), f"{r['seconds']:.1f}", f"{r['stats_seconds']:.1f}", f"{r['mpx_s']:.1f}",
              f"{r['mpx_s_without_stats']:.1f}"] for k, r in pipe])
    tr = [r for k, r in rows.items() if k.startswith("train")]
    if tr:
        lines += _section(
            "Training",
            "`train_channel` on a 2048^2 frame; steps/s measured after the first quarter of the steps "
            "(warm-up, and compilation when compiled).",
            ["preset", "precision", "compiled", "batch", "patch", "steps/s", "patches/s", "first quarter s"],
            [[r["preset"], r["precision"], str(r["compile"]), str(r["batch"]), str(r["patch"]), f"{r['steps_s']:.1f}",
              f"{r['patches_s']:.0f}", f"{r['first_steps_s']:.1f}"] for r in tr])
    comp = [(k, r) for k, r in rows.items() if k.startswith("compile ")]
    if comp:
        lines += _section(
            "First-task latency with --compile and its cache",
            "A fresh process: imports, then one 2048^2 window of the per-chunk work (the first task of a "
            "worker), then a second. *Graphs compiled*: Inductor cache misses (0: every kernel came from a "
            "cache). *Package cache*: `ASN2N_COMPILE_CACHE` (kept across runs); *Inductor directory*: torch's "
            "own (in /tmp by default, per node).",
            ["run", "preset", "tile batch", "import s", "first task s", "second task s", "graphs compiled",
             "cache hits", "commit", "machine"],
            [[k.split(": ", 1)[1], r["preset"], str(r["batch"]), f"{r['import_s']:.1f}", f"{r['first_task_s']:.1f}",
              f"{r['second_task_s']:.2f}", str(r["fxgraph_cache_miss"]), str(r["fxgraph_cache_hit"]), r["commit"],
              r["machine"]] for k, r in comp])
    e2e = [(k, r) for k, r in rows.items() if k.startswith("e2e ")]
    if e2e:
        lines += _section(
            "End to end from the command line, default options",
            "`asn2n run` (fit 3000 steps, then denoise) and `asn2n denoise` on `simulate.py timelapse` data "
            "(2 channels of 2048^2 uint16 per time point; the larger set repeats the smaller along T). *Mpx/s*: "
            "input pixels over the command's whole wall time (start-up, statistics pass, fitting for run). "
            "Peak RSS: all processes of the command; peak GPU: memory in use on the GPU. Task seconds add up "
            "over the chunks in flight; the network's share is estimated by timing it alone on as many tiles.",
            ["command", "GB", "seconds", "Mpx/s", "fit s", "stats s", "read task s", "network task s (est.)",
             "risk, norm, blend task s (est.)", "write task s", "peak RSS GiB", "peak GPU GiB", "commit"],
            [[r["cli"].split(" /")[0].split(" -")[0], f"{r['input_gb']:.2f}", f"{r['seconds']:.1f}",
              f"{r['mpx_s']:.1f}", f"{r.get('train_s', 0.0):.1f}", f"{r['stats_s'] or 0.0:.1f}",
              f"{r['read_task_s']:.1f}", f"{r['network_task_s_est']:.1f}", f"{r['risk_norm_blend_task_s_est']:.1f}",
              f"{r['write_task_s']:.1f}", f"{r['peak_rss_gib']:.2f}", f"{r['peak_gpu_gib']:.2f}", r["commit"]]
             for k, r in e2e])
    if rows.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in rows["notes"]], ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
