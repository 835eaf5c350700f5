"""The recognisers' rewards: the contract, matching above mismatched, and a judge apart from the reward."""

import random

import pytest
import torch

from prefdiff.api import UserError
from prefdiff.plugins import get_manager
from prefdiff.testing import check_reward
from prefdiff_t2i import faithfulness, recognisers, world


def scenes(n: int, seed: int = 11):
    """``n`` real images of test prompts and their captions."""
    rng = random.Random(seed)
    prompts = [world.prompts_of("test")[i % 104] for i in range(n)]
    images = torch.stack([world.to_tensor(world.draw(world.scene_for(p, rng))) for p in prompts])
    return images, [world.caption(p) for p in prompts]


@pytest.mark.parametrize("name, which", [("shapes_faithfulness", "reward"), ("shapes_faithfulness_soft", "reward"),
                                         ("shapes_judge", "judge")])
def test_the_rewards_keep_the_contract(name, which, checkpoints):
    reward = get_manager().reward(name, checkpoint=checkpoints[which])
    images, captions = scenes(4)
    scores = check_reward(reward, captions, images)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert reward.differentiable == (name == "shapes_faithfulness_soft")
    check_reward(reward, captions, images.double())  # dtype follows the input


def test_the_soft_reward_passes_gradients_in_log_form_too(checkpoints):
    reward = get_manager().reward("shapes_faithfulness_soft", checkpoint=checkpoints["reward"], log=True)
    images, captions = scenes(3)
    scores = check_reward(reward, captions, images, differentiable=True)
    assert (scores <= 0).all()  # log of a probability (plus a small floor)


@pytest.mark.parametrize("name, which", [("shapes_faithfulness", "reward"), ("shapes_judge", "judge")])
def test_matching_images_score_above_mismatched_ones(name, which, checkpoints):
    reward = get_manager().reward(name, checkpoint=checkpoints[which])
    images, captions = scenes(48)
    matched, _ = reward(images, captions)
    mismatched, _ = reward(images, captions[24:] + captions[:24])  # every caption on another image
    assert matched.mean() > mismatched.mean() + 0.1, (matched.mean(), mismatched.mean())
    blank, _ = reward(torch.full_like(images, -1.0), captions)  # an empty black image
    assert matched.mean() > blank.mean() + 0.15


def test_the_judge_is_a_different_network(checkpoints):
    reward_net, judge_net = recognisers.load(checkpoints["reward"]), recognisers.load(checkpoints["judge"])
    assert recognisers.architecture(checkpoints["reward"]) == "conv"
    assert recognisers.architecture(checkpoints["judge"]) == "coord"
    assert type(reward_net) is not type(judge_net)
    assert set(reward_net.state_dict()) != set(judge_net.state_dict())
    # Trained on other scenes: the two training sets share no image.
    a, _, _ = recognisers.scenes(30, seed=1)
    b, _, _ = recognisers.scenes(30, seed=2)
    drawn = [x for x in a if x.gt(-1).any()]  # empty scenes are alike everywhere
    assert drawn and not any(torch.equal(x, y) for x in drawn for y in b)


def test_the_judge_scores_attributes_exactly():
    # An oracle recogniser output: two red circles on the left and right.
    logits = torch.full((1, recognisers.K, recognisers.C), -20.0)
    logits[0, :, 0] = 20.0
    k = world.kind_index("red", "circle")
    logits[0, k, 0], logits[0, k, 2] = -20.0, 20.0
    centres = torch.full((1, recognisers.K, 2), 0.5)
    checks = faithfulness.caption_checks(logits, centres, ["two red circles"])[0]
    assert checks == {"colour": True, "shape": True, "count": True}
    assert faithfulness.caption_checks(logits, centres, ["three red circles"])[0] == {
        "colour": True, "shape": True, "count": False}
    assert faithfulness.caption_checks(logits, centres, ["one blue circle"])[0] == {
        "colour": False, "shape": True, "count": False}
    assert faithfulness.caption_checks(logits, centres, ["two red squares"])[0] == {
        "colour": True, "shape": False, "count": False}  # red is there, but no square
    p = faithfulness.caption_probability(logits.expand(2, -1, -1), centres.expand(2, -1, -1),
                                         ["two red circles", "one blue square"])
    torch.testing.assert_close(p, torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    # Position: a red circle at x=0.2 and a blue square at x=0.8, the same height.
    q = world.kind_index("blue", "square")
    logits[0, k, 2], logits[0, k, 1] = -20.0, 20.0
    logits[0, q, 0], logits[0, q, 1] = -20.0, 20.0
    centres[0, k], centres[0, q] = torch.tensor([0.2, 0.5]), torch.tensor([0.8, 0.52])
    left = faithfulness.caption_checks(logits, centres, ["a red circle left of a blue square"])[0]
    right = faithfulness.caption_checks(logits, centres, ["a red circle right of a blue square"])[0]
    assert left == {"object": True, "object2": True, "position": True}
    assert right == {"object": True, "object2": True, "position": False}
    # Exactly on the diagonal neither "left of" nor "above" holds (describe() calls it no relation).
    diagonal = centres.clone()
    diagonal[0, k], diagonal[0, q] = torch.tensor([0.25, 0.25]), torch.tensor([0.75, 0.75])
    for relation in ("left of", "above"):
        checks = faithfulness.caption_checks(logits, diagonal, [f"a red circle {relation} a blue square"])[0]
        assert checks == {"object": True, "object2": True, "position": False}, relation
    soft = faithfulness.caption_probability(logits.expand(2, -1, -1), centres.expand(2, -1, -1),
                                            ["a red circle left of a blue square", "a red circle above a blue square"])
    assert soft[0] > 0.99 and 0.6 < soft[1] < 0.7  # both objects there, the relation wrong


def test_a_foreign_prompt_is_a_user_error(checkpoints):
    reward = get_manager().reward("shapes_judge", checkpoint=checkpoints["judge"])
    with pytest.raises(UserError, match="score captions of the t2i shapes world"):
        reward.fn(torch.zeros(1, 3, 32, 32), ["a photo of a cat"])


def test_a_missing_checkpoint_is_a_user_error(tmp_path):
    reward = get_manager().reward("shapes_faithfulness", checkpoint=str(tmp_path / "none.safetensors"))
    with pytest.raises(UserError, match="does not exist"):
        reward.fn(torch.zeros(1, 3, 32, 32), ["one red circle"])
