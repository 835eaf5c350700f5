"""The reliability page: its counts are those of docs/reliability.json, the JSON lists the cases the
catalogue runs now, and the catalogue's quick in-process part (a full disk at every writer) passes."""

import json
from pathlib import Path

import pytest

from prefdiff.reliability.cases import PROMISES, catalogue
from prefdiff.reliability.page import render

ROOT = Path(__file__).resolve().parents[1]
DATA = json.loads((ROOT / "docs/reliability.json").read_text())
PAGE = (ROOT / "docs/reliability.md").read_text()


def test_the_page_states_the_counts_of_the_json():
    for name, counts in DATA["promises"].items():
        assert f"| {name} | {counts['tried']} | {counts['passed']} | {counts['corrupted']} |" in PAGE
    totals = DATA["totals"]
    assert f"| **all** | **{totals['tried']}** | **{totals['passed']}** | **{totals['corrupted']}** |" in PAGE
    assert PAGE == render(DATA), "docs/reliability.md is stale: rerun `make reliability`"


def test_the_counts_are_those_of_the_cases():
    for name in PROMISES:
        cases = [c for c in DATA["cases"] if c["promise"] == name]
        assert DATA["promises"][name]["tried"] == len(cases) > 0
        assert DATA["promises"][name]["passed"] == sum(c["passed"] for c in cases)
        assert DATA["promises"][name]["corrupted"] == sum(bool(c["corrupted"]) for c in cases)
    assert DATA["totals"]["tried"] == len(DATA["cases"])


def test_the_json_lists_the_cases_the_catalogue_runs_now():
    published = [{key: case[key] for key in ("id", "promise", "command", "what", "params")} for case in DATA["cases"]]
    assert published == [case.as_dict() for case in catalogue()], \
        "the catalogue changed since docs/reliability.json was written: rerun `make reliability`"


def test_no_case_lost_or_corrupted_anything():
    assert DATA["totals"]["corrupted"] == 0, [c["id"] for c in DATA["cases"] if c["corrupted"]]


@pytest.mark.parametrize("name", ["append-pair", "save-tensors", "rewrite", "save-lora", "save-model", "checkpoint",
                                  "mining"])
def test_a_full_disk_at_each_writer(tmp_path, name):
    from prefdiff.reliability.disk import QUICK, run_disk

    assert name in QUICK
    [result] = run_disk([c for c in catalogue() if c.id == f"disk-full/{name}"], tmp_path)
    assert result["passed"], result["detail"]


def test_a_user_error_may_follow_warnings_but_nothing_else():
    import subprocess

    from prefdiff.reliability.common import one_line_error

    def result(stderr, code=2):
        return subprocess.CompletedProcess(["prefdiff"], code, "", stderr)

    error = "prefdiff: error: /x does not exist; pass a folder\n"
    assert one_line_error(result(error), "/x") is None
    assert one_line_error(result("prefdiff: warning: prompt 'a' is longer than the limit\n" + error), "/x") is None
    assert one_line_error(result("some library's chatter\n" + error), "/x").startswith("2 lines on stderr")
    assert one_line_error(result(error, code=1), "/x").startswith("exit code 1")
