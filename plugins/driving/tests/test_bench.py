"""`prefdiff bench driving --quick` end to end at test size, and what `prefdiff plugins` shows."""

import json
from dataclasses import replace

from prefdiff.bench import run_benchmark
from prefdiff.cli import main
from prefdiff.plugins import get_manager


def test_plugins_lists_what_driving_registers(capsys):
    assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}["driving"]
    assert info["errors"] == []
    assert info["datasets"] == ["nuscenes_bev"]
    assert info["conditioners"] == ["layout_route"]
    assert info["rewards"] == ["planner_feasibility", "planner_judge", "planner_feasibility_surrogate",
                               "layout_consistency", "scenario_feasibility", "scenario_judge",
                               "scenario_feasibility_surrogate"]
    assert info["benchmarks"] == ["driving"]
    assert info["commands"] == ["make-data"]


def at_test_size(recipe):
    """The quick recipe with 100 pretraining steps, not 200 (`make bench-quick` runs those), and 2
    alignment steps: this test checks the contract, not the numbers. (At 40 steps, or mining 8
    conditions, not one mined pair's samples scored apart.)"""
    return replace(recipe, pretrain_steps=100, align_steps=2)


def test_quick_benchmark_end_to_end(tmp_path, monkeypatch):
    manager = get_manager()
    quick_recipe = manager.benchmark
    monkeypatch.setattr(manager, "benchmark", lambda name, quick=False: at_test_size(quick_recipe(name, quick=quick)))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "results.json").write_text("{}")
    results = run_benchmark("driving", quick=True, out=out, cache=tmp_path / "cache")
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert {"domain", "reward", "judge", "quick", "seed", "n_eval", "base", "untrained", "methods", "edit",
            "env"} <= set(on_disk)
    assert on_disk["domain"] == "driving" and on_disk["judge"] == "scenario_judge" and on_disk["quick"]
    assert set(on_disk["methods"]) == {"dpo", "grpo", "draft"}
    for entry in on_disk["methods"].values():
        assert {"reward_mean", "reward_std", "improvement", "improvement_ci95", "drift", "reward_queries",
                "train_wall_s", "peak_rss_mb"} <= set(entry)
        lo, hi = entry["improvement_ci95"]
        assert lo <= entry["improvement"] <= hi
        assert 0 <= entry["reward_mean"] <= 1 and entry["drift"] >= 0
    edit = on_disk["edit"]
    assert {"reward_mean", "preservation", "success_insert", "success_remove", "judge_after", "n"} <= set(edit)
    assert edit["n"] > 0 and 0 < edit["preservation"] <= 1
    for name in ("samples.png", "edit.png", "report.md", "mined/pairs.jsonl"):
        assert (out / name).stat().st_size > 0
    assert "aligning with grpo" in (out / "bench.log").read_text()
    # the synthetic mini dataroot was written once, into the cache, and loads in the devkit
    root = next((tmp_path / "cache" / "bench" / "driving-data").glob("nuscenes-synthetic-v1.0-mini-*"))
    assert (root / "v1.0-mini" / "sample_annotation.json").is_file()
