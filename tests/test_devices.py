"""Device resolution (innout.devices): a CUDA stage without a usable GPU fails in one line
saying what torch was built for and what it found; `auto` + paper on a CPU warns."""

from __future__ import annotations

import pytest
import torch

from innout import devices
from innout.errors import StageError
from innout.stage import stage


@pytest.fixture
def no_gpu(monkeypatch):
    """torch 2.15.0+cu132 (CUDA 13.2) on a machine whose driver runs CUDA 12.2."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.2")
    monkeypatch.setattr(torch, "__version__", "2.15.0+cu132")
    monkeypatch.setattr(devices, "driver_info", lambda: {"cuda": "12.2", "version": "535.104.05"})


def test_cuda_without_gpu_is_one_line_naming_build_and_driver(no_gpu, tmp_path, capsys):
    with pytest.raises(SystemExit):
        with stage("pretrain", tmp_path / "pretrain.log"):
            devices.resolve_device("cuda")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("innout pretrain: error: device: 'cuda' requested")
    for part in ("torch 2.15.0+cu132", "built for CUDA 13.2", "NVIDIA driver 535.104.05", "CUDA up to 12.2",
                 "too old", "INNOUT_TORCH_INDEX"):
        assert part in line, (part, line)
    assert line.split(" error: ", 1)[1] in (tmp_path / "pretrain.log").read_text()


@pytest.mark.parametrize("build, driver, expected", [
    (None, {"cuda": None, "version": None}, "a CPU-only build"),
    ("13.2", {"cuda": None, "version": None}, "finds no NVIDIA driver"),
    ("13.2", {"cuda": "13.2", "version": "595.1"}, "but no usable GPU"),
])
def test_diagnosis_of_each_case(monkeypatch, build, driver, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(devices, "driver_info", lambda: driver)
    with pytest.raises(StageError) as err:
        devices.resolve_device("cuda:0")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_auto_falls_back_to_cpu_loudly_only_with_the_paper_preset(no_gpu, capsys):
    device, warning = devices.stage_device({"device": "auto", "preset": "paper"}, "refine")
    assert device == torch.device("cpu")
    assert "fell back to the CPU with the paper preset" in warning and "CUDA up to 12.2" in warning
    assert "innout refine: WARNING: device 'auto' fell back" in capsys.readouterr().err
    assert devices.stage_device({"device": "auto", "preset": "smoke"}, "refine") == (torch.device("cpu"), None)
    assert devices.stage_device({"device": "cpu", "preset": "paper"}, "refine") == (torch.device("cpu"), None)


def test_cpu_is_always_fine(no_gpu):
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(None) == torch.device("cpu")


def test_nerfacto_implementation_auto(monkeypatch):
    """pretrain.implementation auto: tcnn on CUDA when tiny-cuda-nn imports, else torch;
    tcnn asked for where it cannot run is a one-line error."""
    from innout import nerf

    monkeypatch.setattr(nerf, "tcnn_available", lambda: True)
    assert nerf.resolve_implementation("auto", "cuda") == "tcnn"
    assert nerf.resolve_implementation("auto", "cpu") == "torch"
    assert nerf.resolve_implementation("torch", "cuda") == "torch"
    monkeypatch.setattr(nerf, "tcnn_available", lambda: False)
    assert nerf.resolve_implementation("auto", "cuda") == "torch"
    with pytest.raises(StageError, match="tinycudann"):
        nerf.resolve_implementation("tcnn", "cuda")
    with pytest.raises(StageError, match="one of auto, torch, tcnn"):
        nerf.resolve_implementation("cuda", "cuda")


def test_work_dir_keys_name_the_kind_of_device_and_precision_not_the_gpus_index():
    from innout.devices import computed_on

    assert computed_on(torch.device("cpu")) == ()  # CPU work dirs keep the keys they had
    assert computed_on(torch.device("cuda", 0)) == computed_on(torch.device("cuda", 1)) == ("cuda",)
    assert computed_on(torch.device("cuda", 0), torch.float16) == ("cuda", "torch.float16")
    assert computed_on(torch.device("cpu"), torch.bfloat16) == ("torch.bfloat16",)
