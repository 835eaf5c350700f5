"""Compare two benchmark runs number by number: ``python -m prefdiff.bench.compare A B``.

``A`` and ``B`` are results.json files or folders holding them (every
``*/results.json`` below each, matched by relative path). Every number that
differs is printed with its path in the JSON; the exit code is 1 when any
does, 0 when the runs agree. Timing and memory are measurements of the
machine, not results, so they are left out: wall-clock seconds, peak memory,
the time axis of the reward curves and the environment block (commit,
threads) are not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

#: Keys whose values measure the machine rather than the method.
MACHINE_KEYS = {"train_wall_s", "peak_rss_mb", "curve_eval_s", "env", "wall_s"}


def _walk(a: Any, b: Any, path: str) -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in MACHINE_KEYS:
                continue
            if key not in a or key not in b:
                yield f"{path}.{key}: only in {'B' if key not in a else 'A'}"
                continue
            if key == "curve":  # [seconds, held-out reward] points: compare the rewards only
                yield from _walk([p[1] for p in a[key]], [p[1] for p in b[key]], f"{path}.curve[reward]")
                continue
            yield from _walk(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path}: {len(a)} entries in A, {len(b)} in B"
            return
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _walk(x, y, f"{path}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        same = (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and isinstance(b, float) else False
        if not same and a != b:
            yield f"{path}: {a!r} (A) vs {b!r} (B), difference {b - a:+.3g}"
    elif a != b:
        yield f"{path}: {a!r} (A) vs {b!r} (B)"


def differences(a: dict[str, Any], b: dict[str, Any], name: str = "") -> list[str]:
    """Every differing number (or value) of two results, as ``path: A vs B`` lines."""
    return list(_walk(a, b, name))


def _results(root: Path) -> dict[str, Path]:
    if root.is_file():
        return {root.name: root}
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("results.json"))}


def compare(a: Path, b: Path) -> list[str]:
    """The differing numbers of two runs (files or folders of results.json)."""
    left, right = _results(a), _results(b)
    lines = [f"{rel}: only in {'A' if rel in left else 'B'}" for rel in sorted(set(left) ^ set(right))]
    for rel in sorted(set(left) & set(right)):
        lines += differences(json.loads(left[rel].read_text()), json.loads(right[rel].read_text()), rel)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefdiff.bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="a results.json, or a folder of them (the first run)")
    parser.add_argument("b", type=Path, help="the same for the second run")
    args = parser.parse_args(argv)
    for path in (args.a, args.b):
        if not path.exists():
            print(f"compare: error: {path} does not exist", file=sys.stderr)
            return 2
    lines = compare(args.a, args.b)
    print("\n".join(lines) if lines else f"no differing number ({len(_results(args.a))} results compared)")
    return 1 if lines else 0


if __name__ == "__main__":
    raise SystemExit(main())
