#!/usr/bin/env python3
"""Volumes: a 3-D network against per-plane 2-D and the best 3-D Gaussian filter.

The data are ``../shared/bench/simulate.py sim3d`` at its default size: a (T, C, Z, Y, X)
= (2, 1, 48, 256, 256) OME-Zarr of filaments and vesicles at 5 photons through an
anisotropic PSF (Z voxel 0.15 um, Y-X 0.1 um), with its ground truth.  Every row is
scored with the shared scorer (``score_stack``: slice by slice, averaged) per time point,
and the means over the time points are reported.

Stages (each writes its rows into ``benchmarks/results/volume.json``):

- ``data``: make the volume and its ground truth under ``benchmarks/data``.
- ``gaussian``: the best 3-D Gaussian filter per volume, sigmas along Z and in Y-X chosen
  by the squared error against the ground truth (an oracle; sigma_z 0 is the 2-D filter).
- ``dims3``: a 3-D U-Net (:func:`asn2n_dask.train3d.fit_volume`, preset ``small3d``, the
  voxels' anisotropy) trained on both time points, applied with Gaussian-weighted 3-D tiles
  on the twins of each tile (as 2-D inference does by default).
- ``dims2``: the per-plane 2-D default (``asn2n_dask.fit`` and ``denoise``, every option at
  its default) on the same volumes' 96 slices as frames.

Both networks get the same training budget, ``--cpu-seconds`` of CPU time on one thread
(run with ``OMP_NUM_THREADS=1``): each stage probes its own step cost and trains for the
steps that fit.  CPU time rather than wall time, so that other jobs on the machine do not
change the comparison; the probe's fixed costs (statistics) count as steps, which errs
against the side whose fixed costs are larger.  On a GPU (``--device cuda``) the budget is
``--seconds`` of training wall time instead (the device synchronised), from two probes of
different lengths, so fixed costs are counted once and not as steps.

Usage (from the repository root)::

    python benchmarks/volume.py --stage data gaussian dims3 dims2
    python benchmarks/volume.py --stage report
    python benchmarks/volume.py --stage dims3 dims2 --device cuda --seconds 240 --row 'cuda 240'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(SHARED / "bench"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from pipeline import PeakRSS, provenance  # noqa: E402  (the benchmarks' memory sampler and record of a row)
from readme import training_budget  # noqa: E402  (a row's budget in words, as the README says it)
from score import score_pair, score_stack  # noqa: E402  (the shared scorer)

DATA = ROOT / "benchmarks" / "data"
NOISY, GT = DATA / "sim3d.zarr", DATA / "sim3d-gt.zarr"
RESULTS = ROOT / "benchmarks" / "results"
RECORD = RESULTS / "volume.json"
WORK = ROOT / "benchmarks" / "work" / "volume"  # each network row's prediction, (T, Z, Y, X) float32 .npy
METRICS = ("psnr", "psnr_raw", "ssim", "false_obj", "false_fg", "fg_dice")
ANISOTROPY = 0.15 / 0.1  # simulate.py sim3d's default voxel: Z over Y-X


def ensure_data() -> None:
    if not (NOISY / "zarr.json").is_file() or not (GT / "zarr.json").is_file():
        subprocess.run([sys.executable, str(SHARED / "bench" / "simulate.py"), "sim3d", "--out", str(NOISY),
                        "--gt-out", str(GT)], check=True)


def volumes() -> tuple[np.ndarray, np.ndarray]:
    """Noisy and ground-truth channel 0, (T, Z, Y, X) each."""
    import zarr

    ensure_data()
    noisy = np.asarray(zarr.open_array(str(NOISY / "0"), mode="r")[:, 0])
    gt = np.asarray(zarr.open_array(str(GT / "0"), mode="r")[:, 0])
    return noisy, gt


def scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    """The shared scorer's means per volume and over them, and the false objects per Mpx of each Z
    slice averaged over the volumes (where along Z a method invents objects)."""
    per = [score_stack(np.asarray(p, np.float64), np.asarray(g, np.float64)) for p, g in zip(pred, gt)]
    by_z = [[score_pair(np.asarray(ps, np.float64), np.asarray(gs, np.float64))["false_obj"] for ps, gs in zip(p, g)]
            for p, g in zip(pred, gt)]
    return {"mean": {k: float(np.mean([r[k] for r in per])) for k in METRICS}, "per_volume": per,
            "false_obj_by_z": np.mean(by_z, axis=0).tolist()}


def keep(key: str, pred: np.ndarray, fit: object = None) -> None:
    """Save a row's prediction (and a 3-D row's trained network, ``torch.load(...,
    weights_only=False)`` reads it back) under benchmarks/work/volume/ for a look after the run."""
    WORK.mkdir(parents=True, exist_ok=True)
    name = key.replace(" ", "_")
    np.save(WORK / f"{name}.npy", np.asarray(pred, np.float32))
    if fit is not None:
        import torch

        torch.save(fit, WORK / f"{name}.pt")


def stage_gaussian(noisy: np.ndarray, gt: np.ndarray) -> dict:
    from scipy import ndimage as ndi

    out, sig = [], []
    for vol, ref in zip(noisy.astype(np.float64), gt):
        ref64 = ref.astype(np.float64)
        grid = [(sz, sy) for sz in (0.0, 0.5, 1.0, 1.5, 2.0) for sy in (0.75, 1.0, 1.25, 1.5, 2.0)]

        def error(s: tuple[float, float], vol: np.ndarray = vol, ref64: np.ndarray = ref64) -> float:
            # the pick only (the least squared error in input units): every row is scored below
            return float(np.mean((ndi.gaussian_filter(vol, (s[0], s[1], s[1])) - ref64) ** 2))

        best = min(grid, key=error)
        sig.append(best)
        out.append(ndi.gaussian_filter(vol, (best[0], best[1], best[1])))
    return {"method": "best 3-D Gaussian per volume (sigmas z, yx by error against the truth)",
            "sigmas_zyx": [[s[0], s[1], s[1]] for s in sig], "scores": scores(np.stack(out), gt)}


def cpu_steps(train: Callable[[int], object], budget: float, probe: int) -> tuple[int, float]:
    """Steps that fit ``budget`` CPU seconds of this process, from ``probe`` steps of ``train``,
    and the probe's CPU seconds a step.  CPU time, not wall time: the machine is shared, and
    both networks train on one thread, so CPU seconds are the compute each one gets."""
    t0 = time.process_time()
    train(probe)
    per_step = (time.process_time() - t0) / probe
    return max(probe, int(round(budget / per_step))), per_step


def wall_steps(train: Callable[[int], object], budget: float, probe: int, device: str) -> tuple[int, float]:
    """Steps that fit ``budget`` seconds of training wall time on ``device`` (synchronised),
    from a warm-up and two timed probes of ``probe`` and ``5 * probe`` steps: their
    difference gives the cost of a step, the rest is the fixed cost of a training call."""
    import torch

    def timed(n: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train(n)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(probe)  # kernels chosen, memory allocated
    short, long = timed(probe), timed(5 * probe)
    per_step = max(long - short, 1e-9) / (4 * probe)
    fixed = max(short - probe * per_step, 0.0)
    return max(probe, int(round((budget - fixed) / per_step))), per_step


def budget_steps(train: Callable[[int], object], budget: float, probe: int, device: str) -> tuple[int, float]:
    """:func:`cpu_steps` on the CPU, :func:`wall_steps` on any other device."""
    return cpu_steps(train, budget, probe) if device == "cpu" else wall_steps(train, budget, probe, device)


def on_device(device: str) -> dict:
    """What a row records of the device it trained on."""
    if device == "cpu":
        return {"device": "cpu"}
    import torch

    return {"device": device, "gpu": torch.cuda.get_device_name(torch.device(device))}


def stage_dims3(noisy: np.ndarray, gt: np.ndarray, budget: float, preset: str, patch: tuple[int, int, int],
                device: str = "cpu") -> dict:
    from asn2n_dask.blend import predict_tiled_volume
    from asn2n_dask.config import InferConfig, VolumeTrainConfig
    from asn2n_dask.predict import network_fn, volume_tile_fn
    from asn2n_dask.train3d import fit_volume

    def cfg(steps: int) -> VolumeTrainConfig:
        return VolumeTrainConfig(preset=preset, steps=steps, patch=patch, anisotropy=ANISOTROPY)

    steps, per_step = budget_steps(lambda n: fit_volume(list(noisy), cfg(n), device=device), budget, 10, device)
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fit_volume(list(noisy), cfg(steps), device=device)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    infer = InferConfig(device=device)
    t1 = time.perf_counter()
    net = network_fn(fit.net, device, infer.precision)
    preds = []
    for vol in noisy.astype(np.float64):
        x = (vol - fit.stats.lo) / fit.stats.span
        y = predict_tiled_volume(x, volume_tile_fn(net, infer.infer_on, infer.tta), tile_z=fit.patch[0], config=infer,
                                 device=device, multiple=fit.net.multiple)
        preds.append(y.astype(np.float64) * fit.stats.span + fit.stats.lo)
    infer_s = time.perf_counter() - t1
    return {"method": f"3-D U-Net ({preset}, {steps} steps, patch {'x'.join(map(str, fit.patch))}, "
                      f"anisotropy {ANISOTROPY:g}, global range, twins inference)",
            "train_seconds": train_s, "train_cpu_seconds": train_cpu, **probed(per_step, device),
            "infer_seconds": infer_s, "voxels": int(noisy.size), "steps": steps, "patch": list(fit.patch),
            **on_device(device),
            "final_loss": float(np.mean(fit.losses[-20:])), "scores": scores(np.stack(preds), gt),
            "pred": np.stack(preds), "fit": fit}


def probed(per_step: float, device: str) -> dict:
    """The probe's cost of a step, as the row records it: CPU seconds, or wall seconds on a GPU."""
    return {"probe_cpu_seconds_per_step" if device == "cpu" else "probe_seconds_per_step": per_step}


