#!/usr/bin/env python3
"""Training benchmarks: lazy patch sampling from big Zarr time-lapses, time to quality.

Stages::

    python benchmarks/training.py --stage sampler    # patches/s and peak RSS, 1 GB vs 10 GB Zarr
    python benchmarks/training.py --stage quality    # psnr against steps and wall time, sim2d 5 photons
    python benchmarks/training.py --stage layout     # CPU network speed, default vs channels-last layout
    python benchmarks/training.py --stage report

Data: ``../shared/bench/simulate.py timelapse --no-gt`` (dual-colour uint16, chunks
(1, 1, 512, 512)) and ``simulate.py sim2d`` (scored with ``../shared/bench/score.py``).
Writes ``benchmarks/results/training.json`` and ``training.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
WORK = ROOT / "benchmarks" / "work" / "training"
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import PeakRSS  # noqa: E402  (one memory sampler for the benchmarks)


def timelapse(t: int) -> Path:
    out = WORK / f"tl-{t}.zarr"
    if not out.exists():
        subprocess.run([sys.executable, str(SHARED / "simulate.py"), "timelapse", "--out", str(out), "--shape",
                        str(t), "2", "1024", "1024", "--no-gt"], check=True)
    return out


def sampler_run(path: str, batches: int, workers: int, batch: int, patch: int) -> dict:
    """In this process: the statistics pass, then ``batches`` batches of the stream."""
    import torch

    from asn2n_dask.config import NormConfig
    from asn2n_dask.pipeline import selection_stats
    from asn2n_dask.sampling import BatchPlan, BatchStream, RegionSampler, SourcePlanes
    from asn2n_dask.source import Selection, open_source
    from asn2n_dask.stats import ChannelStats

    torch.set_num_threads(2)
    src = open_source(path)
    sel = Selection()
    norm = NormConfig()
    cache = Path(path + ".stats.json")
    with PeakRSS() as rss_stats:
        t0 = time.perf_counter()
        if cache.exists():  # the statistics pass ran in an earlier process: the sampler is measured alone
            saved = json.loads(cache.read_text())
            stats = [ChannelStats.from_dict(saved["stats"])]
            t_stats, stats_peak = saved["seconds"], saved["peak"]
        else:
            stats = selection_stats([src], [sel], norm)
            t_stats = time.perf_counter() - t0
            stats_peak = None
    if stats_peak is None:
        stats_peak = rss_stats.peak / 1024**3
        cache.write_text(json.dumps({"stats": stats[0].to_dict(), "seconds": t_stats, "peak": stats_peak}))
    reader = SourcePlanes.of(src, sel, 0)
    sampler = RegionSampler([reader], stats[0], norm, "local", patch, 0, 0.1)
    stream = BatchStream(sampler, BatchPlan(batch=batch), stop=batches)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        n = sum(int(a.shape[0]) for _, a, _, _ in loader)
        secs = time.perf_counter() - t0
    return {"path": path, "bytes": int(np.prod(src.shape)) * 2, "shape": list(src.shape), "stats_s": t_stats,
            "stats_peak_rss_gib": stats_peak, "patches": n, "seconds": secs,
            "patches_s": n / secs, "workers": workers, "batch": batch, "patch": patch,
            "regions": sampler.n_regions, "peak_rss_gib": rss.peak / 1024**3}


def stage_sampler(frames: list[int], batches: int, workers: list[int]) -> list[dict]:
    rows = []
    for t in frames:
        path = timelapse(t)
        for w in [-1, *workers]:  # a fresh process per run; the first (-1) only makes the statistics
            if w < 0:
                code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import training; "
                        f"training.sampler_run({str(path)!r}, 1, 0, 8, 96)")
                Path(str(path) + ".stats.json").unlink(missing_ok=True)
                subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
                continue
            code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import training; "
                    f"print(json.dumps(training.sampler_run({str(path)!r}, {batches}, {w}, 8, 96)))")
            out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    return rows


def stage_quality(steps: int, evals: list[int], crop: int, stop_after: int = 0) -> dict:
    """Train preset small on one whole 2048x2048 5-photon frame (the default run), keep
    the weights at ``evals`` steps, then score each on the frame's central crop."""
    import copy

    import tifffile
    import torch
    from scipy import ndimage as ndi

    sys.path.insert(0, str(SHARED))
    from score import score_pair

    from asn2n_dask import InferConfig, TrainConfig
    from asn2n_dask.predict import denoise_window, network_fn, window_plan
    from asn2n_dask.stats import channel_stats
    from asn2n_dask.train import train_channel

    if not (DATA / "sim2d" / "p5" / "noisy").is_dir():
        subprocess.run([sys.executable, str(SHARED / "simulate.py"), "sim2d", "--out", str(DATA / "sim2d"),
                        "--peaks", "5", "15", "50"], check=True)
    torch.set_num_threads(2)
    noisy = tifffile.imread(DATA / "sim2d" / "p5" / "noisy" / "1.tif")
    gt = tifffile.imread(DATA / "sim2d" / "p5" / "gt" / "1.tif")
    h, w = noisy.shape
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    win = (y0, y0 + crop, x0, x0 + crop)
    cfg = TrainConfig(preset="small", steps=steps, checkpoint_every=min(evals))
    snaps: dict[int, tuple[dict, float]] = {}

    def keep(result: object, state: object) -> None:
        step = state.step  # type: ignore[attr-defined]
        if step in evals:
            snaps[step] = ({k[4:]: v.clone() for k, v in state.tensors.items() if k.startswith("net.")},  # type: ignore[attr-defined]
                           result.seconds)  # type: ignore[attr-defined]

    class Stop(Exception):
        pass

    def stop_at(step: int, total: int, loss: float) -> None:
        if stop_after and step > stop_after:
            raise Stop

    t0 = time.perf_counter()
    history: list[dict] = []
    wait = 0.0
    best: int | None = None
    try:
        res = train_channel([noisy], cfg, checkpoint=keep, progress=stop_at)
        train_s = time.perf_counter() - t0
        snaps[steps] = ({k: v.clone() for k, v in res.net.state_dict().items()}, train_s)
        history, wait, best = res.history, res.data_wait, res.best_step
    except Stop:  # an A/B probe: the first steps of the same schedule
        train_s = time.perf_counter() - t0
    from asn2n_dask.model import build_unet

    net0 = build_unet("small")
    stats = channel_stats(noisy[None], cfg.norm)[0]
    infer = InferConfig(device="cpu")
    plan = window_plan((h, w), win, infer, cfg.norm.risk.patch)
    (ry0, ry1), (rx0, rx1) = plan.read
    g = gt[win[0] : win[1], win[2] : win[3]]
    rows = []
    for step in sorted(snaps):
        net = copy.deepcopy(net0)
        net.load_state_dict(snaps[step][0])
        t1 = time.perf_counter()
        out, _ = denoise_window(noisy[ry0:ry1, rx0:rx1], plan, (h, w), network_fn(net, "cpu"), stats=stats,
                                norm=cfg.norm, infer=infer, multiple=4)
        infer_s = time.perf_counter() - t1
        sc = score_pair(out, g)
        rows.append({"step": step, "train_seconds": snaps[step][1], "infer_seconds": infer_s, **sc})
        print(rows[-1], flush=True)
    gauss = max((score_pair(ndi.gaussian_filter(noisy.astype(np.float32), s)[win[0]:win[1], win[2]:win[3]], g)
                 ["psnr"], s) for s in (1.0, 1.5, 2.0, 2.5, 3.0, 3.5))
    noisy_psnr = score_pair(noisy[win[0]:win[1], win[2]:win[3]].astype(np.float32), g)["psnr"]
    return {"rows": rows, "best_gaussian_psnr": gauss[0], "best_gaussian_sigma": gauss[1], "noisy_psnr": noisy_psnr,
            "crop": crop, "steps": steps, "train_seconds": train_s, "history": history, "data_wait": wait,
            "stopped_after": stop_after, "best_step": best}


