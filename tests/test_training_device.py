"""GPU paths on a machine without a GPU: ``innout train-models --device cuda``'s one-line
refusal, and, on a virtual GPU (:mod:`virtual_gpu`), that every trainer and every stage of
the GPU check keeps its tensors on the device it runs on (a CPU run cannot show a batch
left on the CPU)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import innout.training as training
from innout.training.loop import Loop
from test_training import tiny_config
from virtual_gpu import DeviceMismatch, on_gpu, pretend_cuda, virtual_gpu

pytestmark = pytest.mark.usefixtures("one_thread")


def _spying(kinds: list[str]):
    """:meth:`Loop.run` as it is, with each step's loss checked to be on the GPU and the kind
    of step (its loss parts) recorded."""
    real = Loop.run

    def run(self, step_fn):
        def step(i, generator):
            loss, parts = step_fn(i, generator)
            if not on_gpu(loss):
                raise DeviceMismatch(f"{self.name}: the loss of step {i} was computed on the CPU")
            kinds.append(f"{self.name}:" + ",".join(sorted(parts)))
            return loss, parts

        return real(self, step)

    return run


def test_every_trainer_keeps_its_tensors_on_the_training_device(tmp_path, monkeypatch):
    kinds: list[str] = []
    monkeypatch.setattr(Loop, "run", _spying(kinds))
    pretend_cuda(monkeypatch)
    cfg = replace(tiny_config(steps=12), device="cuda")
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


def test_the_whole_gpu_check_runs_on_a_virtual_gpu(tmp_path, monkeypatch):
    """Every stage's GPU path (nerfacto pretraining and rendering, the base view, ELA + ILA,
    refine with LPIPS and the discriminator, train-models, then render and evaluate) keeps its
    tensors on one device: tools/gpu_check.py at its tiny size with ``--device cuda``, in fp16
    where a GPU would be, and the two stages after it on its outputs."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    import gpu_check

    pretend_cuda(monkeypatch)
    with virtual_gpu(), warnings.catch_warnings():  # (the check silences library warnings globally)
        report = gpu_check.main(["--size", "tiny", "--out", str(tmp_path / "check"), "--device", "cuda",
                                 "--budget", "100000"])
    stages = report["stages"]
    assert all("error" not in record for record in stages.values()), stages
    assert list(stages) == ["generate", "scene", "models", "pretrain", "pretrain-torch", "base", "inpaint-shard-0",
                            "refine", "train-models"]
    assert stages["inpaint-shard-0"]["dtype"] == "float16"  # the GPU's dtype: the GPU path ran
    assert stages["train-models"]["device"] == "cuda:0 (virtual)"

    # the stages after refine, which the check does not time: render (test boxes, train views,
    # the camera-path video), the "before" renders, and evaluate (LPIPS and FID on the GPU)
    from innout.config import load_method_config
    from innout.evaluate import run_evaluate
    from innout.render import run_render, run_render_pretrain

    out, size = tmp_path / "check", gpu_check.SIZES["tiny"]
    cfg = load_method_config(size["preset"], ["device=cuda", f"models.cache_dir={out / 'models'}", *size["overrides"]],
                             size["model"])
    scene = out / "scene" / "transforms.json"
    with virtual_gpu(), warnings.catch_warnings():
        run_render(scene, out / "refine" / "nerf" / "innout-nerfacto" / "config.yml", out / "render", cfg,
                   upstream_summary=out / "refine" / "summary.json", base_summary=out / "base" / "summary.json",
                   inpaint_images=out / "inpaint" / "images")
        run_render_pretrain(scene, out / "pretrain" / "innout-nerfacto" / "config.yml", out / "render_pretrain", cfg)
        metrics = run_evaluate(scene, out / "render" / "test", out / "render_pretrain" / "test", out / "metrics.json", cfg,
                               upstream_summary=out / "render" / "summary.json")
    assert metrics["n_views"] == 4 and metrics["lpips"] is not None and metrics["fid"] is not None
    assert (out / "render" / "video.mp4").is_file()


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
        table = torch.arange(10.0)  # a CPU table, as a scheduler's
        with pytest.raises(DeviceMismatch, match="indexing a cpu tensor"):
            table[torch.tensor([1, 2]).to("cuda")]
        assert not on_gpu(table[torch.tensor(3).to("cuda")])  # one integer: read as a number, as CUDA does
        rows = torch.zeros(4, 2)
        rows[:, 0] = torch.ones(4).to("cuda")  # a copy between devices
        assert not on_gpu(rows) and float(rows.sum()) == 4.0
        out.sum().backward()  # gradients read from GPU parameters are on the GPU: an optimiser runs
        torch.optim.AdamW(model.parameters()).step()
        assert on_gpu(model.weight.grad) and on_gpu(model.weight)


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