def stage_dims2(noisy: np.ndarray, gt: np.ndarray, budget: float, device: str = "cpu") -> dict:
    from asn2n_dask import InferConfig, TrainConfig, denoise, fit

    t, z, h, w = noisy.shape
    frames = noisy.reshape(t * z, h, w)
    steps, per_step = budget_steps(lambda n: fit(frames, axes="TYX", config=TrainConfig(steps=n), device=device),
                                   budget, 30, device)
    t1, c1 = time.perf_counter(), time.process_time()
    model = fit(frames, axes="TYX", config=TrainConfig(steps=steps), device=device)
    train_s, train_cpu = time.perf_counter() - t1, time.process_time() - c1
    t2 = time.perf_counter()
    pred = np.asarray(denoise(frames, model, axes="TYX", config=InferConfig(device=device)),
                      np.float64).reshape(noisy.shape)
    infer_s = time.perf_counter() - t2
    return {"method": f"per-plane 2-D default ({steps} steps; every other option at its default)",
            "train_seconds": train_s, "train_cpu_seconds": train_cpu, **probed(per_step, device),
            "infer_seconds": infer_s, "voxels": int(noisy.size), "steps": steps, "norm": model.train.norm.to_dict(),
            "scores": scores(pred, gt),
            "pred": pred, **on_device(device)}


