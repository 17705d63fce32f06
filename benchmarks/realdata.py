#!/usr/bin/env python3
"""Real-data quality: W2S widefield frames (``../shared/data/w2s_dev``), scored against the
average of 400 exposures with the shared scorer.

For each of the 3 channels, the 16 noisy 512x512 frames are one TYX stack and the
default command is timed on it: ``asn2n run stack.tif -o out.tif`` (every option at its
default).  The numbers to beat, on the same frames:

- ``gaussian``: the best Gaussian filter chosen per image (an oracle: sigma picked by the
  psnr against the reference);
- ``wiener``: each image's oracle Wiener filter (signal spectrum from the reference, white
  noise at the power of the image's residual against it): the best linear filter, a
  yardstick for how much any denoiser can gain over the Gaussian on these frames;
- ``n2v``: Noise2Void as CAREamics trains it (blind-spot masking of 0.2% of the pixels,
  each replaced by a random neighbour, MSE on the masked pixels, data normalised by its
  mean and standard deviation), on the same U-Net preset, steps, batch and patch as the
  default command, so that both get the same compute.

Usage (from the repository root, with the dev environment)::

    python benchmarks/realdata.py                      # every stage, every channel
    python benchmarks/realdata.py --stage gaussian n2v --channels 0 --steps 500

Writes ``benchmarks/results/realdata.json`` (per row: command, commit, machine, wall time,
scores per image and their means) and ``realdata.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
W2S = SHARED / "data" / "w2s_dev"
sys.path.insert(0, str(SHARED / "bench"))
import records  # noqa: E402  (benchmarks/records.py, beside this file)
from score import score_pair  # noqa: E402  (the shared scorer)

WORK = ROOT / "benchmarks" / "work" / "realdata"
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("psnr", "psnr_raw", "ssim", "false_obj", "false_fg", "fg_dice")


def frames(channel: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Field names, noisy frames and references of one channel, (16, 512, 512) each."""
    names = sorted(p.name for p in (W2S / "noisy").glob(f"field*_c{channel}.tif"))
    if not names:
        raise SystemExit(f"no W2S frames of channel {channel} in {W2S}")
    noisy = np.stack([tifffile.imread(W2S / "noisy" / n) for n in names])
    gt = np.stack([tifffile.imread(W2S / "gt" / n) for n in names])
    return names, noisy, gt


def scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    per = [score_pair(p, g) for p, g in zip(pred, gt)]
    return {"mean": {k: float(np.mean([r[k] for r in per])) for k in METRICS}, "per_image": per}


