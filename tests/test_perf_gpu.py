"""benchmarks/gpu.sh on tiny pipelines on the CPU: the JSON a GPU run would write, through prefdiff's own trainers.

The smoke run takes a few runs of the plan (``--runs``) that between them pass every code path a GPU run
takes: the three pipeline shapes, the three methods, LoRA and the full fine-tune, a lever that keeps the
model (its baseline's FLOPs) and one that changes it, and runs --tiny cannot take. The profiler's summary
is tested on its own: on the CPU a profiled step costs seconds.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ("sd15/dpo/lora", "sd15/dpo/lora+channels_last", "sd15/dpo/lora+lora_blocks", "sd15/ddpo/lora",
         "sd15/ddpo/lora+logprob_batch", "sd15/ddpo/full", "sdxl/ddpo/lora", "sd3/grpo/lora",
         "sd15/ddpo/lora+compile", "sd15/ddpo/lora+cudagraphs")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The smoke runs on tiny SD-1.5, SDXL and SD3 pipelines (run once for the tests below)."""
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--out", str(out),
                           "--runs", ",".join(SMOKE)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, out


def test_tiny_run_times_every_trainer_on_every_shape(tiny_run):
    result, stdout, _ = tiny_run
    assert result["tiny"] is True and result["device_type"] == "cpu" and result["precision"] == "32-true"
    assert result["matmul_peak_tflops"] > 0 and not result["failed"]
    assert set(result["shapes"]) == {"sd15", "sdxl", "sd3"}
    assert result["shapes"]["sd3"]["network"] == "SD3Transformer2DModel"
    assert result["shapes"]["sdxl"]["pipeline"] == "StableDiffusionXLPipeline"
    results = result["results"]
    assert result["plan"] == list(results)
    assert set(results) == {key for key in SMOKE if "compile" not in key and "cudagraphs" not in key}
    for key in ("sd15/dpo/lora", "sd15/ddpo/lora", "sdxl/ddpo/lora", "sd3/grpo/lora"):
        entry = results[key]
        assert entry["step_s"] > 0 and entry["samples_per_s"] > 0 and entry["flops_per_step"] > 0
        assert entry["flops_from"] == key  # a baseline counts its own FLOPs
        assert 0 < entry["mfu"] < 1.5  # a measured peak, so a step can only come near it
        assert entry["trainable"] < entry["total"]
    assert results["sd3/grpo/lora"]["options"]["method"] == "grpo"  # Flow-GRPO on the flow transformer
    assert results["sd15/dpo/lora"]["options"]["lora_targets"] == "attention"
    full = results["sd15/ddpo/full"]
    assert full["trainable"] == full["total"] and full["lora_targets"] is None
    # A full fine-tune's backward also computes every weight gradient: more FLOPs than LoRA's.
    assert full["flops_per_step"] > results["sd15/ddpo/lora"]["flops_per_step"]
    assert "sd15/ddpo/full" in stdout and "wrote" in stdout


def test_tiny_run_measures_each_lever_beside_its_baseline(tiny_run):
    result, _, _ = tiny_run
    results = result["results"]
    for lever, base in [("channels_last", "sd15/dpo/lora"), ("logprob_batch", "sd15/ddpo/lora"),
                        ("lora_blocks", "sd15/dpo/lora")]:
        entry = results[f"{base}+{lever}"]
        assert entry["levers"] == [lever] and entry["step_s"] > 0
        if lever == "lora_blocks":  # another model: its own FLOPs, more adapters
            assert entry["options"]["lora_targets"] == "blocks" and entry["flops_from"] == f"{base}+{lever}"
            assert entry["trainable"] > results[base]["trainable"]
        else:  # the same model: the baseline's FLOPs
            assert entry["flops_from"] == base and entry["flops_per_step"] == results[base]["flops_per_step"]
    assert results["sd15/ddpo/lora+logprob_batch"]["options"]["logprob_batch"] == 2
    assert results["sd15/dpo/lora+channels_last"]["options"]["channels_last"] is True
    # What the CPU cannot run is listed with the reason, not silently dropped.
    assert "inductor" in result["skipped"]["sd15/ddpo/lora+compile"]
    assert "CUDA" in result["skipped"]["sd15/ddpo/lora+cudagraphs"]


def test_render_gpu_reads_new_and_old_json(tiny_run, tmp_path):
    """The new JSON beside the files of the first GPU runs (another harness, another layout)."""
    from prefdiff.benchdocs import render_gpu

    result, _, out = tiny_run
    shutil.copy(out, tmp_path / "gpu.json")
    old = sorted((ROOT / "benchmarks/results/gpu").glob("b*.json"))
    assert old, "the first GPU runs' files are gone"
    for path in old:
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "NOTES.md").write_text("Read the table as a CPU smoke test.")
    page = "\n".join(render_gpu(tmp_path, tmp_path / "benchmarks.md"))
    assert page.startswith("## GPU") and page.count("| gpu.json |") == len(result["results"])
    assert "| sd3/grpo/lora |" in page and "CPU smoke test" in page
    assert "gpu.json, sd15/ddpo/lora+compile: skipped" in page
    for path in old:
        rows = [e for e in json.loads(path.read_text())["results"].values() if "step_s" in e]
        assert page.count(f"| {path.name} |") == len(rows) > 0


def test_run_selection_is_checked(capsys):
    from prefdiff.perf.gpu import PLAN_KEYS, parse, plan

    for flag, value in [("--modes", "lora,half"), ("--levers", "warp_drive"), ("--shapes", "sd9"),
                        ("--runs", "sd15/dpo/full")]:
        with pytest.raises(SystemExit) as exc:
            parse(["--tiny", flag, value])
        assert exc.value.code == 2 and flag in capsys.readouterr().err
    runs, skipped = plan(("sd15",), ("dpo",), ("lora",), ("channels_last",), keys=("sd15/dpo/lora+channels_last",))
    assert [run.key for run in runs] == ["sd15/dpo/lora+channels_last"] and not skipped
    assert len(set(PLAN_KEYS)) == len(PLAN_KEYS)  # a key names one run


def test_step_profiler_summarises_a_step():
    """What a profiled step records (on a GPU also its kernels and the idle share)."""
    import torch

    from prefdiff.perf.gpu_measure import StepProfiler

    a = torch.randn(64, 64, requires_grad=True)
    with StepProfiler(torch.device("cpu")) as profiler:
        (a @ a).relu().sum().backward()
    summary = profiler.summary(typical_step_s=None)
    assert summary["profiled_step_s"] > 0 and summary["aten_ops"] >= 3  # mm, relu, sum and their backward
    assert summary["kernel_launches"] == 0 and summary["top_kernels"] == [] and "idle_share" not in summary
