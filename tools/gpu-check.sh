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
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/innout-gpu-check-site}
export GPU_CHECK_WHEELS=${GPU_CHECK_WHEELS:-.whl}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if compgen -G "$GPU_CHECK_WHEELS/*.whl" > /dev/null; then
    # the wheels whose distribution this python lacks (one version of each in .whl/)
    missing=$("$PY" - <<'PYEOF'
import glob, importlib.metadata as md, os, re
for wheel in sorted(glob.glob(os.path.join(os.environ["GPU_CHECK_WHEELS"], "*.whl"))):
    dist = re.sub(r"[-_.]+", "-", os.path.basename(wheel).split("-")[0]).lower()
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        print(wheel)
PYEOF
)
    if [ -n "$missing" ]; then
        echo "[gpu-check] installing into $SITE:" $missing
        # shellcheck disable=SC2086
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $missing
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi

args=("$@")
case " $* " in *" --out "*) ;; *) args+=(--out "${GPU_CHECK_DIR:-/tmp/innout-gpu-check}") ;; esac
status=0
"$PY" tools/gpu_check.py "${args[@]}" || status=$?
if [ -n "${OUT:-}" ]; then
    for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--out" ] && dir=${args[$((i + 1))]}; done
    cp "$dir/gpu-check.json" "$OUT/" 2>/dev/null || true
fi
exit $status
