"""What a field tells `prefdiff bench`: the :class:`Recipe`, and the cache key of its base model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

#: How a base model is made. Part of the cache key: bump it when pretraining changes.
#: 2: the base model's initial weights come from the seed.
BASE_FORMAT = 2

#: Recipe fields that decide the base model (and so its cache key).
BASE_FIELDS = ("domain", "dataset", "dataset_options", "model", "conditioner", "conditioner_options",
               "pretrain_steps", "pretrain_batch", "train_size")


@dataclass(frozen=True)
class AgainstReal:
    """How the benchmarks page summarises a field's measure against real data (``prefdiff.benchdocs``).

    The cell reads "LABEL: real R, base B, METHOD M (INTERVAL)" for the metric of real
    data, the base and the method with the best judge improvement.
    """

    metric: str
    """A key of each model's ``metrics`` (see :attr:`Recipe.metrics`)."""
    label: str
    legend: str
    """What the metric is, for the page's legend ("the planner's success rate, real being the
    demonstrations")."""
    interval: str | None = None
    """A method metric with its 95% interval beside it (``KEY_ci95``), shown after the values."""
    reads: str = ""
    """How that interval reads: a format of ``v``, ``lo`` and ``hi``, e.g.
    ``"{v:+.3f} [{lo:+.3f}, {hi:+.3f}] over base"``."""


@dataclass
class Recipe:
    """Everything `prefdiff bench` needs to know about one domain.

    A plugin registers a factory ``factory(quick: bool) -> Recipe`` with the
    ``prefdiff_register_benchmarks`` hook. Paths that only exist once data is
    generated are filled in by :attr:`prepare`, which returns the prepared recipe.
    """

    domain: str
    dataset: str
    model: dict
    """A model preset (:class:`prefdiff.models.ModelPreset` fields), or ``{"pipeline": DIR}``:
    a diffusers pipeline folder whose UNet pretraining starts from (text-to-image fields)."""
    reward: str
    judge: str
    dataset_options: dict = field(default_factory=dict)
    conditioner: str | None = None
    conditioner_options: dict = field(default_factory=dict)
    reward_options: dict = field(default_factory=dict)
    """Options of :attr:`reward`."""
    other_reward_options: dict[str, dict] = field(default_factory=dict)
    """Options of the other rewards a method names with ``methods[m]["reward"]`` (a
    differentiable surrogate for reward backpropagation), keyed by reward name."""
    judge_options: dict = field(default_factory=dict)
    judge_note: str = ""
    methods: dict[str, dict] = field(default_factory=dict)
    """Per-method module options (beta, lr, ...) over the trainers' defaults; the key
    ``steps`` sets that method's training steps instead of ``align_steps``."""
    default_methods: list[str] = field(default_factory=lambda: ["dpo", "ddpo"])
    pretrain_steps: int = 1000
    pretrain_batch: int = 32
    align_steps: int = 50
    align_batch: int = 8
    lora_rank: int = 8
    n_eval: int = 64
    eval_samples: int = 1
    """Noise draws per held-out condition. With more than one, the improvement's
    interval is a paired bootstrap over conditions of their mean difference, which
    narrows it where one sample per condition is mostly sampling noise."""
    num_steps: int = 20
    eta: float = 1.0
    """DDIM eta of evaluation and mining: the stochastic sampler the policy-gradient
    methods optimise; fixed noise keeps base and aligned samples paired."""
    mine_conditions: int = 128
    mine_per_condition: int = 4
    train_size: int | None = None
    """Passed to the dataset factory as ``size`` when set."""
    prepare: Callable[["Recipe", Path], "Recipe"] | None = None
    """``prepare(recipe, data_dir) -> Recipe``: called once before anything else, with a
    cache folder for the domain's data; generates what is missing (data, trained judges)
    and returns the recipe with its paths and options filled in (``dataclasses.replace``)."""
    drift: Callable[[torch.Tensor, torch.Tensor], float] | None = None
    """drift(samples, real) -> float; default: sliced Wasserstein-1 distance."""
    drift_note: str = ""
    """What ``drift`` measures, for the report (when the recipe brings its own)."""
    render: Callable[[dict[str, torch.Tensor], Any, Path], None] | None = None
    """render({row name: samples}, conditions, png path): the before/after figure."""
    metrics: Callable[[dict[str, torch.Tensor], Any], dict[str, dict[str, Any]]] | None = None
    """metrics({row name: samples}, conditions) -> {row name: {name: value}}: the field's own
    numbers beyond the judge (a success rate, with its interval against the base), written
    into results.json under each model's ``metrics`` and into the report. The rows are
    ``real`` (the held-out split's own samples, where the dataset has them in the samples'
    shape), ``base``, then each method; every row lines up with the conditions."""
    shipped_bases: str | None = None
    """A folder of pretrained bases shipped with the field (:mod:`prefdiff.bench.shipped`),
    used instead of pretraining when one matches the recipe's key."""
    edit: Callable[[Any, Any, Path], dict] | None = None
    """edit(denoiser, scheduler, out_dir) -> {"reward_mean", "preservation", ...}: the
    field's editing task, run on the aligned model with the best judge improvement
    (the base model when no method ran); it may write figures into out_dir."""
    against_real: AgainstReal | None = None
    """The field's own measure of what its samples are worth against real data, one of the
    :attr:`metrics`: the "against real data" cell of the benchmarks page's summary table."""

    def reward_for(self, method: str) -> tuple[str, dict]:
        """The reward a method trains with, and its options."""
        name = self.methods.get(method, {}).get("reward", self.reward)
        options = self.reward_options if name == self.reward else self.other_reward_options.get(name, {})
        return name, dict(options)


def key_material(recipe: Recipe, seed: int, cache: Path) -> str:
    """What the cache key hashes: the base-deciding fields as JSON, paths inside ``cache``
    written relative to it (``$CACHE``) so the key does not depend on where the cache lives."""
    keyed = {k: v for k, v in asdict(recipe).items() if k in BASE_FIELDS}
    blob = json.dumps({**keyed, "seed": seed, "base": BASE_FORMAT}, sort_keys=True, default=str)
    return blob.replace(str(Path(cache).resolve()), "$CACHE").replace(str(cache), "$CACHE")


def recipe_key(recipe: Recipe, seed: int, cache: Path) -> str:
    """The cache key of the base model a prepared recipe pretrains with ``seed``."""
    return hashlib.sha256(key_material(recipe, seed, cache).encode()).hexdigest()[:12]
