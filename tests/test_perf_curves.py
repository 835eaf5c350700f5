"""prefdiff bench records held-out reward against training wall-clock; the page plots it."""

import json
import math

from prefdiff import hookimpl
from prefdiff.bench import Recipe, run_benchmark
from prefdiff.testing import registered_plugin

TINY = Recipe(
    domain="tinycurve", dataset="synthetic_textures", dataset_options={"resolution": 8},
    model={"kind": "unet2d", "sample_size": 8, "channels": 3, "conditioning": "class", "num_classes": 4,
           "block_out_channels": (8, 16)},
    conditioner="class_label", reward="jpeg_compressibility", judge="jpeg_incompressibility",
    methods={"ddpo": {"samples_per_condition": 2, "steps": 4}, "draft": {"reward": "smoothness", "k": 1}},
    default_methods=["ddpo", "draft"], pretrain_steps=4, pretrain_batch=8, align_steps=2, align_batch=2,
    n_eval=6, num_steps=2, train_size=16)


class TinyCurves:
    @hookimpl
    def prefdiff_register_benchmarks(self, register):
        register("tinycurve", lambda quick: TINY)


def test_bench_records_judge_curves_and_the_page_plots_them(tmp_path):
    with registered_plugin(TinyCurves(), "tiny-curves"):
        results = run_benchmark("tinycurve", quick=True, out=tmp_path / "results" / "tinycurve")
    assert results["curve_samples"] == 6  # every held-out sample when there are fewer than 16
    for method, steps in (("ddpo", 4), ("draft", 2)):
        entry = results["methods"][method]
        curve = entry["curve"]
        # The base model at 0 s, then every max(1, steps // 5) batches: one point per batch here.
        assert len(curve) == 1 + steps and curve[0][0] == 0.0
        walls = [w for w, _ in curve]
        assert walls == sorted(walls) and walls[-1] <= entry["train_wall_s"] + 1e-6
        assert all(math.isfinite(r) for _, r in curve)
        assert entry["curve_eval_s"] > 0
    # Both curves start at the same base model on the same subset and noise.
    assert results["methods"]["ddpo"]["curve"][0] == results["methods"]["draft"]["curve"][0]
    on_disk = json.loads((tmp_path / "results" / "tinycurve" / "results.json").read_text())
    assert on_disk["methods"]["ddpo"]["curve"] == results["methods"]["ddpo"]["curve"]

    from prefdiff.benchdocs import render

    page = render(tmp_path / "results", tmp_path / "docs" / "benchmarks.md")
    assert "figures/tinycurve-curves.png" in page
    assert (tmp_path / "docs" / "figures" / "tinycurve-curves.png").stat().st_size > 0
    assert "Time to DDPO's final held-out reward" in page


def test_curve_evaluation_does_not_change_training(tmp_path):
    """The recorded run trains exactly as it would without the curve (forked RNG, train mode restored)."""
    import torch

    from prefdiff.bench.curves import judge_curve
    from prefdiff.testing import tiny_denoiser

    calls = []

    def score(denoiser):
        torch.randn(3)  # would shift the training draws without the forked RNG
        denoiser.eval()
        calls.append(1)
        return 0.5

    recorder = judge_curve(score, start=0.25, every=2)
    model = tiny_denoiser()

    class Module:
        denoiser = model

    model.train()
    recorder.on_train_start(None, Module)
    torch.manual_seed(0)
    for _ in range(3):
        recorder.on_train_batch_end(None, Module)
    after = torch.randn(2)
    recorder.on_train_end(None, Module)
    torch.manual_seed(0)
    assert torch.equal(after, torch.randn(2))
    assert model.training and len(calls) == 2  # batch 2, then the end (batch 3)
    assert recorder.points[0] == [0.0, 0.25] and [p[1] for p in recorder.points[1:]] == [0.5, 0.5]
