"""`make mutate`: mutation testing (mutmut 3) of the maths layer, in a copy of the tree.

mutmut writes mutants of the listed modules and runs, for each one, only the
tests that cover the mutated function; a mutant that no test fails
"survives". The run happens in a copy (``.mutate/``) so the working tree is
never mutated, with each package moved under ``src/`` where mutmut expects
packages. The summary per module goes to ``docs/mutants.json``, which
docs/testing.md reports from (a test checks the two agree).

The trainers' ``__init__`` methods carry ``# pragma: no mutate block``: mutmut
wraps each mutated function in a trampoline, and Lightning's
``save_hyperparameters`` reads the hyperparameters off the ``__init__`` frame,
which the trampoline replaces. Their checks are covered by the error tests.

Every mutant of the listed modules is generated, but by default a seeded random sample of
``--sample`` mutants per module is run (mutant sampling: Acree 1980; Zhang et al., ICSE 2010,
found a 10% sample predicts the full mutation score closely). The full population of about
4,600 mutants takes hours on 2 cores (each mutant costs a fork and a pytest session, about 4 s
here); the sample finishes within the hour and its kill rate comes with a 95% Wilson interval.
``--sample 0`` runs every mutant.

    python tools/mutate.py [--sample N] [--seed S] [--only MODULE] [--max-children N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ROOT / ".mutate"

#: module (as mutmut names it) -> its source in the tree.
MODULES = {
    "prefdiff.losses": "core/prefdiff/losses.py",
    "prefdiff.sampling": "core/prefdiff/sampling/*",
    "prefdiff.trainers": "core/prefdiff/trainers/*",
    "prefdiff.data.mining": "core/prefdiff/data/mining.py",
    "prefdiff.bench.stats": "core/prefdiff/bench/stats.py",
    "prefdiff.bench.seeds": "core/prefdiff/bench/seeds.py",
    "prefdiff.models.text": "core/prefdiff/models/text.py",
    "prefdiff.models.codec": "core/prefdiff/models/codec.py",
    "prefdiff.models.lora": "core/prefdiff/models/lora.py",
    "prefdiff.models.denoiser": "core/prefdiff/models/denoiser.py",
    "prefdiff.models.pipelines": "core/prefdiff/models/pipelines.py",
    "prefdiff.models.flow_pipelines": "core/prefdiff/models/flow_pipelines.py",
    "prefdiff.textdata": "core/prefdiff/textdata/*",
    "prefdiff_t2i.clip_rewards": "plugins/t2i/prefdiff_t2i/clip_rewards.py",
    "prefdiff_t2i.faithfulness": "plugins/t2i/prefdiff_t2i/faithfulness.py",
    "prefdiff_t2i.world": "plugins/t2i/prefdiff_t2i/world.py",
    "prefdiff_medical.rewards": "plugins/medical/prefdiff_medical/rewards.py",
    "prefdiff_driving.rewards": "plugins/driving/prefdiff_driving/rewards.py",
    "prefdiff_robotics.rewards": "plugins/robotics/prefdiff_robotics/rewards.py",
}

#: module -> the tests that exercise it (mutmut runs the covering subset of these per mutant).
MODULE_TESTS = {
    "prefdiff.losses": ["tests/test_losses.py", "tests/test_trainer_direction.py"],
    "prefdiff.sampling": ["tests/test_sampling.py", "tests/test_flow.py"],
    "prefdiff.trainers": ["tests/test_trainers.py", "tests/test_trainer_direction.py", "tests/test_levers.py"],
    "prefdiff.data.mining": ["tests/test_mining.py"],
    "prefdiff.bench.stats": ["tests/test_bench_stats.py"],
    "prefdiff.bench.seeds": ["tests/test_bench_seeds.py"],
    "prefdiff.models.text": ["tests/test_pipelines.py", "tests/test_flow_pipelines.py"],
    "prefdiff.models.codec": ["tests/test_pipelines.py", "tests/test_flow_pipelines.py", "tests/test_weights.py"],
    "prefdiff.models.lora": ["tests/test_models.py", "tests/test_pipelines.py", "tests/test_flow_pipelines.py"],
    "prefdiff.models.denoiser": ["tests/test_models.py", "tests/test_pipelines.py", "tests/test_flow_pipelines.py",
                                 "plugins/robotics/tests/test_pinning.py"],
    "prefdiff.models.pipelines": ["tests/test_pipelines.py", "tests/test_flow_pipelines.py", "tests/test_weights.py"],
    "prefdiff.models.flow_pipelines": ["tests/test_flow_pipelines.py"],
    "prefdiff.textdata": ["tests/test_text_data.py"],
    "prefdiff_t2i.clip_rewards": ["plugins/t2i/tests/test_clip_rewards.py", "plugins/t2i/tests/test_open_clip_convert.py"],
    "prefdiff_t2i.faithfulness": ["plugins/t2i/tests/test_rewards.py", "plugins/t2i/tests/test_world.py"],
    "prefdiff_t2i.world": ["plugins/t2i/tests/test_world.py", "plugins/t2i/tests/test_rewards.py"],
    "prefdiff_medical.rewards": ["plugins/medical/tests/test_rewards.py"],
    "prefdiff_driving.rewards": ["plugins/driving/tests/test_rewards.py", "plugins/driving/tests/test_planner.py"],
    "prefdiff_robotics.rewards": ["plugins/robotics/tests/test_rewards.py"],
}

PACKAGES = {"core/prefdiff": "prefdiff", "plugins/medical/prefdiff_medical": "prefdiff_medical",
            "plugins/driving/prefdiff_driving": "prefdiff_driving",
            "plugins/robotics/prefdiff_robotics": "prefdiff_robotics", "plugins/t2i/prefdiff_t2i": "prefdiff_t2i"}


def in_copy(pattern: str) -> str:
    """A source path of the tree as the copy has it: its package moved under ``src/``."""
    for source, package in PACKAGES.items():
        if pattern.startswith(source + "/"):
            return f"src/{package}/" + pattern.removeprefix(source + "/")
    raise ValueError(f"{pattern} is in none of the packages {', '.join(PACKAGES)}")


def make_copy(modules: dict[str, str]) -> None:
    """The tracked and new files of the tree, packages moved to src/, mutmut configured to mutate ``modules``."""
    shutil.rmtree(COPY, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if Path(ROOT / rel).is_file():
            target = COPY / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)
    for source, package in PACKAGES.items():
        shutil.move(COPY / source, COPY / "src" / package)
    only = [in_copy(pattern) for pattern in modules.values()]
    config = {
        "source_paths": ["src"], "only_mutate": only,
        "also_copy": ["tests", "conftest.py", "plugins", "docs", "configs", "core"],
        "pytest_add_cli_args_test_selection": sorted({t for m in modules for t in MODULE_TESTS[m]}),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"],
        "process_isolation": "fork",
        # Not the text of error messages or log lines: a mutant of "--model.lr must be > 0" is a
        # typo, not a wrong number, and the error tests match on prefixes. Generous timeouts:
        # the 2 cores are shared, and a slow run is not a hang.
        "do_not_mutate_patterns": [r"^\s*raise \w+\(", r"^\s*f?\"[^\"]*\"\)?( from None)?$",
                                   r"\blog\.(debug|info|warning)\(", r"self\.log(_metrics|_progress|_dict)?\("],
        "timeout_multiplier": 40.0,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]  # JSON is valid TOML here
    with open(COPY / "pyproject.toml", "a") as f:
        f.write("\n".join(lines) + "\n")


def module_of(name: str, wanted) -> str:
    """The listed module a mutant's name belongs to (the longest prefix), or ``other``."""
    return next((m for m in sorted(wanted, key=len, reverse=True) if name.startswith(m + ".")), "other")


