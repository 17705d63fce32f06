#!/usr/bin/env python3
"""Quality benchmark against ground truth, scored with the shared scorer.

Data: ``../shared/bench/simulate.py sim2d`` (three 2048x2048 microtubule frames at 5, 15
and 50 photons) and one frame of ``simulate.py timelapse`` (channel 1: sparse blobs on a
dark background).  Rows: noisy input, best Gaussian filter, BM3D after the generalised
Anscombe transform, Adaptive-SN2N with each normalisation mode, blend mode and inference
domain.  Trained models are cached under ``benchmarks/work/`` so runs can be split.

Usage (from the repository root, with the dev environment)::

    python benchmarks/quality.py --stage all --steps 1500 --crop 1024
    python benchmarks/quality.py --stage report      # tables from what has been run

Writes ``benchmarks/results/quality.json`` (every row) and ``quality.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(SHARED))
import records  # noqa: E402  (benchmarks/records.py, beside this file)
from score import score_pair  # noqa: E402  (the shared scorer)

from asn2n_dask import (  # noqa: E402
    InferConfig,
    NormConfig,
    RiskThresholds,
    TrainConfig,
    denoise,
    fit,
    load_model,
    save_model,
)
from asn2n_dask.blend import tile_grid  # noqa: E402

WORK = ROOT / "benchmarks" / "work"
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results"
GAIN, READ_SD, OFFSET = 2.0, 2.0, 100.0  # simulate.py's camera model


def ensure_data() -> None:
    if not (DATA / "sim2d" / "p5" / "noisy").is_dir():
        subprocess.run([sys.executable, str(SHARED / "simulate.py"), "sim2d", "--out", str(DATA / "sim2d"),
                        "--peaks", "5", "15", "50"], check=True)
    if not (DATA / "timelapse.zarr").exists():
        subprocess.run([sys.executable, str(SHARED / "simulate.py"), "timelapse", "--out",
                        str(DATA / "timelapse.zarr"), "--shape", "1", "2", "1024", "1024"], check=True)


def crop(a: np.ndarray, n: int) -> np.ndarray:
    if not n or n >= min(a.shape):
        return a
    y0, x0 = (a.shape[0] - n) // 2, (a.shape[1] - n) // 2
    return a[y0 : y0 + n, x0 : x0 + n]


def sim2d(peak: int, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    d = DATA / "sim2d" / f"p{peak}"
    noisy = [crop(tifffile.imread(p), n) for p in sorted((d / "noisy").glob("*.tif"))]
    gt = [crop(tifffile.imread(p), n) for p in sorted((d / "gt").glob("*.tif"))]
    return noisy, gt


def sparse_frame() -> tuple[np.ndarray, np.ndarray]:
    import zarr

    g = zarr.open_group(str(DATA / "timelapse.zarr"), mode="r")
    return np.asarray(g["noisy"][0, 1]), np.asarray(g["gt"][0, 1])


def mean_scores(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    rows = [score_pair(p, g) for p, g in zip(preds, gts)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    # background-only error, in units of the ground truth range (RMSE where gt is background)
    errs = []
    for p, g in zip(preds, gts):
        bg = g <= (g.min() + 0.05 * (g.max() - g.min()))
        errs.append(float(np.sqrt(np.mean((p[bg].astype(float) - g[bg]) ** 2)) / (g.max() - g.min())))
    out["bg_rmse"] = float(np.mean(errs))
    return out


def seam_ratio(img: np.ndarray, tile: int, stride: int) -> float:
    """Mean |gradient| across tile-grid lines over the same across all other lines."""
    grid = tile_grid(img.shape, tile, stride)
    ratios = []
    for axis in (0, 1):
        g = np.abs(np.diff(img.astype(np.float64), axis=axis))
        g = g.mean(axis=1 - axis)  # one value per line between i and i + 1
        o = grid.origins(axis)
        lines = set()
        for edge in np.concatenate([o, o + tile, o + grid.margin, o + grid.margin + stride]):
            if 1 <= edge < img.shape[axis]:
                lines.add(int(edge) - 1)
        mask = np.zeros(g.shape, bool)
        mask[sorted(lines)] = True
        if mask.any() and (~mask).any():
            ratios.append(g[mask].mean() / g[~mask].mean())
    return float(np.mean(ratios))


def best_gaussian(noisy: list[np.ndarray], gt: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    best = (-np.inf, 0.0, noisy)
    for s in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0):
        preds = [ndi.gaussian_filter(n.astype(np.float32), s) for n in noisy]
        p = np.mean([score_pair(a, g)["psnr"] for a, g in zip(preds, gt)])
        if p > best[0]:
            best = (p, s, preds)
    return best[1], best[2]


def bm3d_gat(noisy: np.ndarray) -> np.ndarray:
    import bm3d

    sd = READ_SD / GAIN
    z = (noisy.astype(np.float64) - OFFSET) / GAIN
    f = 2.0 * np.sqrt(np.maximum(z + 3.0 / 8.0 + sd**2, 0.0))
    d = bm3d.bm3d(f, sigma_psd=1.0)
    d = np.maximum(d, 1e-3)
    # closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011)
    inv = d**2 / 4 + np.sqrt(1.5) / 4 / d - 11 / 8 / d**2 + 5 / 8 * np.sqrt(1.5) / d**3 - 1 / 8 - sd**2
    return (inv * GAIN + OFFSET).astype(np.float32)


def code_key() -> str:
    """Digest of the package's source: a cached model is reused only by the code that trained it."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((ROOT / "asn2n_dask").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def trained(key: str, frames: list[np.ndarray], cfg: TrainConfig) -> tuple[object, float]:
    """A model for ``key``, trained once per (key, options, data, package source) and cached."""
    import hashlib

    data = hashlib.sha256(b"".join(np.ascontiguousarray(f).tobytes() for f in frames)).hexdigest()[:12]
    opts = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    d = WORK / "models" / f"{key}-{opts}-{data}-{code_key()}"
    if (d / "model.json").is_file():
        m = load_model(d)
        return m, m.channels[0].seconds
    t0 = time.perf_counter()
    m = fit(np.stack(frames), axes="TYX", config=cfg)
    save_model(m, d)
    return m, time.perf_counter() - t0


