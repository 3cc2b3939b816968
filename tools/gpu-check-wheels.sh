#!/usr/bin/env bash
# Download, where a package registry is reachable, the wheels tools/gpu-check.sh installs on
# a GPU machine without network. That machine (the project's H200 check box) has python3
# 3.12 with torch, torchvision, transformers, accelerate, huggingface_hub, numpy, scipy,
# pillow, opencv, scikit-image, matplotlib, rich, tensorboard, jaxtyping, ... but not what
# the check imports beyond them: listed below (found by tracing the modules a tiny check
# imports, tests/test_gpu_check.py, and taking away what that machine has). Each comes
# --no-deps, at the version this checkout's .venv has (the one the tests ran), so the
# folder stays small: it travels with the run, 64 MiB in all with the working tree.
#
#   bash tools/gpu-check-wheels.sh            # into .whl/ (git-ignored), then prints its size
#
# Environment: PYVER (the GPU machine's Python, default 3.12), WHEELS (default .whl),
# PIP (default .venv/bin/python -m pip).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
WHEELS=${WHEELS:-.whl}
read -r -a PIP <<< "${PIP:-.venv/bin/python -m pip}"

# distributions the check imports that the GPU machine lacks (pure Python unless noted)
# (the modules a tiny check imported, mapped to their distributions, 2026-11-30)
DISTS=(
    diffusers                  # the inpainter pipeline
    nerfstudio                 # nerfacto, and what its modules import at load time:
    nerfacc gsplat tyro docstring-parser appdirs pyquaternion pytorch-msssim splines tensorly dill
    rawpy                      #   (a cp312 binary wheel)
    viser websockets msgspec   #   nerfstudio.engine.trainer imports its viewer (msgspec, websockets: binary)
    hydra-core omegaconf antlr4-python3-runtime   # innout.config
    imagehash                  # the pHash vote and subset
    lpips                      # the refine loss
    defusedxml PySocks truststore  # small pure-Python modules the traced imports also loaded
)

version_of() {  # the version this checkout's venv has
    .venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"
}

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
for dist in "${DISTS[@]}"; do
    spec="$dist==$(version_of "$dist")"
    # a wheel for that Python and platform; a pure-Python sdist (antlr4-python3-runtime
    # 4.9.3 ships no wheel) is built into one here
    "${PIP[@]}" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$WHEELS" "$spec" 2>/dev/null \
        || "${PIP[@]}" wheel --quiet --disable-pip-version-check --no-deps -w "$WHEELS" "$spec" 2>/dev/null \
        || { echo "gpu-check-wheels: no wheel for $spec" >&2; exit 1; }
done
ls -1 "$WHEELS"
du -sh "$WHEELS"
total=$(du -sk "$WHEELS" | cut -f1)
if [ "$total" -gt 40960 ]; then
    echo "gpu-check-wheels: $WHEELS holds ${total} KiB: more than 40 MiB of the run's 64 MiB" >&2
    exit 1
fi
