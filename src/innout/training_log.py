"""Training curves of a stage: scalars per step kept for the stage's summary and plot,
and written to TensorBoard (``torch.utils.tensorboard``) when asked.

Every training stage (pretrain, the base stage's prior fit, refine) records losses, PSNR
and learning rates here. The history is part of the stage's resumable state
(:meth:`TrainingLog.state`), so a resumed run still plots its whole curve. TensorBoard
event files are written into the stage's work folder while it trains (point
``tensorboard --logdir`` at ``results/{scene}/.work/<stage>/tensorboard`` to watch) and
copied into the stage's output folder at the end (``<stage folder>/tensorboard``). The
writer opens at the first scalar with ``purge_step`` = the first step this run logs, so
TensorBoard drops what an interrupted run logged after its last checkpoint (and
everything of an earlier run that started over from step 0).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

from innout.viz import plot_curves


class TrainingLog:
    """Scalars of one training run. ``tensorboard_dir``: where event files go (None: no
    TensorBoard); ``start_step``: how many steps were done before this run (a resumed
    run's checkpoint; scalars are logged at the number of steps done, from 1)."""

    def __init__(self, tensorboard_dir: Optional[Path] = None, start_step: int = 0):
        self.history: list[dict] = []
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.start_step = int(start_step)
        self._writer: Any = None

    def start_at(self, step: int) -> None:
        """The run resumes after ``step`` steps done (call before any scalar is added)."""
        self.start_step = int(step)

    def _tensorboard(self) -> Any:
        if self._writer is None and self.tensorboard_dir is not None:
            # heavy import (the tensorboard package, seconds on a CPU): only when asked for
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
            # what an earlier run logged from the first step this one logs on is dropped
            self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=self.start_step + 1)
        return self._writer

    def add(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (name -> value; names may hold a ``group/`` prefix) at ``step``."""
        values = {k: float(v) for k, v in scalars.items()}
        self.history.append({"step": int(step), **values})
        writer = self._tensorboard()
        if writer is not None:
            for name, value in values.items():
                writer.add_scalar(name, value, int(step))

    def state(self) -> list[dict]:
        return list(self.history)

    def load_state(self, history: Optional[list]) -> None:
        self.history = [dict(h) for h in (history or [])]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def export(self, out_dir: Path) -> Optional[Path]:
        """Copy the TensorBoard event files into ``out_dir/tensorboard`` (None without them)."""
        self.close()
        if self.tensorboard_dir is None or not self.tensorboard_dir.is_dir():
            return None
        dst = Path(out_dir) / "tensorboard"
        shutil.copytree(self.tensorboard_dir, dst, dirs_exist_ok=True)
        return dst

    def plot(self, out_png: Path, title: str, panels: Mapping[str, list[str]]) -> None:
        """The history as ``out_png`` (:func:`innout.viz.plot_curves`)."""
        plot_curves(self.history, panels, out_png, title)
