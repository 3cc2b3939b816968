#!/usr/bin/env bash
# Train the `procedural` model set on a GPU machine that has python3 with torch and
# transformers but no network (the project's H200 box): the packages it lacks come from the
# wheels in .whl/ (tools/gpu-check-wheels.sh, as for tools/gpu-check.sh), then
# `innout train-models --device cuda` runs with the arguments given; when OUT is set, the
# weights folder comes back in it as one tarball (NAME.tar.gz: manifest, train.log and loss
# curves inside), with its manifest.json and the work dir's train.log beside it.
#
#   bash tools/gpu-train.sh --seed 1 --set unet.loop.steps=48000     # on the GPU machine
#   bash tools/gpu-train.sh --device cpu --set ...                   # the same path on a CPU
#
# Arguments: those of `innout train-models` (--out, --work-dir and --device have defaults
# here: /tmp/innout-gpu-train/procedural, /tmp/innout-gpu-train/work, cuda).
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_SITE
# (where wheels are unpacked, default /tmp/innout-gpu-check-site), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/gpu-wheels.sh
source tools/gpu-wheels.sh  # sets PY and installs the wheels this python lacks
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # a checkout without an install

args=("$@")
case " $* " in *" --out "*) ;; *) args+=(--out /tmp/innout-gpu-train/procedural) ;; esac
case " $* " in *" --work-dir "*) ;; *) args+=(--work-dir /tmp/innout-gpu-train/work) ;; esac
case " $* " in *" --device "*) ;; *) args+=(--device cuda) ;; esac
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--out" ] && dir=${args[$((i + 1))]}
    [ "${args[$i]}" = "--work-dir" ] && work=${args[$((i + 1))]}
done
status=0
"$PY" -c "import sys; from innout.cli import main; sys.exit(main())" train-models "${args[@]}" || status=$?
if [ -n "${OUT:-}" ]; then
    # the device tool brings back at most 8 files, 2 folders down: the set as one tarball,
    # its manifest beside it, and the work dir's log (also of a run that failed)
    if [ -d "$dir" ]; then
        tar czf "$OUT/$(basename "$dir").tar.gz" -C "$(dirname "$dir")" "$(basename "$dir")"
        cp "$dir/manifest.json" "$OUT/"
    fi
    cp "$work"/*.log "$OUT/" 2> /dev/null || true
fi
exit $status
