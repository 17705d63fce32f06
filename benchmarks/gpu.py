#!/usr/bin/env python3
"""GPU benchmarks: per-chunk throughput, the pipeline on a GPU worker, training speed.

Stages::

    python benchmarks/gpu.py --stage kernel     # one 2048^2 chunk: presets x fp32/bf16 x tile batch
    python benchmarks/gpu.py --stage pipeline   # the Dask pipeline on one GPU worker, 1/2/4 threads
    python benchmarks/gpu.py --stage train      # training steps/s: presets x fp32/bf16 (x compile)
    python benchmarks/gpu.py --stage report

Writes ``benchmarks/results/gpu.json`` and ``gpu.md``.  Needs a CUDA GPU.  Networks are
untrained (speed does not depend on the weights); data is ``simulate.py timelapse``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import RESULTS, WORK, model_dir, timelapse  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--stage", nargs="+", default=["kernel", "pipeline", "train"], choices=["kernel", "pipeline", "train", "report"]
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
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the script, not a result")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("gpu.json" if DEVICE == "cuda" else "gpu-cpu-check.json")
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
    if rows.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in rows["notes"]], ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