def _train_step(net: Any, opt: Any, a: Any, b: Any) -> None:
    loss = ((net(a) - b) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def stage_layout(presets: list[str], threads: list[int], repeat: int) -> list[dict]:
    """Network speed on this CPU in the default (NCHW) and the channels-last memory
    layout, with the defaults' shapes: inference on one batch of tiles (16 tiles of 128²,
    twins: 32 network inputs) and a training step (8 patches of 96², twins: 16 inputs;
    forward, loss, backward, Adam).  Every configuration once per round, rounds
    interleaved, the best kept; the two layouts' outputs are compared on the same weights."""
    import torch

    from asn2n_dask.model import build_unet

    rows = []
    for preset in presets:
        torch.manual_seed(0)
        base = build_unet(preset).eval()
        x = torch.rand(32, 1, 128, 128)
        xt, yt = torch.rand(16, 1, 96, 96), torch.rand(16, 1, 96, 96)
        for n in threads:
            torch.set_num_threads(n)
            times: dict[tuple[str, bool], list[float]] = {}
            outs = {}
            for _ in range(repeat):
                for nhwc in (False, True):
                    fmt = torch.channels_last if nhwc else torch.contiguous_format
                    net = build_unet(preset)
                    net.load_state_dict(base.state_dict())
                    net = net.to(memory_format=fmt).eval()
                    xi = x.contiguous(memory_format=fmt)
                    with torch.inference_mode():
                        outs[nhwc] = net(xi)
                        t0 = time.perf_counter()
                        net(xi)
                    times.setdefault(("inference", nhwc), []).append(time.perf_counter() - t0)
                    net.train()
                    opt = torch.optim.Adam(net.parameters(), 1e-4)
                    a, b = xt.contiguous(memory_format=fmt), yt.contiguous(memory_format=fmt)
                    _train_step(net, opt, a, b)  # the first step allocates the optimiser's state
                    t0 = time.perf_counter()
                    _train_step(net, opt, a, b)
                    times.setdefault(("training step", nhwc), []).append(time.perf_counter() - t0)
            diff = float((outs[True] - outs[False]).abs().max() / outs[False].abs().max())
            for what in ("inference", "training step"):
                nchw, nhwc_s = min(times[(what, False)]), min(times[(what, True)])
                rows.append({"preset": preset, "what": what, "threads": n, "nchw_s": nchw, "nhwc_s": nhwc_s,
                             "speedup": nchw / nhwc_s, "max_rel_diff": diff if what == "inference" else None,
                             "rounds": repeat})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", nargs="+", default=["sampler", "quality"],
                    choices=["sampler", "quality", "layout", "report"])
    ap.add_argument("--frames", type=int, nargs="+", default=[240, 2400],
                    help="time points of the dual-colour 1024x1024 time-lapses (240: 1 GB, 2400: 10 GB)")
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--evals", type=int, nargs="+", default=[250, 500, 1000, 1500, 2000, 2500])
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--stop-after", type=int, default=0, help="stop training after this many steps (A/B probes)")
    ap.add_argument("--layout-presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--layout-threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5, help="layout stage: interleaved rounds, the best kept")
    ap.add_argument("--key", default="quality", help="where the quality stage's result is kept in training.json")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "training.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if "sampler" in args.stage:
        results["sampler"] = stage_sampler(args.frames, args.batches, args.workers)
        path.write_text(json.dumps(results, indent=1))
    if "layout" in args.stage:
        results["layout"] = stage_layout(args.layout_presets, args.layout_threads, args.repeat)
        path.write_text(json.dumps(results, indent=1))
    if "quality" in args.stage:
        results[args.key] = stage_quality(args.steps, args.evals, args.crop, args.stop_after)
        path.write_text(json.dumps(results, indent=1))
    report(results)


def report(r: dict) -> None:
    lines = ["# Training benchmarks", "",
             "Command: `python benchmarks/training.py` (stages sampler, quality, layout). CPU only, this machine "
             "(2 cores, no GPU).", ""]
    if r.get("sampler"):
        lines += ["## Lazy patch sampling from a Zarr time-lapse", "",
                  "Dual-colour uint16 (T, 2, 1024, 1024), chunks (1, 1, 512, 512), channel 0. The statistics pass "
                  "reads every chunk once (dask, one process); the sampler then draws batches of 8 patches of "
                  "96x96 (twins made, normalised) from blocks of 8 regions, reading only the chunks under them. "
                  "Peak RSS: the process and its loader workers, in a process of its own (the statistics pass "
                  "runs first in another process, as training on a cluster would).", "",
                  "| dataset | GB | stats pass s | stats peak RSS GiB | loader workers | patches/s | "
                  "sampler peak RSS GiB |", "|---|---|---|---|---|---|---|"]
        for s in r["sampler"]:
            lines.append(f"| {tuple(s['shape'])} | {s['bytes'] / 1e9:.1f} | {s['stats_s']:.0f} | "
                         f"{s['stats_peak_rss_gib']:.2f} | {s['workers']} | {s['patches_s']:.0f} | "
                         f"{s['peak_rss_gib']:.2f} |")
        lines.append("")
    q = r.get("quality")
    if q:
        target = q["best_gaussian_psnr"] + 2
        passed = [row for row in q["rows"] if row["psnr"] >= target]
        lines += ["## Time to quality (preset small, CPU)", "",
                  f"One whole 2048x2048 5-photon `sim2d` frame, every option at its default ({q['steps']} steps); "
                  f"the weights at each step are scored on the frame's central {q['crop']}x{q['crop']} crop with "
                  "the shared scorer (inference time not counted in training time). "
                  f"Noisy input {q['noisy_psnr']:.2f} dB; best Gaussian filter {q['best_gaussian_psnr']:.2f} dB "
                  f"(sigma {q['best_gaussian_sigma']}); target (+2 dB) {target:.2f} dB. "
                  f"Data-wait fraction (sampling in the training process): {q['data_wait']:.1%}.", "",
                  "| step | training s | psnr | psnr_raw | ssim | false_obj/Mpx | vs Gaussian +2 dB |",
                  "|---|---|---|---|---|---|---|"]
        for row in q["rows"]:
            step = str(row["step"])
            if row["step"] == q["steps"] and q.get("best_step"):
                step += f" (the model kept: best validation, step {q['best_step']})"
            lines.append(f"| {step} | {row['train_seconds']:.0f} | {row['psnr']:.2f} | {row['psnr_raw']:.2f} | "
                         f"{row['ssim']:.3f} | {row['false_obj']:.2f} | {'pass' if row['psnr'] >= target else '-'} |")
        lines += ["", (f"First passes the Gaussian +2 dB target at step {passed[0]['step']} "
                       f"({passed[0]['train_seconds'] / 60:.1f} min of training)." if passed
                       else "Does not pass the Gaussian +2 dB target within these steps."), ""]
    probes = {k: v for k, v in r.items() if k.startswith("quality-")}
    if probes:
        lines += ["## Sampling variants (the same frame, schedule and seed; first steps)", "",
                  "| variant | step | psnr | psnr_raw | ssim |", "|---|---|---|---|---|"]
        for k, v in probes.items():
            for row in v["rows"]:
                if row["step"] <= 1000:
                    lines.append(f"| {v.get('label', k)} | {row['step']} | {row['psnr']:.2f} | {row['psnr_raw']:.2f} | "
                                 f"{row['ssim']:.3f} |")
        lines.append("")
    if r.get("layout"):
        lines += ["## Network memory layout on the CPU", "",
                  "`--stage layout`: the network alone, untrained weights, with the defaults' shapes: inference on "
                  "one batch (16 tiles of 128², twins: 32 inputs) and one training step (8 patches of 96², twins: "
                  "16 inputs; forward, loss, backward, Adam). Default layout (NCHW) against channels-last (NHWC, "
                  "oneDNN), which training and inference use on such CPUs (`asn2n_dask.model.channels_last`). "
                  f"Best of {r['layout'][0]['rounds']} interleaved rounds. *Difference*: largest difference of "
                  "the two layouts' outputs on the same weights, over the largest output.", "",
                  "| preset | work | torch threads | NCHW ms | NHWC ms | speed-up | difference |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["layout"]:
            diff = "" if row["max_rel_diff"] is None else f"{row['max_rel_diff']:.1e}"
            lines.append(f"| {row['preset']} | {row['what']} | {row['threads']} | {row['nchw_s'] * 1e3:.0f} | "
                         f"{row['nhwc_s'] * 1e3:.0f} | {row['speedup']:.2f} | {diff} |")
        lines.append("")
    lines += ["## GPU", "", "Training on a GPU (bf16, channels-last, fused Adam, `--compile`): "
              "`benchmarks/results/gpu.md`.", ""]
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'training.md'}")


if __name__ == "__main__":
    main()
