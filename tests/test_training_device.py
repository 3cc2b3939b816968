"""``innout train-models --device cuda`` on a machine without a GPU: the one-line refusal,
and, on a virtual GPU (:mod:`virtual_gpu`), that every trainer keeps its tensors on the
device it trains on (a CPU run cannot show a batch left on the CPU)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import innout.training as training
from innout.training.loop import Loop
from test_training import tiny_config
from virtual_gpu import DeviceMismatch, on_gpu, virtual_gpu

pytestmark = pytest.mark.usefixtures("one_thread")


def _forward_only(kinds: list[str]):
    """A :meth:`Loop.run` that runs the step function's forward passes and loss (no backward:
    gradients are not placed by the virtual GPU) and checks the loss is on the GPU."""

    def run(self, step_fn):
        self.model.train()
        while self.step < self.cfg.steps:
            loss, parts = step_fn(self.step, self.generator)
            if not on_gpu(loss):
                raise DeviceMismatch(f"{self.name}: the loss of step {self.step} was computed on the CPU")
            kinds.append(f"{self.name}:" + ",".join(sorted(parts)))
            self.history.append({"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}})
            self.step += 1
        self.model.eval()
        return self.summary()

    return run


def test_every_trainer_keeps_its_tensors_on_the_training_device(tmp_path, monkeypatch):
    kinds: list[str] = []
    monkeypatch.setattr(Loop, "run", _forward_only(kinds))
    monkeypatch.setattr(training, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "virtual")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # (train-models sets it for CUDA; restored after)
    cfg = tiny_config(steps=12)
    cfg = replace(cfg, device="cuda")
    with virtual_gpu():
        manifest = training.train_models(tmp_path / "out", cfg, tmp_path / "work", max_depth_rel_error=None)
    assert manifest["device"] == "cuda:0 (virtual)" and manifest["config"]["device"] == "cuda"
    unet_steps = {k for k in kinds if k.startswith("unet:")}
    # the three kinds of UNet step ran: plain, ILA (with the counterpart attention) and hidden pattern
    assert any("mse_plain" in k for k in unet_steps)
    assert any("mse_ila" in k and "attention_ce" in k for k in unet_steps)
    assert any("mse_pattern" in k for k in unet_steps)
    assert {k.split(":")[0] for k in kinds} == {"depth", "vae", "unet"}
    # saved from the CPU: the folder loads like any other
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(tmp_path / "out" / "inpainter" / "unet")


def test_the_virtual_gpu_catches_a_batch_left_on_the_cpu():
    """The check above can fail: a model on the GPU fed a CPU batch, a GPU tensor read as numpy."""
    model = torch.nn.Conv2d(3, 4, 3)
    with virtual_gpu():
        model.to("cuda")
        batch = torch.randn(2, 3, 8, 8)
        with pytest.raises(DeviceMismatch, match="cuda:0 and cpu"):
            model(batch)
        out = model(batch.to("cuda"))
        assert on_gpu(out) and out.device == torch.device("cuda", 0) and not on_gpu(batch)
        with pytest.raises(DeviceMismatch, match="numpy"):
            out.detach().numpy()
        assert out.detach().cpu().numpy().shape == (2, 4, 6, 6)
        assert float(out.sum()) == float(out.detach().cpu().sum())  # real data: float() works as on a GPU


def test_a_gpu_asked_for_where_there_is_none_is_one_line_and_writes_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "weights"
    cli = "import sys; from innout.cli import main; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", cli, "train-models", "--out", str(out), "--work-dir",
                             str(tmp_path / "work"), "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("innout train-models: error: device: 'cuda' requested"), result.stderr
    assert not out.exists() and not list((tmp_path / "work").glob("views-*"))

