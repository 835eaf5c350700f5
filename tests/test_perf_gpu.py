"""benchmarks/gpu.sh on its tiny CPU config: the JSON a GPU run would write."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_tiny_writes_throughput_and_mfu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["tiny"] is True and result["device_type"] == "cpu" and result["dtype"] == "float32"
    assert result["matmul_peak_tflops"] > 0
    for key in ("dpo/lora", "ddpo/lora", "dpo/full", "ddpo/full"):
        entry = result["results"][key]
        assert entry["step_s"] > 0 and entry["samples_per_s"] > 0 and entry["flops_per_step"] > 0
        assert 0 < entry["mfu"] < 1.5  # a measured peak, so a step can only come near it
    lora, full = result["results"]["parameters/lora"], result["results"]["parameters/full"]
    assert lora["trainable"] < full["trainable"] == full["total"]
    # A full fine-tune's backward also computes weight gradients: more FLOPs than LoRA's.
    assert result["results"]["dpo/full"]["flops_per_step"] > result["results"]["dpo/lora"]["flops_per_step"]

    from prefdiff.benchdocs import render_gpu

    (tmp_path / "NOTES.md").write_text("Read the table as a CPU smoke test.")
    page = "\n".join(render_gpu(tmp_path))
    assert page.startswith("## GPU") and page.count("| gpu.json |") == 4 and "CPU smoke test" in page


def test_gpu_script_attention_targets_and_profile(tmp_path):
    """--lora-targets attention adapts fewer layers; --profile adds a kernel breakdown to DDPO."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--out", str(out),
                           "--lora-targets", "attention", "--modes", "lora", "--profile"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["lora_targets"] == "attention" and "dpo/full" not in result["results"]
    assert 0 < result["results"]["parameters/lora"]["trainable"]
    profile = result["results"]["ddpo/lora"]["profile"]
    assert profile["profiled_step_s"] > 0 and set(profile) >= {"kernel_launches", "kernel_busy_share", "top_kernels"}


def test_gpu_script_rejects_unknown_mode(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--modes", "lora,half",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--modes" in proc.stderr and not (tmp_path / "x.json").exists()
