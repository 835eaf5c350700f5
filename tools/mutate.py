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

    python tools/mutate.py [--max-children N]
"""

from __future__ import annotations

import argparse
import json
import os
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
    "prefdiff_medical.rewards": "plugins/medical/prefdiff_medical/rewards.py",
    "prefdiff_driving.rewards": "plugins/driving/prefdiff_driving/rewards.py",
    "prefdiff_robotics.rewards": "plugins/robotics/prefdiff_robotics/rewards.py",
}

#: module -> the tests that exercise it (mutmut runs the covering subset of these per mutant).
MODULE_TESTS = {
    "prefdiff.losses": ["tests/test_losses.py", "tests/test_trainer_direction.py"],
    "prefdiff.sampling": ["tests/test_sampling.py", "tests/test_flow.py"],
    "prefdiff.trainers": ["tests/test_trainers.py", "tests/test_trainer_direction.py"],
    "prefdiff.data.mining": ["tests/test_mining.py"],
    "prefdiff.bench.stats": ["tests/test_bench_stats.py"],
    "prefdiff.bench.seeds": ["tests/test_bench_seeds.py"],
    "prefdiff_medical.rewards": ["plugins/medical/tests/test_rewards.py"],
    "prefdiff_driving.rewards": ["plugins/driving/tests/test_rewards.py", "plugins/driving/tests/test_planner.py"],
    "prefdiff_robotics.rewards": ["plugins/robotics/tests/test_rewards.py"],
}

PACKAGES = {"core/prefdiff": "prefdiff", "plugins/medical/prefdiff_medical": "prefdiff_medical",
            "plugins/driving/prefdiff_driving": "prefdiff_driving",
            "plugins/robotics/prefdiff_robotics": "prefdiff_robotics"}


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
    only = [pattern.replace("core/", "src/").replace("plugins/medical/", "src/").replace("plugins/driving/", "src/")
            .replace("plugins/robotics/", "src/") for pattern in modules.values()]
    config = {
        "source_paths": ["src"], "only_mutate": only,
        "also_copy": ["tests", "conftest.py", "plugins", "docs", "configs", "core"],
        "pytest_add_cli_args_test_selection": sorted({t for m in modules for t in MODULE_TESTS[m]}),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q"],
        "process_isolation": "forkserver",
        # Without debug, mutmut 3.8's coverage run found no test for any mutant here;
        # with it, the same run works (it runs the selected tests verbosely).
        "debug": True,
        # Not the text of error messages or log lines: a mutant of "--model.lr must be > 0" is a
        # typo, not a wrong number, and the error tests match on prefixes. Generous timeouts:
        # the 2 cores are shared, and a slow run is not a hang. (mutate_only_covered_lines
        # made mutmut 3.8 find no test for any mutant.)
        "do_not_mutate_patterns": [r"^\s*raise \w+\(", r"^\s*f?\"[^\"]*\"\)?( from None)?$",
                                   r"\blog\.(debug|info|warning)\(", r"self\.log(_metrics|_progress|_dict)?\("],
        "timeout_multiplier": 40.0,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in config.items()]  # JSON is valid TOML here
    with open(COPY / "pyproject.toml", "a") as f:
        f.write("\n".join(lines) + "\n")


def summary(wanted: dict[str, str]) -> dict:
    """Per module of ``wanted``: mutants, killed, survived (by name) and the rest, from `mutmut results --all`."""
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=COPY,
                         capture_output=True, text=True, check=True).stdout
    modules: dict[str, dict] = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = next((m for m in sorted(wanted, key=len, reverse=True) if name.startswith(m + ".")), "other")
        entry = modules.setdefault(module, {"statuses": Counter(), "survived": []})
        entry["statuses"][status] += 1
        if status == "survived":
            entry["survived"].append(name)
    return {m: {"mutants": sum(e["statuses"].values()), **dict(e["statuses"]), "survived_mutants": sorted(e["survived"])}
            for m, e in sorted(modules.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--only", action="append", choices=list(MODULES),
                        help="mutate only these modules (repeatable); docs/mutants.json keeps the others' last run")
    args = parser.parse_args()
    modules = {m: MODULES[m] for m in (args.only or MODULES)}
    make_copy(modules)
    env = {**os.environ, "PYTHONPATH": str(COPY / "mutants" / "src"), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)], cwd=COPY,
                   env=env, check=False)
    wall = round(time.monotonic() - started)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    clean = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout == ""
    result = {m: {**entry, "commit": commit, "clean": clean, "run_wall_s": wall}
              for m, entry in summary(modules).items()}
    path = ROOT / "docs" / "mutants.json"
    earlier = json.loads(path.read_text()) if path.is_file() and args.only else {}
    merged = {m: e for m, e in {**earlier, **result}.items() if m in MODULES}
    path.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
    for module, entry in result.items():
        killed = entry.get("killed", 0)
        print(f"{module}: {entry['mutants']} mutants, {killed} killed, {entry.get('survived', 0)} survived")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