def all_mutants(wanted: dict[str, str]) -> dict[str, list[str]]:
    """Per module of ``wanted``, the names of every generated mutant, read from mutmut's ``.meta`` files."""
    by_module: dict[str, list[str]] = {m: [] for m in wanted}
    for meta in sorted((COPY / "mutants" / "src").rglob("*.meta")):
        for name in json.loads(meta.read_text())["exit_code_by_key"]:
            module = module_of(name, wanted)
            if module in by_module:
                by_module[module].append(name)
    return {m: sorted(names) for m, names in by_module.items()}


def draw(population: dict[str, list[str]], size: int, seed: int) -> dict[str, list[str]]:
    """A seeded random sample of ``size`` mutants per module (all of them when ``size`` is 0 or larger)."""
    rng = random.Random(seed)
    return {m: sorted(names if not size or size >= len(names) else rng.sample(names, size))
            for m, names in population.items()}


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """The 95% Wilson score interval of a proportion (Wilson 1927)."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def summary(wanted: dict[str, str], population: dict[str, list[str]], sample: dict[str, list[str]]) -> dict:
    """Per module: the population and sample sizes, each status's count, the survivors by name, and the
    kill rate (killed or timed out, over the sample) with its Wilson interval, from `mutmut results --all`."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=COPY,
                         capture_output=True, text=True, check=True).stdout
    status_of = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            status_of[name] = status
    result = {}
    for module, names in sample.items():
        statuses = Counter(status_of.get(name, "not checked") for name in names)
        detected = statuses["killed"] + statuses["timeout"]
        result[module] = {"population": len(population[module]), "sampled": len(names), **dict(sorted(statuses.items())),
                          "kill_rate": round(detected / len(names), 4) if names else None,
                          "kill_rate_ci95": wilson(detected, len(names)),
                          "survived_mutants": sorted(n for n in names if status_of.get(n) == "survived"),
                          "no_tests_mutants": sorted(n for n in names if status_of.get(n) == "no tests")}
    return result


