"""tools/profile_unet_step.py: the halves of each UNet step, per kind, and the profile."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import profile_unet_step  # noqa: E402


def test_medians_per_kind_leave_out_the_warm_up_and_the_profiled_steps():
    probe = profile_unet_step.StepProfiler("cpu")
    slow = {"fwd": 9.0, "rest": 9.0}  # warm-up and profiled steps: never in the medians
    probe.rows = [{"step": s, "kind": "plain", **slow} for s in range(profile_unet_step.TIMED_FROM)]
    probe.rows += [{"step": s, "kind": "ila" if s % 2 else "plain", "fwd": 0.1 if s % 2 else 0.02, "rest": 0.05}
                   for s in range(profile_unet_step.TIMED_FROM, profile_unet_step.PROFILED_FROM - 1)]
    probe.rows += [{"step": s, "kind": "pattern", **slow} for s in range(profile_unet_step.PROFILED_FROM - 1, 60)]
    medians = probe.medians()
    assert set(medians) == {"plain", "ila"}
    assert medians["plain"]["fwd_ms"] == 20.0 and medians["ila"]["fwd_ms"] == 100.0
    assert medians["ila"]["rest_ms"] == 50.0


def test_a_short_cpu_run_times_every_kind_of_step(tmp_path, monkeypatch):
    # fewer steps than the tool's (speed only): the seed's first 12 steps hold every kind
    for name, value in {"TIMED_FROM": 2, "PROFILED_FROM": 14, "PROFILED_STEPS": 2, "UNET_STEPS": 17}.items():
        monkeypatch.setattr(profile_unet_step, name, value)
    monkeypatch.setattr(profile_unet_step, "SHORT_LOOPS", {"vae": 4, "depth": 4})
    out = tmp_path / "profile.json"
    assert profile_unet_step.main(["--device", "cpu", "--threads", "2", "--scenes", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["medians"]) == {"plain", "ila", "pattern"}, result["medians"]
    assert all(row["fwd_ms"] > 0 and row["rest_ms"] > 0 for row in result["medians"].values())
    assert result["cpu_ms_per_step"] > 0
