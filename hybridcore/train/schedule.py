"""Learning-rate (and weight-decay) schedules: pure functions of the optimizer step.

Step s counts optimizer updates from 1 to N (= --steps); the factor at step s scales the update that
makes step s. With warmup W, min ratio r and every schedule:

    warmup   s <= W:  lr_factor = s / W                                   (linear, from 1/W up to 1)
    cosine   s >  W:  p = (s - W) / (N - W);  lr_factor = r + (1 - r) * (1 + cos(pi * p)) / 2
    wsd      s >  W:  D = max(1, round(decay_fraction * N)), S = N - D;
                      lr_factor = 1 for s <= S, then 1 - (1 - r) * (s - S) / D   (linear to r at N)
    power    s >  W:  lr_factor = max(r, (s / W) ** -a),  a = power_exponent (default 1/4; W taken as 1 if 0)

Weight decay: the power schedule is Falcon-H1's "effective LR and WD" decay, so it scales the weight
decay by the same factor after warmup (wd_factor = lr_factor there, 1 during warmup); cosine and wsd
keep the weight decay constant (wd_factor = 1). AdamW's decoupled decay multiplies by lr * wd, so the
power schedule's per-step shrinkage falls as (s / W) ** (-2a).

No state: a resumed run recomputes the factor from the step, so nothing but the step is checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import SCHEDULES


@dataclass(frozen=True)
class Schedule:
    kind: str
    total_steps: int
    warmup: int = 0
    min_ratio: float = 0.1
    decay_fraction: float = 0.2
    power_exponent: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")

    def lr_factor(self, step: int) -> float:
        w, n, r = self.warmup, self.total_steps, self.min_ratio
        if step <= w:
            return step / w
        if self.kind == "cosine":
            progress = min(1.0, (step - w) / max(1, n - w))
            return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "wsd":
            decay = max(1, round(self.decay_fraction * n))
            start = n - decay
            if step <= start:
                return 1.0
            return 1.0 - (1.0 - r) * min(1.0, (step - start) / decay)
        return max(r, (step / max(w, 1)) ** -self.power_exponent)

    def wd_factor(self, step: int) -> float:
        if self.kind == "power" and step > self.warmup:
            return self.lr_factor(step)
        return 1.0


def schedule_from_config(config) -> Schedule:
    """The Schedule a TrainConfig describes."""
    return Schedule(config.schedule, config.steps, config.warmup, config.min_lr_ratio, config.decay_fraction,
                    config.power_exponent)


__all__ = ["Schedule", "schedule_from_config"]
