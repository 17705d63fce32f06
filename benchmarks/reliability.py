#!/usr/bin/env python3
"""Reliability record: the faults and bad inputs tried (by the test suite) and a load test.

    python benchmarks/reliability.py [--datasets 50]

The load test submits N small datasets back to back to ONE embedded cluster (2 worker
processes) through the Python API, checks every output against the in-memory result,
and compares the memory of all processes before and after.  Writes
``benchmarks/results/reliability.json`` and ``reliability.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: What the test suite does to the package, and what must happen (each row is a test).
FAULTS = [
    ("worker process killed with SIGKILL mid-run", "tests/test_pipeline.py::test_a_killed_worker_and_a_killed_run_"
     "end_identical_to_an_uninterrupted_run", "run finishes; output byte-identical to a clean run", "none"),
    ("whole run (client and scheduler) killed, then rerun", "same test", "resumes; byte-identical", "none"),
    ("output disk full mid-run (ENOSPC on write)", "tests/test_pipeline.py::test_a_full_disk_stops_with_one_sentence_"
     "keeps_true_records_and_resumes_identically", "one sentence, exit 2; records stay true; resume identical",
     "none"),
    ("output chunk changed behind a record", "tests/test_pipeline.py::test_a_damaged_chunk_is_detected_and_"
     "recomputed", "checksum mismatch found on resume; chunk recomputed", "none"),
    ("output chunk file truncated", "tests/test_pipeline.py::test_a_truncated_chunk_file_is_detected_and_"
     "recomputed", "unreadable chunk found on resume; recomputed", "none"),
    ("input changed between runs", "tests/test_pipeline.py::test_a_changed_input_is_not_mixed_into_an_unfinished_run",
     "resume refused with one sentence", "none"),
    ("training crashed mid-way, resumed", "tests/test_fit_scale.py::test_a_crashed_training_resumed_equals_an_"
     "uninterrupted_one", "same weights and history as uninterrupted", "none"),
    ("any dtype (uint8..64, int, float16..64, bool), 1-pixel sides, 1x300 frames, constants, NaN/Inf, extremes",
     "tests/test_hostile.py (hypothesis, 80 cases a run)", "correct result, or one sentence for bool, "
     "under 4x4, NaN/Inf", "none"),
    ("odd input and output chunkings, dtypes", "tests/test_hostile.py::test_any_zarr_chunking_gives_the_in_memory_"
     "result", "equal to the in-memory result; input untouched", "none"),
    ("tampered weights, a pickle posing as weights, malformed model.json", "tests/test_checkpoint.py",
     "refused; weights never unpickled", "none"),
    ("unsafe cluster profile values (spaces, ;, $( ), backticks, newlines)", "tests/test_hpc.py",
     "refused with one sentence before any job script is written", "none"),
    ("file names with a space and ';' through the batch script", "tests/test_hpc.py::test_sbatch_script_runs_a_"
     "scheduler_and_two_workers_and_quotes_file_names", "passed through quoted; nothing injected", "none"),
    ("malformed Zarr / OME-Zarr metadata (broken zarr.json, unknown node type, empty or dangling datasets, axes "
     "that do not fit, a non-numeric scale, a missing level array)", "tests/test_io.py::test_malformed_zarr_and_ome_"
     "metadata_is_refused_in_one_sentence", "one sentence, exit 2 (unreadable channel names are ignored)", "none"),
    ("input chunks missing from the store", "tests/test_pipeline.py::test_missing_input_chunks_are_read_as_the_fill_"
     "value_said_and_recorded", "read as the fill value (zarr's rule), said on the console and recorded in the "
     "output's attributes; result equals denoising the filled array", "none"),
    ("a real one-node SLURM: worker jobs submitted through SLURMCluster by `asn2n denoise --cluster`",
     "tests/test_hpc.py::test_a_real_slurm_cluster_runs_the_pipeline", "equal to a run without a cluster; a worker "
     "job that never starts fails the test after 5 minutes instead of hanging", "none"),
    ("bad CLI input: missing file, format, dtype, size, NaN, channel count, existing output, output = input",
     "tests/test_cli.py::test_bad_input_gets_one_sentence_exit_2_nothing_written", "one sentence, exit 2, nothing "
     "written", "none"),
]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=int, default=50)
    ap.add_argument("--report", action="store_true", help="rewrite reliability.md from the last load test")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    row = json.loads((RESULTS / "reliability.json").read_text())["load"] if args.report else load_test(args.datasets)
    print(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps({"load": row}, indent=1))
    lines = ["# Reliability record", "",
             "Faults and bad inputs are tried by the test suite (`make test`); each row names its test. "
             "Data lost: none means the output is complete and equal to an uninterrupted run, or nothing was "
             "written and the input is untouched.", "",
             "| fault or input | test | what happens | data lost |", "|---|---|---|---|"]
    lines += [f"| {a} | `{b}` | {c} | {d} |" for a, b, c, d in FAULTS]
    lines += ["", "## Load test", "",
              f"Command: `python benchmarks/reliability.py --datasets {row['datasets']}`. {row['datasets']} small "
              "datasets (2 x 64 x 80 uint16 Zarr, tiny network) denoised back to back through "
              "`asn2n_dask.denoise(path, out, model=..., client=client)` on one embedded cluster (2 worker "
              "processes, 2 CPU cores); each output compared with the in-memory result.", "",
              "| datasets | wrong outputs | RSS before GiB | RSS peak GiB | RSS after GiB | median s a dataset |",
              "|---|---|---|---|---|---|",
              f"| {row['datasets']} | {row['wrong']} | {row['rss_before_gib']:.2f} | {row['rss_peak_gib']:.2f} | "
              f"{row['rss_after_gib']:.2f} | {row['seconds_median']:.2f} |", "",
              "RSS: this process plus every worker process, after a warm-up run and a garbage collection.", "",
              "## Not tried yet", "",
              "The real-SLURM test needs a SLURM node: `.ci/run` calls `.ci/slurm-up` (Debian's `slurm-wlm` and "
              "`munge`, `slurmctld` and `slurmd` on localhost, the node's memory declared) and the test is "
              "skipped only when no node is idle. PBS and LSF are checked as rendered job scripts only.", ""]
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'reliability.md'}")


if __name__ == "__main__":
    main()
