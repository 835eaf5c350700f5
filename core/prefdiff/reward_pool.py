"""Rewards scored in worker processes while the trainer samples the next chunk.

CPU-bound rewards (a MuJoCo execution, a lattice planner) cost as much as
sampling on a small model, and in series the two add up. ddpo-pytorch hides
the reward behind sampling with a thread executor; a CPU-bound Python reward
holds the GIL, so here the workers are processes (or Ray actors past one
machine). A worker builds its own reward from the registry by name, since a
reward may hold what cannot be pickled (a simulator); only samples,
conditions and scores cross the process boundary.

The trainer samples its batch in chunks, submits each chunk's decoded
samples as soon as they exist, and collects the scores when it needs them:
with the same chunks, the scores are those of the in-process reward, and the
host checks them against the reward contract exactly as it checks its own.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import Any

import torch

from prefdiff.errors import UserError

BACKENDS = ("process", "ray")

_worker_reward = None


def _start_worker(spec: str, options: dict[str, Any], plugins: str | None) -> None:
    import os

    global _worker_reward
    torch.set_num_threads(1)  # one core per worker: the trainer keeps the others
    if plugins is not None:
        os.environ["PREFDIFF_PLUGINS"] = plugins
    from prefdiff.plugins import get_manager

    _worker_reward = get_manager().reward(spec, **options)


def _score(samples: torch.Tensor, cond: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    scores, info = _worker_reward.fn(samples, cond)
    return scores.detach().cpu(), {k: v for k, v in info.items() if isinstance(v, (int, float, str))}


class RewardPool:
    """Score batches in ``workers`` separate processes; :meth:`submit` returns a future.

    :param spec: a registered reward name or weighted sum (as ``--model.reward`` takes).
    :param options: its factory options.
    :param workers: worker processes (or Ray actors).
    :param backend: ``process`` (one machine) or ``ray`` (the optional ``ray`` extra).
    """

    def __init__(self, spec: str, options: dict[str, Any] | None = None, workers: int = 1,
                 backend: str = "process") -> None:
        import os

        if workers < 1:
            raise UserError(f"--model.reward_workers must be >= 1 for a pool, got {workers}")
        check_backend(backend)
        self.backend = backend
        args = (spec, dict(options or {}), os.environ.get("PREFDIFF_PLUGINS"))
        if backend == "ray":
            self._actors = _ray_actors(workers, args)
            self._next = 0
        else:
            # spawn, not fork: the trainer process holds torch's thread pool and Lightning's state
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker, initargs=args)

    def submit(self, samples: torch.Tensor, cond: Any):
        """Start scoring ``samples`` (decoded) for ``cond``; ``.result()`` gives ``(scores, info)``."""
        samples = samples.detach().cpu()
        cond = _to_cpu(cond)
        if self.backend == "ray":
            actor = self._actors[self._next % len(self._actors)]
            self._next += 1
            return _RayFuture(actor.score.remote(samples, cond))
        return self._executor.submit(_score, samples, cond)

    def close(self) -> None:
        """Stop the workers."""
        if self.backend == "ray":
            import ray

            for actor in self._actors:
                ray.kill(actor)
        else:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _to_cpu(cond: Any) -> Any:
    if torch.is_tensor(cond):
        return cond.detach().cpu()
    if isinstance(cond, dict):
        return {k: _to_cpu(v) for k, v in cond.items()}
    return cond


class _RayFuture:
    def __init__(self, ref) -> None:
        self.ref = ref

    def result(self):
        import ray

        return ray.get(self.ref)


def check_backend(backend: str) -> None:
    """``--model.reward_backend`` names a backend this machine can run (checked before training starts)."""
    import importlib.util

    if backend not in BACKENDS:
        raise UserError(f"--model.reward_backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise UserError("--model.reward_backend ray needs Ray: pip install 'prefdiff[ray]' (or pip install ray)")


def _ray_actors(workers: int, args: tuple):
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Scorer:
        def __init__(self) -> None:
            _start_worker(*args)

        def score(self, samples, cond):
            return _score(samples, cond)

    return [Scorer.remote() for _ in range(workers)]
