"""The eight mutations of issue 20's review, each planted in a copy of the tree and run against the
tests of its own module; the tests that fail are recorded in ``docs/review_mutants.json``.

mutmut (``make mutate``) draws its mutants at random; these eight are the semantic ones an
independent review made by hand, six of which once survived. Each is a text replacement that
must match the code exactly once, so a refactor that moves the line makes this script fail
loudly instead of testing nothing.

    python tools/review_mutants.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINER_TESTS = ["tests/test_trainer_direction.py", "tests/test_trainers.py"]

#: (where, the mutation in words, file, the original text, the mutant text, the module's tests)
MUTATIONS = [
    ("losses.py, Diffusion-DPO", "drop the 0.5 factor", "core/prefdiff/losses.py",
     "inside = -0.5 * beta * (", "inside = -beta * (", ["tests/test_losses.py"]),
    ("trainers/pairs.py", "swap winner and loser before the DPO loss", "core/prefdiff/trainers/pairs.py",
     "diffusion_dpo_loss(model_err[:n], model_err[n:], ref_err[:n], ref_err[n:],",
     "diffusion_dpo_loss(model_err[n:], model_err[:n], ref_err[n:], ref_err[:n],", TRAINER_TESTS),
    ("trainers/policy_gradient.py", "negate the advantages", "core/prefdiff/trainers/policy_gradient.py",
     "advantages = self.advantages(rewards.float(), k)", "advantages = -self.advantages(rewards.float(), k)",
     TRAINER_TESTS),
    ("data/mining.py, pair mining", "return (worst, best) instead of (best, worst)", "core/prefdiff/data/mining.py",
     "best, worst = int(mined.rewards[i].argmax()), int(mined.rewards[i].argmin())",
     "best, worst = int(mined.rewards[i].argmin()), int(mined.rewards[i].argmax())", ["tests/test_mining.py"]),
    ("bench/stats.py, paired bootstrap", "5%/95% quantiles reported as a 95% interval",
     "core/prefdiff/bench/stats.py", "tail = round((1 - level) / 2, 12)", "tail = round(1 - level, 12)",
     ["tests/test_bench_stats.py"]),
    ("bench/runner.py", "every method's drift computed on the base's samples", "core/prefdiff/bench/runner.py",
     'entry["drift"] = drift(samples, real)', 'entry["drift"] = drift(base_samples, real)',
     ["tests/test_bench_stats.py"]),
    ("sampling/ddim.py, inpainting", "re-noise the known region one step off", "core/prefdiff/sampling/ddim.py",
     "known_now = add_noise(scheduler, known, t - step_ratio,", "known_now = add_noise(scheduler, known, t,",
     ["tests/test_sampling.py"]),
    ("driving rewards.py", "the DRaFT surrogate drops its traffic-match factor",
     "plugins/driving/prefdiff_driving/rewards.py", "return (feasible * match).to(samples.dtype), {}",
     "return feasible.to(samples.dtype), {}", ["plugins/driving/tests/test_rewards.py"]),
]

SOURCES = {"core": "core", "plugins/medical": "plugins/medical", "plugins/driving": "plugins/driving",
           "plugins/robotics": "plugins/robotics"}


def copy_tree(target: Path) -> None:
    """The tracked and new files of the tree."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target / rel)


def failing_tests(copy: Path, tests: list[str]) -> tuple[int, list[str]]:
    """Run ``tests`` in ``copy`` (its packages first on the path); the exit code and the failed test ids."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(str(copy / p) for p in SOURCES.values())}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                         cwd=copy, env=env, capture_output=True, text=True)
    return run.returncode, sorted(set(re.findall(r"^FAILED (\S+)", run.stdout, flags=re.M)))


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="review-mutants-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        code, failed = failing_tests(copy, sorted({t for m in MUTATIONS for t in m[5]}))
        if code != 0:
            print(f"the unmutated tests fail, so no mutant can be judged: {failed}", file=sys.stderr)
            return 1
        for where, what, rel, old, new, tests in MUTATIONS:
            path = copy / rel
            original = path.read_text()
            if original.count(old) != 1:
                print(f"{rel}: the text to mutate is not there exactly once: {old!r}", file=sys.stderr)
                return 1
            path.write_text(original.replace(old, new))
            code, failed = failing_tests(copy, tests)
            path.write_text(original)
            results.append({"where": where, "mutation": what, "file": rel, "tests": tests,
                            "killed": code != 0 and bool(failed), "killing_tests": failed})
            print(f"{where}: {what}: {'killed by ' + str(len(failed)) + ' tests' if failed else 'SURVIVED'}")
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = {"commit": commit, "mutations": results}
    (ROOT / "docs" / "review_mutants.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all(r["killed"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
