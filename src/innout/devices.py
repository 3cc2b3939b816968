"""Which torch device a stage runs on, and why not the GPU it asked for.

``method.device`` is ``auto`` (CUDA when torch can use it, else CPU), ``cpu``, ``cuda`` or
``cuda:N``. Two failures must be loud, because both cost a user days:

* a stage configured for CUDA that finds no usable GPU fails with ONE line saying what
  torch was built for and what it found (:func:`cuda_diagnosis`): a CPU-only build, no
  NVIDIA driver, a driver too old for the build's CUDA (the registry's torch is a CUDA 13
  build; ``INNOUT_TORCH_INDEX`` in ``tools/setup-venv.sh`` picks another), or no device;
* ``auto`` falling back to CPU with the ``paper`` preset runs, but every GPU stage logs a
  warning and writes it into its ``summary.json`` (:func:`fallback_warning`).

Nothing here initialises CUDA unless torch is asked whether it is available; the driver is
read with ``cuDriverGetVersion`` from ``libcuda`` and ``/proc/driver/nvidia/version``.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from innout.errors import StageError

log = logging.getLogger("innout")

SETUP_HINT = "pick a torch build for this driver: INNOUT_TORCH_INDEX=https://download.pytorch.org/whl/cu<XY> bash tools/setup-venv.sh (README: Install)"


def driver_info() -> dict:
    """What the NVIDIA driver of this machine offers: ``{"cuda": "12.2" | None (the newest
    CUDA it runs, from libcuda's cuDriverGetVersion), "version": "535.104.05" | None (the
    kernel module, from /proc/driver/nvidia/version)}``; both None without a driver."""
    info: dict[str, Any] = {"cuda": None, "version": None}
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        value = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(value)) == 0 and value.value > 0:
            info["cuda"] = f"{value.value // 1000}.{(value.value % 1000) // 10}"
    except (OSError, AttributeError):
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        for word in text.split():
            parts = word.split(".")
            if len(parts) >= 2 and all(p.isdigit() for p in parts):
                info["version"] = word
                break
    except OSError:
        pass
    return info


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".") if p.isdigit())


def cuda_diagnosis() -> str:
    """Why torch cannot use a GPU here, in one line: what torch was built for, what the
    machine has (driver, its CUDA, devices)."""
    built = torch.version.cuda
    build = f"torch {torch.__version__}" + (f" (built for CUDA {built})" if built else " (a CPU-only build)")
    if not built:
        return f"{build} cannot use a GPU; install a CUDA build of torch: {SETUP_HINT}"
    driver = driver_info()
    if driver["cuda"] is None and driver["version"] is None:
        return f"{build} finds no NVIDIA driver on this machine (no libcuda.so.1, no /proc/driver/nvidia): no GPU here"
    name = f"NVIDIA driver {driver['version']}" if driver["version"] else "the NVIDIA driver"
    if driver["cuda"] is not None and _version_tuple(driver["cuda"])[:2] < _version_tuple(built)[:2]:
        return (f"{build} finds {name}, which runs CUDA up to {driver['cuda']}: too old for this build; "
                f"update the driver or {SETUP_HINT}")
    supports = f" (CUDA up to {driver['cuda']})" if driver["cuda"] else ""
    return f"{build} finds {name}{supports} but no usable GPU (CUDA_VISIBLE_DEVICES, a busy or faulty device?)"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA when torch can use it, else CPU. ``cuda`` / ``cuda:N`` without a
    usable GPU: a one-line :class:`StageError` from :func:`cuda_diagnosis`."""
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(name)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise StageError("device", f"{name!r} requested, but {cuda_diagnosis()}")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise StageError("device", f"{name!r} requested, but torch sees {torch.cuda.device_count()} GPU(s)")
    return resolved


def fallback_warning(device: str | None, preset: str | None) -> str | None:
    """The warning for ``device: auto`` resolving to CPU under the ``paper`` preset (None
    otherwise): the published settings on a CPU take days, not hours."""
    if str(device or "auto") != "auto" or str(preset) != "paper" or torch.cuda.is_available():
        return None
    return (f"device 'auto' fell back to the CPU with the paper preset: a paper run on a CPU takes days; "
            f"{cuda_diagnosis()}")


def stage_device(cfg: Any, stage: str) -> tuple[torch.device, str | None]:
    """``(device, warning)`` of a stage from its method config (``device``, ``preset``).
    The warning (:func:`fallback_warning`) is logged and printed to stderr here; the stage
    writes it into its summary.json as ``device_warning``."""
    get = cfg.get if hasattr(cfg, "get") else (lambda key, default=None: getattr(cfg, key, default))
    requested, preset = get("device", "auto"), get("preset", None)
    device = resolve_device(requested)
    warning = fallback_warning(requested, preset)
    if warning:
        log.warning("WARNING: %s", warning)
        print(f"innout {stage}: WARNING: {warning}", file=sys.stderr)
    return device, warning


def computed_on(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[str, ...]:
    """What a work dir's cache or checkpoint key adds for the device and precision that made
    its contents: other kernels give other last bits (fp16 other pictures), so a rerun on a GPU
    does not take up what a CPU run left, nor the reverse. Nothing for a CPU in float32, so
    the keys of CPU work dirs stay as they were; not the GPU's index (a Slurm job's GPU is
    ``cuda:0`` whichever it is)."""
    return (*(() if device.type == "cpu" else (device.type,)), *(() if dtype == torch.float32 else (str(dtype),)))