def mixed_frames(size: int, frames: int = 3) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``simulate.py mixed`` frames (noisy, truth, region: 1 dense, 2 sparse), made once."""
    d = DATA / f"mixed{size}"
    if not (d / "region").is_dir():
        subprocess.run([sys.executable, str(SHARED / "simulate.py"), "mixed", "--out", str(d), "--size", str(size),
                        "--frames", str(frames), "--peak", "8"], check=True)
    read = [[tifffile.imread(f) for f in sorted((d / k).glob("*.tif"))] for k in ("noisy", "gt", "region")]
    return read[0], read[1], read[2]


def region_scores(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Scores of one mixed-scene frame, whole and per region, with the shared scorer's definitions.

    ``dense_psnr`` / ``dense_psnr_raw``: the scorer's psnr (affine fit, data range of the
    truth) over the dense region's pixels only (masked, not its bounding box, which would
    take in sparse background).  ``sparse_false_obj`` / ``sparse_false_fg``: the scorer's
    false objects (Otsu masks of the whole frame, objects of >= 4 px wholly in true
    background) whose centre lies in the sparse region, per Mpx of that region, and its
    false-foreground share there.
    """
    import score

    whole = score_pair(pred, gt)
    dense, sparse = region == 1, region == 2
    p, g = pred[dense].astype(np.float64), gt[dense].astype(np.float64)
    rng = float(g.max() - g.min()) or 1.0
    fg_gt = score._otsu_mask(gt)
    bg = ~ndi.binary_dilation(fg_gt, iterations=3)
    fg_pred = score._otsu_mask(pred)
    labels, n = ndi.label(fg_pred, structure=np.ones((3, 3)))
    count = 0
    if n:
        sizes = np.bincount(labels.ravel())
        touches = np.zeros(n + 1, bool)
        touches[np.unique(labels[~bg])] = True
        centres = ndi.center_of_mass(fg_pred, labels, range(1, n + 1))
        for k, (cy, cx) in enumerate(centres, start=1):
            if sizes[k] >= 4 and not touches[k] and sparse[int(round(cy)), int(round(cx))]:
                count += 1
    sbg = bg & sparse
    return {**whole,
            "dense_psnr": score._psnr(score._affine_fit(p, g), g, rng),
            "dense_psnr_raw": score._psnr(p, g, rng),
            "sparse_false_obj": count / (sparse.sum() / 1e6),
            "sparse_false_fg": float(fg_pred[sbg].mean()) if sbg.any() else 0.0}


#: Normalisation variants of the mixed stage: name -> NormConfig options.
MIXED_VARIANTS: dict[str, dict] = {
    "adaptive": {"mode": "adaptive"},
    "local": {"mode": "local"},
    "global": {"mode": "global"},
    "dataset": {"mode": "dataset"},
    "adaptive-signal": {"mode": "adaptive", "adaptive_weight": "signal"},
    "adaptive-range": {"mode": "adaptive", "adaptive_weight": "range"},
    "adaptive-class": {"mode": "adaptive", "adaptive_weight": "class", "adaptive_floor": 1.0},
}


def provenance(command: str, seconds: float | None) -> dict:
    import os
    import platform

    # dirty: tracked changes beside the code, not counting the records these runs write
    full, changed = records.code_state()
    commit = full[:7] + ("-dirty" if changed else "")
    import torch

    # threads: torch's in this process (OMP_NUM_THREADS); they change the order of float sums, so two runs
    # of one command with different thread counts train slightly different networks
    return {"command": command, "commit": commit, "wall_s": seconds, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "machine": f"{platform.node()} ({os.cpu_count()} CPU cores, {platform.machine()})",
            "threads": torch.get_num_threads()}