def mutmut_run(names: list[str], max_children: int, env: dict) -> None:
    """``mutmut run`` in the copy; with ``names``, only those mutants (generation and stats always run)."""
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names],
                   cwd=COPY, env=env, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--only", action="append", choices=list(MODULES),
                        help="mutate only these modules (repeatable); docs/mutants.json keeps the others' last run")
    parser.add_argument("--sample", type=int, default=30, help="mutants run per module; 0 runs every mutant")
    parser.add_argument("--seed", type=int, default=0, help="the sample's seed")
    args = parser.parse_args()
    modules = {m: MODULES[m] for m in (args.only or MODULES)}
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    clean = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout == ""  # when the copy is taken
    make_copy(modules)
    # mutants/src must exist before the interpreter starts: a PYTHONPATH entry that does not exist yet is
    # cached as "nothing here" (sys.path_importer_cache), so the tests would import the editable install's
    # unmutated prefdiff, no trampoline would fire, and mutmut would stop with "no test case for any mutant".
    (COPY / "mutants" / "src").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(COPY / "mutants" / "src"), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    # First pass: generate every mutant and record which tests cover which function; the filter matches
    # nothing, so no mutant runs yet.
    mutmut_run(["no-such-mutant"], args.max_children, env)
    population = all_mutants(modules)
    sample = draw(population, args.sample, args.seed)
    mutmut_run([name for names in sample.values() for name in names], args.max_children, env)
    wall = round(time.monotonic() - started)
    result = {m: {**entry, "sample_seed": args.seed, "commit": commit, "clean": clean, "run_wall_s": wall}
              for m, entry in summary(modules, population, sample).items()}
    path = ROOT / "docs" / "mutants.json"
    earlier = json.loads(path.read_text()) if path.is_file() and args.only else {}
    merged = {m: e for m, e in {**earlier, **result}.items() if m in MODULES}
    path.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
    for module, entry in result.items():
        print(f"{module}: {entry['sampled']} of {entry['population']} mutants run, kill rate {entry['kill_rate']} "
              f"{entry['kill_rate_ci95']}, {entry.get('survived', 0)} survived, {entry.get('no tests', 0)} no tests")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
