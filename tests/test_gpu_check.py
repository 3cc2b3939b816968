"""tools/gpu-check.sh: the GPU check's code path on a CPU at a tiny size, and its wheel
handling for a machine without network (only wheels of missing distributions are used)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import gpu_check  # noqa: E402


def _wheel(folder: Path, dist: str, version: str, module: str) -> Path:
    """A minimal pure-Python wheel of ``dist`` holding ``module``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "PROBE = True\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def _run(tmp_path: Path, *args: str, wheels: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_SITE=str(tmp_path / "site"), OMP_NUM_THREADS="1",
               GPU_CHECK_WHEELS=str(wheels or tmp_path / "no-wheels"), OUT=str(tmp_path / "out"))
    (tmp_path / "out").mkdir(exist_ok=True)
    return subprocess.run(["bash", str(REPO / "tools" / "gpu-check.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)


def test_only_wheels_of_missing_distributions_are_installed(tmp_path):
    wheels = tmp_path / "wheels"
    _wheel(wheels, "innout_probe_dist", "0.0.1", "innout_probe_module")  # missing here: installed
    _wheel(wheels, "imagehash", "0.0.1", "imagehash")  # this python has it: left alone
    result = _run(tmp_path, "--help", wheels=wheels)
    assert result.returncode == 0, result.stderr
    installed = sorted(p.name for p in (tmp_path / "site").iterdir())
    assert "innout_probe_module" in installed and "imagehash" not in installed, installed
    assert "innout_probe_dist" in result.stdout and "imagehash-0.0.1" not in result.stdout


def test_tiny_check_runs_every_stage_and_reports_seconds_and_memory(tmp_path):
    """The SPIn-NeRF-size check's stages at 64x48 on the CPU: each reports its seconds
    (peak GPU memory: none here), pretrain its steps/s, inpaint its projection."""
    result = _run(tmp_path, "--size", "tiny", "--out", str(tmp_path / "check"), "--device", "cpu", "--budget", "100000")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["generate", "scene", "models", "pretrain", "pretrain-torch", "base", "inpaint-shard-0", "refine",
                            "train-models"]
    for name in ("generate", "scene", "models", "pretrain-torch", "base", "inpaint-shard-0", "refine"):
        assert stages[name]["seconds"] > 0 and stages[name]["peak_gpu_gib"] is None, (name, stages[name])
    assert "not importable" in stages["pretrain"]["tcnn"]
    assert stages["pretrain-torch"]["steps"] == 150 and stages["pretrain-torch"]["steps_per_second"] > 0
    assert stages["pretrain-torch"]["implementation"] == "torch"
    shard = stages["inpaint-shard-0"]
    assert shard["shards"] == 2 and shard["views"] == 1 + shard["targets"] and shard["targets"] == 4
    assert set(shard["variants_seconds"]) == {"independent", "ela", "ila", "ela_ila"}
    assert shard["projected_stage_gpu_seconds"] >= stages["inpaint-shard-0"]["seconds"]
    assert stages["refine"]["steps"] == 3 and stages["refine"]["steps_per_second"] > 0
    train = stages["train-models"]
    assert train["device"] == "cpu" and train["steps"]["unet"] == 3 and min(train["steps"].values()) >= 2
    assert set(train["steps_per_second"]) == {"vae", "unet", "depth"} and min(train["steps_per_second"].values()) > 0
    # the recipe's 4800 UNet steps at the measured rate are in the projection
    assert train["projected_recipe_seconds"] > 4800 / train["steps_per_second"]["unet"]
    assert not (tmp_path / "check" / "procedural").exists()  # its weights are not kept
    assert report["environment"]["device"] == "cpu" and report["size"]["width"] == 64
    for name in ("pretrain-torch", "base", "inpaint-shard-0", "refine", "train-models"):
        assert f"] {name}: " in result.stdout  # printed as each stage ends


def test_gpu_train_runs_train_models_and_brings_the_weights_back(tmp_path):
    """tools/gpu-train.sh on a CPU (``--device cpu``) at a tiny size: the set, its manifest and
    its log arrive in $OUT; with the depth check on, 2 steps are refused in one line, nothing
    arrives."""
    # the GPU check's tiny training settings (one source for both), 2 steps of each model
    tiny = [*gpu_check.SIZES["tiny"]["train_overrides"], "data.workers=1",
            *(f"{name}.loop.steps=2" for name in ("vae", "unet", "depth"))]
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_SITE=str(tmp_path / "site"), OMP_NUM_THREADS="1",
               GPU_CHECK_WHEELS=str(tmp_path / "no-wheels"), OUT=str(tmp_path / "out"))
    (tmp_path / "out").mkdir()

    def train(*extra: str) -> subprocess.CompletedProcess:
        sets = [arg for item in tiny for arg in ("--set", item)]
        return subprocess.run(["bash", str(REPO / "tools" / "gpu-train.sh"), "--device", "cpu", "--out",
                               str(tmp_path / "set"), "--work-dir", str(tmp_path / "work"), "--seed", "5", *sets, *extra],
                              env=env, capture_output=True, text=True, timeout=1200)

    refused = train()
    assert refused.returncode == 2 and "the depth model did not learn" in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1].startswith("innout train-models: error:")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["train.log"]  # the failed run's log, no set
    result = train("--max-depth-error", "none")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # what the device tool brings back: at most 8 files, none more than 2 folders down
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "set.tar.gz", "train.log"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"] == "cpu" and manifest["seed"] == 5 and manifest["results"]["unet"]["steps"] == 2
    assert "--max-depth-error none" in manifest["command"]
    with tarfile.open(out / "set.tar.gz") as tar:
        names = tar.getnames()
    assert {"set/manifest.json", "set/train.log", "set/inpainter/unet/diffusion_pytorch_model.safetensors"} <= set(names)


def test_gpu_train_fit_sizes_the_unet_from_a_probe_whose_work_it_takes_up(tmp_path):
    """tools/gpu-train-fit.sh on a CPU: the probe's UNet rate gives the steps (the printed
    arithmetic, bounded), the set is trained with them, and the second run takes up the
    probe's depth model, VAE and samples instead of training them again. Run again (a killed
    run), it keeps those steps and resumes, without a probe."""
    tiny = [*gpu_check.SIZES["tiny"]["train_overrides"], "data.workers=1",
            *(f"{name}.loop.steps=2" for name in ("vae", "depth"))]
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_SITE=str(tmp_path / "site"), OMP_NUM_THREADS="1",
               GPU_CHECK_WHEELS=str(tmp_path / "no-wheels"), OUT=str(tmp_path / "out"), PROBE_STEPS="20", MARGIN="0",
               MIN_STEPS="7", MAX_STEPS="100")
    (tmp_path / "out").mkdir()
    sets = [arg for item in tiny for arg in ("--set", item)]

    def fit(seconds: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(REPO / "tools" / "gpu-train-fit.sh"), seconds, "--device", "cpu", "--out",
                                 str(tmp_path / "set"), "--work-dir", str(tmp_path / "work"), "--seed", "5",
                                 "--max-depth-error", "none", *sets], env=env, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result

    result = fit("25")
    rate, left = (float(x) for x in re.search(r"UNet ([\d.]+) steps/s over 20 steps, (-?\d+) s left", result.stderr).groups())
    steps = int(re.search(r"\[gpu-train-fit\] (\d+) UNet steps", result.stdout).group(1))
    assert steps == max(7, min(100, int(max(0.0, left) * rate * 0.95) // 100 * 100))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["results"]["unet"]["steps"] == steps
    log = (tmp_path / "out" / "train.log").read_text()
    assert "depth: resuming from step 2" in log and "vae: resuming from step 2" in log and "samples: reusing" in log
    assert "unet: 20 steps" in (tmp_path / "out" / "probe.log").read_text()
    assert not (tmp_path / "work" / "probe").exists()
    again = fit("1000")  # other seconds: the steps stay those chosen, the UNet resumes at its end
    assert f"[gpu-train-fit] {steps} UNet steps, as chosen before" in again.stdout and "UNet steps/s" not in again.stderr
    assert f"unet: resuming from step {steps}" in (tmp_path / "out" / "train.log").read_text()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["results"]["unet"]["steps"] == steps
