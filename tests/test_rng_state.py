"""innout.rng_state: what a checkpoint keeps of the generators, and where it goes back."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from innout.rng_state import capture_rng, restore_rng


@pytest.fixture
def two_gpus(monkeypatch):
    """Two GPUs' generators as states in a dict (the real calls need a driver)."""
    generators = {0: torch.full((16,), 0, dtype=torch.uint8), 1: torch.full((16,), 1, dtype=torch.uint8)}

    def index(device):
        device = torch.device(device)
        return 0 if device.index is None else device.index

    def get(device="cuda"):
        return generators[index(device)].clone()

    def put(new_state, device="cuda"):
        if index(device) not in generators:  # as torch: no generator for a GPU that is not there
            raise IndexError("tuple index out of range")
        generators[index(device)] = new_state.clone()

    monkeypatch.setattr(torch.cuda, "get_rng_state", get)
    monkeypatch.setattr(torch.cuda, "set_rng_state", put)
    return generators


def _through_a_file(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_the_cpu_generators_continue_where_they_stopped():
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    state = _through_a_file(capture_rng("cpu"))
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(state, "cpu")
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])
    assert "cuda_device" not in state  # a CPU run keeps no GPU's state


def test_the_training_gpus_state_goes_to_the_gpu_the_rerun_trains_on(two_gpus):
    """Trained on cuda:1, resumed where the job's GPU is cuda:0 (a Slurm job sees its GPU as
    cuda:0) and one GPU is visible: that GPU continues the state, nothing else is touched."""
    state = _through_a_file(capture_rng("cuda:1"))
    assert torch.equal(state["cuda_device"], torch.full((16,), 1, dtype=torch.uint8))
    del two_gpus[1]  # the rerun's machine shows one GPU
    restore_rng(state, torch.device("cuda", 0))
    assert torch.equal(two_gpus[0], torch.full((16,), 1, dtype=torch.uint8))


def test_a_gpu_state_is_left_out_on_a_cpu_and_a_cpu_state_leaves_the_gpu_alone(two_gpus):
    restore_rng(capture_rng("cuda:1"), "cpu")  # would raise if it reached for a GPU
    assert torch.equal(two_gpus[0], torch.full((16,), 0, dtype=torch.uint8))
    restore_rng(capture_rng("cpu"), "cuda:0")
    assert torch.equal(two_gpus[0], torch.full((16,), 0, dtype=torch.uint8))