def stage_zchunks(depths: tuple[int, ...], chunk_z: int, side: int = 256) -> dict:
    """``asn2n denoise`` from the command line with a ``small3d`` model (one training step:
    speed and memory do not depend on the weights) on (1, 1, Z, side, side) uint16 Zarr
    volumes of each depth, chunked ``chunk_z`` x side x side: peak resident memory of
    the command and its workers, and voxels per second, per depth."""
    import zarr

    from asn2n_dask import VolumeTrainConfig, fit

    work = ROOT / "benchmarks" / "work" / "volume"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    model = work / "small3d.model"
    if not (model / "model.json").is_file():
        fit(rng.poisson(50, (32, 64, 64)).astype(np.uint16), axes="ZYX", dims=3, device="cpu", model_dir=model,
            volume=VolumeTrainConfig(steps=1))
    out = {}
    for depth in depths:
        src = work / f"vol-{depth}x{side}.zarr"
        if not (src / "zarr.json").is_file():
            z = zarr.create_array(str(src), shape=(1, 1, depth, side, side), chunks=(1, 1, chunk_z, side, side),
                                  dtype="uint16", dimension_names=list("tczyx"))
            for k in range(0, depth, chunk_z):
                z[0, 0, k : k + chunk_z] = rng.poisson(50, (min(chunk_z, depth - k), side, side))
        dst = work / f"out-{depth}x{side}.zarr"
        cmd = [sys.executable, "-m", "asn2n_dask", "-q", "denoise", str(src), "-o", str(dst), "-m", str(model),
               "--chunks", f"{chunk_z}x{side}x{side}", "--workers", "1", "--threads", "1", "--overwrite"]
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT)
            secs = time.perf_counter() - t0
        out[str(depth)] = {"depth": depth, "z_chunks": -(-depth // chunk_z), "seconds": secs,
                           "voxels_per_s": depth * side * side / secs, "peak_rss_mib": mem.peak / 2**20}
    return {"method": f"asn2n denoise, small3d, chunks {chunk_z}x{side}x{side}, 1 worker of 1 thread",
            "runs": out}


def render(rows: dict) -> str:
    lines = ["# Volumes: 3-D against per-plane 2-D", "",
             "`python benchmarks/volume.py --stage STAGE` on `simulate.py sim3d` at its default size ((2, 1, 48, "
             "256, 256), 5 photons, Z voxel 0.15 um, Y-X 0.1 um), scored with `../shared/bench/score.py` "
             "(`score_stack`, slice by slice) per time point and averaged over the two.", "",
             "| row | psnr | psnr_raw | ssim | false_obj /Mpx | fg_dice | train s | wall s | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    extra = sorted(k for k in rows if k.startswith(("dims2 ", "dims3 ")))
    for key in ("noisy", "gaussian", "dims2", "dims3", *extra):
        if key not in rows:
            continue
        r = rows[key]
        m = r["scores"]["mean"]
        train = f"{r['train_seconds']:.0f}" if "train_seconds" in r else ""
        lines.append(f"| {r['method']} | {m['psnr']:.2f} | {m['psnr_raw']:.2f} | {m['ssim']:.3f} | "
                     f"{m['false_obj']:.2f} | {m['fg_dice']:.3f} | {train} | {r['wall_s']:.0f} | "
                     f"`{r['commit']}`{'+' if r['dirty'] else ''} |")
    if "zchunks" in rows:
        r = rows["zchunks"]
        lines += ["", f"Memory against depth: {r['method']} (`{r['command']}`, `{r['commit']}`).", "",
                  "| depth | Z chunks | seconds | voxels/s | peak RSS MiB |", "|---|---|---|---|---|"]
        for v in sorted(r["runs"].values(), key=lambda v: v["depth"]):
            lines.append(f"| {v['depth']} | {v['z_chunks']} | {v['seconds']:.0f} | {v['voxels_per_s']:.0f} | "
                         f"{v['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def stage_zleak(gt: np.ndarray, keys: list[str]) -> dict:
    """Where the false objects of the kept predictions lie: the share of them within a pixel
    of the ground truth's foreground in the next slice up or down (structure carried along Z,
    not made up where nothing is near), against the share of true background within a pixel
    of that reach (where an object of a few pixels would touch it by chance).  Masks,
    objects and background as the shared scorer's (Otsu foreground; background farther than
    3 px from it; objects of 4 px or more touching no foreground)."""
    from scipy import ndimage as ndi
    from score import _otsu_mask as otsu  # the scorer's own foreground mask

    near_bg, out = [], {}
    masks = [[otsu(g) for g in vol] for vol in gt.astype(np.float64)]
    reach = []  # per volume, per slice: 1 px around the foreground of the slices either side
    for fg in masks:
        reach.append([ndi.binary_dilation(np.logical_or.reduce([fg[z + d] for d in (-1, 1) if 0 <= z + d < len(fg)]),
                                          iterations=1) for z in range(len(fg))])
    for t, fg in enumerate(masks):
        for z in range(len(fg)):
            bg = ~ndi.binary_dilation(fg[z], iterations=3)
            near_bg.append(float((ndi.binary_dilation(reach[t][z], iterations=1) & bg).sum() / max(bg.sum(), 1)))
    for key in keys:
        pred = np.load(WORK / f"{key.replace(' ', '_')}.npy").astype(np.float64)
        count = near = 0
        for t, fg in enumerate(masks):
            for z in range(len(fg)):
                bg = ~ndi.binary_dilation(fg[z], iterations=3)
                lab, n = ndi.label(otsu(pred[t, z]), structure=np.ones((3, 3)))
                if not n:
                    continue
                sizes = np.bincount(lab.ravel())
                touches = np.zeros(n + 1, bool)
                touches[np.unique(lab[~bg])] = True
                keep = (sizes >= 4) & ~touches
                keep[0] = False
                for i in np.flatnonzero(keep):
                    count += 1
                    near += bool(reach[t][z][lab == i].any())
        out[key] = {"false_objects": count, "near_next_slices": near}
    return {"method": "false objects beside the next slices' structure", "rows": out,
            "background_near_next_slices": float(np.mean(near_bg))}


def plot_false_objects(rows: dict, path: Path) -> Path | None:
    """False objects per Mpx against the Z slice, one line per row that records them
    (``false_obj_by_z``): where along the volume each method invents objects."""
    from asn2n_dask.plots import pyplot, save_figure

    keyed = [r for _, r in sorted(rows.items()) if "false_obj_by_z" in r.get("scores", {})]
    if not keyed:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4), constrained_layout=True)
    for r in keyed:
        by_z = np.asarray(r["scores"]["false_obj_by_z"])
        label = r["method"].split(" (")[0] + (f", {training_budget(r)}" if "train_cpu_seconds" in r else "")
        ax.plot(np.arange(len(by_z)), np.maximum(by_z, 0.5), "o-", ms=3, label=f"{label} (mean "
                f"{r['scores']['mean']['false_obj']:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("Z slice")
    ax.set_ylabel("false objects per Mpx (0 drawn at 0.5)")
    ax.set_title("simulate.py sim3d: false objects slice by slice, mean of the two time points")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", nargs="+", default=["data", "gaussian", "dims3", "dims2"],
                    choices=["data", "gaussian", "dims3", "dims2", "zchunks", "zleak", "report"])
    ap.add_argument("--row", default=None, help="dims3/dims2: the row's key (default: the stage's name, the "
                    "pair compared at one budget)")
    ap.add_argument("--zleak-rows", nargs="+", default=["dims2 3000", "dims3 3000"],
                    help="zleak: the rows whose kept predictions to look at")
    ap.add_argument("--depths", type=int, nargs="+", default=[64, 256], help="zchunks: volume depths")
    ap.add_argument("--chunk-z", type=int, default=32, help="zchunks: output chunk depth")
    ap.add_argument("--side", type=int, default=256, help="zchunks: the volumes' Y and X size")
    ap.add_argument("--cpu-seconds", type=float, default=1000.0,
                    help="training budget of each network, CPU seconds on one thread (default 1000)")
    ap.add_argument("--device", default="cpu", help="dims3/dims2: where the networks train and run (cpu, cuda)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="dims3/dims2 with --device other than cpu: training budget of each network, wall seconds")
    ap.add_argument("--preset", default="small3d")
    ap.add_argument("--patch", type=int, nargs=3, default=[16, 64, 64], metavar=("Z", "Y", "X"))
    args = ap.parse_args()
    if (args.device == "cpu") != (args.seconds is None):
        ap.error("--seconds (a wall-time budget) goes with a --device other than cpu, whose budget is --cpu-seconds")
    budget, flag = (args.cpu_seconds, f"--cpu-seconds {args.cpu_seconds:g}") if args.device == "cpu" else \
        (args.seconds, f"--device {args.device} --seconds {args.seconds:g}")
    rows = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    cmd = "python benchmarks/volume.py --stage"

    def put(key: str, row: dict, command: str, t0: float) -> None:
        if "pred" in row:
            keep(key, row.pop("pred"), row.pop("fit", None))
        if RECORD.is_file():  # another stage may have run beside this one: keep its rows
            rows.update({k: v for k, v in json.loads(RECORD.read_text()).items() if k != key})
        rows[key] = {**row, **provenance(command, time.perf_counter() - t0)}
        RESULTS.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")

    stages = set(args.stage)
    if stages & {"data", "gaussian", "dims3", "dims2", "zleak"}:
        t0 = time.perf_counter()
        noisy, gt = volumes()
        if "data" in stages:
            put("noisy", {"method": "noisy input", "scores": scores(noisy, gt)}, f"{cmd} data", t0)
    if "gaussian" in stages:
        t0 = time.perf_counter()
        put("gaussian", stage_gaussian(noisy, gt), f"{cmd} gaussian", t0)
    if "dims3" in stages:
        t0 = time.perf_counter()
        row = f" --row '{args.row}'" if args.row else ""
        put(args.row or "dims3", stage_dims3(noisy, gt, budget, args.preset, tuple(args.patch), args.device),
            f"{cmd} dims3 {flag} --preset {args.preset} "
            f"--patch {' '.join(map(str, args.patch))}{row}", t0)
    if "dims2" in stages:
        t0 = time.perf_counter()
        row = f" --row '{args.row}'" if args.row else ""
        put(args.row or "dims2", stage_dims2(noisy, gt, budget, args.device), f"{cmd} dims2 {flag}{row}", t0)
    if "zleak" in stages:
        t0 = time.perf_counter()
        put("zleak", stage_zleak(gt, args.zleak_rows),
            f"{cmd} zleak --zleak-rows {' '.join(repr(k) for k in args.zleak_rows)}", t0)
    if "zchunks" in stages:
        t0 = time.perf_counter()
        put("zchunks", stage_zchunks(tuple(args.depths), args.chunk_z, args.side),
            f"{cmd} zchunks --depths {' '.join(map(str, args.depths))} --chunk-z {args.chunk_z} --side {args.side}",
            t0)
    (RESULTS / "volume.md").write_text(render(rows))
    plot_false_objects(rows, RESULTS / "volume-false-objects.png")
    print(render(rows))


if __name__ == "__main__":
    main()
