#!/usr/bin/env python3
"""Reliability record: the faults and hostile inputs, each run by its test, and a load test.

    python benchmarks/reliability.py [--datasets 50]
    python benchmarks/reliability.py --report      # reliability.md again from reliability.json

The fault rows are run (one pytest process over the tests named in :data:`FAULTS`) and
their outcomes read from its JUnit report: the table says what happened at the commit
the record names, not what was meant to.

The load test submits N small datasets back to back to ONE embedded cluster (2 worker
processes) through the Python API, checks every output against the in-memory result,
and compares the memory of all processes before and after.  Writes
``benchmarks/results/reliability.json`` (commit, command, machine, wall time, every row)
and ``reliability.md`` rendered from it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: The faults and hostile inputs tried, each by one test (or a test file): what is done to
#: the package and what must happen.  The record runs them and writes what happened.
FAULTS: list[tuple[str, str, str]] = [
    ("worker process killed with SIGKILL mid-run; then the whole run killed and run again",
     "tests/test_pipeline.py::test_a_killed_worker_and_a_killed_run_end_identical_to_an_uninterrupted_run",
     "the run finishes / resumes; output byte-identical to a clean run"),
    ("Ctrl-C (SIGINT to the process group) and SIGTERM to the command mid-run",
     "tests/test_trust.py::test_a_stopped_run_says_one_line_leaves_no_worker_and_resumes_identically",
     "one line, exit 130 / 143, no worker left; the same command resumes to a byte-identical output"),
    ("output disk full mid-run (ENOSPC on write)",
     "tests/test_pipeline.py::test_a_full_disk_stops_with_one_sentence_keeps_true_records_and_resumes_identically",
     "one sentence, exit 2; records stay true; resume identical"),
    ("output chunk changed behind its record",
     "tests/test_pipeline.py::test_a_damaged_chunk_is_detected_and_recomputed",
     "checksum mismatch found on resume; that chunk recomputed"),
    ("output chunk file truncated", "tests/test_pipeline.py::test_a_truncated_chunk_file_is_detected_and_recomputed",
     "unreadable chunk found on resume; recomputed"),
    ("input pixels changed between runs",
     "tests/test_pipeline.py::test_a_changed_input_is_not_mixed_into_an_unfinished_run",
     "resume refused with one sentence"),
    ("two time points of the input swapped between runs (same shape and histogram)",
     "tests/test_trust.py::test_a_changed_order_of_frames_is_caught_when_resuming",
     "the content digest of the statistics pass differs: resume refused, output untouched"),
    ("two runs started at once on one output",
     "tests/test_trust.py::test_two_runs_started_together_on_one_output_leave_one_complete_correct_output",
     "one runs, the other is refused in one sentence; the output equals a run made alone"),
    ("a second run while the first holds the output; the holder killed with SIGKILL",
     "tests/test_trust.py::test_a_second_run_on_the_same_output_is_refused_and_a_dead_holder_never_blocks",
     "refused naming the holder's pid and host; a dead holder's lock never blocks"),
    ("--overwrite aimed at a folder, a Zarr store or a link that is not ours",
     "tests/test_trust.py::test_overwrite_never_deletes_what_is_not_ours", "refused; every byte kept"),
    ("outputs (.tif, .zarr, model directory) inside the input",
     "tests/test_trust.py::test_outputs_inside_the_input_are_refused_and_the_input_is_untouched",
     "refused; input byte-identical"),
    ("the .tif and .zarr routes on one channel and time selection of a named two-channel input",
     "tests/test_trust.py::test_tif_and_zarr_outputs_pick_the_same_network_and_statistics_for_a_selection",
     "the same numbers: one rule picks each channel's network and statistics"),
    ("two channels of one name; a model with two networks of one name",
     "tests/test_trust.py::test_two_channels_of_one_name_never_share_a_network", "refused in one sentence"),
    ("a model whose training did not finish",
     "tests/test_trust.py::test_an_unfinished_model_is_refused_unless_asked_for_and_says_how_far_it_got",
     "refused, saying how far it got, unless --allow-unfinished"),
    ("an error that is not one of the package's own; a read-only output folder",
     "tests/test_trust.py::test_a_read_only_folder_and_an_unexpected_error_are_one_sentence",
     "one sentence (the traceback in a log file), nothing written"),
    ("training crashed mid-way, resumed",
     "tests/test_fit_scale.py::test_a_crashed_training_resumed_equals_an_uninterrupted_one",
     "same weights and history as uninterrupted"),
    ("any dtype, 1-pixel sides, constants, NaN/Inf, extremes; odd input and output chunkings; values beyond "
     "what the arithmetic holds; option sizes beyond the frame; huge stores", "tests/test_hostile.py",
     "a correct result or one sentence; chunked equals in memory; a huge store's plan in seconds"),
    ("size claims in metadata, damaged and truncated chunks and TIFFs, malformed OME metadata, multi-series TIFF, "
     "axes that contradict the file", "tests/test_io.py", "one sentence, exit 2, before anything is allocated"),
    ("random shapes, dtypes, axes and chunkings through write and read; fuzzed model.json and OME metadata",
     "tests/test_properties.py", "a correct round trip, or one of the package's errors"),
    ("tampered weights, a pickle posing as weights, malformed model.json", "tests/test_checkpoint.py",
     "refused; weights never unpickled"),
    ("listening sockets of the embedded cluster; missing or unreachable schedulers; tiny memory limits; "
     "profiles that are not profiles", "tests/test_cluster.py",
     "loopback only by default; one sentence within seconds"),
    ("unsafe cluster profile values; TLS between batch jobs", "tests/test_hpc.py",
     "refused before any job script is written; a plain TCP client cannot join"),
    ("reports: failed mid-way, read-only folders, inside an input, over a folder that is not a report",
     "tests/test_report.py", "nothing half-written; one sentence; only our reports replaced"),
    ("bad command-line input: missing file, format, dtype, size, NaN, channel count, existing output, "
     "output = input", "tests/test_cli.py::test_bad_input_gets_one_sentence_exit_2_nothing_written",
     "one sentence, exit 2, nothing written"),
    ("a real one-node SLURM: worker jobs submitted through SLURMCluster by `asn2n denoise --cluster`",
     "tests/test_hpc.py::test_a_real_slurm_cluster_runs_the_pipeline",
     "equal to a run without a cluster (skipped where no SLURM node is idle)"),
]


def run_faults(timeout: int = 3600) -> tuple[list[dict], str]:
    """Run every fault's test once (one pytest process) and read each outcome from its
    JUnit XML report.  Returns the rows and the command."""
    import subprocess
    import xml.etree.ElementTree as ET

    ids = list(dict.fromkeys(t for _, t, _ in FAULTS))
    xml = Path(tempfile.mkdtemp(prefix="asn2n-faults-")) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *ids]
    subprocess.run(cmd, cwd=ROOT, timeout=timeout, check=False, stdout=subprocess.DEVNULL)
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        cases.append((path, case.get("name", ""), outcome, float(case.get("time", 0.0))))
    rows = []
    for fault, test, expected in FAULTS:
        path, _, name = test.partition("::")
        mine = [c for c in cases if c[0] == path and (not name or c[1].split("[")[0] == name)]
        if not mine:
            raise SystemExit(f"no test ran for {test!r}: the record is out of date")
        outcomes = {c[2] for c in mine}
        outcome = "failed" if "failed" in outcomes else "passed" if "passed" in outcomes else "skipped"
        rows.append({"fault": fault, "test": test, "expected": expected, "outcome": outcome, "cases": len(mine),
                     "seconds": round(sum(c[3] for c in mine), 1)})
    shutil.rmtree(xml.parent, ignore_errors=True)
    return rows, " ".join(["python -m pytest", *ids])


def rss_all(client: object) -> float:
    """Resident memory (GiB) of this process and every worker process."""
    import psutil

    workers = client.run(lambda: __import__("psutil").Process().memory_info().rss)  # type: ignore[attr-defined]
    return (psutil.Process().memory_info().rss + sum(workers.values())) / 1024**3


def load_test(n: int) -> dict:
    import zarr

    from asn2n_dask import InferConfig, TrainConfig, denoise, fit, save_model
    from asn2n_dask.cluster import dask_client
    from asn2n_dask.synthetic import noisy_frame

    tmp = Path(tempfile.mkdtemp(prefix="asn2n-load-"))
    try:
        frames = [np.stack([noisy_frame((64, 80), photons=8.0, seed=100 * i + t)[0] for t in range(2)])
                  for i in range(n)]
        model = fit(frames[0], axes="TYX", config=TrainConfig(preset="tiny", steps=3, patch=32, batch=2))
        save_model(model, tmp / "model")
        infer = InferConfig(tile=32)
        for i, f in enumerate(frames):
            z = zarr.create_array(str(tmp / f"in{i}.zarr"), shape=f.shape, chunks=(1, 32, 40), dtype=f.dtype,
                                  dimension_names=["t", "y", "x"])
            z[...] = f
        wrong, times = 0, []
        with dask_client(workers=2, threads=1, echo=lambda m: None, gpu=False) as (client, _):
            denoise(str(tmp / "in0.zarr"), str(tmp / "warm.zarr"), model=str(tmp / "model"), config=infer,
                    client=client)
            gc.collect()
            client.run(gc.collect)
            before = rss_all(client)
            peak = before
            for i, f in enumerate(frames):
                t0 = time.perf_counter()
                denoise(str(tmp / f"in{i}.zarr"), str(tmp / f"out{i}.zarr"), model=str(tmp / "model"),
                        config=infer, client=client)
                times.append(time.perf_counter() - t0)
                got = zarr.open_group(str(tmp / f"out{i}.zarr"), mode="r")["0"][...]
                want = denoise(f, model, axes="TYX", config=infer)
                wrong += int(not np.allclose(got, want, rtol=0, atol=1e-3))
                peak = max(peak, rss_all(client))
            gc.collect()
            client.run(gc.collect)
            after = rss_all(client)
        return {"datasets": n, "wrong": wrong, "rss_before_gib": before, "rss_after_gib": after,
                "rss_peak_gib": peak, "seconds_median": float(np.median(times)), "seconds_total": float(sum(times))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _machine() -> dict:
    import platform

    import psutil

    return {"host": platform.node(), "cpus": len(os.sched_getaffinity(0)), "memory_gib":
            round(psutil.virtual_memory().total / 1024**3, 1), "python": platform.python_version(),
            "platform": platform.platform()}


def _commit() -> dict:
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=int, default=50)
    ap.add_argument("--report", action="store_true", help="rewrite reliability.md from reliability.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.report:
        record = json.loads((RESULTS / "reliability.json").read_text())
    else:
        t0 = time.perf_counter()
        faults, fault_cmd = run_faults()
        t1 = time.perf_counter()
        load = load_test(args.datasets)
        record = {**_commit(), "command": f"python benchmarks/reliability.py --datasets {args.datasets}",
                  "machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "wall_seconds": round(time.perf_counter() - t0, 1), "faults_command": fault_cmd,
                  "faults_seconds": round(t1 - t0, 1), "faults": faults, "load": load}
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "reliability.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "reliability.md").write_text(render(record))
    bad = [f["test"] for f in record["faults"] if f["outcome"] == "failed"]
    print(f"wrote {RESULTS / 'reliability.md'}: {len(record['faults'])} faults, {len(bad)} failed, load test "
          f"{record['load']['wrong']} wrong of {record['load']['datasets']}")
    if bad:
        raise SystemExit(f"failed: {', '.join(bad)}")


def render(record: dict) -> str:
    """reliability.md from the record: every figure and outcome comes from the run."""
    row, m = record["load"], record["machine"]
    passed = sum(f["outcome"] == "passed" for f in record["faults"])
    lines = ["# Reliability record", "",
             f"Generated by `{record['command']}` at commit `{record['commit'][:12]}`"
             f"{' (with uncommitted changes)' if record['dirty'] else ''} on {record['date']}, "
             f"{m['cpus']} CPU cores, {m['memory_gib']} GiB, Python {m['python']}; {record['wall_seconds']:.0f} s "
             "in all.", "",
             f"## Faults and hostile inputs: {passed} of {len(record['faults'])} passed", "",
             "Each row is run by its test (all in one pytest process: "
             f"`{record['faults_command']}`, {record['faults_seconds']:.0f} s). Nothing lost means: the output is "
             "complete and equal to an uninterrupted run, or nothing was written and the input is untouched "
             "(each test compares bytes).", "",
             "| fault or input | what must happen | test | outcome |", "|---|---|---|---|"]
    lines += [f"| {f['fault']} | {f['expected']} | `{f['test']}` | {f['outcome']} ({f['cases']} case"
              f"{'s' if f['cases'] != 1 else ''}, {f['seconds']:.1f} s) |" for f in record["faults"]]
    lines += ["", "## Load test", "",
              f"{row['datasets']} small datasets (2 x 64 x 80 uint16 Zarr, tiny network) denoised back to back "
              "through `asn2n_dask.denoise(path, out, model=..., client=client)` on one embedded cluster (2 worker "
              "processes); each output compared with the in-memory result.", "",
              "| datasets | wrong outputs | RSS before GiB | RSS peak GiB | RSS after GiB | median s a dataset |",
              "|---|---|---|---|---|---|",
              f"| {row['datasets']} | {row['wrong']} | {row['rss_before_gib']:.2f} | {row['rss_peak_gib']:.2f} | "
              f"{row['rss_after_gib']:.2f} | {row['seconds_median']:.2f} |", "",
              "RSS: this process plus every worker process, after a warm-up run and a garbage collection.", "",
              "## Not tried here", "",
              "The real-SLURM test needs a SLURM node: `.ci/run` calls `.ci/slurm-up` (Debian's `slurm-wlm` and "
              "`munge` on localhost); where no node is idle the test is skipped and its row says so. PBS and LSF "
              "are checked as rendered job scripts only.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
