"""Exponential moving average of the trained weights (float32 shadows, kept on the CPU-side device of
the weights), the weights a trained model is exported with."""
from __future__ import annotations

import contextlib

import torch


class EMA:
    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.decay = float(decay)
        self.shadow = {k: p.detach().float().clone() for k, p in params.items()}

    def rate(self, step: int) -> float:
        """The decay at optimizer step `step` (0-based): warms up as (1 + t) / (10 + t), so early
        averages are not dominated by the random initialisation."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter], step: int) -> None:
        decay = self.rate(step)
        for name, p in params.items():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu().contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise KeyError("EMA state holds other parameters than the model trains.")
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @contextlib.contextmanager
    def applied(self, params: dict[str, torch.nn.Parameter]):
        """Inside: the parameters hold the averaged weights; outside, the trained ones again."""
        saved = {k: p.detach().clone() for k, p in params.items()}
        try:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self.shadow[name])
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])
