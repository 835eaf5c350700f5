"""The committed pages agree with the committed results: the README's table, the page's status line."""

from pathlib import Path

from prefdiff.bench.recipe import AgainstReal
from prefdiff.benchdocs import README_BEGIN, README_END, readme_with_table, render, summary_table
from prefdiff.testing import RecipePlugin, registered_plugin, tiny_recipe

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
    assert table[2] == "| a | `j` | 0.9000 | 0.5000 | dpo | 0.7000 | +0.2000 [+0.1000, +0.3000] | 50% | - | dpo (1 of 2) |"
    assert table[3] == "| b | `j` | 0.9000 | 0.5000 | ddpo | 0.6250 | +0.1250 [+0.0500, +0.2000] | 31% | - | ddpo (1 of 2) |"
    readme = f"intro\n{README_BEGIN}\nold table\n{README_END}\nrest\n"
    assert readme_with_table(readme, tmp_path) == f"intro\n{README_BEGIN}\n" + "\n".join(table) + f"{README_END}\nrest\n"


def test_the_summary_table_opens_the_page_and_the_status_note_follows(tmp_path):
    page = render(RESULTS, tmp_path / "benchmarks.md")
    status = (RESULTS / "STATUS.md").read_text().strip()
    assert page.index("| field | judge |") < page.index(status) < page.index("## driving")
    medical = page[page.index("## medical"):page.index("## robotics")]
    assert "| base | 0.5049 |" in medical and "downstream_ratio_to_real_ci95" in medical, \
        "a field's section gives its downstream figures with their intervals"


def test_the_table_gives_each_fields_downstream_figure_for_real_data_base_and_the_judges_best(tmp_path):
    import json

    def model(judge, **metrics):
        return {"reward_mean": judge, "improvement": judge - 0.5, "improvement_ci95": [judge - 0.6, judge - 0.4],
                "metrics": metrics}

    fields = {
        "med": {"real": {"reward_mean": 0.9, "metrics": {"downstream_dice": 0.43}},
                "base": {"reward_mean": 0.5, "metrics": {"downstream_dice": 0.5}},
                "methods": {"dpo": model(0.7, downstream_dice=0.42, downstream_ratio_to_real=0.98,
                                         downstream_ratio_to_real_ci95=[0.94, 1.02]),
                            "ddpo": model(0.6, downstream_dice=0.55, downstream_ratio_to_real=1.29,
                                          downstream_ratio_to_real_ci95=[1.15, 1.54])}},
        "rob": {"real": {"reward_mean": 0.9, "metrics": {"success_rate": 0.92}},
                "base": {"reward_mean": 0.5, "metrics": {"success_rate": 0.19}},
                "methods": {"ddpo": model(0.6, success_rate=0.05, success_improvement=-0.136,
                                          success_improvement_ci95=[-0.162, -0.108])}},
    }
    for domain, results in fields.items():
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "results.json").write_text(
            json.dumps({"domain": domain, "reward": "r", "judge": "j", "seed": 0, "n_eval": 8, **results}))
    paths = sorted(tmp_path.glob("*/results.json"))
    # Each field's recipe says which of its metrics measures it against real data; core names none.
    assert "| 50% | - |" in summary_table(paths)[2]
    med = AgainstReal("downstream_dice", "downstream Dice", "a third segmenter's real-scan Dice",
                      interval="downstream_ratio_to_real", reads="{v:.2f}x real's [{lo:.2f}, {hi:.2f}]")
    rob = AgainstReal("success_rate", "success rate", "the planner's success rate",
                      interval="success_improvement", reads="{v:+.3f} [{lo:+.3f}, {hi:+.3f}] over base")
    with registered_plugin(RecipePlugin(tiny_recipe(domain="med", against_real=med)), "med"), \
            registered_plugin(RecipePlugin(tiny_recipe(domain="rob", against_real=rob)), "rob"):
        table = summary_table(paths)
    assert "| 50% | downstream Dice: real 0.430, base 0.500, dpo 0.420 (0.98x real's [0.94, 1.02]) |" in table[2]
    assert "| 25% | success rate: real 0.920, base 0.190, ddpo 0.050 (-0.136 [-0.162, -0.108] over base) |" \
        in table[3]
    assert table[-2].endswith("(med: a third segmenter's real-scan Dice; rob: the planner's success rate).")


