"""The performance suite: seven figures, each a ratio measured side by side.

    python -m prefdiff.perf [--quick] [--out benchmarks/results/perf.json]

One module per figure group: :mod:`.overhead` (1), :mod:`.sampler` (2),
:mod:`.memory` (3 and 6), :mod:`.reward_cost` (4), :mod:`.growth` (5),
:mod:`.efficiency` (7); :mod:`.gpu` is the GPU script's measurement.
docs/benchmarks.md renders the JSON (:mod:`prefdiff.benchdocs`).
"""
