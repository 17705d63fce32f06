#!/usr/bin/env python3
"""Render the README's "Measured" section from the benchmark records.

Every figure in that section is read from ``benchmarks/results/*.json`` here, and only
from rows that say what made them (command, commit, machine, wall time); a row without
that cannot be quoted.  ``tests/test_readme.py`` fails when the README and this rendering
differ, so a figure in the README is always the record's.

Usage (from the repository root)::

    python benchmarks/readme.py            # rewrite the section in README.md
    python benchmarks/readme.py --check    # exit 1 if README.md differs from the records
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- measured: rendered by benchmarks/readme.py from benchmarks/results/*.json; do not edit by hand -->"
END = "<!-- end of measured -->"

#: W2S target of the method issue: best Gaussian per image + 1 dB, at most 2 false objects per Mpx
W2S_GAIN_DB, W2S_MAX_FALSE_OBJ = 1.0, 2.0
#: Targets of the default command on the whole 5-photon frame (the method issue)
P5_MIN_PSNR, P5_MAX_SEAM = 31.5, 1.05


class RecordError(ValueError):
    """A quoted row is missing or does not say what made it."""


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def quoted(rows: dict, key: str, record: str) -> dict:
    """A row that may be quoted: present, with its command, commit, machine and wall time."""
    if key not in rows:
        raise RecordError(f"{record}.json has no row {key!r}")
    r = rows[key]
    wall = seconds(r)
    missing = [k for k, v in (("command", r.get("command")), ("commit", r.get("commit")),
                              ("machine", r.get("machine")), ("wall time", wall)) if v is None]
    if missing:
        raise RecordError(f"{record}.json row {key!r} lacks {', '.join(missing)}: it cannot be quoted")
    # `--rows FILE` only sent a stage's rows to a side file before they were merged: not part of the command
    return {**r, "command": re.sub(r" --rows \S+", "", str(r["command"]))}


def commit(r: dict) -> str:
    c = str(r["commit"])
    dirty = c.endswith("-dirty") or bool(r.get("dirty"))
    return f"`{c.removesuffix('-dirty')[:7]}`" + ("+" if dirty else "")


def seconds(r: dict) -> float | None:
    """The row's wall time; where only the training time was recorded, that (a lower bound)."""
    for key in ("wall_s", "wall_seconds", "train_s"):
        if r.get(key) is not None:
            return float(r[key])
    return None


def wall(r: dict) -> float:
    t = seconds(r)
    assert t is not None
    return t


def machine(r: dict) -> str:
    m = r["machine"]
    return m if isinstance(m, str) else f"{m.get('cpus')} CPU cores, {m.get('memory_gib')} GiB"


def signed(x: float, unit: str = " dB") -> str:
    return f"{x:+.2f}{unit}"


W2S_ORDER = {"noisy input": 0, "best Gaussian per image": 1, "oracle Wiener filter per image": 1.5,
             "asn2n run (defaults)": 3}
W2S_ORDER_PREFIX = {"supervised ceiling": 1.7, "N2V": 2, "Neighbor2Neighbor": 2}


def at_default_settings(method: str, name: str) -> bool:
    """Whether a trained yardstick's W2S row (``NAME (preset, N steps[, K folds][, device])``)
    used the default command's network and steps and nothing else changed (no ``lr``)."""
    from asn2n_dask.config import TrainConfig

    cfg = TrainConfig()
    pattern = rf"{re.escape(name)} \({cfg.preset}, {cfg.steps} steps(?:, \d+ folds)?(?:, (?:cpu|cuda(?::\d+)?))?\)"
    return re.fullmatch(pattern, method) is not None


def best_at_defaults(rows_by_method: dict[str, dict], name: str) -> dict | None:
    """The mean scores of the highest-psnr row of yardstick ``name`` at the default settings."""
    found = [r["scores"]["mean"] for k, r in rows_by_method.items() if at_default_settings(k, name)]
    return max(found, key=lambda scores: scores["psnr"]) if found else None


def w2s_rank(method: str) -> tuple[float, str]:
    """Where a W2S row goes in the README's table: the filters, the ceiling, the other
    learned denoisers, the default command, then its variants."""
    fallback = next((v for k, v in W2S_ORDER_PREFIX.items() if method.startswith(k)), 4)
    return W2S_ORDER.get(method, fallback), method


