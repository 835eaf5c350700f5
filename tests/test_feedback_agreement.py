"""Agreement between labelers on shared pairs: fraction and Cohen's kappa."""

import pytest

from prefdiff.feedback.agreement import agreement, cohen_kappa


def test_cohen_kappa_by_hand():
    x = ["a", "a", "b", "b", "a", "tie"]
    y = ["a", "b", "b", "b", "a", "a"]
    # observed 4/6; chance: a 3/6*3/6 + b 2/6*3/6 + tie 1/6*0 = 0.25 + 1/6
    chance = 0.25 + 1 / 6
    assert cohen_kappa(x, y) == pytest.approx((4 / 6 - chance) / (1 - chance))
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None


def test_report_over_three_labelers():
    rows = [("p1", "ann", "a"), ("p1", "bob", "a"), ("p1", "cat", "b"),
            ("p2", "ann", "b"), ("p2", "bob", "b"),
            ("p3", "ann", "a")]
    report = agreement([{"id": p, "labeler": who, "winner": w} for p, who, w in rows])
    assert report["labelers"] == {"ann": 3, "bob": 2, "cat": 1}
    assert report["shared_pairs"] == 2
    by = {tuple(r["labelers"]): r for r in report["by_pair_of_labelers"]}
    assert by[("ann", "bob")]["shared"] == 2 and by[("ann", "bob")]["agreement"] == 1.0
    assert by[("ann", "cat")]["agreement"] == 0.0 and by[("bob", "cat")]["shared"] == 1
    assert report["agreement"] == pytest.approx(2 / 4)
    assert agreement([{"id": "p", "labeler": "ann", "winner": "a"}])["agreement"] is None
