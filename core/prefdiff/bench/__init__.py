"""`prefdiff bench`: one module per job.

- :mod:`~prefdiff.bench.recipe`: the :class:`Recipe` a field registers and the base model's cache key;
- :mod:`~prefdiff.bench.stats`: the paired bootstrap interval and the default drift;
- :mod:`~prefdiff.bench.runner`: pretrain, align, evaluate (:func:`run_benchmark`);
- :mod:`~prefdiff.bench.curves`: the held-out reward against training time;
- :mod:`~prefdiff.bench.memory`: peak memory of a block;
- :mod:`~prefdiff.bench.report`: report.md;
- :mod:`~prefdiff.bench.publish`: putting the finished run in place atomically.

Plugins import the recipe types and the statistics from :mod:`prefdiff.api`.
"""

from prefdiff.bench.recipe import Recipe
from prefdiff.bench.runner import Benchmark, run_benchmark
from prefdiff.bench.stats import paired_bootstrap_ci, sliced_wasserstein

__all__ = ["Benchmark", "Recipe", "paired_bootstrap_ci", "run_benchmark", "sliced_wasserstein"]
