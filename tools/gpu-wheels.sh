# Sourced by tools/gpu-check.sh and tools/gpu-train.sh (from the checkout's root): installs
# into $SITE the wheels of $GPU_CHECK_WHEELS whose distribution this $PY lacks (one version of
# each in the folder; made by tools/gpu-check-wheels.sh where a registry is reachable) and
# puts $SITE on PYTHONPATH. A machine that has them all, or no wheels, is left as it is.
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_SITE
# (where wheels are unpacked, default /tmp/innout-gpu-check-site). Sets PY.
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/innout-gpu-check-site}
export GPU_CHECK_WHEELS=${GPU_CHECK_WHEELS:-.whl}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network: never try it

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