def run(args: argparse.Namespace) -> None:
    if set(args.stage) - {"mixed", "merge"}:
        ensure_data()  # sim2d and the time-lapse (the mixed stage makes its own frames)
    rows_path = RESULTS / "quality.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    if args.rows:  # a stage run beside another writes its own file; --stage merge folds it in
        rows_path = Path(args.rows)
        rows = json.loads(rows_path.read_text()) if rows_path.exists() else {}

    argv = " ".join(["python benchmarks/quality.py", *sys.argv[1:]])
    last = [time.perf_counter()]

    def put(name: str, row: dict) -> None:
        # every row says what made it: the stages that carry their own command keep it; a row
        # without its own wall time gets the time since the previous row (what it took to make)
        now = time.perf_counter()
        secs = row.get("wall_s") if row.get("wall_s") is not None else now - last[0]
        last[0] = now
        rows.update(records.put(rows_path, name, {**provenance(argv, secs), **row, "wall_s": secs}
                                if "commit" not in row else row))
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)

    n = args.crop
    stages = set(args.stage)
    if stages & {"baselines", "all"}:
        for peak in (5, 15, 50):
            noisy, gt = sim2d(peak, n)
            put(f"p{peak} noisy input", {"peak": peak, **mean_scores([x.astype(np.float32) for x in noisy], gt)})
            s, preds = best_gaussian(noisy, gt)
            put(f"p{peak} best Gaussian", {"peak": peak, "sigma": s, **mean_scores(preds, gt)})
        noisy, gt = sparse_frame()
        put("sparse noisy input", mean_scores([noisy.astype(np.float32)], [gt]))
        s, preds = best_gaussian([noisy], [gt])
        put("sparse best Gaussian", {"sigma": s, **mean_scores(preds, [gt])})
    if stages & {"bm3d", "all"}:
        noisy, gt = sim2d(5, n)
        t0 = time.perf_counter()
        preds = [bm3d_gat(x) for x in noisy]
        put("p5 BM3D (GAT, sigma 1)", {"peak": 5, "seconds": time.perf_counter() - t0, **mean_scores(preds, gt)})
    base = dict(preset=args.preset, steps=args.steps, seed=0)
    tile = InferConfig().tile
    if stages & {"sn2n", "all"}:
        for peak in args.peaks:
            noisy, gt = sim2d(peak, 0 if args.train_full else n)
            m, secs = trained(f"p{peak}-adaptive-{args.preset}-{args.steps}", noisy, TrainConfig(**base))
            noisy_c, gt_c = sim2d(peak, n)
            variants = [("twins", "gaussian", 1), ("raw", "gaussian", 1)]
            if peak == 5:
                variants += [("twins", "uniform", 1), ("twins", "none", 1), ("twins", "gaussian", 4)]
            for infer_on, blend, tta in variants:
                cfg = InferConfig(blend=blend, infer_on=infer_on, tta=tta)
                t0 = time.perf_counter()
                preds = [denoise(x, m, config=cfg) for x in noisy_c]
                dt = time.perf_counter() - t0
                mpx = sum(x.size for x in noisy_c) / dt / 1e6
                put(f"p{peak} adaptive {blend} {infer_on}" + (f" tta{tta}" if tta > 1 else ""), {
                    "peak": peak, "train_s": secs, "infer_mpx_s": mpx,
                    "seam": float(np.mean([seam_ratio(p, tile, cfg.stride) for p in preds])),
                    **mean_scores(preds, gt_c)})
    # the modes and sparse rows were recorded with the published risk rule, the default then;
    # the `auto` stage has the default now
    reference = RiskThresholds(estimator="reference")
    if stages & {"modes", "all"}:
        noisy, gt = sim2d(5, 0 if args.train_full else n)
        noisy_c, gt_c = sim2d(5, n)
        for mode in ("local", "global", "dataset"):
            cfg = TrainConfig(**base, norm=NormConfig(mode=mode, risk=reference))
            m, secs = trained(f"p5-{mode}-{args.preset}-{args.steps}", noisy, cfg)
            preds = [denoise(x, m) for x in noisy_c]
            put(f"p5 {mode} gaussian twins", {"peak": 5, "train_s": secs, **mean_scores(preds, gt_c)})
    if stages & {"sparse", "all"}:
        noisy, gt = sparse_frame()
        for mode in args.sparse_modes:
            cfg = TrainConfig(**{**base, "steps": args.sparse_steps}, norm=NormConfig(mode=mode, risk=reference))
            m, secs = trained(f"sparse-{mode}-{args.preset}-{args.sparse_steps}", [noisy], cfg)
            pred = denoise(noisy, m)
            put(f"sparse {mode} gaussian twins", {"train_s": secs, **mean_scores([pred], [gt])})
    if stages & {"dense-modes"}:
        # the normalisation modes on the dense frames at today's other defaults: one model per (peak, mode),
        # same frames (the central crops), steps and seed, scored on those crops
        for peak in args.peaks:
            noisy, gt = sim2d(peak, n)
            for mode in args.dense_modes:
                t0 = time.perf_counter()
                cfg = TrainConfig(**base, norm=NormConfig(mode=mode))
                m, secs = trained(f"p{peak}-dense-{mode}-{args.preset}-{args.steps}", noisy, cfg)
                preds = [denoise(x, m) for x in noisy]
                ch = m.channels[0]
                put(f"p{peak} dense {mode} ({args.steps} steps)", {
                    "peak": peak, "norm": cfg.norm.to_dict(), "dataset_mode": ch.dataset_mode,
                    "high_risk_ratio": ch.high_risk_ratio, "risk_estimator": ch.risk_estimator,
                    "consistency": cfg.consistency, "seed": cfg.seed, "steps": cfg.steps, "frames": len(noisy),
                    "crop": n, "train_s": secs, **mean_scores(preds, gt), "wall_s": time.perf_counter() - t0})
    if stages & {"sparse-default"}:
        # every training and inference option at its default except the steps (the frame is small)
        noisy, gt = sparse_frame()
        t0 = time.perf_counter()
        m, secs = trained(f"sparse-default-{args.preset}-{args.sparse_steps}", [noisy],
                          TrainConfig(**{**base, "steps": args.sparse_steps}))
        ch = m.channels[0]
        put("sparse default", {"train_s": secs, "risk_estimator": ch.risk_estimator, "norm": m.train.norm.to_dict(),
                               "dataset_mode": ch.dataset_mode, "high_risk_ratio": ch.high_risk_ratio,
                               **mean_scores([denoise(noisy, m)], [gt]),
                               "wall_s": time.perf_counter() - t0})
    if stages & {"same-norm"}:
        # is `adaptive` the global scale on the sparse frame? both trained a few steps alike and compared
        noisy, _ = sparse_frame()
        t0 = time.perf_counter()
        preds, methods = {}, {}
        for mode in ("adaptive", "global"):
            cfg = TrainConfig(**{**base, "steps": args.same_norm_steps}, norm=NormConfig(mode=mode))
            m, _ = trained(f"sparse-same-norm-{mode}-{args.preset}-{args.same_norm_steps}", [noisy], cfg)
            preds[mode], methods[mode] = denoise(noisy, m), m.channels[0]
        put("sparse same-norm", {"steps": args.same_norm_steps,
                                 "max_abs_diff": float(np.max(np.abs(preds["adaptive"] - preds["global"]))),
                                 "dataset_mode": methods["adaptive"].dataset_mode,
                                 "high_risk_ratio": methods["adaptive"].high_risk_ratio,
                                 "wall_s": time.perf_counter() - t0})
    if stages & {"aware"}:
        # the noise-aware risk estimator, on the sparse frame and on the 5-photon crops
        aware = NormConfig(risk=RiskThresholds(estimator="noise-aware"))
        noisy, gt = sparse_frame()
        cfg = TrainConfig(**{**base, "steps": args.sparse_steps}, norm=aware)
        m, secs = trained(f"sparse-adaptive-aware-{args.preset}-{args.sparse_steps}", [noisy], cfg)
        put("sparse adaptive (noise-aware risk) gaussian twins", {"train_s": secs,
                                                                   **mean_scores([denoise(noisy, m)], [gt])})
        noisy, gt = sim2d(5, n)
        m, secs = trained(f"p5-adaptive-aware-{args.preset}-{args.steps}", noisy, TrainConfig(**base, norm=aware))
        put("p5 adaptive (noise-aware risk) gaussian twins", {"peak": 5, "train_s": secs,
                                                               **mean_scores([denoise(x, m) for x in noisy], gt)})
    if stages & {"auto"}:
        # the default risk estimator (auto): the sparse frame, and 15-photon crops, where it
        # switches to noise-aware and the reference rule calls every patch safe
        noisy, gt = sparse_frame()
        cfg = TrainConfig(**{**base, "steps": args.sparse_steps})
        m, secs = trained(f"sparse-adaptive-auto-{args.preset}-{args.sparse_steps}", [noisy], cfg)
        put("sparse adaptive (default risk: auto) gaussian twins", {
            "train_s": secs, "risk_estimator": m.channels[0].risk_estimator,
            "high_risk_ratio": m.channels[0].high_risk_ratio, **mean_scores([denoise(noisy, m)], [gt])})
        noisy, gt = sim2d(15, n)
        for name, risk in (("reference", reference), ("auto", RiskThresholds())):
            m, secs = trained(f"p15-adaptive-{name}-{args.preset}-{args.steps}", noisy,
                              TrainConfig(**base, norm=NormConfig(risk=risk)))
            put(f"p15 adaptive ({name} risk) gaussian twins", {
                "peak": 15, "train_s": secs, "risk_estimator": m.channels[0].risk_estimator,
                "high_risk_ratio": m.channels[0].high_risk_ratio,
                **mean_scores([denoise(x, m) for x in noisy], gt)})
    if stages & {"mixed"}:
        # dense filaments of varied brightness and a dark region with sparse puncta in one frame;
        # every variant: the same frames, steps, seed and batches, only the normalisation differs
        noisy, gt, region = mixed_frames(args.mixed_size)
        command = ("python benchmarks/quality.py --stage mixed --mixed-size "
                   f"{args.mixed_size} --mixed-steps {args.mixed_steps} --preset {args.preset}")
        for name, seed in itertools.product(args.mixed_variants, args.mixed_seeds):
            t0 = time.perf_counter()
            cfg = TrainConfig(preset=args.preset, steps=args.mixed_steps, seed=seed,
                              norm=NormConfig(**MIXED_VARIANTS[name]))
            m, secs = trained(f"mixed{args.mixed_size}-{name}-{args.preset}-{args.mixed_steps}", noisy, cfg)
            preds = denoise(np.stack(noisy), m, axes="TYX")
            scores = [region_scores(p, g, r) for p, g, r in zip(preds, gt, region)]
            ch = m.channels[0]
            put(f"mixed {name}" + (f" seed {seed}" if seed else ""), {
                "norm": cfg.norm.to_dict(), "consistency": cfg.consistency, "seed": seed, "size": args.mixed_size,
                "steps": args.mixed_steps, "train_s": secs,
                "risk_estimator": ch.risk_estimator, "high_risk_ratio": ch.high_risk_ratio,
                "dataset_mode": ch.dataset_mode,
                **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]},
                **provenance(command + f" --mixed-variants {name} --mixed-seeds {seed}", time.perf_counter() - t0)})
    if stages & {"weight"}:
        # an adaptive weight (other options at their defaults when run; rows record them) on the rows
        # the modes were compared on before: the sparse frame and the 5-photon crops
        wname = args.adaptive_weight
        command = (f"python benchmarks/quality.py --stage weight --steps {args.steps} --sparse-steps "
                   f"{args.sparse_steps} --crop {n} --preset {args.preset} --adaptive-weight {wname} "
                   f"--weight-rows {' '.join(args.weight_rows)}")
        norm = NormConfig(adaptive_weight=wname)
        if "sparse" in args.weight_rows:
            noisy, gt = sparse_frame()
            t0 = time.perf_counter()
            m, secs = trained(f"sparse-adaptive-{wname}-{args.preset}-{args.sparse_steps}", [noisy],
                              TrainConfig(**{**base, "steps": args.sparse_steps}, norm=norm))
            ch = m.channels[0]
            put(f"sparse adaptive ({wname} weight) gaussian twins", {"norm": norm.to_dict(),
                "train_s": secs, "risk_estimator": ch.risk_estimator, "high_risk_ratio": ch.high_risk_ratio,
                **mean_scores([denoise(noisy, m)], [gt]), **provenance(command, time.perf_counter() - t0)})
        if "p5" in args.weight_rows:
            noisy, gt = sim2d(5, n)
            t0 = time.perf_counter()
            m, secs = trained(f"p5-adaptive-{wname}-{args.preset}-{args.steps}", noisy,
                              TrainConfig(**base, norm=norm))
            put(f"p5 adaptive ({wname} weight) gaussian twins", {"norm": norm.to_dict(),
                "peak": 5, "train_s": secs, **mean_scores([denoise(x, m) for x in noisy], gt),
                **provenance(command, time.perf_counter() - t0)})
    if stages & {"merge"}:
        extra = json.loads(Path(args.rows or RESULTS / "quality-extra.json").read_text())
        rows = json.loads((RESULTS / "quality.json").read_text())
        rows.update(extra)
        rows_path = RESULTS / "quality.json"
        rows_path.write_text(json.dumps(rows, indent=1))
    if stages & {"reference"}:
        # references for the `default` row, on the same whole 2048x2048 frame 1
        for peak in (5, 50):
            noisy = [tifffile.imread(DATA / "sim2d" / f"p{peak}" / "noisy" / "1.tif")]
            gt = [tifffile.imread(DATA / "sim2d" / f"p{peak}" / "gt" / "1.tif")]
            row = mean_scores([noisy[0].astype(np.float32)], gt)
            put(f"p{peak} noisy input (whole frame 1)", {"peak": peak, **row})
            if peak == 5:
                s, preds = best_gaussian(noisy, gt)
                put("p5 best Gaussian (whole frame 1)", {"peak": 5, "sigma": s, **mean_scores(preds, gt)})
    if stages & {"default"}:
        # What a user types first: every option at its default, one whole 2048x2048 frame.
        src = DATA / "sim2d" / "p5" / "noisy" / "1.tif"
        gt = tifffile.imread(DATA / "sim2d" / "p5" / "gt" / "1.tif")
        out = WORK / "default" / "out.tif"
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        # this checkout's package (python -m from the repository root), not whichever is installed
        subprocess.run([sys.executable, "-m", "asn2n_dask", "-q", "run", str(src), "-o", str(out), "--overwrite"],
                       check=True, cwd=ROOT)
        secs = time.perf_counter() - t0
        pred = tifffile.imread(out)
        model = load_model(out.parent / (out.name + ".model"))
        put("p5 default command (whole 2048x2048 frame 1)", {
            "peak": 5, "norm": model.train.norm.to_dict(), "dataset_mode": model.channels[0].dataset_mode,
            "high_risk_ratio": model.channels[0].high_risk_ratio,
            "seam": seam_ratio(pred, tile, InferConfig().stride), **mean_scores([pred], [gt]),
            **provenance(f"asn2n run {src.relative_to(ROOT.parent)} -o out.tif", secs)})
    if stages & {"blend"}:
        # where the blending weights matter: the default command's model (the default stage
        # trains it) on the central crop of the same frame, each blend at several tile sides
        model_dir = WORK / "default" / "out.tif.model"
        if not (model_dir / "model.json").is_file():
            raise SystemExit("the blend stage needs the default stage's model: run --stage default first")
        from asn2n_dask.api import denoise_with_risk
        from asn2n_dask.stats import channel_stats

        m = load_model(model_dir)
        frame = tifffile.imread(DATA / "sim2d" / "p5" / "noisy" / "1.tif")
        # the crop normalised as the default command normalised it, on the whole frame's statistics: a crop's
        # own range (its minimum and 99.99th percentile, a few ADU off at 5 photons) changes the result far more
        # than the blending does
        stats = channel_stats(frame[None], m.train.norm)
        noisy = crop(frame, args.blend_crop)
        gt = crop(tifffile.imread(DATA / "sim2d" / "p5" / "gt" / "1.tif"), args.blend_crop)
        for side in args.blend_tiles:
            for blend in ("gaussian", "uniform", "none"):
                cfg = InferConfig(tile=side, blend=blend)
                t0 = time.perf_counter()
                pred = denoise_with_risk(noisy, m, config=cfg, stats=stats)[0]
                secs = time.perf_counter() - t0
                put(f"p5 blend {blend} tile {side}", {
                    "peak": 5, "tile": side, "blend": blend, "crop": args.blend_crop,
                    "seam": seam_ratio(pred, side, cfg.stride), **mean_scores([pred], [gt]), "wall_s": secs})
    if stages & {"transfer"}:
        # train once, apply to more data: the default command's model (trained on frame 1) applied by
        # `asn2n denoise` to the other two frames of the same acquisition, with the default normalisation
        # range (the model's training range here: the frames' ranges agree) and with each frame's own
        model_dir = WORK / "default" / "out.tif.model"
        if not (model_dir / "model.json").is_file():
            raise SystemExit("the transfer stage needs the default stage's model: run --stage default first")
        from asn2n_dask.stats import channel_stats

        m = load_model(model_dir)
        for frame in args.transfer_frames:
            src = DATA / "sim2d" / "p5" / "noisy" / f"{frame}.tif"
            gt = tifffile.imread(DATA / "sim2d" / "p5" / "gt" / f"{frame}.tif")
            own = channel_stats(tifffile.imread(src)[None], m.train.norm)[0].norm
            for rule in ("auto", "data"):
                out = WORK / "transfer" / f"{frame}-{rule}.tif"
                out.parent.mkdir(parents=True, exist_ok=True)
                flags = [] if rule == "auto" else ["--norm-range", rule]
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "asn2n_dask", "-q", "denoise", str(src), "-o", str(out),
                                "--model", str(model_dir), "--overwrite", *flags], check=True, cwd=ROOT)
                secs = time.perf_counter() - t0
                pred = tifffile.imread(out)
                cmd = " ".join(["asn2n denoise", str(src.relative_to(ROOT.parent)), "-o out.tif",
                                "--model out.tif.model", *flags])
                put(f"p5 transfer frame {frame} norm-range {rule}", {
                    "peak": 5, "frame": frame, "norm_range": rule, "frame_range": [own.lo, own.hi],
                    "model_range": [m.method(0).stats.lo, m.method(0).stats.hi], **mean_scores([pred], [gt]),
                    **provenance(cmd, secs)})
    if stages & {"drift"}:
        # how much the network depends on where intensities sit in its normalised range: frame 2 with a
        # constant added (a camera offset that drifted by that many ADU), normalised on the model's range
        model_dir = WORK / "default" / "out.tif.model"
        if not (model_dir / "model.json").is_file():
            raise SystemExit("the drift stage needs the default stage's model: run --stage default first")
        for d, row in drifted(load_model(model_dir), args):
            put(f"p5 drift {d:+g} ADU", {"peak": 5, "frame": 2, **row})
    if stages & {"jitter"}:
        # training with a random offset per patch (TrainConfig.offset_jitter) against the drift of the drift
        # stage: trained on the central crop of frame 1, applied to that of frame 2 plus a constant
        train_crop = crop(tifffile.imread(DATA / "sim2d" / "p5" / "noisy" / "1.tif"), args.drift_crop)
        for j in args.jitter_values:
            cfg = TrainConfig(preset=args.preset, steps=args.jitter_steps, offset_jitter=j)
            t0 = time.perf_counter()
            m = fit(train_crop, config=cfg)
            train_s = time.perf_counter() - t0
            for d, row in drifted(m, args):
                put(f"p5 jitter {j:g} drift {d:+g} ADU", {"peak": 5, "offset_jitter": j, "steps": cfg.steps,
                                                          "norm": cfg.norm.to_dict(), "train_s": train_s, **row})
    if not args.rows or stages & {"merge"}:  # a side file's rows reach the tables through merge
        report(rows, args)


