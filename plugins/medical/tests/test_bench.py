"""The quick benchmark end to end, and what `prefdiff plugins` shows."""

import json

import torch

from prefdiff.bench import run_benchmark
from prefdiff.cli import main


def test_plugins_lists_what_medical_registers(capsys):
    assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}["medical"]
    assert info["errors"] == []
    assert info["datasets"] == ["decathlon"]
    assert info["conditioners"] == ["mask_onehot", "mask_controlnet"]
    assert info["rewards"] == ["segmentation_consistency", "segmentation_consistency_soft", "segmentation_judge"]
    assert info["benchmarks"] == ["medical"]
    assert info["commands"] == ["make-data", "train-segmenter"]


def test_quick_benchmark_end_to_end(prepared, bench_cache, tmp_path):
    results = run_benchmark("medical", quick=True, out=tmp_path / "out", cache=bench_cache)
    on_disk = json.loads((tmp_path / "out/results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert {"domain", "reward", "quick", "seed", "n_eval", "base", "methods", "edit", "env"} <= set(on_disk)
    assert on_disk["domain"] == "medical" and on_disk["judge"] == "segmentation_judge" and on_disk["quick"]
    assert set(on_disk["methods"]) == {"dpo", "draft"}
    for entry in on_disk["methods"].values():
        assert {"reward_mean", "reward_std", "improvement", "improvement_ci95", "drift", "reward_queries",
                "train_wall_s", "peak_rss_mb"} <= set(entry)
        lo, hi = entry["improvement_ci95"]
        assert lo <= entry["improvement"] <= hi
        assert 0 <= entry["reward_mean"] <= 1 and entry["drift"] >= 0
    # The real-data reference and the downstream utility of each model's images.
    assert 0 <= on_disk["real"]["reward_mean"] <= 1
    assert set(on_disk["real"]["metrics"]) == {"downstream_dice", "downstream_n"}
    for entry in (on_disk["base"], *on_disk["methods"].values()):
        assert {"downstream_dice", "downstream_ratio_to_real", "downstream_ratio_to_real_ci95"} <= set(entry["metrics"])
    assert "downstream_gain_over_base" in on_disk["methods"]["dpo"]["metrics"]
    edit = on_disk["edit"]
    assert {"reward_mean", "preservation", "psnr", "dice_before", "n"} <= set(edit) and edit["n"] > 0
    assert 0 < edit["preservation"] <= 1
    for name in ("samples.png", "edit.png", "report.md", "mined/pairs.jsonl"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (tmp_path / "out/bench.log").stat().st_size > 0
    # make demo's aligned models are kept, and its guide's command samples them on the held-out masks.
    from prefdiff.testing import sample_by_the_adapter_guide

    aligned = sample_by_the_adapter_guide(tmp_path / "out", "dpo")
    assert aligned.shape[0] == 8 and not torch.equal(aligned, sample_by_the_adapter_guide(tmp_path / "out", "dpo",
                                                                                          lora=False))
