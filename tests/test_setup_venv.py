"""tools/setup-venv.sh picks the torch build: the registry's by default, another index's
(an older CUDA for an older driver) with INNOUT_TORCH_INDEX. Run against a fake venv
whose python and uv only record how they were called."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
case "$*" in *"import innout, torch"*) echo "innout 0 torch 0+fake";; esac
"""


def _fake_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "tools").mkdir(parents=True)
    shutil.copy2(REPO / "tools" / "setup-venv.sh", root / "tools" / "setup-venv.sh")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "uv"):
        (bin_dir / name).write_text(RECORDER.format(log=tmp_path / "calls.log"))
        (bin_dir / name).chmod(0o755)
    return root


def _calls(tmp_path: Path, **env) -> list[str]:
    root = _fake_checkout(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INNOUT_")} | env
    subprocess.run(["bash", str(root / "tools" / "setup-venv.sh")], env=environ, check=True, capture_output=True, timeout=60)
    return [line for line in (tmp_path / "calls.log").read_text().splitlines() if line.startswith("uv ")]


def test_default_build_comes_from_the_registry(tmp_path):
    calls = _calls(tmp_path)
    assert calls == ["uv pip install --quiet --python .venv/bin/python torch==2.15.0 torchvision==0.29.2 -e .[test]"]


def test_torch_index_for_an_older_driver(tmp_path):
    calls = _calls(tmp_path, INNOUT_TORCH_INDEX="https://download.pytorch.org/whl/cu126")
    assert calls == [
        "uv pip install --quiet --python .venv/bin/python --index-url https://download.pytorch.org/whl/cu126 "
        "torch==2.15.0 torchvision==0.29.2",
        "uv pip install --quiet --python .venv/bin/python -e .[test]",
    ]
