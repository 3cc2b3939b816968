#!/usr/bin/env bash
# tools/gpu-train.sh with as many UNet steps as fit in SECONDS (a lease's minutes): a first
# `innout train-models` with a short UNet trains the depth model and the VAE and encodes the
# samples into the work dir (where the second run takes them up: same settings, same keys) and
# times the UNet's steps; the second trains the set with the steps that leave MARGIN seconds
# for its start and saving. The set comes back as tools/gpu-train.sh brings it (OUT). The
# steps chosen are kept in the work dir with the arguments: run again with the same arguments
# (a killed run), it skips the probe and resumes the second run from its checkpoints.
#
#   bash tools/gpu-train-fit.sh 530 --seed 1 --set unet.loop.batch=128     # on the GPU machine
#
# Environment: as tools/gpu-train.sh, and PROBE_STEPS (default 60), MARGIN (default 60 s),
# MIN_STEPS / MAX_STEPS (default 200 / 48000: the bounds of the steps chosen).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# shellcheck source=tools/gpu-wheels.sh
source tools/gpu-wheels.sh  # once: both runs below then find the wheels installed
seconds=${1:?usage: tools/gpu-train-fit.sh SECONDS [innout train-models arguments]}
shift
args=("$@")
case " $* " in *" --work-dir "*) ;; *) args+=(--work-dir /tmp/innout-gpu-train/work) ;; esac
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--work-dir" ] && work=${args[$((i + 1))]}; done
probe_steps=${PROBE_STEPS:-60}

fit="$work/fit-steps.txt"  # the arguments, then the steps chosen for them
if [ -f "$fit" ] && [ "$(head -n 1 "$fit")" = "${args[*]}" ]; then
    steps=$(tail -n 1 "$fit")
    echo "[gpu-train-fit] $steps UNet steps, as chosen before for these arguments ($fit): resuming"
else
    # the probe: the set it writes is thrown away, its caches and checkpoints are not; its
    # log stays in the work dir as probe.log (tools/gpu-train.sh brings the work dir's logs back)
    status=0
    OUT='' bash tools/gpu-train.sh "${args[@]}" --set unet.loop.steps="$probe_steps" --out "$work/probe" || status=$?
    if [ -f "$work/train.log" ]; then mv "$work/train.log" "$work/probe.log"; fi
    if [ "$status" != 0 ]; then
        if [ -n "${OUT:-}" ] && [ -f "$work/probe.log" ]; then cp "$work/probe.log" "$OUT/"; fi
        exit "$status"
    fi
    steps=$("$PY" - "$work/probe/manifest.json" "$((seconds - $(date +%s) + start))" <<PYEOF
import json, sys
unet = json.load(open(sys.argv[1]))["results"]["unet"]
rate = unet["steps"] / unet["seconds"]  # its first steps included: an under-estimate
left = float(sys.argv[2]) - ${MARGIN:-60}
steps = int(max(0.0, left) * rate * 0.95) // 100 * 100
print(max(${MIN_STEPS:-200}, min(${MAX_STEPS:-48000}, steps)))
print(f"[gpu-train-fit] UNet {rate:.6f} steps/s over {unet['steps']} steps, {left:.0f} s left to train", file=sys.stderr)
PYEOF
    )
    echo "[gpu-train-fit] $steps UNet steps, $(($(date +%s) - start)) s after the start"
    rm -rf "$work/probe"
    printf '%s\n%s\n' "${args[*]}" "$steps" > "$fit"
fi
exec bash tools/gpu-train.sh "${args[@]}" --set unet.loop.steps="$steps"
