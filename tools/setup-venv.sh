#!/usr/bin/env bash
# Build (or update) .venv at the repository root with everything innout needs: the
# workflow, the library, the tests. Safe to rerun; a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch and torchvision must come as a matching pair from the registry (a CUDA build that
# also runs on CPU). uv does not read pip's find-links, so a stray local torch wheel with
# no matching torchvision is never picked up.
TORCH=${INNOUT_TORCH:-torch==2.15.0}
TORCHVISION=${INNOUT_TORCHVISION:-torchvision==0.29.2}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.5"
if [ -n "${INNOUT_TORCH_INDEX:-}" ]; then
    # The registry's torch is a CUDA 13 build; a GPU whose driver is older needs another
    # build: the pair comes from this index (e.g. https://download.pytorch.org/whl/cu126,
    # a CUDA 12.6 build; README: Install), then the rest from the registry, torch kept.
    .venv/bin/uv pip install --quiet --python .venv/bin/python --index-url "$INNOUT_TORCH_INDEX" "$TORCH" "$TORCHVISION"
    .venv/bin/uv pip install --quiet --python .venv/bin/python -e '.[test]'
else
    .venv/bin/uv pip install --quiet --python .venv/bin/python "$TORCH" "$TORCHVISION" -e '.[test]'
fi
echo "innout environment ready: $(.venv/bin/python -c 'import innout, torch; print("innout", innout.__version__, "torch", torch.__version__)')"
