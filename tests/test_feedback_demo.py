"""End to end on the built-in example: simulated labelers label through the HTTP API, a reward model
is learned from their pairs, and DDPO on it (`prefdiff fit`) raises their hidden rule on held-out seeds."""

import torch

from prefdiff.feedback.candidates import CandidatePool, ModelSource, write_sample_folder
from prefdiff.feedback.store import LabelStore
from prefdiff.feedback.demo import (SimulatedLabeler, brightness, fit_ddpo, fit_pairs, label_round,
                                    paired_summary, rule_on_held_out)
from prefdiff.feedback.training import train_reward_model
from prefdiff.models import load_lora, load_model, save_model
from prefdiff.plugins import get_manager
from prefdiff.testing import tiny_denoiser, tiny_scheduler

OPTIONS = {"resolution": 8}


def test_simulated_labelers_to_reward_model_to_ddpo(tmp_path):
    base = tmp_path / "base"
    denoiser = tiny_denoiser(seed=0, sample_size=8)
    save_model(denoiser, base)
    tiny_scheduler().save_pretrained(base / "scheduler")

    source = ModelSource(str(base), "synthetic_textures", conditioner="class_label", dataset_options=OPTIONS,
                         per_condition=4, conditions_per_draw=16, num_steps=6)
    labelers = [SimulatedLabeler(f"sim{i}", brightness, temperature=0.02, seed=i) for i in range(2)]
    counts = label_round(tmp_path / "samples", labelers, 48, source=source, labels_per_pair=1)
    assert counts == {"sim0": 48, "sim1": 48}

    report = train_reward_model(tmp_path / "samples" / "pairs.jsonl", tmp_path / "rm", epochs=10, width=8)
    assert report["labels"] == 96
    assert report["held_out"]["accuracy"] > 0.7, report["held_out"]

    lora = fit_ddpo(base, tmp_path / "rm", tmp_path / "ddpo", steps=8, conditions_per_step=8,
                    samples_per_condition=8, num_steps=6, lr=3e-3, dataset_options=OPTIONS)
    dataset = get_manager().dataset("synthetic_textures", split="test", **OPTIONS)
    conditions = torch.tensor([dataset[i]["cond"] for i in range(64)])
    before = rule_on_held_out(base, None, brightness, conditions, num_steps=6, seed=12345)
    after = rule_on_held_out(base, lora, brightness, conditions, num_steps=6, seed=12345)
    summary = paired_summary(before, after)
    print(report["held_out"], summary)
    assert summary["improvement_ci95"][0] > 0, summary


def test_labels_train_diffusion_dpo_and_kto_directly(tmp_path):
    base = tmp_path / "base"
    save_model(tiny_denoiser(seed=0, sample_size=8), base)
    tiny_scheduler().save_pretrained(base / "scheduler")
    write_sample_folder(tmp_path / "s", torch.rand(4, 3, 3, 8, 8) * 2 - 1, [torch.tensor(i) for i in range(4)])
    pair_file = tmp_path / "s" / "pairs.jsonl"
    pool, store = CandidatePool(tmp_path / "s", pair_file), LabelStore(pair_file)
    for n, pair in enumerate(pool.pairs.values()):
        store.record(pair, "ann", ("a", "b", "tie")[n % 3])
    for objective in ("dpo", "kto"):
        lora = fit_pairs(base, store.pair_file, tmp_path / objective, objective=objective, steps=2, batch_size=4)
        denoiser = load_lora(load_model(base, get_manager().conditioner("class_label")), lora)
        assert any(p.abs().sum() > 0 for n, p in denoiser.named_parameters() if "lora_B" in n)
