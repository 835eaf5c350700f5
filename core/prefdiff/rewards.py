"""Rewards as the host hands them out: checked against the contract, composable.

A plugin's reward is ``reward(samples, conditions) -> (scores[B], info)``. The
host wraps it in :class:`Reward`, which stops a run with an error naming the
plugin and the reward the moment an output breaks the contract (wrong shape,
not a float tensor, NaN or Inf, another device, no gradient from a reward
registered differentiable), before any optimizer step can use it.
A weighted sum of registered rewards is written in configuration as
``"0.7*planner_feasibility + 0.3*layout_consistency"``, each part logged, as
multi-reward training in Flow-GRPO (Liu et al. 2025) does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from prefdiff.errors import PluginError, UserError

RewardFn = Callable[[torch.Tensor, Any], "tuple[torch.Tensor, dict[str, Any]]"]


@dataclass
class Reward:
    """A reward from the registry; calling it checks the output."""

    name: str
    plugin: str
    fn: RewardFn
    differentiable: bool = False

    def __call__(self, samples: torch.Tensor, conditions: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
        try:
            out = self.fn(samples, conditions)
        except (UserError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:
            raise PluginError(f"reward '{self.name}' (plugin '{self.plugin}') raised "
                              f"{type(exc).__name__}: {exc}") from exc
        scores, info = check_reward_output(out, samples.shape[0], self.describe(), samples.device,
                                           lambda: finite_rows(samples))
        if self.differentiable and samples.requires_grad and torch.is_grad_enabled() and not scores.requires_grad:
            raise PluginError(f"{self.describe()} is registered with differentiable=True, but its scores carry "
                              f"no gradient; compute them with torch operations on the samples, or register "
                              f"it with differentiable=False")
        return scores, info

    def describe(self) -> str:
        return f"reward '{self.name}' (plugin '{self.plugin}')"


def finite_rows(samples: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: which samples hold no NaN or Inf (on their device; no host sync)."""
    return torch.isfinite(samples.detach()).reshape(samples.shape[0], -1).all(dim=1)


def check_reward_output(out: Any, batch: int, who: str, device: torch.device | None = None,
                        samples_finite: Callable[[], torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Return ``out`` if it meets the reward contract (scores on ``device`` if given), else raise
    :class:`PluginError`; or :class:`UserError` when every NaN or Inf score is that of a sample
    the model made NaN or Inf (``samples_finite()``: :func:`finite_rows`, asked only then), not the reward's."""
    fix = "return (scores, info) with scores a finite float tensor of shape [B]"
    if not (isinstance(out, tuple) and len(out) == 2):
        raise PluginError(f"{who} returned {type(out).__name__}, not a (scores, info) pair; {fix}")
    scores, info = out
    if not isinstance(scores, torch.Tensor):
        raise PluginError(f"{who} returned scores of type {type(scores).__name__}; {fix}")
    if not scores.is_floating_point():
        raise PluginError(f"{who} returned {scores.dtype} scores; {fix}")
    if tuple(scores.shape) != (batch,):
        raise PluginError(f"{who} returned scores of shape {tuple(scores.shape)} for a batch of "
                          f"{batch}; {fix}")
    if device is not None and scores.device != device:
        raise PluginError(f"{who} returned scores on {scores.device} for samples on {device}; "
                          f"compute the scores on the samples' device")
    bad = ~torch.isfinite(scores.detach())
    if bad.any():
        finite = None if samples_finite is None else samples_finite().to(bad.device)
        if finite is not None and not (bad & finite).any():
            broken = int((~finite).sum())
            raise UserError(f"the model made {broken} sample(s) of {batch} holding NaN or Inf, and {who} scored "
                            f"them NaN or Inf: training diverged (lower --model.init_args.lr) or the model runs "
                            f"at a precision it cannot hold (train in 32-true or bf16-mixed)")
        kinds = "NaN" if torch.isnan(scores.detach()).any() else "Inf"
        raise PluginError(f"{who} returned {int(bad.sum())} {kinds} score(s) of {batch}; {fix}")
    if not isinstance(info, dict):
        raise PluginError(f"{who} returned info of type {type(info).__name__}; {fix}")
    return scores, info


_TERM = re.compile(r"^\s*(?:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?([A-Za-z_][\w.\-]*)\s*$")


def is_reward_name(name: str) -> bool:
    """Whether ``name`` can stand in a reward spec (a bare name or a weighted sum's term)."""
    match = _TERM.match(name)
    return bool(match) and match.group(1) is None and match.group(2) == name


def parse_reward_spec(spec: str) -> list[tuple[float, str]]:
    """``"0.7*a + 0.3*b"`` -> ``[(0.7, "a"), (0.3, "b")]``; a bare name has weight 1."""
    terms = []
    for part in spec.split("+"):
        match = _TERM.match(part)
        if not match:
            raise UserError(f"--reward '{spec}' is not a reward name or a weighted sum like "
                            f"'0.7*name_a + 0.3*name_b'")
        terms.append((float(match.group(1) or 1.0), match.group(2)))
    return terms


def build_reward(manager, spec: str, **options: Any) -> Reward:
    """A checked reward for a registered name or a weighted sum of names."""
    terms = parse_reward_spec(spec)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return _single(manager, terms[0][1], options)
    names = [name for _, name in terms]
    stray = sorted(set(options) - set(names))
    if stray:
        raise UserError(f"reward '{spec}' is a weighted sum: its options go under each part's name, e.g. "
                        f"{{{names[0]}: {{{stray[0]}: ...}}}}; {', '.join(stray)} is not one of its parts "
                        f"({', '.join(dict.fromkeys(names))})")
    misplaced = next((name for name in names if not isinstance(options.get(name, {}), dict)), None)
    if misplaced is not None:
        raise UserError(f"reward '{spec}': the options of its part {misplaced} must be a mapping of option names "
                        f"to values, got {options[misplaced]!r}")
    parts = [(w, _single(manager, name, options.get(name, {}))) for w, name in terms]

    def composite(samples: torch.Tensor, conditions: Any):
        total = torch.zeros(samples.shape[0], device=samples.device, dtype=torch.float32)
        info: dict[str, Any] = {}
        for weight, reward in parts:
            scores, _ = reward(samples, conditions)
            total = total + weight * scores.float()
            info[f"reward/{reward.name}"] = scores.detach().float().mean().item()
        return total, info

    return Reward(spec, "+".join(sorted({r.plugin for _, r in parts})), composite,
                  differentiable=all(r.differentiable for _, r in parts))


def _single(manager, name: str, options: dict[str, Any]) -> Reward:
    entry = manager.entry("rewards", name)
    fn = manager.build("rewards", name, **options)
    if not callable(fn):
        raise PluginError(f"reward factory '{name}' (plugin '{entry.plugin}') returned "
                          f"{type(fn).__name__}, not a callable reward(samples, conditions)")
    return Reward(name, entry.plugin, fn, bool(entry.meta.get("differentiable", False)))