def realdata_section(rows: dict) -> list[str]:
    out = ["### Real widefield data (W2S)", "",
           "16 fields x 3 channels of `../shared/data/w2s_dev` (one raw 512x512 exposure, scored against the "
           "average of 400 with `../shared/bench/score.py`, means over the 16 fields of a channel). `asn2n run` "
           "is the command with every option at its default on the channel's 16 frames as one stack (`python "
           "benchmarks/realdata.py`); its wall time includes training. The best Gaussian filter is an oracle: "
           "its sigma is chosen per image by the psnr against the reference. The oracle Wiener filter is the best "
           "linear filter for each image: per frequency, the reference's power over itself plus the noise's "
           "(white, at the power of the image's residual against the reference; `--stage wiener`); a "
           "non-linear denoiser can beat it, a linear one cannot. N2V: Noise2Void as CAREamics trains "
           "it (blind-spot masking of 0.2% of the pixels, each replaced by a random neighbour), on the same "
           "network, steps, batch and patch as the default command (`--stage n2v`). Neighbor2Neighbor: "
           "the network maps one random neighbour sub-sample of the noisy frame to the other, with the "
           "regulariser that ties it to its own output on the whole frame, applied to the raw frames; same "
           "network, steps and batch (`--stage nb2nb`). The supervised ceiling is not a competitor: the same "
           "network trained with the references of the other fields as targets: the fields split into K folds, "
           "each denoised by a network that learned from the other K-1 and never saw it (`--stage supervised "
           "--folds K`): what this network can reach on these "
           "frames when it is told the answer elsewhere. The GPU rows of the trained yardsticks ran on one "
           "NVIDIA H200 (`--device cuda`).",
           "",
           "| channel | method | psnr | psnr_raw | ssim | false objects /Mpx | wall s | commit |",
           "|---|---|---|---|---|---|---|---|"]
    if not rows:
        return []
    verdicts = []
    for c in sorted({r["channel"] for r in rows.values()}):
        mine = {r["method"]: r for r in rows.values() if r["channel"] == c
                and not r["method"].startswith(("blend ", "tta ", "same-norm"))}
        for method in sorted(mine, key=w2s_rank):
            r = quoted(rows, f"c{c} {method}", "realdata")
            m = r["scores"]["mean"]
            out.append(f"| {c} | {method} | {m['psnr']:.2f} | {m['psnr_raw']:.2f} | {m['ssim']:.3f} | "
                       f"{m['false_obj']:.2f} | {wall(r):.0f} | {commit(r)} |")
        if "asn2n run (defaults)" in mine and "best Gaussian per image" in mine:
            ours, gauss = (mine[k]["scores"]["mean"] for k in ("asn2n run (defaults)", "best Gaussian per image"))
            gain = ours["psnr"] - gauss["psnr"]
            met = gain >= W2S_GAIN_DB and ours["false_obj"] <= W2S_MAX_FALSE_OBJ
            n2v = [m for m in [best_at_defaults(mine, "N2V")] if m]
            versus = (f", {signed(ours['psnr'] - n2v[0]['psnr'])} against N2V ({n2v[0]['false_obj']:.2f} false "
                      "objects per Mpx)") if n2v else ""
            nb2nb = [m for m in [best_at_defaults(mine, "Neighbor2Neighbor")] if m]
            if nb2nb:
                versus += (f", {signed(ours['psnr'] - nb2nb[0]['psnr'])} against Neighbor2Neighbor "
                           f"({nb2nb[0]['false_obj']:.2f} false objects per Mpx)")
            wiener = mine.get("oracle Wiener filter per image")
            if wiener:
                w = wiener["scores"]["mean"]["psnr"]
                versus += (f", {signed(ours['psnr'] - w)} against the oracle Wiener filter (itself "
                           f"{signed(w - gauss['psnr'])} over the best Gaussian)")
            ceiling = best_at_defaults(mine, "supervised ceiling")
            if ceiling:  # with the most references it was given: the ceiling at its most favourable
                top = ceiling["psnr"]
                versus += (f", {signed(ours['psnr'] - top)} against the supervised ceiling (its best row, itself "
                           f"{signed(top - gauss['psnr'])} over the best Gaussian)")
            verdicts.append(f"channel {c}: {signed(gain)} against the best Gaussian, {ours['false_obj']:.2f} false "
                            f"objects per Mpx (Gaussian {gauss['false_obj']:.2f}){versus}: target "
                            f"{'met' if met else 'not met'}")
    if verdicts:
        out += ["", f"Against the target (best Gaussian + {W2S_GAIN_DB:g} dB, at most {W2S_MAX_FALSE_OBJ:g} false "
                f"objects per Mpx): " + "; ".join(verdicts) + "."]
    out += w2s_ceiling(rows) + w2s_budget(rows) + w2s_same_norm(rows) + w2s_blend(rows) + w2s_tta(rows)
    missing = [c for c in range(3) if f"c{c} asn2n run (defaults)" not in rows]
    if missing:
        out += ["", "Not yet recorded: the default command on channel(s) "
                + ", ".join(map(str, missing)) + "; N2V at equal compute (`--stage n2v`) on every channel."]
    else:
        no_n2v = [c for c in range(3) if not any(r["channel"] == c and r["method"].startswith("N2V")
                                                 for r in rows.values())]
        if no_n2v:
            out += ["", "Not yet recorded: N2V at equal compute (`python benchmarks/realdata.py --stage n2v`) on "
                    "channel(s) " + ", ".join(map(str, no_n2v)) + "."]
    return out


def w2s_same_norm(rows: dict) -> list[str]:
    """Why rows recorded under an earlier default normalisation stand for today's."""
    checks = sorted((k for k in rows if rows[k]["method"] == "same-norm"), key=lambda k: rows[k]["channel"])
    if not checks:
        return []
    cells = []
    for k in checks:
        r = quoted(rows, k, "realdata")
        cells.append(f"channel {r['channel']}: {r['high_risk_ratio']:.0%} of patches at risk, dataset decision "
                     f"`{r['dataset_mode']}`, largest difference {r['max_abs_diff']:g} ({commit(r)})")
    steps = sorted({rows[k]["steps"] for k in checks})
    return ["", "The `asn2n run (defaults)` rows were recorded while the default normalisation was `adaptive`. "
            "Where the dataset rule calls a channel high-risk, `adaptive` gives every patch the frame's global "
            "scale, so it is today's default (`global`) there. `asn2n run --norm adaptive` against `--norm global` "
            f"on each channel's 16 frames, {', '.join(map(str, steps))} steps (`python benchmarks/realdata.py "
            "--stage same-norm`): " + "; ".join(cells) + "."]