def drifted(model: object, args: argparse.Namespace):
    """``(drift, row)`` for each of ``args.drift_adu``: ``model`` on the central crop of p5 frame 2 plus
    that constant, normalised on the model's training range, shifted back and scored."""
    from asn2n_dask.api import denoise_with_risk

    noisy = crop(tifffile.imread(DATA / "sim2d" / "p5" / "noisy" / "2.tif"), args.drift_crop).astype(np.float32)
    gt = crop(tifffile.imread(DATA / "sim2d" / "p5" / "gt" / "2.tif"), args.drift_crop).astype(np.float32)
    for d in args.drift_adu:
        t0 = time.perf_counter()
        pred = denoise_with_risk(noisy + d, model, config=InferConfig(norm_range="model"))[0] - d
        yield d, {"drift_adu": d, "crop": args.drift_crop, **mean_scores([pred], [gt]),
                  "wall_s": time.perf_counter() - t0}


def report(rows: dict, args: argparse.Namespace) -> None:
    cols = ["psnr", "psnr_raw", "ssim", "false_obj", "false_fg", "fg_dice", "bg_rmse", "seam", "train_s",
            "infer_mpx_s", "wall_s", "commit"]
    lines = ["# Quality benchmark", "",
             "Commands: `python benchmarks/quality.py --stage STAGE --steps 800 --sparse-steps 400` for each "
             "STAGE in baselines, default, reference, sn2n, modes, sparse, aware, auto, and the mixed and weight "
             "stages as their sections say (the bm3d stage was not run; "
             "crop 1024, preset small; the "
             "`default` row runs `asn2n run noisy.tif -o out.tif --preset small` with every other option "
             "at its default).", "",
             "Scored with `../shared/bench/score.py` (means over frames). sim2d rows: central "
             f"{args.crop or 2048}x{args.crop or 2048} crops of the three frames per photon level; sparse rows: "
             "channel 1 of one 1024x1024 `simulate.py timelapse` frame. `bg_rmse`: RMSE over true "
             "background pixels / gt range. `seam`: mean |gradient| across tile-grid lines / elsewhere "
             "(1.0 = no seams). Times on this machine (2 CPU cores).", "",
             "| row | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    def table(names: list[str], cols: list[str], big: str = ".1f") -> None:
        for name in names:
            r = rows[name]
            cells = []
            for c in cols:
                v = r.get(c)
                cells.append("" if v is None else v if isinstance(v, str) else
                             (f"{v:.3f}" if abs(v) < 10 else format(v, big)))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")

    table([k for k in rows if not k.startswith("mixed ")], cols)
    mixed = [k for k in rows if k.startswith("mixed ")]
    if mixed:
        mcols = ["consistency", "psnr", "dense_psnr", "sparse_false_obj", "psnr_raw", "dense_psnr_raw", "ssim",
                 "sparse_false_fg", "false_obj", "fg_dice", "train_s", "wall_s", "commit"]
        lines += ["", "## Mixed scene: dense filaments and a dark sparse region in one frame", "",
                  "`python benchmarks/quality.py --stage mixed --mixed-size 512 --mixed-steps 300 --preset small "
                  "--mixed-variants NAME` (each row's `command` in quality.json): three 512x512 frames of "
                  "`simulate.py mixed --size 512 --frames 3 --peak 8` (about half of each frame microtubules at "
                  "0.3-1 of 8 photons, the rest dark background with a few puncta; a wavy border, not on the "
                  "patch grid), every row trained on the same frames with the same seed, steps (300) and batches, "
                  "only the normalisation and the consistency weight differing (0.5 was the default until it "
                  "was measured on real data), and denoised as one stack (channel statistics of the three "
                  "frames, as in training). `psnr`: the shared scorer's `score_pair` on the whole frame. "
                  "`dense_psnr`: the scorer's psnr (its affine fit and data range) over the dense region's pixels "
                  "only (the region mask, not its bounding box, which would take in dark background). "
                  "`sparse_false_obj`: the scorer's false objects (whole-frame Otsu masks, objects of >= 4 px "
                  "wholly in true background) whose centre lies in the sparse region, per Mpx of that region. "
                  "Means over the three frames. Machine: 2 CPU cores shared with other jobs (times vary with "
                  "them).", "",
                  "| row | " + " | ".join(mcols) + " |", "|---|" + "---|" * len(mcols)]
        table(mixed, mcols, ".2f")
        lines += ["", "## Notes from the runs", "",
                  "Written when the rows they discuss were measured, with the figures of then; rows rerun later "
                  "(see each row's commit) may differ. The README quotes only rows that record their commit, "
                  "command and machine, rendered from quality.json by `benchmarks/readme.py`.", "",
                  "What held on the mixed scene. The published rule (safe patches all the way to their local range, "
                  "`adaptive_weight=\"class\"`; not trained separately, its fields here are `local`'s, checked) "
                  "and `dataset` equal `local` on this scene: the risk rule (noise-aware, as `auto` picks for "
                  "these frames) flags none of its patches, dark region included (`high_risk_ratio` 0), because "
                  "the background sits 0.26 of the range above the noise floor. `local` loses 4.3 dB to `global` "
                  "and paints 2.6 objects per Mpx into the dark region: a raw camera patch's minimum and maximum "
                  "are set by its noise (local ranges 0.63-0.93 of the global one, at random), so the scale "
                  "jitters from patch to patch. Weighting each safe patch towards its local range by the share "
                  "of its variance that is signal (`adaptive-signal`, weights 0-0.31) recovers 3.3 dB of that but "
                  "stays 1 dB below `global`. Weighting by the share of its min-max range that its noise does "
                  "not explain (`adaptive-range`, weights 0-0.19, 38% of patches above 0; the default now) ties "
                  "`global`: 0.05 dB below on the whole frame, 0.14 dB above in the dense region, no false "
                  "objects; its output differs from both. The target (above `global` on the whole frame) is not "
                  "met; we found no per-patch range that beats the global one on these raw camera frames.", "",
                  "Those rows were trained with the consistency weight 0.5. Rerun at today's default (0) with "
                  "five seeds each (`--mixed-seeds 0 1 2 3 4`), `global` scored above `adaptive` on four seeds and "
                  "tied on the fifth (whole frame 34.33/34.64/34.38/34.55/34.31 against 33.07/34.06/34.34/33.95/"
                  "34.31 dB); the spread between seeds of one rule (up to 1.3 dB for `adaptive`) is as large as "
                  "the gap, so single-seed rows here and above compare little. `adaptive` left slightly fewer "
                  "false objects in the dense region's background (0/0/2.5/3.8/2.5 per Mpx against "
                  "5.1/0/3.8/3.8/1.3: a handful of objects in 0.79 Mpx), none in the sparse region under either.",
                  "",
                  "The sparse frame's `weight` rows (`--stage weight --adaptive-weight W --weight-rows sparse`, "
                  "400 steps) are the same rules without the high-risk floor (`adaptive_floor` 0.05): 40.6 dB "
                  "(range) and 40.0 (signal) against 43.0 for the earlier default and 41.98 for today's, whose "
                  "floor of 1 gives every "
                  "patch of such high-risk data the global range. The default keeps that floor; with it the "
                  "range rule's fields on that frame are the global ones exactly (checked), as they were for the "
                  "earlier rule; rerun with today's code it scored 41.98 dB (`sparse adaptive (range weight, "
                  "floor 1: the default)`), 1.0 dB below the earlier rule's 43.0 row with the same fields: "
                  "the spread between runs of other code versions, not explained here; `global` was not rerun. "
                  "On the 5-photon crops the risk rule flags no patch either, so the default now weights their "
                  "safe patches by range (mean weight 0.024) where the earlier rule equalled `local`; the p5 "
                  "`adaptive` and `default` rows are the earlier rule's and were not rerun (`global` scored 0.9 dB "
                  "above `local` there)."]
    if any(k.startswith(("p5 transfer", "p5 drift", "p5 jitter")) for k in rows):
        lines += ["", "## One model on other frames", "",
                  "`p5 transfer` rows (`--stage transfer`): the default stage's model, trained on frame 1, applied "
                  "by `asn2n denoise` to whole frames 2 and 3, with `--norm-range auto` (the default: the training "
                  "range where the frame's range agrees with it) and `data` (the frame's own). `p5 drift` rows "
                  "(`--stage drift`): that model on the central crop of frame 2 plus a constant (a drifted camera "
                  "offset), normalised on the training range; the result is shifted back before scoring. "
                  "`p5 jitter J` rows (`--stage jitter --jitter-values J`): a model trained on the central crop "
                  "of frame 1 with offset jitter J (`TrainConfig.offset_jitter`; 600 steps, preset small), "
                  "scored as the drift rows on frame 2."]
    lines += ["", "CAREamics N2V2 was not run here: careamics 0.3.5 needs torchvision, whose registry builds do "
              "not load beside the pinned CPU torch. Figures quoted from the project's own probe (same crops, "
              "8 minutes of training on 2 CPU cores): 28.8 dB psnr, ssim 0.925, 1.9 false objects/Mpx; BM3D "
              "(Anscombe) in that probe: 26.9 dB.", "",
              "The default risk estimator is `auto` (per channel: the published rule, unless the pixel noise "
              "alone exceeds the weak-background std threshold, then noise-aware). The `modes` and `sparse` rows "
              "were recorded with the published rule, the default then, and those stages pin it; the `auto` rows "
              "have today's default. On the sparse frame (pixel noise 0.078 of the range) `auto` picks "
              "noise-aware: 43.0 dB, 0.27 dB from `global`. On the 15-photon crops (noise 0.063-0.067) it picks "
              "noise-aware too: 0.4 dB below the published rule's row, the run-to-run spread noted below, with "
              "false objects 0.32/Mpx -> 0. On the 5-photon frames both estimators call every patch safe, so "
              "the risk map and normalisation fields, and the `default` row, are the same under both.", "",
              "Risk classes on these raw camera frames: the reference rule calls 0% of patches high-risk on the "
              "5-photon crops and on the sparse frame, so `adaptive` and `dataset` (which decides `local`) equal "
              "`local` there; p5 `dataset` was not trained for that reason. The noise-aware estimator flags 89% "
              "of the sparse frame's patches as weak background (the dataset rule then calls the data high-risk) "
              "and none of the 5-photon crops' (there the earlier `adaptive` rule equals `local` again; the 0.4 dB "
              "between those "
              "two rows is run-to-run variation of the sampled batches).", "",
              "On high-risk data `adaptive` gives every safe patch the global range (`NormConfig.adaptive_floor`, "
              "default 1), so it equals `global` there. "
              "Without that floor the sparse "
              "noise-aware row scored 38.6 dB: the 11% safe patches, stretched to local ranges of 0.56-1.0 of "
              "the global one, raised the error in the background around them sixfold through the interpolated "
              "fields. Diagnosis: that model with global fields at inference scored 41.6 dB, a global model "
              "with adaptive fields 32.6 dB.", "",
              "Times: `train_s` of the sparse dataset and noise-aware rows, of p5 local and of the `auto` rows "
              "include other jobs running beside them; preset small takes 0.55-0.65 s a step on 2 uncontended "
              "cores.", "",
              "`false_obj`: false objects per Mpx in true background after Otsu; `false_fg`: false foreground "
              "fraction there. Rows with `tta4` average the network over 4 rotations of each tile."]
    (RESULTS / "quality.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'quality.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", nargs="+", default=["all"],
                    choices=["all", "baselines", "bm3d", "sn2n", "modes", "sparse", "default", "reference", "aware",
                             "auto", "mixed", "weight", "merge", "report", "sparse-default", "same-norm", "blend",
                             "transfer", "drift", "jitter", "dense-modes"])
    ap.add_argument("--rows", default=None, help="write rows to this JSON file instead (merge: read it)")
    ap.add_argument("--same-norm-steps", type=int, default=20,
                    help="same-norm stage: training steps of each of the two models compared")
    ap.add_argument("--steps", type=int, default=TrainConfig().steps)
    ap.add_argument("--sparse-steps", type=int, default=600)
    ap.add_argument("--sparse-modes", nargs="+", default=["adaptive", "global", "local", "dataset"],
                    choices=["adaptive", "global", "local", "dataset"], help="sparse stage: the modes to train")
    ap.add_argument("--dense-modes", nargs="+", default=["global", "adaptive"],
                    choices=["adaptive", "global", "local", "dataset"],
                    help="dense-modes stage: the normalisations to train on the --peaks crops")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--crop", type=int, default=1024, help="central crop side for scoring (0: whole frame)")
    ap.add_argument("--train-full", action="store_true", help="train on whole frames, not the crops")
    ap.add_argument("--peaks", type=int, nargs="+", default=[5])
    ap.add_argument("--adaptive-weight", default="signal", choices=["range", "signal", "class"],
                    help="weight stage: the adaptive weight")
    ap.add_argument("--weight-rows", nargs="+", default=["sparse", "p5"], choices=["sparse", "p5"])
    ap.add_argument("--blend-tiles", type=int, nargs="+", default=[32, 64, 128, 256], help="blend stage: tile sides")
    ap.add_argument("--blend-crop", type=int, default=512, help="blend stage: central crop side")
    ap.add_argument("--transfer-frames", type=int, nargs="+", default=[2, 3],
                    help="transfer stage: the frames the default stage's model (trained on frame 1) denoises")
    ap.add_argument("--drift-adu", type=float, nargs="+", default=[-2, -1, -0.5, 0, 0.5, 1, 2],
                    help="drift stage: constants added to frame 2 (ADU)")
    ap.add_argument("--drift-crop", type=int, default=512, help="drift stage: central crop side")
    ap.add_argument("--jitter-values", type=float, nargs="+", default=[0.0, 0.05],
                    help="jitter stage: offset jitters to train with (fractions of the range)")
    ap.add_argument("--jitter-steps", type=int, default=600, help="jitter stage: training steps")
    ap.add_argument("--mixed-size", type=int, default=512, help="mixed stage: frame side")
    ap.add_argument("--mixed-steps", type=int, default=300, help="mixed stage: training steps")
    ap.add_argument("--mixed-variants", nargs="+", default=list(MIXED_VARIANTS), choices=list(MIXED_VARIANTS))
    ap.add_argument("--mixed-seeds", nargs="+", type=int, default=[0],
                    help="mixed stage: training seeds, one row each (keyed '... seed N' for seeds other than 0)")
    args = ap.parse_args()
    records.code_state()  # the commit these rows come from: the one checked out now
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.stage == ["report"]:
        report(json.loads((RESULTS / "quality.json").read_text()), args)
    else:
        run(args)


if __name__ == "__main__":
    main()