def test_the_performance_section_names_the_commit_each_figure_ran_on():
    from prefdiff.benchdocs import _figure_commits

    one = {"figure_commits": {"1": "aaaaaaa111", "2": "aaaaaaa111"}, "environment": {"clean": True}}
    assert _figure_commits(one) == " Commit: aaaaaaa (tree clean)."
    assert _figure_commits({**one, "environment": {"clean": False}}) == " Commit: aaaaaaa (tree not clean)."
    assert _figure_commits({}) == ""
    mixed = {"figure_commits": {"1": "aaaaaaa111", "3": "bbbbbbb222", "10": "aaaaaaa111", "2": "aaaaaaa111"}}
    assert _figure_commits(mixed) == " Commits: figures 1, 2, 10 on aaaaaaa; figure 3 on bbbbbbb."


def test_the_performance_section_names_the_command_that_last_made_each_figure():
    from prefdiff.benchdocs import _figure_commands

    full, three = "perf --out p.json", "perf --only 3 --update --out p.json"
    figures = [{"id": i} for i in (1, 2, 3, 3, 4)]  # a figure may have several rows
    assert _figure_commands({"command": full, "figures": figures}) == f"Command: `{full}`"
    assert _figure_commands({"commands": [full, three, three], "figures": figures}).endswith(
        f"(perf.json's `commands` lists all 3 in order): figures 1, 2, 4: `{full}`; figure 3: `{three}`")
    later = "perf --only=1 --only 4 --update --out p.json"
    assert _figure_commands({"commands": [full, three, later], "figures": figures}).endswith(
        f"figures 1, 4: `{later}`; figure 2: `{full}`; figure 3: `{three}`")


def test_a_fields_section_gives_its_newest_note_and_links_the_dated_rest(tmp_path):
    import json

    field = tmp_path / "results" / "f"
    field.mkdir(parents=True)
    (field / "results.json").write_text(json.dumps(
        {"domain": "f", "reward": "r", "seed": 0, "n_eval": 8, "base": {"reward_mean": 0.5}, "methods": {}}))
    (field / "NOTES.md").write_text("### Run two (2026-12-02)\n\nNew finding.\n\n### Run one (2026-12-01)\n\nOld finding.\n")
    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    text = render(tmp_path / "results", page)
    assert "New finding." in text and "Old finding." not in text
    assert "[f/NOTES.md](../results/f/NOTES.md)" in text, "the link is relative to the page"


def test_a_fields_section_names_the_commit_its_results_ran_on(tmp_path):
    import json

    from prefdiff.benchdocs import _field

    path = tmp_path / "f" / "results.json"
    path.parent.mkdir()
    results = {"domain": "f", "reward": "r", "seed": 0, "n_eval": 8, "base": {"reward_mean": 0.5}, "methods": {}}
    for env, said in (({"commit": "abcdef123456", "clean": True}, "Commit: abcdef1 (tree clean)."),
                      ({"commit": "abcdef123456", "clean": False}, "Commit: abcdef1 (tree not clean)."),
                      ({}, None)):
        path.write_text(json.dumps({**results, "env": env}))
        line = _field(path, tmp_path / "benchmarks.md")[2]
        assert (said in line) if said else ("Commit" not in line), line


def test_the_gap_to_real_is_left_out_where_real_data_does_not_score_above_the_base():
    from prefdiff.benchdocs import _gap_closed

    best = {"reward_mean": 0.7}
    assert _gap_closed({"base": {"reward_mean": 0.5}, "real": {"reward_mean": 0.9}}, best) == "50%"
    assert _gap_closed({"base": {"reward_mean": 0.5}, "real": {"reward_mean": 0.6}}, best) == "200%"
    for real in ({}, {"real": {"reward_mean": 0.5}}, {"real": {"reward_mean": 0.4}}):
        assert _gap_closed({"base": {"reward_mean": 0.5}, **real}, best) == "-"


def test_every_committed_notes_file_is_newest_first():
    """The page shows a notes file's first entry as its newest: the dated headings must run newest first."""
    import re

    for notes in [*RESULTS.glob("*/NOTES.md"), RESULTS / "PERF_NOTES.md"]:
        dates = [m.group(0) for line in notes.read_text().splitlines() if line.startswith("### ")
                 for m in [re.search(r"\d{4}-\d{2}-\d{2}", line)] if m]
        assert dates == sorted(dates, reverse=True), f"{notes.relative_to(ROOT)}: put its newest entry first"