def w2s_budget(rows: dict) -> list[str]:
    """The default command at each number of training steps recorded, per channel: its
    gain over the best Gaussian against the steps (the rows ``asn2n run [--device D]
    --steps N`` and ``asn2n run (defaults)``, at the default's steps), then the wider
    network's rows (``--preset paper``) in a sentence of their own."""
    from asn2n_dask.config import TrainConfig

    runs: dict[tuple[int, str], list[tuple[int, dict]]] = {}
    for r in rows.values():
        m = re.fullmatch(r"asn2n run (?:--device (\S+) )?(?:--preset (\S+) )?--steps (\d+)", r["method"])
        if r["method"] == "asn2n run (defaults)":
            runs.setdefault((r["channel"], ""), []).append((TrainConfig().steps, r))
        elif m:
            runs.setdefault((r["channel"], m[2] or ""), []).append((int(m[3]), r))

    def where(r: dict) -> str:
        return f" on one {r['gpu']}" if r.get("gpu") else ""

    out, wider = [], []
    for (c, preset), points in sorted(runs.items()):
        gauss = rows.get(f"c{c} best Gaussian per image")
        if gauss is None or (not preset and len(points) < 2):
            continue
        g = gauss["scores"]["mean"]["psnr"]
        said = [f"{n} steps{where(r)} {signed(r['scores']['mean']['psnr'] - g)} ({wall(r):.0f} s"
                + (f", {r['scores']['mean']['false_obj']:.2f} false objects/Mpx)" if preset else ")")
                for n, r in sorted(points, key=lambda p: p[0])]
        (wider if preset else out).append(f"channel {c}" + (f" `--preset {preset}`" if preset else "") + ": "
                                          + ", ".join(said))
    if not out:
        return []
    lines = ["", "Training budget: the default command with `--steps N` (every other option at its default; "
             "`python benchmarks/realdata.py --stage default --steps N`, with `--run-options '--device cuda'` on a "
             "GPU), psnr against the best Gaussian, with the command's wall time: " + "; ".join(out) + "."]
    if wider:
        lines[-1] += (" A wider network, the same way (`--run-options '--device cuda --preset paper'`): "
                      + "; ".join(wider) + ".")
    return lines


