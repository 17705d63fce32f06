#!/usr/bin/env bash
# Quality at GPU training budgets, side by side on one H100/H200 in about six minutes:
#   - Volumes: the 3-D U-Net against the per-plane 2-D default, each trained for the same
#     wall time on the GPU (rows "dims3 cuda S" and "dims2 cuda S" of volume.json, then
#     the zleak stage on their predictions);
#   - Method proven: `asn2n run --device cuda --steps N` on the W2S channels 0 and 1
#     (rows "cN asn2n run --device cuda --steps N" of realdata.json; W2S_STEPS=0 leaves them out).
# The four jobs share the GPU and the processor; the two volume jobs run at the same time,
# so each one's step cost is probed under the same load.  Logs: benchmarks/work/gpu-quality/.
#
#   bash benchmarks/gpu_quality.sh                  # on the GPU machine, from the repository root
#   SECONDS3D=480 W2S_STEPS=0 bash benchmarks/gpu_quality.sh   # the volume pair alone, 480 s each
#   DEVICE=cpu bash benchmarks/gpu_quality.sh       # a check of the script itself at a toy size
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
LOG=benchmarks/work/gpu-quality
mkdir -p "$LOG"
if [ "$DEVICE" = cuda ]; then
  S=${SECONDS3D:-240}
  STEPS=${W2S_STEPS:-12000}
  BUDGET=(--device cuda --seconds "$S")
  ROW="cuda $S"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
else
  S=${SECONDS3D:-3}
  STEPS=${W2S_STEPS:-5}
  BUDGET=(--cpu-seconds "$S")
  ROW="cpu check $S"
  export OMP_NUM_THREADS=1
fi
RUN_OPTS="--device $DEVICE"
[ "$DEVICE" = cpu ] && RUN_OPTS="--device cpu --preset tiny"

"$PY" benchmarks/volume.py --stage data >"$LOG/data.log" 2>&1 || { cat "$LOG/data.log"; exit 1; }
declare -A JOBS
"$PY" benchmarks/volume.py --stage dims3 "${BUDGET[@]}" --row "dims3 $ROW" >"$LOG/dims3.log" 2>&1 &
JOBS[dims3]=$!
"$PY" benchmarks/volume.py --stage dims2 "${BUDGET[@]}" --row "dims2 $ROW" >"$LOG/dims2.log" 2>&1 &
JOBS[dims2]=$!
W2S=(0 1)
[ "$STEPS" = 0 ] && W2S=()
for c in "${W2S[@]}"; do
  "$PY" benchmarks/realdata.py --stage default --channels "$c" --steps "$STEPS" --run-options "$RUN_OPTS" \
    >"$LOG/w2s-c$c.log" 2>&1 &
  JOBS[w2s-c$c]=$!
done
failed=0
for name in "${!JOBS[@]}"; do
  if wait "${JOBS[$name]}"; then
    echo "$name: done"
  else
    echo "$name: FAILED"; failed=1
  fi
  tail -n 3 "$LOG/$name.log"
done
"$PY" benchmarks/volume.py --stage zleak --zleak-rows "dims2 $ROW" "dims3 $ROW" >"$LOG/zleak.log" 2>&1 \
  || { echo "zleak: FAILED"; failed=1; }
tail -n 20 "$LOG/zleak.log"
exit $failed
