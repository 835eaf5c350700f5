"""The catalogue's cases: which promise each tests, how, and with what; built the same on every call."""

from __future__ import annotations

import random

from prefdiff.reliability.case import Case

PROMISES = {
    "resume": ("A `prefdiff fit` killed at any point resumes with `--ckpt_path last` to the adapter an "
               "uninterrupted run writes, bit for bit.",
               "SIGKILL from a timer started when training starts, at a random time up to the uninterrupted "
               "run's length (so some land in a checkpoint write or the adapter export), ten per trainer "
               "family on a tiny config of four epochs of two steps. Every checkpoint and adapter the killed "
               "run left must read whole; the resumed run's adapter must equal the uninterrupted run's."),
    "bench-kill": ("A `prefdiff bench` killed at any point leaves the earlier results folder as it was; the "
                   "rerun completes and clears what the killed run left beside the folder.",
                   "SIGKILL at a random time of a tiny benchmark (`prefdiff.testing.tiny_recipe`, dpo with "
                   "mined pairs and ddpo) rerun into a finished results folder holding a user's NOTES.md, half "
                   "with an empty cache (the kill can land in the base model's pretraining or its save). Every "
                   "file of the results folder must be byte for byte as before (or, for a kill that landed after "
                   "the run published, the killed run's whole folder: every file there, the notes kept, a new "
                   "results.json with every method), a cached base model must load, and the rerun must finish "
                   "with a readable results.json, leaving no staging or old folder beside the results folder."),
    "mining-kill": ("Pair mining killed at any point leaves the earlier pairs and their files as they were; the "
                    "rerun completes.",
                    "SIGKILL at a random time of the writing phase of a mining run into a folder of earlier "
                    "mined pairs. Every earlier file must be byte for byte as before (the pair file may only have "
                    "grown by whole lines), every line must name readable tensors, and the rerun must finish "
                    "with every pair readable."),
    "disk-full": ("A write that fails for lack of space is one clear error and leaves every file as it was.",
                  "An OSError(ENOSPC) injected into the writer after a budget of bytes (so files are cut "
                  "mid-way) for every durable writer, over earlier files; and a real per-process file size "
                  "limit (RLIMIT_FSIZE, EFBIG) under `prefdiff fit`, `prefdiff sample` and `prefdiff medical "
                  "train-segmenter`, and while the driving dataset writes its cache. The error must name the file "
                  "and the fix, and every earlier file must be byte for byte as before, with no temporary left "
                  "(a cache that cannot be written is skipped with a warning instead)."),
    "bad-input": ("Every command given bad input prints one line naming the culprit and exits with code 2.",
                  "Each command run as a user runs it, once per class of bad input that it can be given. "
                  "Standard error must be exactly one line, `prefdiff: error: ...`, holding the named "
                  "culprit, with exit code 2 and no traceback (a warning printed before it is a line of its "
                  "own, `prefdiff: warning: ...`, and does not count)."),
}

FAMILIES = ("sft", "dpo", "d3po", "ddpo", "draft")
KILLS = 10
"""Kills per trainer family, per benchmark, per mining."""


def _fraction(case_id: str, seed: int) -> float:
    """The random point of a kill, as a fraction of the uninterrupted run's length: fixed per case."""
    return round(random.Random(f"{seed}:{case_id}").uniform(0.02, 1.0), 3)


def catalogue(seed: int = 0) -> list[Case]:
    """Every case, in the order they run."""
    from prefdiff.reliability.disk import DISK_CASES
    from prefdiff.reliability.inputs import BAD_INPUTS

    cases = []
    for family in FAMILIES:
        for k in range(KILLS):
            case_id = f"resume/{family}/kill-{k}"
            at = _fraction(case_id, seed)
            cases.append(Case(case_id, "resume", "fit", f"SIGKILL at {at:.0%} of a {family} run, then resume",
                              {"family": family, "at": at}))
    for k in range(KILLS):
        case_id = f"bench-kill/tiny/kill-{k}"
        at, cold = _fraction(case_id, seed), k % 2 == 0
        cases.append(Case(case_id, "bench-kill", "bench",
                          f"SIGKILL at {at:.0%} of a rerun ({'empty' if cold else 'warm'} cache), then rerun",
                          {"at": at, "cold": cold}))
    for k in range(KILLS):
        case_id = f"mining-kill/kill-{k}"
        at = _fraction(case_id, seed)
        cases.append(Case(case_id, "mining-kill", "mining", f"SIGKILL at {at:.0%} of the writing, then rerun",
                          {"at": at}))
    for name, (command, what) in DISK_CASES.items():
        cases.append(Case(f"disk-full/{name}", "disk-full", command, what, {"name": name}))
    for command, kind, argv, culprit in BAD_INPUTS:
        slug = kind.replace(" ", "-")
        number = sum(c.id.startswith(f"bad-input/{command}/{slug}") for c in cases)
        cases.append(Case(f"bad-input/{command}/{slug}" + (f"-{number + 1}" if number else ""), "bad-input",
                          command, kind, {"argv": list(argv), "culprit": culprit}))
    return cases
