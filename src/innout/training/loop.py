"""The optimisation loop the three trainers share: AdamW with warm-up and cosine decay,
gradient clipping, an exponential moving average (EMA) of the weights, progress lines at
least every 10 s, the loss curve in the log, and checkpoints a killed run resumes from.

A trainer gives :class:`Loop` a ``step_fn(step, generator) -> (loss, parts)`` that draws
its batch with the loop's ``torch.Generator`` (whose state is checkpointed), so the same
seed gives the same weights whether or not the run was interrupted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger("innout")

PROGRESS_SECONDS = 8.0  # a progress line at least this often (the house rule is 10 s)
CURVE_POINTS = 20  # the log's loss curve: the mean loss of this many windows


@dataclass
class LoopConfig:
    steps: int
    lr: float
    batch: int
    warmup: int = 50
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay (0: no EMA)
    checkpoint_every: int = 250


class NonFiniteLoss(RuntimeError):
    pass


class Loop:
    """Optimise ``params`` of ``model`` for ``cfg.steps`` steps of ``step_fn``."""

    def __init__(self, name: str, model: torch.nn.Module, cfg: LoopConfig, seed: int, work_dir: str | Path | None,
                 fingerprint: str = "", params=None):
        self.name, self.model, self.cfg, self.fingerprint = name, model, cfg, fingerprint
        self.params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        # foreach: a few multi-tensor operations a step instead of ~10 per parameter; torch
        # takes it by itself on CUDA, not on the CPU (where it saves ~1 % of a UNet step).
        # The same numbers either way, bit for bit.
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                                           foreach=True)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.ema = [p.detach().clone() for p in self.params] if cfg.ema > 0 else None
        self.history: list[dict] = []
        self.step = 0
        self.checkpoint = Path(work_dir) / f"{name}.ckpt.pt" if work_dir is not None else None
        self.seconds = 0.0

    # ---------------------------------------------------------------- schedule
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        span = max(1, cfg.steps - cfg.warmup)
        progress = min(1.0, (step - cfg.warmup) / span)
        floor = cfg.final_lr_fraction
        return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def _ema_update(self) -> None:
        # the usual warm-up of the decay, so that early weights do not dominate a short run
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        # two multi-tensor operations, not two per parameter: on a GPU, where these small
        # models' steps are bound by kernel launches, the loop cost ~10 % of a step (H200)
        with torch.no_grad():
            torch._foreach_mul_(self.ema, decay)
            torch._foreach_add_(self.ema, self.params, alpha=1 - decay)

    # ---------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        if self.checkpoint is None:
            return
        state = {"fingerprint": self.fingerprint, "step": self.step, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "ema": self.ema, "generator": self.generator.get_state(),
                 "history": self.history, "seconds": self.seconds}
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".tmp")
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        tmp.replace(self.checkpoint)

    def _resume(self) -> None:
        if self.checkpoint is None or not self.checkpoint.is_file():
            return
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            log.info("%s: checkpoint %s was made with other settings: starting over", self.name, self.checkpoint)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            for avg, saved in zip(self.ema, state["ema"]):
                avg.copy_(saved)
        self.generator.set_state(state["generator"])
        self.history, self.step, self.seconds = state["history"], int(state["step"]), float(state["seconds"])
        log.info("%s: resuming from step %d", self.name, self.step)

    # ---------------------------------------------------------------- the loop
    def run(self, step_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, dict]]) -> dict:
        cfg = self.cfg
        self._resume()
        self.model.train()
        window = max(1, cfg.steps // CURVE_POINTS)
        start = last = time.perf_counter()
        seconds0, step0 = self.seconds, self.step
        log.info("%s: %d steps of %d samples, lr %.2g, %d trainable parameters", self.name, cfg.steps, cfg.batch, cfg.lr,
                 sum(p.numel() for p in self.params))
        while self.step < cfg.steps:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            loss, parts = step_fn(self.step, self.generator)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"{self.name}: loss became {float(loss)} at step {self.step}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            if self.ema is not None:
                self._ema_update()
            self.history.append({"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}})
            now = time.perf_counter()
            self.seconds = seconds0 + now - start
            if self.step % window == 0 or self.step == cfg.steps:
                means = window_means(self.history[-window:])
                log.info("%s curve: step %d %s", self.name, self.step, " ".join(f"{k} {v:.5f}" for k, v in means.items()))
            if now - last >= PROGRESS_SECONDS or self.step == cfg.steps:
                rate = (self.step - step0) / max(now - start, 1e-9)
                log.info("%s: step %d/%d loss %.5f, %.2f steps/s, %.0f s, eta %.0f s", self.name, self.step, cfg.steps,
                         self.history[-1]["loss"], rate, self.seconds, (cfg.steps - self.step) / max(rate, 1e-9))
                last = now
            if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self._save()
        if self.ema is not None:
            with torch.no_grad():
                for p, avg in zip(self.params, self.ema):
                    p.copy_(avg)
        self.model.eval()
        self._save()
        return self.summary()

    def summary(self) -> dict:
        final = window_means(self.history[-max(1, len(self.history) // 20):])
        return {"steps": self.step, "batch": self.cfg.batch, "lr": self.cfg.lr, "ema": self.cfg.ema,
                "seconds": round(self.seconds, 1), "final_losses": final, "history": self.history}


def window_means(entries: list[dict]) -> dict:
    """Mean of every loss part over the entries that have it (some parts are logged only
    by some kinds of step)."""
    keys = list(dict.fromkeys(k for e in entries for k in e))
    return {k: sum(e[k] for e in entries if k in e) / sum(1 for e in entries if k in e) for k in keys}


def plot_loss_curves(histories: dict[str, list[dict]], path: str | Path) -> Path:
    """One panel per model: every loss part against the step (log scale), smoothed."""
    import matplotlib  # heavy; only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, h in histories.items() if h]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        history = histories[name]
        for key in dict.fromkeys(key for h in history for key in h):
            points = [(i + 1, h[key]) for i, h in enumerate(history) if key in h]
            k = max(1, len(points) // 100)
            xs = [points[min(j + k, len(points)) - 1][0] for j in range(0, len(points), k)]
            smooth = [sum(v for _, v in points[j:j + k]) / len(points[j:j + k]) for j in range(0, len(points), k)]
            if all(v > 0 for v in smooth):
                ax.plot(xs, smooth, label=key)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
