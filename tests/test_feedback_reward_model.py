"""The Bradley-Terry reward model: the loss on tensors, learning a rule from a pair file, the registered reward."""

import json
import math

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.feedback.candidates import CandidatePool, write_sample_folder
from prefdiff.feedback.reward_model import (PreferenceNet, RewardModelConfig, bradley_terry_loss,
                                            load_reward_model)
from prefdiff.feedback.store import LabelStore
from prefdiff.feedback.training import train_reward_model, wilson_interval
from prefdiff.plugins import get_manager
from prefdiff.testing import check_reward


def test_bradley_terry_loss_values():
    r_a, r_b = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    loss, metrics = bradley_terry_loss(r_a, r_b, torch.tensor([1.0, 0.5, 1.0]))
    # -log sigmoid(2), a tie at margin 0 costs log 2, -log sigmoid(-2)
    expected = (math.log1p(math.exp(-2)) + math.log(2) + math.log1p(math.exp(2))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # the tie is not counted
    assert metrics["margin"].item() == pytest.approx((2 + 0 - 2) / 3)


def test_bradley_terry_loss_is_symmetric_and_pushes_the_winner_up():
    r_a = torch.tensor([0.3, -0.2], requires_grad=True)
    r_b = torch.tensor([0.1, 0.4], requires_grad=True)
    target = torch.tensor([1.0, 0.0])
    loss, _ = bradley_terry_loss(r_a, r_b, target)
    swapped, _ = bradley_terry_loss(r_b, r_a, 1 - target)
    assert loss.item() == pytest.approx(swapped.item())
    loss.backward()
    assert r_a.grad[0] < 0 < r_b.grad[0]  # a won pair 0: gradient descent raises r_a
    assert r_a.grad[1] > 0 > r_b.grad[1]  # b won pair 1


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)


@pytest.mark.parametrize("shape, cond, mode", [
    ((3, 8, 8), torch.tensor([0, 3]), "class"),
    ((1, 8, 8), torch.rand(2, 2, 8, 8), "concat"),
    ((2, 16), None, "none"),
])
def test_network_shapes(shape, cond, mode):
    config = RewardModelConfig(list(shape), mode, 2 if mode == "concat" else 0, 4 if mode == "class" else 0, 8)
    out = PreferenceNet(config)(torch.rand(2, *shape), cond)
    assert out.shape == (2,)


def _labelled_by_brightness(folder, n_conditions=40, flip_every=0):
    g = torch.Generator().manual_seed(0)
    brightness = torch.rand(n_conditions, 4, 1, 1, 1, generator=g) * 1.2 - 0.6
    samples = (brightness + 0.3 * torch.randn(n_conditions, 4, 3, 8, 8, generator=g)).clamp(-1, 1)
    write_sample_folder(folder, samples, [torch.tensor(i % 4) for i in range(n_conditions)])
    pool = CandidatePool(folder, folder / "pairs.jsonl")
    store = LabelStore(folder / "pairs.jsonl")
    from safetensors.torch import load_file
    for n, pair in enumerate(pool.pairs.values()):
        a, b = (load_file(str(folder / pair[k]))["sample"].mean() for k in ("a", "b"))
        winner = "a" if a > b else "b"
        if flip_every and n % flip_every == 0:
            winner = "b" if winner == "a" else "a"
        store.record(pair, "rule", winner)
    return folder / "pairs.jsonl"


def test_learns_a_rule_from_a_pair_file_and_reports_held_out_accuracy(tmp_path):
    pair_file = _labelled_by_brightness(tmp_path / "s", n_conditions=30)
    report = train_reward_model(pair_file, tmp_path / "rm", epochs=8, width=8)
    assert report["labels"] == 180 and report["held_out_labels"] == 36
    held = report["held_out"]
    assert held["accuracy"] > 0.85, report
    assert held["accuracy_ci95"][0] < held["accuracy"] <= held["accuracy_ci95"][1] + 1e-9
    saved = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert saved["condition"] == "class" and saved["metrics"]["held_out"]["accuracy"] == held["accuracy"]


def test_untrained_model_is_at_chance_on_the_same_pairs(tmp_path):
    # The accuracy above comes from training: with no epochs of data the same split is near chance.
    pair_file = _labelled_by_brightness(tmp_path / "s", n_conditions=30)
    report = train_reward_model(pair_file, tmp_path / "rm", epochs=1, lr=1e-9, width=8)
    assert report["held_out"]["accuracy"] < 0.75


def test_registered_as_a_reward_that_keeps_the_contract(tmp_path):
    pair_file = _labelled_by_brightness(tmp_path / "s", n_conditions=12)
    train_reward_model(pair_file, tmp_path / "rm", epochs=2, width=8, held_out=0.25)
    reward = get_manager().reward("preference_model", path=str(tmp_path / "rm"))
    assert reward.plugin == "feedback" and reward.differentiable
    samples = torch.rand(4, 3, 8, 8) * 2 - 1
    scores = check_reward(reward, torch.tensor([0, 1, 2, 3]), samples)
    net = load_reward_model(tmp_path / "rm")
    assert torch.allclose(scores, net(samples, torch.tensor([0, 1, 2, 3])))


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a preference model folder"):
        get_manager().reward("preference_model", path=str(tmp_path))
    pair_file = _labelled_by_brightness(tmp_path / "s", n_conditions=2)
    with pytest.raises(UserError, match="--held-out must be in"):
        train_reward_model(pair_file, tmp_path / "rm", held_out=1.5)
    with pytest.raises(UserError, match="--epochs must be >= 1"):
        train_reward_model(pair_file, tmp_path / "rm", epochs=0)


def test_reward_model_train_command(tmp_path, capsys):
    from prefdiff.cli import main

    pair_file = _labelled_by_brightness(tmp_path / "s", n_conditions=10)
    assert main(["reward-model", "train", str(pair_file), "--out", str(tmp_path / "rm"), "--epochs", "2",
                 "--width", "8"]) == 0
    out = capsys.readouterr().out
    assert "held-out pair accuracy" in out and "12 decided pairs" in out
    assert len(out.splitlines()) == 4, out  # a summary; the whole report is in config.json
    metrics = json.loads((tmp_path / "rm" / "config.json").read_text())["metrics"]
    assert f"train pair accuracy {metrics['train']['accuracy']:.3f}" in out
    assert (tmp_path / "rm" / "model.safetensors").is_file()
