"""The benchmark end to end on a much smaller configuration, and what `prefdiff plugins` shows."""

import json
from dataclasses import replace

import pytest
import torch

from prefdiff.bench import run_benchmark
from prefdiff.cli import main
from prefdiff_t2i import recipe as t2i
from prefdiff_t2i.data import ShapesData
from prefdiff_t2i.pipeline import PipelineSpec


def test_plugins_lists_what_the_field_registers(capsys):
    assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}["t2i"]
    assert info["errors"] == []
    assert "t2i_shapes" in info["datasets"]
    assert {"shapes_faithfulness", "shapes_faithfulness_soft", "shapes_judge"} <= set(info["rewards"])
    assert info["benchmarks"] == ["t2i"] and "make-data" in info["commands"]


def test_the_recipes_name_known_methods_and_rewards():
    from prefdiff.trainers import METHODS

    for quick in (True, False):
        recipe = t2i.t2i_recipe(quick)
        assert set(recipe.methods) == set(METHODS) and set(recipe.default_methods) <= set(METHODS)
        assert recipe.reward_for("draft")[0] == "shapes_faithfulness_soft"
    full = t2i.t2i_recipe(False)
    assert {"dpo", "draft"} <= set(full.default_methods) and {"ddpo", "grpo"} & set(full.default_methods)


TINY = {"data": ShapesData(train=64, val=8, test=16, seed=5),
        "pipeline": PipelineSpec(vae_channels=(16, 16, 16), vae_steps=4, vae_batch=8, unet_channels=(16, 32),
                                 attention_heads=1, text_width=32, text_layers=1),
        "recogniser_steps": (6, 6), "recogniser_batch": 16, "recogniser_scenes": 64}


@pytest.fixture
def tiny_field(monkeypatch):
    """The t2i benchmark shrunk to seconds: a tiny world, VAE, UNet and budgets."""
    real = t2i.t2i_recipe

    def tiny_recipe(quick: bool = False):
        return replace(real(True), pretrain_steps=4, pretrain_batch=8, align_steps=2, align_batch=2, n_eval=6,
                       eval_samples=2, num_steps=3, mine_conditions=4, mine_per_condition=2, lora_rank=2,
                       methods={**real(True).methods, "ddpo": {"samples_per_condition": 2, "steps": 1},
                                "draft": {"reward": "shapes_faithfulness_soft", "k": 1, "steps": 2}},
                       default_methods=["dpo", "ddpo", "draft"])

    monkeypatch.setattr(t2i, "settings", lambda quick: TINY)
    monkeypatch.setattr(t2i, "t2i_recipe", tiny_recipe)


def test_the_benchmark_runs_end_to_end(tiny_field, tmp_path):
    torch.manual_seed(0)
    results = run_benchmark("t2i", quick=True, out=tmp_path / "out", cache=tmp_path / "cache")
    on_disk = json.loads((tmp_path / "out/results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["domain"] == "t2i" and on_disk["judge"] == "shapes_judge" and on_disk["n_eval"] == 6
    assert set(on_disk["methods"]) == {"dpo", "ddpo", "draft"}
    for name in ("base", "dpo", "ddpo", "draft"):
        entry = on_disk["base"] if name == "base" else on_disk["methods"][name]
        assert 0 <= entry["reward_mean"] <= 1 and entry["drift"] >= 0
        assert {"colour", "shape", "count", "object", "object2", "position", "exact"} <= set(entry["metrics"])
    for entry in on_disk["methods"].values():
        lo, hi = entry["improvement_ci95"]
        assert lo <= entry["improvement"] <= hi and "exact_gain_ci95" in entry["metrics"]
    assert "untrained" in on_disk
    report = (tmp_path / "out/report.md").read_text()
    assert "real held-out images it scores" in report and "colour drift" in report
    for name in ("samples.png", "report.md", "mined/pairs.jsonl", "bench.log"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # The aligned adapters are kept, in diffusers' format too, and the guide's command samples them.
    from prefdiff.testing import sample_by_the_adapter_guide

    assert (tmp_path / "out/adapters/dpo/pytorch_lora_weights.safetensors").is_file()
    assert not torch.equal(sample_by_the_adapter_guide(tmp_path / "out", "dpo"),
                           sample_by_the_adapter_guide(tmp_path / "out", "dpo", lora=False))
    # The prepared pieces are cached: a second prepare trains nothing and returns the same paths.
    data_dir = tmp_path / "cache/bench/t2i-data"
    stamps = {p: p.stat().st_mtime for p in data_dir.rglob("*.safetensors")}
    again = t2i.prepare(t2i.t2i_recipe(True), data_dir, quick=True)
    assert again.model["pipeline"].startswith(str(data_dir)) and stamps
    assert {p: p.stat().st_mtime for p in data_dir.rglob("*.safetensors")} == stamps
