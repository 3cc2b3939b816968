"""One GPU per job (innout.gpulock) on a fake two-GPU machine: a fake nvidia-smi on PATH."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from innout import gpulock
from workflow_helpers import SNAKEMAKE

FAKE_SMI = """#!/bin/sh
# a machine with two GPUs, as `nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader` prints them
echo "0, GPU-aaaaaaaa-0000-0000-0000-000000000000, NVIDIA Fake 80GB"
echo "1, GPU-bbbbbbbb-1111-1111-1111-111111111111, NVIDIA Fake 80GB"
"""

# a job: take a GPU, say which, hold it until its release file appears
JOB = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from innout.gpulock import pin_gpus
    pin_gpus(1, job=sys.argv[1], say=lambda m: None)
    assert "torch" not in sys.modules
    Path(sys.argv[2]).write_text(os.environ["CUDA_VISIBLE_DEVICES"] + " " + os.environ["CUDA_DEVICE_ORDER"])
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
""")


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    """PATH with a fake nvidia-smi listing two GPUs, a private lock dir; the environment
    for subprocess jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", INNOUT_GPU_LOCK_DIR=str(tmp_path / "locks"))
    monkeypatch.setattr(gpulock, "PINNED", None)  # what pinning in this process said stays in this test
    for key in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS",
                gpulock.PINNED_MARK):
        env.pop(key, None)
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("INNOUT_GPU_LOCK_DIR", env["INNOUT_GPU_LOCK_DIR"])
    return env


def _wait_for(path: Path, seconds: float = 30.0) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear in {seconds} s")


def test_fake_machine_lists_two_gpus(two_gpus):
    gpus = gpulock.list_gpus()
    assert [g.index for g in gpus] == ["0", "1"]
    assert gpus[1].uuid.startswith("GPU-bbbb")


def test_two_jobs_get_two_gpus_and_a_third_waits_until_one_is_freed(two_gpus, tmp_path):
    jobs = []
    for i in range(3):
        out, release = tmp_path / f"got{i}", tmp_path / f"release{i}"
        proc = subprocess.Popen([sys.executable, "-c", JOB, f"job{i}", str(out), str(release)], env=two_gpus)
        jobs.append((proc, out, release))
        if i < 2:
            _wait_for(out)
    try:
        got = [_wait_for(out).split()[0] for _, out, _ in jobs[:2]]
        assert sorted(got) == ["0", "1"], got  # two different devices
        assert _wait_for(jobs[0][1]).split()[1] == "PCI_BUS_ID"
        time.sleep(1.5)
        assert not jobs[2][1].exists(), "a third job got a GPU while both were held"
        jobs[0][0].send_signal(signal.SIGKILL)  # a killed job frees its GPU (no stale lock)
        jobs[0][0].wait()
        assert _wait_for(jobs[2][1]).split()[0] == got[0]
        holder = (Path(two_gpus["INNOUT_GPU_LOCK_DIR"]) / "gpu-GPU-bbbbbbbb-1111-1111-1111-111111111111.lock").read_text()
        assert f"pid {jobs[1][0].pid}" in holder and "job1" in holder
    finally:
        for proc, _, release in jobs:
            release.write_text("x")
        for proc, _, _ in jobs:
            proc.wait(timeout=30)


def test_waiting_job_says_so_every_ten_seconds(two_gpus, tmp_path):
    folder = tmp_path / "locks"
    folder.mkdir()
    gpus = gpulock.list_gpus()[:1]
    held = gpulock.acquire_gpus(1, gpus, folder, job="first")
    said, now = [], [0.0]

    def sleep(seconds):
        now[0] += seconds
        if now[0] >= 25:
            held.handles[0].close()  # the first job ends

    second = gpulock.acquire_gpus(1, gpus, folder, job="second", say=said.append, sleep=sleep, clock=lambda: now[0])
    assert second.gpus[0].index == "0" and second.waited_seconds >= 25
    assert len(said) == 3, said  # at 0, 10 and 20 s
    assert "first" in said[0]


def test_visible_devices_restrict_the_choice(two_gpus):
    env = dict(two_gpus, CUDA_VISIBLE_DEVICES="1")
    pinned = gpulock.pin_gpus(1, environ=env, say=lambda m: None)
    try:
        assert env["CUDA_VISIBLE_DEVICES"] == "1" and pinned.gpus[0].uuid.startswith("GPU-bbbb")
    finally:
        for handle in pinned.handles:
            handle.close()


def test_slurm_assigned_gpu_is_left_alone(two_gpus):
    env = dict(two_gpus, SLURM_JOB_ID="42", SLURM_JOB_GPUS="1", CUDA_VISIBLE_DEVICES="0")
    said = []
    pinned = gpulock.pin_gpus(1, environ=env, say=said.append)
    assert pinned.gpus == [] and env["CUDA_VISIBLE_DEVICES"] == "0"  # Slurm's choice stands
    assert "Slurm gave this job GPU(s) 1" in said[0]
    assert not any(Path(two_gpus["INNOUT_GPU_LOCK_DIR"]).glob("*.lock"))


def test_a_job_s_child_processes_inherit_its_gpu(two_gpus):
    """nerfstudio's data loaders re-import the rule script: they must not take a second GPU."""
    env = dict(two_gpus)
    first = gpulock.pin_gpus(1, environ=env, say=lambda m: None)
    try:
        child_env = dict(env)  # what a spawned process inherits
        child = gpulock.pin_gpus(1, environ=child_env, say=lambda m: None)
        assert child.gpus == [] and child_env["CUDA_VISIBLE_DEVICES"] == env["CUDA_VISIBLE_DEVICES"] == first.gpus[0].index
        assert env[gpulock.PINNED_MARK] == str(os.getpid())
    finally:
        for handle in first.handles:
            handle.close()


def test_cpu_job_pins_nothing(two_gpus):
    env = dict(two_gpus)
    assert gpulock.pin_gpus(0, environ=env).gpus == []
    assert "CUDA_VISIBLE_DEVICES" not in env


SNAKEFILE = """
rule all:
    input: expand("out/{i}.txt", i=range(4))

rule gpu_job:
    output: "out/{i}.txt"
    resources: gpu=1
    script: "job.py"
"""

SCRIPT = """
from innout.gpulock import pin_job_gpu
pin_job_gpu(snakemake)
import os, time
start = time.time()
time.sleep(1.5)
open(snakemake.output[0], "w").write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {start} {time.time()}")
"""


def test_snakemake_runs_gpu_jobs_each_on_its_own_device(two_gpus, tmp_path):
    """`snakemake --cores 4 --resources gpu=2`: 4 jobs, at most two at once, never two
    overlapping on one device."""
    work = tmp_path / "wf"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    (work / "job.py").write_text(SCRIPT)
    result = subprocess.run([str(SNAKEMAKE), "--cores", "4", "--resources", "gpu=2"], cwd=work, env=two_gpus,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    runs = []
    for i in range(4):
        device, start, end = (work / "out" / f"{i}.txt").read_text().split()
        runs.append((device, float(start), float(end)))
    assert {d for d, _, _ in runs} == {"0", "1"}
    for a in range(4):
        for b in range(a + 1, 4):
            overlap = min(runs[a][2], runs[b][2]) > max(runs[a][1], runs[b][1])
            assert not (overlap and runs[a][0] == runs[b][0]), runs
