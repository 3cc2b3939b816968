"""Kill the workflow in the middle of a training stage (SIGKILL to every process, as a
lost node would), rerun it: finished stages are kept and training resumes from its last
checkpoint (issue 6, "Kill and resume").

A small procedural scene with provided poses (no COLMAP) keeps this to a minute or two.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from workflow_helpers import SNAKEMAKE, snakemake, workflow_copy

OVERRIDES = [
    "pretrain.iterations=400",
    "pretrain.steps_per_checkpoint=40",
    "pretrain.rays_per_batch=512",
    "pretrain.log_every_steps=40",
]


def _small_workflow(dest: Path) -> Path:
    work = workflow_copy(dest)
    cfg = yaml.safe_load((work / "config" / "config.yaml").read_text())
    cfg["generated"] = {"small": {"variant": "forward", "seed": 2, "n_train": 16, "n_test": 4,
                                  "width": 256, "height": 192, "downscales": [2]}}
    cfg["scene"]["downscale"] = 2
    cfg["scene"]["spinnerf_n_test"] = 4
    cfg["method"]["overrides"] = OVERRIDES
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (work / "config" / "scenes.tsv").write_text("scene\tpath\tformat\tposes\tprompt\n"
                                                "small\tresults/generated/small\tspinnerf\tprovided\t\n")
    return work


def _wait_for(predicate, timeout: float, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (jobs may run in their own sessions)."""
    import psutil

    root = psutil.Process(pid)
    processes = root.children(recursive=True) + [root]
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


def test_interrupted_pretrain_resumes_and_keeps_finished_stages(tmp_path):
    work = _small_workflow(tmp_path / "wf")
    target = "results/small/pretrain/summary.json"
    checkpoints = work / "results/small/.work/pretrain/checkpoints"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    first_log = tmp_path / "first-run.log"  # a file, not a pipe: a full pipe would stall the run
    with first_log.open("w") as sink:
        first = subprocess.Popen([str(SNAKEMAKE), "--cores", "2", target], cwd=work, env=env,
                                 stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        reached = _wait_for(lambda: any(checkpoints.glob("step-*.ckpt")), 900, first)
        assert reached, first_log.read_text()[-4000:] if first.poll() is not None else "no checkpoint in time"
        # a lost node: every process of the run dies at once, mid-training
        _kill_tree(first.pid)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert not (work / target).exists()
    scene_summary = work / "results/small/scene/summary.json"
    scene_mtime = scene_summary.stat().st_mtime_ns
    killed_at = max(int(p.name[5:14]) for p in checkpoints.glob("step-*.ckpt")) + 1

    # after a hard kill Snakemake's lock stays behind: --unlock, as the README says
    assert snakemake(work, "--unlock").returncode == 0
    second = snakemake(work, "--cores", "2", target, timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-4000:]
    summary = yaml.safe_load((work / target).read_text())
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= killed_at
    assert summary["steps_this_run"] < 400
    assert "resuming from step" in (work / "logs/small/pretrain.log").read_text()
    assert scene_summary.stat().st_mtime_ns == scene_mtime  # the finished stage was kept
    assert not list((work / "results/small").glob(".*tmp*")), "temporary folders left behind"
    jobs = second.stdout + second.stderr
    assert "rule scene:" not in jobs and "localrule scene:" not in jobs
