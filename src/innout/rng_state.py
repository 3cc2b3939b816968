"""The random-number states a resumable training stage keeps in its checkpoints.

A killed run resumed from a checkpoint ends as the uninterrupted run would only if every
generator its steps draw from continues where it stopped: Python's and numpy's (nerfstudio's
samplers), torch's CPU generator and, on a GPU, the generator of the GPU that trains
(nerfacto's stratified samples are drawn there). Only that one GPU's state is kept, and it
is restored onto the GPU the resumed run trains on, which may have another index (a Slurm
job sees its GPU as ``cuda:0`` whichever it is): restoring every GPU's state by index would
fail where fewer GPUs are visible than when the checkpoint was written.

The states are plain lists and tensors, so a checkpoint holding them loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng(device: str | torch.device) -> dict[str, Any]:
    """Python's, numpy's and torch's CPU generator states, and the training GPU's if
    ``device`` is one."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    device = torch.device(device)
    if device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: str | torch.device) -> None:
    """Put back what :func:`capture_rng` kept (each part that is there): the GPU's state goes
    to ``device``'s generator when that is a GPU, and is left out on a CPU."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    device = torch.device(device)
    if device.type == "cuda" and state.get("cuda_device") is not None:
        torch.cuda.set_rng_state(state["cuda_device"], device)
