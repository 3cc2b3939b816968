"""Training curves: TensorBoard scalars in the stage's folder, resumable history, the plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from innout.training_log import TrainingLog


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard reads from ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_scalars_reach_tensorboard_and_a_resumed_run_replaces_the_lost_steps(tmp_path):
    """A run logs steps 1-6 and is killed (its checkpoint was at step 4); the resumed run
    starts at 4 and logs 5-8: TensorBoard shows each step once, the resumed values where
    they overlap. The export lands in the stage's folder and the history plots."""
    work, out = tmp_path / "work" / "tensorboard", tmp_path / "out"
    first = TrainingLog(work)
    for step in range(1, 7):
        first.add(step, {"loss/total": 1.0 / step, "lr": 0.01})
    first.close()
    resumed = TrainingLog(work, start_step=4)
    resumed.load_state([h for h in first.state() if h["step"] <= 4])  # the history the checkpoint held
    for step in range(5, 9):
        resumed.add(step, {"loss/total": 2.0 / step, "lr": 0.005})
    assert resumed.export(out) == out / "tensorboard"
    scalars = _scalars(out / "tensorboard")
    assert [s for s, _ in scalars["loss/total"]] == list(range(1, 9))
    assert dict(scalars["loss/total"])[6] == pytest.approx(2.0 / 6) and dict(scalars["lr"])[2] == pytest.approx(0.01)
    assert dict(scalars["loss/total"])[4] == pytest.approx(1.0 / 4)  # the first run's, up to its checkpoint
    assert [h["step"] for h in resumed.state()] == list(range(1, 9))
    resumed.plot(out / "curves.png", "test", {"losses": ["loss/total"], "learning rate": ["lr"], "empty": ["nothing"]})
    assert (out / "curves.png").stat().st_size > 1000


def test_no_tensorboard_when_off(tmp_path):
    log = TrainingLog(None)
    log.add(1, {"loss": 1.0})
    assert log.export(tmp_path) is None and not (tmp_path / "tensorboard").exists()
