"""What the three toy-model trainings share: seeds, scene pools, interior points, the optimiser."""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from ..data.toyscenes import Scene, scene

TRAIN_SEED = 1000
EVAL_SEED = 2_000_000  # held-out scenes: no training seed comes near it
PROBE_SEED = 3_000_000  # scenes the DINOv2 linear probe is fitted on (not the training pool)


def scene_pool(n: int, seed: int, size: int = 128) -> list[Scene]:
    """``n`` multi-object scenes from ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    return [scene(rng, size) for _ in range(n)]


def interior_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of a pixel deep inside ``mask``: erode until one more step would empty it."""
    m = mask.copy()
    while True:
        e = m.copy()
        e[1:] &= m[:-1]
        e[:-1] &= m[1:]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        if not e.any():
            break
        m = e
    ys, xs = np.nonzero(m)
    k = len(ys) // 2
    return float(xs[k]), float(ys[k])


class Optimiser:
    """AdamW + one-cycle schedule + loss bookkeeping and progress lines, shared by the three trainings."""

    def __init__(self, params, lr: float, steps: int, name: str, log: Callable[[str], None],
                 clip_norm: Optional[float] = None) -> None:
        import torch

        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=1e-4)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr, total_steps=max(steps, 2), pct_start=0.1)
        self.steps, self.name, self.log, self.clip_norm = steps, name, log, clip_norm
        self.losses: list[float] = []
        self.start = time.time()

    def step(self, loss, recorded: float) -> None:
        """Back-propagate ``loss``, update, record ``recorded`` and log every tenth of the run."""
        import torch

        self.opt.zero_grad()
        loss.backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.opt.step()
        self.sched.step()
        self.losses.append(recorded)
        n = len(self.losses)
        if n % max(1, self.steps // 10) == 0:
            self.log(f"{self.name}: step {n}/{self.steps} loss {np.mean(self.losses[-50:]):.4f} "
                     f"({time.time() - self.start:.0f}s)")
