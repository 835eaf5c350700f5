"""The reward contract, enforced at run time, and composite rewards."""

import pytest
import torch

from prefdiff import hookimpl
from prefdiff.errors import PluginError, UserError
from prefdiff.rewards import parse_reward_spec
from prefdiff.testing import check_reward, registered_plugin


class BadRewards:
    @hookimpl
    def prefdiff_register_rewards(self, register):
        register("wrong_shape", lambda: lambda s, c: (torch.zeros(s.shape[0], 2), {}))
        register("nan", lambda: lambda s, c: (torch.full((s.shape[0],), float("nan")), {}))
        register("inf", lambda: lambda s, c: (torch.full((s.shape[0],), float("inf")), {}))
        register("as_list", lambda: lambda s, c: ([0.0] * s.shape[0], {}))
        register("ints", lambda: lambda s, c: (torch.zeros(s.shape[0], dtype=torch.long), {}))
        register("bare", lambda: lambda s, c: torch.zeros(s.shape[0]))
        register("raises", lambda: lambda s, c: 1 / 0)
        register("mean", lambda: lambda s, c: (s.flatten(1).mean(1), {}), differentiable=True)
        register("scaled", lambda scale=1.0: lambda s, c: (scale * s.flatten(1).mean(1), {}), differentiable=True)
        register("elsewhere", lambda: lambda s, c: (torch.zeros(s.shape[0], device="meta"), {}))
        register("detached", lambda: lambda s, c: (torch.from_numpy(s.detach().flatten(1).mean(1).numpy()), {}),
                 differentiable=True)


@pytest.mark.parametrize("name, message", [
    ("wrong_shape", "shape \\(4, 2\\) for a batch of 4"),
    ("nan", "4 NaN score"),
    ("inf", "4 Inf score"),
    ("as_list", "scores of type list"),
    ("ints", "torch.int64 scores"),
    ("bare", "returned Tensor, not a \\(scores, info\\) pair"),
    ("raises", "raised ZeroDivisionError"),
    ("elsewhere", "returned scores on meta for samples on cpu; compute the scores on the samples' device"),
])
def test_contract_violations_name_plugin_and_reward(name, message):
    with registered_plugin(BadRewards(), "bad-rewards") as manager:
        reward = manager.reward(name)
        with pytest.raises(PluginError, match=f"reward '{name}' \\(plugin 'bad-rewards'\\).*{message}"):
            reward(torch.zeros(4, 3, 8, 8))


def test_nan_scores_of_nan_samples_blame_the_model_not_the_reward():
    samples = torch.zeros(4, 3, 8, 8)
    samples[2, 0, 1, 1] = float("nan")
    with registered_plugin(BadRewards(), "bad-rewards") as manager:
        with pytest.raises(UserError, match="the model made 1 sample\\(s\\) of 4 holding NaN or Inf, and reward "
                                            "'mean' \\(plugin 'bad-rewards'\\) scored them NaN or Inf: training "
                                            "diverged"):
            manager.reward("mean")(samples)
        with pytest.raises(PluginError, match="reward 'nan'"):  # finite samples: the reward's own NaN
            manager.reward("nan")(torch.zeros(4, 3, 8, 8))
        with pytest.raises(PluginError, match="reward 'nan'"):  # NaN scores of finite samples too: its own
            manager.reward("nan")(samples)

def test_a_reward_registered_differentiable_must_pass_gradients():
    with registered_plugin(BadRewards(), "bad-rewards") as manager:
        reward = manager.reward("detached")
        samples = torch.rand(4, 3, 8, 8)
        reward(samples)  # without gradients there is nothing to check
        with torch.no_grad():  # nor where none are recorded (sampling, evaluation)
            reward(samples.clone().requires_grad_(True))
        with pytest.raises(PluginError, match="reward 'detached' \\(plugin 'bad-rewards'\\) is registered with "
                                              "differentiable=True, but its scores carry no gradient"):
            reward(samples.requires_grad_(True))
        with pytest.raises(AssertionError, match="declared differentiable but its scores carry no gradient"):
            check_reward(reward, None, samples.detach())
        scores, _ = manager.reward("mean")(samples)
        assert scores.requires_grad


def test_builtin_rewards_meet_the_contract():
    from prefdiff.plugins import get_manager
    from prefdiff.testing import condition_batch, tiny_denoiser, tiny_samples

    samples = tiny_samples(tiny_denoiser(), condition_batch(3))
    assert samples.shape == (3, 3, 16, 16)
    for name in ("jpeg_compressibility", "jpeg_incompressibility", "smoothness"):
        check_reward(get_manager().reward(name), None, samples)


def test_jpeg_compressibility_prefers_flat_images():
    from prefdiff.plugins import get_manager

    flat = torch.zeros(1, 3, 32, 32)
    noisy = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores, info = get_manager().reward("jpeg_compressibility")(torch.cat([flat, noisy]))
    assert scores[0] > scores[1] and "jpeg_kb" in info
    inc, _ = get_manager().reward("jpeg_incompressibility")(torch.cat([flat, noisy]))
    torch.testing.assert_close(inc, -scores)


def test_composite_reward_sums_weighted_parts_and_logs_each():
    with registered_plugin(BadRewards(), "bad-rewards") as manager:
        reward = manager.reward("0.7*mean + 0.3*smoothness")
        x = torch.rand(2, 3, 8, 8)
        total, info = reward(x)
        expected = 0.7 * manager.reward("mean")(x)[0] + 0.3 * manager.reward("smoothness")(x)[0]
        torch.testing.assert_close(total, expected)
        assert set(info) == {"reward/mean", "reward/smoothness"}
        assert reward.differentiable


def test_a_weighted_sums_options_go_to_its_parts_and_stray_ones_are_refused():
    with registered_plugin(BadRewards(), "bad-rewards") as manager:
        x = torch.rand(2, 3, 8, 8)
        total, _ = manager.reward("0.5*scaled + 0.5*mean", scaled={"scale": 4.0})(x)
        torch.testing.assert_close(total, 0.5 * 4.0 * x.flatten(1).mean(1) + 0.5 * x.flatten(1).mean(1))
        # Given flat, as a single reward takes them, they would have been dropped without a word.
        with pytest.raises(UserError, match=r"^reward '0.5\*scaled \+ 0.5\*mean' is a weighted sum: its options go "
                                            r"under each part's name, e.g. \{scaled: \{scale: ...\}\}; scale is not "
                                            r"one of its parts \(scaled, mean\)$"):
            manager.reward("0.5*scaled + 0.5*mean", scale=4.0)
        with pytest.raises(UserError, match="the options of its part scaled must be a mapping"):
            manager.reward("0.5*scaled + 0.5*mean", scaled=4.0)


def test_bad_reward_spec():
    assert parse_reward_spec("2*a+b") == [(2.0, "a"), (1.0, "b")]
    with pytest.raises(UserError, match="weighted sum"):
        parse_reward_spec("0.5 a")


def test_check_reward_catches_batch_dependence():
    def batch_norm_reward(s, c):
        m = s.flatten(1).mean(1)
        return m - m.mean(), {}

    with pytest.raises(AssertionError, match="one by one"):
        check_reward(batch_norm_reward, None, torch.rand(3, 3, 4, 4))