def wiener(noisy: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Each image through its own oracle Wiener filter: the best linear shift-invariant
    filter for that image, ``W = S / (S + N)`` per frequency, with the signal spectrum
    ``S`` from the reference (affine-fitted to the image) and the noise taken as white
    at the power of the image's residual against that fit.  A stronger oracle than the
    best Gaussian (which is one shape of such a filter) and the bound of linear filtering;
    a non-linear denoiser may beat it.  Returns the filtered images and each one's noise
    standard deviation (in input units)."""
    out, sds = [], []
    for img, ref in zip(noisy.astype(np.float64), gt.astype(np.float64)):
        a = np.stack([ref.ravel(), np.ones(ref.size)], 1)
        coef = np.linalg.lstsq(a, img.ravel(), rcond=None)[0]
        signal = ref * coef[0] + coef[1]
        noise_power = float(np.mean((img - signal) ** 2))
        s = np.abs(np.fft.fft2(signal - signal.mean())) ** 2
        total = s + noise_power * img.size
        w = np.divide(s, total, out=np.ones_like(s), where=total > 0)  # no signal and no noise: pass
        w[0, 0] = 1.0  # the mean passes
        out.append(np.real(np.fft.ifft2(np.fft.fft2(img) * w)))
        sds.append(noise_power**0.5)
    return np.stack(out), sds


def gaussian(noisy: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Each image filtered with the sigma that gives it the best psnr."""
    from scipy import ndimage as ndi

    out, sigmas = [], []
    for img, ref in zip(noisy.astype(np.float64), gt):
        best = max((score_pair(ndi.gaussian_filter(img, s), ref)["psnr"], s) for s in np.arange(0.5, 4.01, 0.25))
        sigmas.append(float(best[1]))
        out.append(ndi.gaussian_filter(img, best[1]))
    return np.stack(out), sigmas


def _crops(rng: np.random.Generator, stacks: tuple[np.ndarray, ...], batch: int, patch: int) -> list[np.ndarray]:
    """``batch`` random square crops of side ``patch``, at the same places of each of the
    aligned ``(n, h, w)`` stacks, all turned by the same multiple of 90 degrees and flipped alike."""
    n, h, w = stacks[0].shape
    idx = rng.integers(0, n, batch)
    ys, xs = rng.integers(0, h - patch + 1, batch), rng.integers(0, w - patch + 1, batch)
    turn, flip = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
    out = []
    for s in stacks:
        c = np.rot90(np.stack([s[i, y : y + patch, q : q + patch] for i, y, q in zip(idx, ys, xs)]), turn, axes=(1, 2))
        out.append(np.ascontiguousarray(c[:, :, ::-1] if flip else c))
    return out


def _apply(net, x: np.ndarray, device: str) -> np.ndarray:
    """The trained network on whole ``(n, h, w)`` frames, reflect-padded to its multiple."""
    import torch

    net.eval()
    n, h, w = x.shape
    ph, pw = -h % net.multiple, -w % net.multiple
    pad = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect").astype(np.float32)
    with torch.no_grad():
        out = np.concatenate([net(torch.from_numpy(pad[i : i + 4])[:, None].to(device))[:, 0].float().cpu().numpy()
                              for i in range(0, n, 4)])
    return out[:, :h, :w]


def _fit(preset: str, steps: int, lr: float, seed: int, device: str, loss_at):
    """A fresh U-Net of ``preset`` trained for ``steps`` Adam steps (cosine-annealed
    learning rate) on the loss ``loss_at(net, rng, step)`` returns."""
    import torch

    from asn2n_dask.model import build_unet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_unet(preset).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for step in range(steps):
        loss = loss_at(net, rng, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net


def _standardise(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    x = x.astype(np.float32)
    mean, std = float(x.mean()), float(x.std()) or 1.0
    return (x - mean) / std, mean, std


def n2v(noisy: np.ndarray, *, steps: int, batch: int, patch: int, preset: str, seed: int = 0,
        mask_fraction: float = 0.002, lr: float = 4e-4, device: str = "cpu") -> np.ndarray:
    """Noise2Void (CAREamics' N2V: uniform neighbour replacement, MSE on masked pixels;
    CAREamics' learning rate)."""
    import torch

    x, mean, std = _standardise(noisy)
    k = max(1, int(round(mask_fraction * patch * patch)))

    def loss_at(net, rng, step):
        (target,) = _crops(rng, (x,), batch, patch)
        inp = target.copy()
        mask = np.zeros_like(target, bool)
        for b in range(batch):
            py, px = rng.integers(0, patch, k), rng.integers(0, patch, k)
            dy, dx = rng.integers(-2, 3, k), rng.integers(-2, 3, k)
            same = (dy == 0) & (dx == 0)
            dx[same] = 1  # never the pixel itself
            ny, nx = np.clip(py + dy, 0, patch - 1), np.clip(px + dx, 0, patch - 1)
            inp[b, py, px] = target[b, ny, nx]
            mask[b, py, px] = True
        pred = net(torch.from_numpy(inp)[:, None].to(device))[:, 0]
        m = torch.from_numpy(mask).to(device)
        return ((pred - torch.from_numpy(target).to(device))[m] ** 2).mean()

    net = _fit(preset, steps, lr, seed, device, loss_at)
    return _apply(net, x, device) * std + mean


#: Neighbour pairs inside a 2x2 cell (pixels numbered 0 1 / 2 3): side by side or one above
#: the other, either way round; never the pixel itself and never the diagonal.
NEIGHBOURS = np.array([(0, 1), (1, 0), (2, 3), (3, 2), (0, 2), (2, 0), (1, 3), (3, 1)])


def neighbour_subsample(x, pick: np.ndarray):
    """Neighbor2Neighbor's neighbour sub-sampler: two ``(b, 1, h/2, w/2)`` images of ``x``
    ``(b, 1, h, w)``, taking from each 2x2 cell the two pixels ``pick`` ``(b, h/2, w/2, 2)``
    names (rows of :data:`NEIGHBOURS`, drawn at random per cell)."""
    import torch

    b, _, h, w = x.shape
    cells = x.reshape(b, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4).reshape(b, h // 2, w // 2, 4)
    pick = torch.from_numpy(pick).to(x.device)
    first = torch.gather(cells, 3, pick[..., :1])[..., 0]
    second = torch.gather(cells, 3, pick[..., 1:])[..., 0]
    return first[:, None], second[:, None]


def nb2nb(noisy: np.ndarray, *, steps: int, batch: int, patch: int, preset: str, seed: int = 0,
          gamma: float = 2.0, lr: float = 1e-3, device: str = "cpu") -> np.ndarray:
    """Neighbor2Neighbor (Huang et al., CVPR 2021): the network maps one random neighbour
    sub-sample of a crop to the other, with the regulariser that ties it to its own output
    on the whole crop (weight ramped from 0 to ``gamma``); applied to the raw frames.  The
    crops are ``2 * patch`` so that the network is trained at ``patch``, as the others are."""
    import torch

    x, mean, std = _standardise(noisy)

    def loss_at(net, rng, step):
        (crop,) = _crops(rng, (x,), batch, 2 * patch)
        y = torch.from_numpy(crop)[:, None].to(device)
        with torch.no_grad():
            fy = net(y)
        pick = NEIGHBOURS[rng.integers(0, len(NEIGHBOURS), (batch, patch, patch))]
        y1, y2 = neighbour_subsample(y, pick)
        f1, f2 = neighbour_subsample(fy, pick)  # the same cells of the network's output
        out = net(y1)
        weight = gamma * step / max(1, steps - 1)
        return torch.mean((out - y2) ** 2) + weight * torch.mean((out - y2 - (f1 - f2)) ** 2)

    net = _fit(preset, steps, lr, seed, device, loss_at)
    return _apply(net, x, device) * std + mean


def supervised(noisy: np.ndarray, gt: np.ndarray, *, steps: int, batch: int, patch: int, preset: str,
               folds: int = 2, seed: int = 0, lr: float = 1e-3, device: str = "cpu") -> np.ndarray:
    """A ceiling, not a competitor: the same U-Net trained with the references of the
    other fields as targets (MSE), ``folds``-fold across fields, so that each field is
    denoised by a network that never saw it nor its reference.  Each reference is first
    fitted (scale and offset) to its noisy frame, so targets are in the input's units.
    What this network could reach on these frames if it were told the answer elsewhere."""
    import torch

    x, mean, std = _standardise(noisy)
    target = np.empty_like(x)
    for i, (img, ref) in enumerate(zip(x, gt.astype(np.float64))):
        a = np.stack([ref.ravel(), np.ones(ref.size)], 1)
        target[i] = (a @ np.linalg.lstsq(a, img.ravel().astype(np.float64), rcond=None)[0]).reshape(ref.shape)
    out = np.empty_like(x)
    for k, held in enumerate(np.array_split(np.arange(len(x)), folds)):
        train = np.setdiff1d(np.arange(len(x)), held)

        pairs = (x[train], target[train])

        def loss_at(net, rng, step, pairs=pairs):
            inp, tgt = _crops(rng, pairs, batch, patch)
            pred = net(torch.from_numpy(inp)[:, None].to(device))
            return torch.mean((pred - torch.from_numpy(tgt)[:, None].to(device)) ** 2)

        net = _fit(preset, steps, lr, seed + k, device, loss_at)
        out[held] = _apply(net, x[held], device)
    return out * std + mean


def default_command(noisy: np.ndarray, channel: int, steps: int | None,
                    options: tuple[str, ...] = ()) -> tuple[np.ndarray, float, str]:
    """``asn2n run stack.tif -o out.tif [OPTIONS]`` on the channel's frames; the command's wall time."""
    d = WORK / f"c{channel}" / ("-".join(o.strip("-") for o in options) or "default")
    d.mkdir(parents=True, exist_ok=True)
    stack = d / "noisy.tif"
    tifffile.imwrite(stack, noisy, photometric="minisblack", metadata={"axes": "TYX"})
    out = d / "denoised.tif"
    cmd = ["asn2n", "-q", "run", str(stack.relative_to(ROOT)), "-o", str(out.relative_to(ROOT)), "--overwrite"]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    cmd += list(options)
    exe = [sys.executable, "-m", "asn2n_dask", *cmd[1:]]
    t0 = time.perf_counter()
    subprocess.run(exe, cwd=ROOT, check=True)
    return tifffile.imread(out), time.perf_counter() - t0, " ".join(cmd)


def default_model(channel: int) -> Path:
    """Where the default stage leaves the channel's model."""
    return WORK / f"c{channel}" / "default" / "denoised.tif.model"


SAME_NORM_STEPS = 20


def same_norm(noisy: np.ndarray, channel: int, steps: int) -> dict:
    """``asn2n run --norm adaptive`` and ``--norm global`` on the channel's frames at a few
    steps: the largest difference between their outputs (0: the same to the bit) and the
    dataset rule's decision and high-risk share that make them equal."""
    from asn2n_dask import load_model

    preds = {}
    for mode in ("adaptive", "global"):
        preds[mode], _, _ = default_command(noisy, channel, steps, ("--norm", mode))
    method = load_model(WORK / f"c{channel}" / "norm-adaptive" / "denoised.tif.model").method(0)
    return {"steps": steps, "max_abs_diff": float(np.max(np.abs(preds["adaptive"] - preds["global"]))),
            "dataset_mode": method.dataset_mode, "high_risk_ratio": method.high_risk_ratio}


def blend_rows(noisy: np.ndarray, gt: np.ndarray, model_dir: Path, tiles: list[int]) -> dict[str, dict]:
    """The channel's model on ``noisy`` with each blend at each tile side (50% overlap):
    scores and the seam ratio, per (blend, tile)."""
    from quality import seam_ratio  # the quality benchmark's seam metric

    from asn2n_dask import InferConfig, denoise, load_model

    model = load_model(model_dir)
    out = {}
    for side in tiles:
        for blend in ("gaussian", "uniform", "none"):
            cfg = InferConfig(tile=side, blend=blend)
            t0 = time.perf_counter()
            pred = denoise(noisy, model, axes="TYX", config=cfg)
            wall = time.perf_counter() - t0
            out[f"{blend} tile {side}"] = {
                "blend": blend, "tile": side, "seconds": wall, "scores": scores(pred, gt),
                "seam": float(np.mean([seam_ratio(p, side, cfg.stride) for p in pred]))}
    return out


def provenance(command: str, wall: float) -> dict:
    import psutil

    commit, dirty = records.code_state()
    return {"command": command, "commit": commit, "dirty": dirty,
            "machine": {"host": platform.node(), "cpus": len(os.sched_getaffinity(0)),
                        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1)},
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "wall_seconds": round(wall, 1)}


def render(rows: dict) -> str:
    lines = ["# Real-data quality: W2S widefield frames", "",
             "16 fields x 3 channels of `../shared/data/w2s_dev` (one raw 512x512 exposure against the average of "
             "400), scored with `../shared/bench/score.py` and averaged over the 16 fields of each channel. Every "
             "row is in `realdata.json` with its command, commit, machine and wall time "
             "(`python benchmarks/realdata.py`).", "",
             "| channel | method | psnr | psnr_raw | ssim | false_obj /Mpx | fg_dice | wall s | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows):
        r = rows[key]
        if "scores" not in r:  # a check without scores (same-norm), in the README's words
            continue
        m = r["scores"]["mean"]
        lines.append(f"| {r['channel']} | {r['method']} | {m['psnr']:.2f} | {m['psnr_raw']:.2f} | {m['ssim']:.3f} | "
                     f"{m['false_obj']:.2f} | {m['fg_dice']:.3f} | {r['wall_seconds']:.0f} | "
                     f"`{r['commit'][:10]}`{'+' if r['dirty'] else ''} |")
    lines += ["", "`gaussian`: sigma chosen per image by its psnr against the reference (an oracle). `n2v`: "
              "Noise2Void as CAREamics trains it, on the same network, steps, batch and patch as the default "
              "command. `Neighbor2Neighbor`: trained on random neighbour sub-samples of the noisy frames, "
              "applied to the raw frames, same network, steps and batch. `supervised ceiling`: the same network "
              "trained on the other fields (K folds) with their references as targets, not a competitor (it is "
              "told the answer) but what this network can reach on these frames. "
              "`asn2n run`: the default command on the channel's 16 frames as one stack; its wall time "
              "includes training.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", nargs="+", default=["noisy", "gaussian", "wiener", "n2v", "default"],
                    choices=["noisy", "gaussian", "wiener", "n2v", "nb2nb", "supervised", "default", "blend", "tta",
                             "same-norm"])
    ap.add_argument("--blend-model", type=Path, default=None,
                    help="blend and tta stages: the channel's model directory (default: the default stage's)")
    ap.add_argument("--blend-fields", type=int, default=2, help="blend stage: the first N fields of the channel")
    ap.add_argument("--tta", type=int, nargs="+", default=[1, 8],
                    help="tta stage: flipped/rotated copies averaged (InferConfig.tta), one row each")
    ap.add_argument("--blend-tiles", type=int, nargs="+", default=[32, 64, 128, 256],
                    help="blend stage: tile sides")
    ap.add_argument("--infer-on", nargs="+", default=["twins"], choices=["twins", "raw"],
                    help="tta stage: what the network is applied to (asn2n's --infer-on), a row each")
    ap.add_argument("--channels", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--run-options", default="",
                    help="default stage: options added to the command, e.g. '--norm global' (one row each)")
    ap.add_argument("--preset", default=None,
                    help="n2v, nb2nb and supervised stages: the U-Net preset (default: the default command's)")
    ap.add_argument("--folds", type=int, default=2,
                    help="supervised stage: the fields split into this many folds, each denoised by a network "
                         "trained on the others")
    ap.add_argument("--lr", type=float, default=None,
                    help="n2v, nb2nb and supervised stages: Adam's learning rate (default: 4e-4 for n2v, CAREamics'; "
                         "1e-3 for the others, the default command's)")
    ap.add_argument("--device", default="cpu",
                    help="n2v, nb2nb and supervised stages: the torch device they train and denoise on")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps of both networks (default: the default command's)")
    args = ap.parse_args()
    if not 2 <= args.folds <= 16:
        ap.error(f"--folds must be between 2 and 16 (the fields of a channel), not {args.folds}")
    records.code_state()  # the commit these rows come from: the one checked out now
    from asn2n_dask.config import TrainConfig

    cfg = TrainConfig()
    steps = args.steps or cfg.steps
    if args.preset is not None:
        cfg = dataclasses.replace(cfg, preset=args.preset)
    path = RESULTS / "realdata.json"
    rows = records.load(path)
    argv = " ".join(["python benchmarks/realdata.py", *sys.argv[1:]])
    suffix = "" if args.device == "cpu" else f", {args.device}"  # GPU rows beside the processor's
    lr = {} if args.lr is None else {"lr": args.lr}
    suffix += "".join(f", lr {v:g}" for v in lr.values())
    for c in args.channels:
        names, noisy, gt = frames(c)
        for stage in args.stage:
            t0 = time.perf_counter()
            if stage == "blend":
                model_dir = args.blend_model or default_model(c)
                k = args.blend_fields
                for name, r in blend_rows(noisy[:k], gt[:k], model_dir, args.blend_tiles).items():
                    rows = records.put(path, f"c{c} blend {name}", {
                        "channel": c, "method": f"blend {name}", "fields": names[:k], "model": str(model_dir), **r,
                        **provenance(argv, r["seconds"])})
                print(f"channel {c} blend rows written ({time.perf_counter() - t0:.0f} s)", flush=True)
                continue
            if stage == "tta":  # the default stage's model, every field, each test-time augmentation and view
                from asn2n_dask import InferConfig, denoise, load_model

                model_dir = args.blend_model or default_model(c)
                model = load_model(model_dir)
                trained = model.train.steps
                for t in args.tta:
                    for on in args.infer_on:
                        t1 = time.perf_counter()
                        pred = denoise(noisy, model, axes="TYX", config=InferConfig(tta=t, infer_on=on))
                        wall = time.perf_counter() - t1
                        key = (f"c{c} tta {t}" + ("" if on == "twins" else f" {on}")
                               + ("" if trained == cfg.steps else f" ({trained} steps)"))
                        rows = records.put(path, key, {
                            "channel": c, "method": f"tta {t}", "fields": names, "tta": t, "infer_on": on,
                            "model_steps": trained, "model": str(model_dir), "scores": scores(pred, gt),
                            **provenance(argv, wall)})
                        print(f"{key}: psnr {rows[key]['scores']['mean']['psnr']:.3f} ({wall:.0f} s)", flush=True)
                continue
            if stage == "same-norm":  # is adaptive the global scale on these frames? both, short, compared
                row = same_norm(noisy, c, args.steps or SAME_NORM_STEPS)
                rows = records.put(path, f"c{c} same-norm", {"channel": c, "method": "same-norm", "fields": names,
                                                             **row, **provenance(argv, time.perf_counter() - t0)})
                print(f"channel {c}: --norm adaptive against --norm global, max difference "
                      f"{row['max_abs_diff']:g} (dataset decision {row['dataset_mode']})", flush=True)
                continue
            extra: dict = {}
            if stage == "noisy":
                pred, method, command = noisy, "noisy input", argv
            elif stage == "gaussian":
                pred, sigmas = gaussian(noisy, gt)
                method, command, extra = "best Gaussian per image", argv, {"sigmas": sigmas}
            elif stage == "wiener":
                pred, sds = wiener(noisy, gt)
                method, command, extra = "oracle Wiener filter per image", argv, {"noise_sd": sds}
            elif stage == "n2v":
                pred = n2v(noisy, steps=steps, batch=cfg.batch, patch=cfg.patch, preset=cfg.preset, device=args.device,
                           **lr)
                method, command = f"N2V ({cfg.preset}, {steps} steps{suffix})", argv
            elif stage == "nb2nb":
                pred = nb2nb(noisy, steps=steps, batch=cfg.batch, patch=cfg.patch, preset=cfg.preset,
                             device=args.device, **lr)
                method, command = f"Neighbor2Neighbor ({cfg.preset}, {steps} steps{suffix})", argv
            elif stage == "supervised":
                pred = supervised(noisy, gt, steps=steps, batch=cfg.batch, patch=cfg.patch, preset=cfg.preset,
                                  folds=args.folds, device=args.device, **lr)
                method, command = f"supervised ceiling ({cfg.preset}, {steps} steps, {args.folds} folds{suffix})", argv
            else:
                opts = tuple(args.run_options.split())
                pred, wall, command = default_command(noisy, c, args.steps, opts)
                method = "asn2n run (defaults)" if args.steps is None else f"asn2n run --steps {args.steps}"
                gpu = next((o for o in opts if o.startswith("cuda")), None)
                if gpu is not None:  # the device the command trained and denoised on
                    import torch

                    extra["gpu"] = torch.cuda.get_device_name(torch.device(gpu))
                if opts:
                    method = f"asn2n run {args.run_options}" + ("" if args.steps is None else f" --steps {args.steps}")
            if stage in ("n2v", "nb2nb", "supervised") and args.device != "cpu":
                import torch

                extra["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
            wall = time.perf_counter() - t0
            row = {"channel": c, "method": method, "fields": names, "scores": scores(pred, gt),
                   **provenance(command, wall), **extra}
            rows = records.put(path, f"c{c} {method}", row)
            print(f"channel {c} {method}: " + ", ".join(f"{k} {v:.3f}" for k, v in row["scores"]["mean"].items())
                  + f" ({wall:.0f} s)", flush=True)
    (RESULTS / "realdata.md").write_text(render(rows))


if __name__ == "__main__":
    main()