def w2s_ceiling(rows: dict) -> list[str]:
    """The supervised ceiling against how many fields it learns from, per channel (its rows
    at the default network and steps, ``K folds``: each fold learns from the other K-1)."""
    from asn2n_dask.config import TrainConfig

    cfg = TrainConfig()
    per: dict[int, dict[int, dict]] = {}  # channel -> folds -> its best row at the default settings
    for r in rows.values():
        m = re.search(r", (\d+) folds", r["method"])
        if m and at_default_settings(r["method"], "supervised ceiling"):
            k, old = int(m[1]), per.setdefault(r["channel"], {}).get(int(m[1]))
            if old is None or r["scores"]["mean"]["psnr"] > old["scores"]["mean"]["psnr"]:
                per[r["channel"]][k] = r

    def learns_from(r: dict, k: int) -> str:  # the fields each fold's network learns from
        n = len(r["fields"])
        counts = sorted({n - (n // k + (i < n % k)) for i in range(k)})  # as numpy.array_split folds them
        return "-".join(map(str, counts))

    said = []
    for c, by_folds in sorted(per.items()):
        gauss = rows.get(f"c{c} best Gaussian per image")
        if gauss is None or len(by_folds) < 2:
            continue
        g = gauss["scores"]["mean"]["psnr"]
        psnr = {k: r["scores"]["mean"]["psnr"] for k, r in by_folds.items()}
        said.append(f"channel {c}: " + ", ".join(
            f"{learns_from(r, k)} fields {psnr[k]:.2f} dB ({signed(psnr[k] - g)})"
            for k, r in sorted(by_folds.items())))
    if not said:
        return []
    return ["", f"The supervised ceiling ({cfg.preset} network, {cfg.steps} steps) against the number of fields whose "
            "references it learns from, psnr and its gain over the best Gaussian: " + "; ".join(said) + ". It "
            "rises with the references it is given, so it bounds this network at this much data, not every "
            "denoiser; the default command learns from the 16 noisy frames alone."]


def w2s_tta(rows: dict) -> list[str]:
    """Test-time augmentation rows: a model the default command trained (at its default
    steps unless the row says otherwise), each number of copies and what the network saw."""
    from asn2n_dask.config import TrainConfig

    keys = sorted((k for k, r in rows.items() if r.get("method", "").startswith("tta ")),
                  key=lambda k: (rows[k]["channel"], rows[k].get("model_steps", TrainConfig().steps), rows[k]["tta"],
                                 rows[k].get("infer_on", "twins")))
    if not keys:
        return []
    out = ["", "Test-time augmentation (`--tta N`: the network averaged over N flipped/rotated copies of each "
           "tile) and what the network is applied to (`--infer-on`: the tile's two twins, the default, or the raw "
           "tile): a model the default command trained, on every field (`python benchmarks/realdata.py "
           "--stage tta`). `wall s`: denoising only.", "",
           "| channel | model's steps | copies | network on | psnr | psnr_raw | ssim | false objects /Mpx | wall s "
           "| commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        r = quoted(rows, k, "realdata")
        m = r["scores"]["mean"]
        out.append(f"| {r['channel']} | {r.get('model_steps', TrainConfig().steps)} | {r['tta']} | "
                   f"{r.get('infer_on', 'twins')} | {m['psnr']:.2f} | {m['psnr_raw']:.2f} | {m['ssim']:.3f} | "
                   f"{m['false_obj']:.2f} | {wall(r):.0f} | {commit(r)} |")
    return out


def w2s_blend(rows: dict) -> list[str]:
    """Blend rows of the real-data record: the channel's default model, each blend at each tile side."""
    keys = [k for k, r in rows.items() if r.get("method", "").startswith("blend ") and r.get("commit")]
    if not keys:
        return []
    out: list[str] = []
    for c in sorted({rows[k]["channel"] for k in keys}):
        mine = {(rows[k]["blend"], rows[k]["tile"]): quoted(rows, k, "realdata") for k in keys
                if rows[k]["channel"] == c}
        first = next(iter(mine.values()))
        out += ["", f"Blending, channel {c}: the model the default command trained at the commit shown, on the first "
                f"{len(first['fields'])} fields, "
                "tiles of each side at 50% overlap, each blend (`python benchmarks/realdata.py --stage blend`; psnr is "
                "the mean over those fields only). "
                "`none` takes each pixel from the one tile whose core holds it. `seam`: mean gradient across the "
                "tile grid's lines over the mean elsewhere (1.0: no seams). Each cell: psnr / seam.", "",
                "| tile side | `gaussian` | `uniform` | `none` | commit |", "|---|---|---|---|---|"]
        for side in sorted({t for _, t in mine}):
            cells = [f"{mine[b, side]['scores']['mean']['psnr']:.2f} / {mine[b, side]['seam']:.3f}"
                     if (b, side) in mine else "" for b in ("gaussian", "uniform", "none")]
            out.append(f"| {side} | " + " | ".join(cells) + f" | {commit(first)} |")
    return out


def recorded(rows: dict, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (label, key) pairs whose row exists and records its commit."""
    return [(label, k) for label, k in keys if k in rows and rows[k].get("commit")]


def score_cells(r: dict) -> str:
    """psnr, psnr_raw, ssim and false objects of a quality row, as table cells."""
    return f"{r['psnr']:.2f} | {r['psnr_raw']:.2f} | {r['ssim']:.3f} | {r['false_obj']:.2f}"


def secs(r: dict) -> str:
    return f"{wall(r):.0f}" if wall(r) > 1 else "<1"


#: The default command's row on the whole 5-photon frame, and the one recorded under the earlier default.
P5_DEFAULT = "p5 default command (whole 2048x2048 frame 1)"
P5_ADAPTIVE = "p5 default command, adaptive then (whole 2048x2048 frame 1)"


def p5_section(rows: dict) -> list[str]:
    keys = [("noisy input", "p5 noisy input (whole frame 1)"),
            ("best Gaussian filter (sigma by psnr)", "p5 best Gaussian (whole frame 1)"),
            ("`asn2n run noisy.tif -o out.tif`, default then (`adaptive`)", P5_ADAPTIVE),
            ("`asn2n run noisy.tif -o out.tif`", P5_DEFAULT)]
    present = recorded(rows, keys)
    if not present:
        return []
    out = ["### One whole 2048x2048 frame at 5 photons (simulated)", "",
           "Frame 1 of `simulate.py sim2d` at 5 photons, scored on the whole frame (`python benchmarks/quality.py "
           "--stage reference default`). The default command runs with no options at all; its wall time covers "
           "training, the statistics and denoising. `seam`: mean gradient across the tile grid's lines over the "
           "mean elsewhere (1.0: no seams).", "",
           "| method | psnr | psnr_raw | ssim | false objects /Mpx | seam | wall s | machine | commit |",
           "|---|---|---|---|---|---|---|---|---|"]
    for label, k in present:
        r = quoted(rows, k, "quality")
        seam = f"{r['seam']:.3f}" if r.get("seam") is not None else ""
        out.append(f"| {label} | {score_cells(r)} | {seam} | {secs(r)} | {machine(r)} | {commit(r)} |")
    if P5_DEFAULT not in dict(present).values():
        out += ["", "The default command is not yet recorded at a commit."]
    elif rows[P5_DEFAULT].get("seam") is not None and (keys[1][1] in rows):
        d, g = rows[P5_DEFAULT], rows[keys[1][1]]
        checks = [(f"psnr at least {P5_MIN_PSNR:g} dB", d["psnr"] >= P5_MIN_PSNR),
                  ("psnr_raw within 1 dB of psnr", abs(d["psnr"] - d["psnr_raw"]) <= 1.0),
                  (f"seam ratio at most {P5_MAX_SEAM:g}", d["seam"] <= P5_MAX_SEAM),
                  ("no more false objects than the Gaussian", d["false_obj"] <= g["false_obj"])]
        out += ["", "The default command against the targets: " + "; ".join(
            f"{what}: {'met' if ok else 'not met'}" for what, ok in checks) + "."]
        then = rows.get(P5_ADAPTIVE)
        if then and then.get("commit") and d.get("norm"):
            acted = ("so `adaptive` moved safe patches towards their own range" if d["dataset_mode"] == "local"
                     else "so `adaptive` gave every patch the global scale")
            out += ["", f"The normalisation at the two commits: `{d['norm']['mode']}` today, `adaptive` at "
                    f"`{then['commit']}` (the frame's dataset decision `{d['dataset_mode']}`, "
                    f"{d['high_risk_ratio']:.0%} of patches at risk, {acted}); the other changes between "
                    "them are in options off by default and in the 3-D routes. Today's default against it: "
                    f"{signed(d['psnr'] - then['psnr'])} psnr, {d['false_obj'] - then['false_obj']:+.2f} false "
                    "objects per Mpx."]
    return out


def acts_as_default(row: dict, default: dict) -> bool:
    """Normalised as today's default would: the same options, or options that differ only where
    they cannot act. Under ``global`` the adaptive rule's own options (``adaptive_floor``,
    ``adaptive_weight``) are unused; ``adaptive`` with a floor of 1 on data the dataset rule
    called high-risk gives every patch the global scale, so it is ``global`` there exactly."""
    norm = row.get("norm") or {}
    if norm == default:
        return True
    if not norm or default.get("mode") != "global":
        return False
    inert = {"adaptive_floor", "adaptive_weight"}
    differs = {k for k in set(norm) | set(default) if norm.get(k) != default.get(k)}
    if norm.get("mode") == "global":
        return differs <= inert
    return (norm.get("mode") == "adaptive" and norm.get("adaptive_floor") == 1.0
            and row.get("dataset_mode") == "global" and differs <= inert | {"mode"})


def dense_section(rows: dict) -> list[str]:
    """The normalisation modes on the dense simulated crops (``quality.py --stage dense-modes``)."""
    keys = sorted((k for k in rows if re.match(r"p\d+ dense ", k) and rows[k].get("commit")),
                  key=lambda k: (rows[k]["peak"], rows[k]["steps"], rows[k]["norm"]["mode"] != "global", k))
    if not keys:
        return []
    first = quoted(rows, keys[0], "quality")
    out = ["### Normalisation modes on dense frames (simulated)", "",
           f"The central {first['crop']}x{first['crop']} crops of the {first['frames']} `simulate.py sim2d` frames "
           "at each photon level, filaments over the whole field: one model per row trained on them, with the "
           "same steps and seed and every other option at its default, scored on the same crops "
           f"(`{first['command']}`). `at risk`: the share of "
           "64x64 patches the risk rule flags; above a tenth the dataset rule decides `global`, and `adaptive` "
           "is `global` there.", "",
           "| photons | normalisation | steps | at risk | psnr | psnr_raw | ssim | false objects /Mpx | wall s | "
           "commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        r = quoted(rows, k, "quality")
        out.append(f"| {r['peak']} | {r['norm']['mode']} | {r['steps']} | {r['high_risk_ratio']:.0%} | "
                   f"{score_cells(r)} | {secs(r)} | {commit(r)} |")
    notes = []
    for peak, steps in sorted({(rows[k]["peak"], rows[k]["steps"]) for k in keys}):
        by_mode = {rows[k]["norm"]["mode"]: rows[k] for k in keys
                   if rows[k]["peak"] == peak and rows[k]["steps"] == steps}
        if "global" in by_mode and "adaptive" in by_mode:
            a, g = by_mode["adaptive"], by_mode["global"]
            notes.append(f"{peak} photons: {signed(a['psnr'] - g['psnr'])}, {a['false_obj'] - g['false_obj']:+.2f} "
                         "false objects per Mpx")
    if notes:
        out += ["", "`adaptive` against `global`: " + "; ".join(notes) + "."]
    out += ["", "`wall s` is what each run took on a machine it may have shared with other benchmarks; the modes "
            "train the same network for the same steps, so the column does not compare their speed."]
    return out


def mixed_section(rows: dict) -> list[str]:
    from asn2n_dask.config import NormConfig, TrainConfig

    weight = TrainConfig().consistency
    keys = sorted((k for k in rows if k.startswith("mixed ")),
                  key=lambda k: (rows[k]["consistency"] != weight, k.split(" (")[0].split(" seed ")[0],
                                 rows[k].get("seed", 0)))
    if not keys:
        return []
    default = NormConfig().to_dict()
    out = ["### Normalisation modes on a mixed scene (simulated)", "",
           "Three 512x512 frames of `simulate.py mixed` (8 photons; dense filaments in half of each frame, dark "
           "background with a few puncta in the other), every row trained with the same frames, 300 steps and "
           "batch size, only the normalisation, the training seed and the consistency weight (0.5 was the default "
           f"until it was measured on real data; today's is {weight:g}) differing (`python benchmarks/quality.py "
           "--stage mixed`; `benchmarks/results/quality.md` defines the region scores). `+` after a commit: "
           "measured with uncommitted changes beside it.", "",
           "| normalisation | consistency | seed | psnr | dense-region psnr | false objects /Mpx, sparse region "
           "| false objects /Mpx, whole frame | wall s | commit |",
           "|---|---|---|---|---|---|---|---|---|"]

    def mode(k: str) -> str:
        return k.removeprefix("mixed ").split(" (")[0].split(" seed ")[0]

    today = [k for k in keys if rows[k]["consistency"] == weight]
    default_keys = [k for k in today if acts_as_default(rows[k], default)]
    for k in keys:
        r = quoted(rows, k, "quality")
        label = mode(k) + (" (today's default)" if k in default_keys else "")
        out.append(f"| {label} | {r['consistency']:g} | {r.get('seed', 0)} | {r['psnr']:.2f} | "
                   f"{r['dense_psnr']:.2f} | {r['sparse_false_obj']:.2f} | {r['false_obj']:.2f} | {wall(r):.0f} | "
                   f"{commit(r)} |")
    # the adaptive rule as it is offered (`--norm adaptive`, its other options at their defaults)
    offered = {**default, "mode": "adaptive"}
    adaptive = [k for k in today if (rows[k].get("norm") or {}) == offered]
    seeds = sorted({rows[k].get("seed", 0) for k in default_keys} & {rows[k].get("seed", 0) for k in adaptive})
    if seeds:
        def mean(ks: list[str], key: str) -> float:
            return sum(rows[k][key] for k in ks if rows[k].get("seed", 0) in seeds) / len(seeds)

        a = {key: mean(adaptive, key) for key in ("psnr", "dense_psnr", "sparse_false_obj", "false_obj")}
        d = {key: mean(default_keys, key) for key in a}
        out += ["", f"At today's consistency weight, over seed{'s' if len(seeds) > 1 else ''} "
                f"{', '.join(map(str, seeds))}, `--norm adaptive` against the default (`{default['mode']}`): "
                f"{signed(a['psnr'] - d['psnr'])} on the whole frame, "
                f"{signed(a['dense_psnr'] - d['dense_psnr'])} in the dense region, "
                f"{a['sparse_false_obj'] - d['sparse_false_obj']:+.2f} false objects per Mpx in the sparse region "
                f"and {a['false_obj'] - d['false_obj']:+.2f} over the whole frame."]
    return out


def sparse_section(rows: dict) -> list[str]:
    keys = [("best Gaussian filter", "sparse best Gaussian"),
            ("`global`, consistency 0.5 (then the default)", "sparse global gaussian twins"),
            ("every option at its default then (consistency 0.5)", "sparse default (consistency 0.5)"),
            ("every option at its default then (`adaptive`)", "sparse default (adaptive)"),
            ("every option at its default", "sparse default")]
    present = recorded(rows, keys)
    if not present:
        return []
    out = ["### Sparse objects on a dark background (simulated)", "",
           "Channel 1 of one 1024x1024 `simulate.py timelapse` frame, 400 training steps (`python "
           "benchmarks/quality.py --stage baselines`, `--stage sparse --sparse-modes global --sparse-steps 400`, "
           "`--stage sparse-default --sparse-steps 400`).", "",
           "| method | psnr | psnr_raw | ssim | false objects /Mpx | wall s | commit |",
           "|---|---|---|---|---|---|---|"]
    for label, k in present:
        r = quoted(rows, k, "quality")
        out.append(f"| {label} | {score_cells(r)} | {secs(r)} | {commit(r)} |")
    check = rows.get("sparse same-norm")
    if check and check.get("commit"):
        r = quoted(rows, "sparse same-norm", "quality")
        same = ("the same to the bit" if r["max_abs_diff"] == 0
                else f"largest difference {r['max_abs_diff']:.3g} in input units")
        out += ["", f"`--norm adaptive` against `--norm global` on this frame, {r['steps']} steps each, alike in "
                f"everything else (`{r['command']}`, at {commit(r)}): {r['high_risk_ratio']:.0%} of patches at "
                f"risk, dataset decision `{r['dataset_mode']}`, outputs {same}."]
        if r["max_abs_diff"] == 0:
            out += ["", "So the two defaults normalise this frame alike; what differs between their rows comes from "
                    "the runs: other commits and torch thread counts (`threads` in the records where a row has it; "
                    "the thread count changes the order of float sums in training)."]
    return out


def blend_section(rows: dict) -> list[str]:
    keys = [k for k in rows if k.startswith("p5 blend ") and rows[k].get("commit")]
    if not keys:
        return []
    sides = sorted({rows[k]["tile"] for k in keys})
    blends = ("gaussian", "uniform", "none")
    first = quoted(rows, keys[0], "quality")
    out = ["### Blending tiles", "",
           f"The default command's model on the central {first['crop']}x{first['crop']} crop of that frame, denoised "
           "with tiles of each side at 50% overlap and each blend, normalised on the whole frame's statistics as the "
           "default command normalised it (`python benchmarks/quality.py --stage blend`). "
           "`none` takes each pixel from the one tile whose core holds it; `seam` as above (1.0: no seams). Each "
           "cell: psnr / seam.", "",
           "| tile side | " + " | ".join(f"`{b}`" for b in blends) + " | commit |",
           "|---|" + "---|" * (len(blends) + 1)]
    for side in sides:
        cells, mine = [], [k for k in keys if rows[k]["tile"] == side]
        for b in blends:
            k = f"p5 blend {b} tile {side}"
            cells.append(f"{rows[k]['psnr']:.2f} / {rows[k]['seam']:.3f}" if k in keys else "")
        out.append(f"| {side} | " + " | ".join(cells) + f" | {commit(quoted(rows, mine[0], 'quality'))} |")
    worst = {b: max((rows[k]["seam"] for k in keys if rows[k]["blend"] == b), default=float("nan")) for b in blends}
    out += ["", "Largest seam ratio over these tile sides: " + ", ".join(f"`{b}` {worst[b]:.3f}" for b in blends)
            + "."]
    return out


def transfer_section(rows: dict) -> list[str]:
    keys = sorted((k for k in rows if k.startswith("p5 transfer frame ") and rows[k].get("commit")),
                  key=lambda k: (rows[k]["frame"], rows[k]["norm_range"] != "auto"))
    if not keys:
        return []
    out = ["### One model, more frames: the normalisation range", "",
           "The default command's model (trained on frame 1 above) applied by `asn2n denoise` to frames 2 and 3 of "
           "the same simulation, whole frames (`python benchmarks/quality.py --stage transfer`). A range is the "
           "minimum to the 99.99th percentile, in ADU. `--norm-range auto` (the default) normalises a frame on the "
           "model's training range when the two ranges agree; `data` on the frame's own, as every version before "
           "this option did.", "",
           "| frame | `--norm-range` | frame's range | range used | psnr | psnr_raw | ssim | false objects /Mpx "
           "| wall s | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        r = quoted(rows, k, "quality")
        own, trained = r["frame_range"], r["model_range"]
        used = trained if r["norm_range"] != "data" else own
        out.append(f"| {r['frame']} | `{r['norm_range']}` | {own[0]:.0f}-{own[1]:.0f} | {used[0]:.0f}-{used[1]:.0f} "
                   f"| {score_cells(r)} | {secs(r)} | {commit(r)} |")
    drift = sorted((k for k in rows if k.startswith("p5 drift ") and rows[k].get("commit")),
                   key=lambda k: rows[k]["drift_adu"])
    if drift:
        zero = next((rows[k] for k in drift if rows[k]["drift_adu"] == 0), None)
        first = quoted(rows, drift[0], "quality")
        out += ["", f"Not fixed: the network depends on where intensities sit in its range. The same model on the "
                f"central {first['crop']}x{first['crop']} crop of frame 2 with a constant added, as if the camera "
                "offset had drifted, normalised on the training range (`python benchmarks/quality.py --stage "
                f"drift`, at {commit(first)}):", "",
                "| drift (ADU) | psnr | psnr_raw | change in psnr |", "|---|---|---|---|"]
        for k in drift:
            r = rows[k]
            change = signed(r["psnr"] - zero["psnr"]) if zero is not None else ""
            out.append(f"| {r['drift_adu']:+g} | {r['psnr']:.2f} | {r['psnr_raw']:.2f} | {change} |")
    jit = [k for k in rows if k.startswith("p5 jitter ") and rows[k].get("commit")]
    if jit:
        values = sorted({rows[k]["offset_jitter"] for k in jit})
        drifts = sorted({rows[k]["drift_adu"] for k in jit})
        first = quoted(rows, jit[0], "quality")
        # rows that do not record their normalisation were trained before the default became global
        norm = (first.get("norm") or {}).get("mode")
        norm = f"`{norm}`" if norm else "`adaptive`, the default then"
        out += ["", "Training with a random offset per patch, the same for its twin (`--offset-jitter J`, a fraction "
                "of the range; off by default), against that drift: models trained on the central "
                f"{first['crop']}x{first['crop']} crop of frame 1 ({first['steps']} steps, preset small, "
                f"normalisation {norm}), applied "
                f"to frame 2's as above (`python benchmarks/quality.py --stage jitter --jitter-values J`, at "
                f"{commit(first)}). psnr:", "",
                "| drift (ADU) | " + " | ".join(f"J = {v:g}" for v in values) + " |", "|---|" + "---|" * len(values)]
        for d in drifts:
            cells = [rows.get(f"p5 jitter {v:g} drift {d:+g} ADU") for v in values]
            out.append(f"| {d:+g} | " + " | ".join(f"{c['psnr']:.2f}" if c else "" for c in cells) + " |")
    return out


def scale_section(rows: dict) -> list[str]:
    """The 1 TB plan and the statistics pass (``benchmarks/pipeline.py``), rows with provenance only."""
    out: list[str] = []
    dry = [k for k in ("dry run 1 TB", "dry run 1 TB chunks 2048x2048") if k in rows and rows[k].get("commit")]
    stats = [k for k in ("stats one pass, in process", "stats two passes (as int32), in process",
                         "stats one pass, warm 1x2 cluster", "stats reading the store alone, in process")
             if k in rows and rows[k].get("commit")]
    if not dry and not stats:
        return out
    out += ["### Planning 1 TB and the statistics pass (CPU)", ""]
    if dry:
        out += ["`asn2n denoise STORE -o OUT.zarr --model M --dry-run` from the command line on a 1 TB store of "
                "metadata only ((1000, 2, 16384, 16384) uint16, no chunk written; `python benchmarks/pipeline.py "
                "--stage dryrun`): the whole command, Python start-up included, and its peak resident memory.", "",
                "| output chunks | tasks | seconds | peak RSS MiB | commit |", "|---|---|---|---|---|"]
        for k in dry:
            r = quoted(rows, k, "pipeline")
            oc = r["output_chunks"]
            label = "default (the input's)" if oc == "default" else "x".join(map(str, oc))
            out.append(f"| {label} | {r['tasks']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {commit(r)} |")
    if stats:
        out += ["", "The statistics pass on a (16, 2, 2048, 2048) uint16 store (`python benchmarks/pipeline.py "
                "--stage stats --shape 16 2 2048 2048`): one pass counting every value (exact percentiles), against "
                "the earlier two passes (range, then histogram) and against reading the store alone. A rerun of a "
                "finished output on an unchanged input skips the pass, and `asn2n run` makes it once for training "
                "and denoising.", "",
                "| run | seconds | MB/s | commit |", "|---|---|---|---|"]
        for k in stats:
            r = quoted(rows, k, "pipeline")
            out.append(f"| {k} | {r['seconds']:.2f} | {r['mb_s']:.0f} | {commit(r)} |")
    return out


def training_budget(r: dict, what: str = "") -> str:
    """A volume row's training budget: CPU seconds (and threads, where more than one), or
    wall seconds on its GPU; ``what`` follows the seconds (`` of training``)."""
    if r.get("device", "cpu") == "cpu":
        threads = r.get("threads", 1)
        return f"{r['train_cpu_seconds']:.0f} CPU s{what}" + (f" on {threads} threads" if threads != 1 else "")
    return f"{r['train_seconds']:.0f} s{what} on one {r.get('gpu', r['device'])}"


def volume_section(rows: dict) -> list[str]:
    """3-D against per-plane 2-D on ``simulate.py sim3d`` (``benchmarks/volume.py``)."""
    labels = [("noisy input", "noisy"), ("best 3-D Gaussian filter (sigmas by error against the truth)", "gaussian"),
              ("per-plane 2-D, every other option at its default", "dims2"), ("3-D U-Net (`small3d`)", "dims3")]
    def single(k: str) -> str:  # a row without its pair at the same budget
        kind = "3-D U-Net (`small3d`)" if k.startswith("dims3") else "per-plane 2-D"
        other = ("dims2 " if k.startswith("dims3") else "dims3 ") + k.split(" ", 1)[1]
        alone = "" if other in rows else ", no run of the other kind at this budget"
        return f"{kind}, {training_budget(rows[k], ' of training')}{alone}"

    labels += [(single(k), k) for k in sorted(rows) if k.startswith(("dims2 ", "dims3 "))]
    # per-plane rows that do not record their normalisation were trained when the default was adaptive
    labels = [(label + (" (normalisation `adaptive`, the default then)" if k.startswith("dims2") and k in rows
                        and "norm" not in rows[k] else ""), k) for label, k in labels]
    present = [(label, k) for label, k in labels if k in rows and rows[k].get("commit")]
    if not present:
        return []
    out = ["### Volumes: 3-D against per-plane 2-D (simulated)", "",
           "`simulate.py sim3d` at its default size: two time points of a 48x256x256 volume at 5 photons, Z voxel "
           "0.15 um against 0.1 um in Y-X, scored slice by slice with the shared scorer and averaged (`python "
           "benchmarks/volume.py`). The two networks of a pair get the same training budget in CPU seconds on one "
           "thread, or in wall seconds on one GPU, where the two train at the same time (`bash "
           "benchmarks/gpu_quality.sh`); each gets its own number of steps. `train s` is each one's "
           "training wall time, `wall s` the row's "
           "(training, inference and scoring). Library calls, with the training and tiling of `asn2n run --dims "
           "3`.", "",
           "| method | psnr | psnr_raw | ssim | false objects /Mpx | steps | train s | wall s | commit |",
           "|---|---|---|---|---|---|---|---|---|"]
    for label, k in present:
        r = quoted(rows, k, "volume")
        m = r["scores"]["mean"]
        train = f"{r['train_seconds']:.0f}" if "train_seconds" in r else ""
        out.append(f"| {label} | {m['psnr']:.2f} | {m['psnr_raw']:.2f} | {m['ssim']:.3f} | {m['false_obj']:.2f} | "
                   f"{r.get('steps', '')} | {train} | {wall(r):.0f} | {commit(r)} |")
    if "dims3" in rows and "dims2" in rows and "gaussian" in rows:
        g = rows["gaussian"]["scores"]["mean"]
        pairs = [("dims3", "dims2")] + [(k, "dims2 " + k.split(" ", 1)[1]) for k in sorted(rows)
                                         if k.startswith("dims3 ") and "dims2 " + k.split(" ", 1)[1] in rows]
        pairs.sort(key=lambda p: (rows[p[0]].get("device", "cpu") != "cpu", rows[p[0]]["train_cpu_seconds"]))
        out.append("")
        fewer = True
        for k3, k2 in pairs:
            e3, e2 = rows[k3], rows[k2]
            m3, m2 = e3["scores"]["mean"], e2["scores"]["mean"]
            psnr_met = m3["psnr"] - m2["psnr"] >= 0.5 and m3["psnr"] - g["psnr"] >= 1.5
            fewer = fewer and m3["false_obj"] <= m2["false_obj"]
            verdict = ("met" if psnr_met and m3["false_obj"] <= m2["false_obj"] else
                       "psnr met, false objects not" if psnr_met else "not met")
            out.append(f"- With {training_budget(e3)} (3-D) and {training_budget(e2)} (2-D) "
                       f"of training: 3-D against per-plane 2-D {signed(m3['psnr'] - m2['psnr'])}, against "
                       f"the best 3-D Gaussian {signed(m3['psnr'] - g['psnr'])}; false objects per Mpx "
                       f"{m3['false_obj']:.2f} (2-D {m2['false_obj']:.2f}). The targets (+0.5 dB over 2-D, +1.5 dB "
                       f"over the Gaussian, no more false objects than 2-D): {verdict}.")
        for k3, k2 in pairs:
            e3, e2 = rows[k3], rows[k2]
            if e3.get("device", "cpu") != "cpu" and "voxels" in e3 and "voxels" in e2:
                out += ["", f"Inference on one {e3['gpu']}, the trained networks on the {e3['voxels']:,} voxels of "
                        "the two volumes in memory (library calls: tiles, twins and Gaussian blending included, no "
                        f"reading or writing): 3-D {e3['voxels'] / e3['infer_seconds'] / 1e6:.1f} M voxels/s, "
                        f"per-plane 2-D {e2['voxels'] / e2['infer_seconds'] / 1e6:.1f} M voxels/s."]
        z = rows.get("zleak")
        if z and z.get("commit"):
            parts = []
            for k, v in z["rows"].items():
                kind = "3-D U-Net" if k.startswith("dims3") else "per-plane 2-D"
                parts.append(f"of the {kind}'s {v['false_objects']} ({training_budget(rows[k])}), "
                             f"{v['near_next_slices']} ({v['near_next_slices'] / max(v['false_objects'], 1):.0%})")
            out += ["", f"Where the false objects lie (`{z['command']}`, at {commit(z)}): " + "; ".join(parts)
                    + " lie within a pixel of true structure in the next slice up or down, where "
                    f"{z['background_near_next_slices']:.1%} of the true background lies. The 3-D network's false "
                    "objects are real structure carried into the neighbouring slices (it resolves less along Z than "
                    "the truth holds), not objects made up in empty background.", "",
                    "![False objects per Mpx, slice by slice, for each method of the table]"
                    "(benchmarks/results/volume-false-objects.png)"]
        out += ["", "Per-plane 2-D stays the default (`--dims 2`)"
                + (": at every budget where both were trained 3-D left more false objects than 2-D." if not fewer
                   else ".")]
    if "zchunks" in rows and rows["zchunks"].get("commit"):
        r = quoted(rows, "zchunks", "volume")
        runs = sorted(r["runs"].values(), key=lambda v: v["depth"])
        out += ["", f"Memory against depth: {r['method']} (`{r['command']}`); `voxels/s` over the whole command, "
                "start-up, statistics and cluster included; peak resident memory summed over the command's "
                "processes (client, scheduler, worker: libraries they share count in each).", "",
                "| depth | Z chunks | seconds | voxels/s | peak RSS MiB | commit |", "|---|---|---|---|---|---|"]
        for v in runs:
            out.append(f"| {v['depth']} | {v['z_chunks']} | {v['seconds']:.0f} | {v['voxels_per_s']:.0f} | "
                       f"{v['peak_rss_mib']:.0f} | {commit(r)} |")
        first, last = runs[0], runs[-1]
        out += ["", f"From {first['z_chunks']} to {last['z_chunks']} Z chunks the peak memory changed by "
                f"{signed(100 * (last['peak_rss_mib'] / first['peak_rss_mib'] - 1), '%')}."]
    return out


def render() -> str:
    quality, realdata, pipeline = load("quality"), load("realdata"), load("pipeline")
    parts = [["Every figure in this section is rendered from the records in `benchmarks/results/` by `python "
              "benchmarks/readme.py`, and only from rows that record their command, commit, machine and wall "
              "time (`wall s`: the training time where only that was recorded); a test fails when the two differ. "
              "Machine: 2 CPU cores, shared with other jobs while these ran, unless a row says otherwise."]]
    parts += [s for s in (realdata_section(realdata), p5_section(quality), transfer_section(quality),
                          blend_section(quality), sparse_section(quality), dense_section(quality),
                          mixed_section(quality), volume_section(load("volume")), scale_section(pipeline)) if s]
    parts.append(["### Not quoted here", "",
                  "GPU throughput (`benchmarks/results/gpu.md`), pipeline overhead and memory "
                  "(`pipeline.md`), training speed (`training.md`) and the older quality rows (`quality.md`) were "
                  "recorded before every row carried its commit, command and machine; they are quoted here again "
                  "once regenerated."])
    return "\n\n".join("\n".join(p) for p in parts)


def readme_block(text: str) -> str:
    """The section between the markers in ``text`` (without them)."""
    if BEGIN not in text or END not in text:
        raise RecordError("README.md lacks the measured section's markers")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the records")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    text = README.read_text()
    block = render()
    if args.check:
        same = readme_block(text) == block
        print("README.md matches the records" if same else "README.md differs from the records: run "
              "python benchmarks/readme.py")
        return 0 if same else 1
    head, rest = text.split(BEGIN, 1)
    README.write_text(head + BEGIN + "\n" + block + "\n" + END + rest.split(END, 1)[1])
    print("README.md: measured section rendered")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
