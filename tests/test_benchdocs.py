"""The committed pages agree with the committed results: the README's table, the page's status line."""

from pathlib import Path

from prefdiff.benchdocs import README_BEGIN, README_END, readme_with_table, render, summary_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"


def test_the_readme_table_is_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_table(readme, RESULTS), \
        "README.md's results table is stale: run python -m prefdiff.benchdocs benchmarks/results docs/benchmarks.md README.md"


def test_the_table_names_each_fields_best_method_and_its_interval(tmp_path):
    import json

    for domain, dpo, ddpo in (("a", [0.1, 0.3], [-0.1, 0.05]), ("b", [-0.2, 0.1], [0.05, 0.2])):
        results = {"domain": domain, "reward": "r", "judge": "j", "seed": 0, "n_eval": 8,
                   "base": {"reward_mean": 0.5}, "real": {"reward_mean": 0.9},
                   "methods": {m: {"reward_mean": 0.5 + sum(ci) / 2, "improvement": sum(ci) / 2,
                                   "improvement_ci95": ci} for m, ci in (("dpo", dpo), ("ddpo", ddpo))}}
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "results.json").write_text(json.dumps(results))
    table = summary_table(sorted(tmp_path.glob("*/results.json")))
    assert table[2] == "| a | `j` | 0.9000 | 0.5000 | dpo | 0.7000 | +0.2000 [+0.1000, +0.3000] | dpo (1 of 2) |"
    assert table[3] == "| b | `j` | 0.9000 | 0.5000 | ddpo | 0.6250 | +0.1250 [+0.0500, +0.2000] | ddpo (1 of 2) |"
    readme = f"intro\n{README_BEGIN}\nold table\n{README_END}\nrest\n"
    assert readme_with_table(readme, tmp_path) == f"intro\n{README_BEGIN}\n" + "\n".join(table) + f"{README_END}\nrest\n"


def test_the_status_note_opens_the_page(tmp_path):
    page = render(RESULTS, tmp_path / "benchmarks.md")
    status = (RESULTS / "STATUS.md").read_text().strip()
    assert page.index(status) < page.index("| field |")


def test_the_performance_section_names_each_figures_commit_after_a_rerun():
    from prefdiff.benchdocs import _figure_commits

    one = {"figure_commits": {"1": "aaaaaaa111", "2": "aaaaaaa111"}}
    assert _figure_commits(one) == "" and _figure_commits({}) == ""
    mixed = {"figure_commits": {"1": "aaaaaaa111", "3": "bbbbbbb222", "10": "aaaaaaa111", "2": "aaaaaaa111"}}
    assert _figure_commits(mixed) == " Commits: figures 1, 2, 10 on aaaaaaa; figure 3 on bbbbbbb."
