#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py): paper settings, random SD2 weights, a procedural scene
# at SPIn-NeRF size; per-stage seconds and peak GPU memory. Meant for a GPU machine that has
# python3 with torch, transformers and accelerate but no network: the packages it lacks
# come from the wheels in .whl/ (made beforehand by tools/gpu-check-wheels.sh where a
# registry is reachable); only those whose distribution is not installed are used.
#
#   bash tools/gpu-check.sh                         # SPIn-NeRF size, <= 10 min on one H200
#   bash tools/gpu-check.sh --size tiny --out DIR   # the same code path on a CPU in a minute
#
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_SITE
# (where wheels are unpacked, default /tmp/innout-gpu-check-site), OUT (a folder the JSON
# result is copied into).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/gpu-wheels.sh
source tools/gpu-wheels.sh  # sets PY and installs the wheels this python lacks

args=("$@")
case " $* " in *" --out "*) ;; *) args+=(--out "${GPU_CHECK_DIR:-/tmp/innout-gpu-check}") ;; esac
status=0
"$PY" tools/gpu_check.py "${args[@]}" || status=$?
if [ -n "${OUT:-}" ]; then
    for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--out" ] && dir=${args[$((i + 1))]}; done
    cp "$dir/gpu-check.json" "$OUT/" 2>/dev/null || true
fi
exit $status
