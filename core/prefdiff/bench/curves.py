"""The held-out reward against training time, recorded while a method trains."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch


def judge_curve(score: Callable[[Any], float], start: float, every: int):
    """A Lightning callback recording ``[training seconds, held-out reward]`` every ``every`` batches.

    ``score(denoiser)`` evaluates the model (the judge on a small fixed subset);
    its time is excluded from the training clock and summed in ``eval_s``. The
    first point is ``[0, start]``, the base model; the last is taken at the end
    of training. Evaluation runs on a forked RNG and restores the train mode,
    so training draws the same numbers with or without the curve.
    """
    import pytorch_lightning as pl

    class JudgeCurve(pl.Callback):
        def __init__(self) -> None:
            self.points: list[list[float]] = [[0.0, start]]
            self.eval_s = 0.0
            self.batches = 0
            self.scored_at = 0

        def on_train_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, *args: Any) -> None:
            self.batches += 1
            if self.batches % every == 0:
                self._score(module)

        def on_train_end(self, trainer, module) -> None:
            if self.scored_at != self.batches:
                self._score(module)

        def _score(self, module) -> None:
            began = time.perf_counter()
            training = module.denoiser.training
            with torch.random.fork_rng(devices=[]):
                value = score(module.denoiser)
            module.denoiser.train(training)
            self.points.append([round(began - self.start - self.eval_s, 3), value])
            self.scored_at = self.batches
            self.eval_s += time.perf_counter() - began

    return JudgeCurve()
