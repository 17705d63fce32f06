#!/usr/bin/env bash
# The GPU checks of --compile and of the default command line, in about ten minutes on one
# H100/H200: first-task latency with and without the compile cache, then `asn2n run` and
# `asn2n denoise` with default options on simulate.py time-lapse data (1 GB, then the largest
# size up to 10 GB that the time left allows; the stage prints what it chose).
# Records: benchmarks/results/gpu.json (rows "compile ..." and "e2e ..."), gpu.md.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root
#   DEVICE=cpu bash benchmarks/gpu_check.sh      # a check of the script itself at a toy size
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
  # compile: ~1-2 min (one cold compilation, three warm or eager processes)
  # e2e: fit 3000 steps + denoise 1 GB, denoise 1 GB, denoise what fits of 10 GB in 400 s in all
  exec "$PY" benchmarks/gpu.py --stage compile e2e --device cuda --e2e-gb 1 --e2e-big-gb 10 --e2e-budget 400 "$@"
else
  export OMP_NUM_THREADS=1 TORCHINDUCTOR_COMPILE_THREADS=1
  exec "$PY" benchmarks/gpu.py --stage compile e2e --device cpu --side 128 --compile-preset tiny \
    --compile-batch 4 --e2e-gb 0.0006 --e2e-side 256 --e2e-train "--preset tiny --steps 3" --e2e-big-gb 0.002 \
    --e2e-budget 600 --results "${RESULTS:-/tmp/asn2n-gpu-check-cpu.json}" "$@"
fi
