"""docs/reliability.md from docs/reliability.json: the promises, how each is tested, and the counts."""

from __future__ import annotations

from typing import Any

from prefdiff.reliability.cases import PROMISES

INTRO = """# Reliability: what prefdiff promises, and the catalogue that checks it

prefdiff is run on shared machines, killed by schedulers, filled disks and
hand-edited files. This page states what it promises then, and the counts of
the fault and bad-input catalogue that checks each promise. The page is
written by the catalogue from `docs/reliability.json`; rerun it with

```
make reliability          # python -m prefdiff.reliability
```

(it is not part of `make test`, which runs its quick in-process part and
checks that this page and the JSON agree with each other and with the cases
the catalogue would run now). Every case runs the installed `prefdiff`
command in a process of its own, as a user runs it.

## How files are written

Everything a user cannot afford to lose follows one rule, `prefdiff.durable`:
JSON Lines files (pair files, skip files, mined pairs) grow by whole lines,
one `write` on an `O_APPEND` descriptor then `fsync`, and a torn tail left by
a crash is moved aside before the next append. Every other file is replaced
whole: written to a temporary file beside it, fsynced, renamed over it, the
folder fsynced (a pair's tensor files, exported adapters, samples, the
driving plugin's parsed-dataset cache, the medical segmenter checkpoints,
Lightning checkpoints). A folder (a model folder, an adapter) is written
into a temporary folder beside it and swapped into place in one rename;
benchmark results are written into a staging folder and published with two
renames. A reader that meets a torn or foreign file names the file (and the
line of a JSON Lines file) and how to recover.

Checkpoints: Lightning's own writer (`_atomic_save`) writes the checkpoint
into the system's temporary folder and moves it into place. On one
filesystem that move is a rename, atomic for a kill (but never fsynced); when
the temporary folder is another filesystem (a tmpfs `/tmp`, a container's
scratch disk) the move is a copy, which a kill or a full disk tears.
`prefdiff fit` therefore gives the Trainer a checkpoint writer of its own
that follows the rule above (unless the config names a `CheckpointIO`).
"""


def _run(run: dict[str, Any] | None, data: dict[str, Any]) -> str:
    """When and on which commit a promise's cases ran (a file from before runs were recorded: its run)."""
    run = run or {"finished": data["finished"], **data["env"]}
    return (f"{run['finished']}, commit {run['commit']}{'' if run['clean'] else ' (with uncommitted changes)'}, "
            f"{run['threads']} thread per process")


def render(data: dict[str, Any]) -> str:
    """The page for the catalogue's results ``data``."""
    lines = [INTRO, "## The promises and their counts", "",
             "Each promise's cases come from the run named beside it (a run may redo only some promises: "
             "`python -m prefdiff.reliability --promise NAME`).", "",
             "| promise | cases tried | passed | lost or corrupted | run |", "|---|---|---|---|---|"]
    for name, counts in data["promises"].items():
        lines.append(f"| {name} | {counts['tried']} | {counts['passed']} | {counts['corrupted']} | "
                     f"{_run(counts.get('run'), data)}, {counts['wall_s'] / 60:.0f} min |")
    total = data["totals"]
    lines += [f"| **all** | **{total['tried']}** | **{total['passed']}** | **{total['corrupted']}** | |", ""]
    for name, (statement, how) in PROMISES.items():
        counts = data["promises"][name]
        lines += [f"### {name}", "", f"**Promise.** {statement}", "", f"**How it is tested.** {how}", "",
                  f"**Counts.** {counts['tried']} cases tried, {counts['passed']} passed, {counts['corrupted']} "
                  f"lost or corrupted something.", ""]
        if name == "bad-input":
            lines += _matrix(data)
        failed = [c for c in data["cases"] if c["promise"] == name and not c["passed"]]
        if failed:
            lines += ["Cases that fail the promise:", ""]
            lines += [f"- `{c['id']}`: {c['detail']}" for c in failed]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _matrix(data: dict[str, Any]) -> list[str]:
    """The commands against the classes of bad input: passed/tried per cell, n/a where none applies."""
    from prefdiff.reliability.inputs import KINDS, NOT_APPLICABLE

    cells: dict[tuple[str, str], list[bool]] = {}
    for case in data["cases"]:
        if case["promise"] == "bad-input":
            cells.setdefault((case["command"], case["what"]), []).append(case["passed"])
    commands = list(dict.fromkeys(command for command, _ in cells))
    lines = ["| command | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
    for command in commands:
        row = []
        for kind in KINDS:
            results = cells.get((command, kind))
            row.append(f"{sum(results)}/{len(results)}" if results else
                       "n/a" if kind in NOT_APPLICABLE.get(command, set()) else "—")
        lines.append(f"| {command} | " + " | ".join(row) + " |")
    return [*lines, "", "Each cell: cases passed / tried; n/a: the command takes no input of that class.", ""]
