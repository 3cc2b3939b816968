"""Run the Snakemake workflow of this checkout in a scratch copy (for tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "profiles", "envs")


def workflow_copy(dest: Path) -> Path:
    """A copy of the workflow files (not results) in ``dest``; the library is the installed one."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, timeout: float = 900, wrap_timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake offline in ``workdir``. ``wrap_timeout``: run it under ``timeout -k``
    (SIGTERM, then SIGKILL 30 s later), so Snakemake can cancel its cluster jobs first."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [str(SNAKEMAKE), *args]
    if wrap_timeout is not None:
        command = ["timeout", "-k", "30", str(int(wrap_timeout)), *command]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def files_under(path: Path) -> list[Path]:
    return [p for p in Path(path).rglob("*")] if Path(path).exists() else []


def planned_rules(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from the job-stats table of a ``-n --quiet rules`` run."""
    counts: dict[str, int] = {}
    in_table = False
    for line in (result.stdout + result.stderr).splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table:
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(parts[0]) <= {"-"}:
                in_table = False
    return counts
