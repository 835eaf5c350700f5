"""docs/testing.md reports the mutation runs as recorded, and every survivor has a verdict."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def page_module():
    spec = importlib.util.spec_from_file_location("testing_page", ROOT / "tools" / "testing_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_matches_the_recorded_runs():
    page = page_module()
    assert page.PAGE.read_text() == page.page_text(), "docs/testing.md is stale: run python tools/testing_page.py"


def test_every_survivor_has_a_verdict_with_a_reason():
    page = page_module()
    verdicts = page.load("survivors.json")
    for module, entry in page.load("mutants.json").items():
        for name in entry.get("survived_mutants", []) + entry.get("no_tests_mutants", []):
            assert name in verdicts, f"{name} survived `make mutate` and has no verdict in docs/survivors.json"
            assert verdicts[name]["verdict"] in page.VERDICTS and verdicts[name]["why"].strip(), name


def test_the_review_mutations_are_all_killed():
    review = json.loads((ROOT / "docs" / "review_mutants.json").read_text())
    assert len(review["mutations"]) == 8
    assert all(m["killed"] and m["killing_tests"] for m in review["mutations"])


def test_the_non_equivalent_rate_leaves_out_equivalent_survivors():
    page = page_module()
    entry = {"sampled": 10, "killed": 6, "timeout": 1, "survived_mutants": ["a", "b", "c"]}
    verdicts = {"a": {"verdict": "equivalent"}, "b": {"verdict": "test added"}}
    assert page.non_equivalent_rate(entry, verdicts) == (8, 9, 8 / 9)
