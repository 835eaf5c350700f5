"""Tests for prefdiff.sampling.

Reference values come from diffusers' own DDIMScheduler.step and from
torch.distributions, never from the module under test.
"""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from torch.testing import assert_close

from prefdiff import sampling
from prefdiff.sampling.common import grad_steps


def make_scheduler(set_alpha_to_one=False, **kwargs):
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        **kwargs,
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Intra-op threads only cost time on models this small, and spin badly when
    # another process holds a core; restore the setting for the other modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


@pytest.fixture(scope="module")
def unet_model(unet):
    return lambda x, t, c: unet(x, t).sample


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=seeded(seed))


def batch_mean(x):
    return x.reshape(x.shape[0], -1).mean(dim=1)


# ------------------------------------------------------------ schedule


def test_ddim_timesteps_match_scheduler():
    scheduler = make_scheduler(timestep_spacing="trailing")
    timesteps = sampling.ddim_timesteps(scheduler, 7)
    reference = make_scheduler(timestep_spacing="trailing")
    reference.set_timesteps(7)
    assert torch.equal(timesteps, reference.timesteps)
    assert scheduler.num_inference_steps == 7


def test_add_noise_and_predict_x0_invert_each_other():
    scheduler = make_scheduler()
    x0, noise = randn(2, 3, 5, seed=1), randn(2, 3, 5, seed=2)
    t = torch.tensor([10, 700])
    x_t = sampling.add_noise(scheduler, x0, t, noise)
    assert_close(x_t, scheduler.add_noise(x0, noise, t))
    assert_close(sampling.predict_x0(scheduler, x_t, noise, t), x0, atol=1e-4, rtol=1e-4)


def test_only_epsilon_and_v_prediction_are_supported():
    # v-prediction is checked against diffusers' pipelines in test_pipelines.py
    scheduler = make_scheduler(prediction_type="sample")
    with pytest.raises(ValueError, match="epsilon or v_prediction, got 'sample'"):
        sampling.sample(lambda x, t, c: x, scheduler, randn(1, 3, 8, 8), None, num_steps=2)


# ---------------------------------------------------------------- step


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_eta0_sample_matches_diffusers_loop(unet_model, set_alpha_to_one):
    scheduler = make_scheduler(set_alpha_to_one)
    noise = randn(2, 3, 8, 8)
    with torch.no_grad():
        out = sampling.sample(unet_model, scheduler, noise, None, num_steps=10, eta=0.0)

        reference = make_scheduler(set_alpha_to_one)
        reference.set_timesteps(10)
        x = noise
        for t in reference.timesteps:
            x = reference.step(unet_model(x, t, None), t, x, eta=0.0).prev_sample

    assert torch.equal(out.timesteps, reference.timesteps)
    assert_close(out.samples, x, atol=1e-5, rtol=1e-5)


def test_eta1_step_matches_diffusers_and_normal_log_prob():
    scheduler = make_scheduler()
    timesteps = sampling.ddim_timesteps(scheduler, 10)
    t = int(timesteps[3])
    x, eps, noise = randn(2, 3, 4, 4, seed=1), randn(2, 3, 4, 4, seed=2), randn(2, 3, 4, 4, seed=3)

    x_prev, log_prob, mean, std = sampling.ddim_step(scheduler, eps, t, x, 1.0, noise=noise)

    expected = scheduler.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    assert_close(x_prev, expected, atol=1e-5, rtol=1e-5)
    expected_mean = scheduler.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    assert_close(mean, expected_mean, atol=1e-5, rtol=1e-5)
    expected_std = scheduler._get_variance(t, t - 100).sqrt()
    assert_close(std, expected_std.expand_as(std))
    expected_log_prob = batch_mean(torch.distributions.Normal(expected_mean, expected_std).log_prob(expected))
    assert_close(log_prob, expected_log_prob, atol=1e-5, rtol=1e-5)


def test_step_accepts_per_sample_timesteps():
    scheduler = make_scheduler()
    sampling.ddim_timesteps(scheduler, 10)
    x, eps, noise = randn(2, 3, 4, seed=1), randn(2, 3, 4, seed=2), randn(2, 3, 4, seed=3)
    x_prev, _, _, _ = sampling.ddim_step(scheduler, eps, torch.tensor([900, 200]), x, 1.0, noise=noise)
    for row, t in enumerate([900, 200]):
        expected = scheduler.step(eps[row : row + 1], t, x[row : row + 1], eta=1.0, variance_noise=noise[row : row + 1])
        assert_close(x_prev[row : row + 1], expected.prev_sample, atol=1e-5, rtol=1e-5)


def test_eta0_step_is_deterministic_with_zero_log_prob():
    scheduler = make_scheduler()
    sampling.ddim_timesteps(scheduler, 10)
    x, eps = randn(2, 3, 4, seed=1), randn(2, 3, 4, seed=2)
    x_prev, log_prob, mean, std = sampling.ddim_step(scheduler, eps, 500, x, 0.0)
    assert torch.equal(x_prev, mean)
    assert torch.equal(log_prob, torch.zeros(2))
    assert torch.equal(std, torch.zeros_like(std))


def test_clip_sample_clamps_predicted_x0():
    scheduler = make_scheduler()
    sampling.ddim_timesteps(scheduler, 10)
    x, eps = 10 * randn(1, 3, 4, seed=1), randn(1, 3, 4, seed=2)
    clipped, *_ = sampling.ddim_step(scheduler, eps, 500, x, 0.0, clip_sample=1.0)
    clipping = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    clipping.set_timesteps(10)
    assert_close(clipped, clipping.step(eps, 500, x, eta=0.0).prev_sample, atol=1e-5, rtol=1e-5)


def test_step_log_prob_reproduces_trajectory_log_probs(unet_model):
    scheduler = make_scheduler()
    with torch.no_grad():
        out = sampling.sample(
            unet_model, scheduler, randn(2, 3, 8, 8), None, num_steps=5, eta=1.0,
            generator=seeded(1), return_trajectory=True,
        )
    assert out.latents.shape == (2, 6, 3, 8, 8)
    assert out.log_probs.shape == (2, 5)
    assert out.means.shape == (2, 5, 3, 8, 8)
    assert torch.equal(out.latents[:, -1], out.samples)
    # The last step goes from t=0 onto final_alpha_cumprod = alphas_cumprod[0]: no noise, log-prob 0.
    assert (out.log_probs[:, :-1] != 0).all()
    assert torch.equal(out.log_probs[:, -1], torch.zeros(2))
    for i, t in enumerate(out.timesteps):
        log_prob, _, _ = sampling.step_log_prob(
            unet_model, scheduler, out.latents[:, i], t, out.latents[:, i + 1], None, eta=1.0
        )
        assert_close(log_prob, out.log_probs[:, i], atol=1e-4, rtol=1e-5)
    # A transition the model did not take is less likely than the one it took.
    swapped, _, _ = sampling.step_log_prob(
        unet_model, scheduler, out.latents[:, 0], out.timesteps[0], out.latents[:, 2], None
    )
    assert (swapped < out.log_probs[:, 0]).all()


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_the_sampler_records_the_noise_std_diffusers_ddim_draws_at_each_step(eta):
    scheduler = make_scheduler()
    out = sampling.sample(lambda x, t, c: 0.1 * x, scheduler, randn(2, 2, 6), None, num_steps=5, eta=eta,
                          generator=seeded(0))
    reference = make_scheduler()
    reference.set_timesteps(5)
    # DDIMScheduler.step draws eta * sqrt(_get_variance(t, t - 1000 // 5)); onto t < 0 it uses final_alpha_cumprod.
    expected = torch.stack([eta * reference._get_variance(int(t), int(t) - 200).sqrt() for t in reference.timesteps])
    assert_close(out.noise_std, expected.float())
    assert out.noise_std[-1] == 0 and torch.equal(out.stochastic, out.noise_std > 0)


def test_step_log_prob_has_grad(unet, unet_model):
    scheduler = make_scheduler()
    out = sampling.sample(unet_model, scheduler, randn(1, 3, 8, 8), None, num_steps=3,
                          generator=seeded(0), return_trajectory=True)
    unet.zero_grad()
    log_prob, _, _ = sampling.step_log_prob(unet_model, scheduler, out.latents[:, 0], out.timesteps[0],
                                            out.latents[:, 1], None)
    log_prob.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())
    unet.zero_grad()


def test_eta1_sample_is_reproducible_by_generator():
    scheduler = make_scheduler()
    model = lambda x, t, c: 0.1 * x  # noqa: E731
    a = sampling.sample(model, scheduler, randn(1, 2, 6), None, num_steps=4, generator=seeded(3)).samples
    b = sampling.sample(model, scheduler, randn(1, 2, 6), None, num_steps=4, generator=seeded(3)).samples
    c = sampling.sample(model, scheduler, randn(1, 2, 6), None, num_steps=4, generator=seeded(4)).samples
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_start_step_continues_a_trajectory(unet_model):
    scheduler = make_scheduler()
    with torch.no_grad():
        full = sampling.sample(unet_model, scheduler, randn(2, 3, 8, 8), None, num_steps=6, eta=0.0,
                               return_trajectory=True)
        tail = sampling.sample(unet_model, scheduler, full.latents[:, 2], None, num_steps=6, eta=0.0, start_step=2)
    assert torch.equal(tail.timesteps, full.timesteps[2:])
    assert_close(tail.samples, full.samples)


def test_float64_input_keeps_dtype():
    out = sampling.sample(lambda x, t, c: 0.1 * x, make_scheduler(), randn(1, 2, 5).double(), None,
                          num_steps=3, generator=seeded(0), return_trajectory=True)
    assert out.samples.dtype == torch.float64
    assert out.log_probs.dtype == torch.float64


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_bfloat16_model_samples_as_the_float32_one_does(prediction_type):
    # bfloat16 rounds the first alpha-bars (0.9999, 0.9997) to 1: the step must not do its schedule
    # arithmetic in the sample's dtype (`--trainer.precision bf16-true` gave NaN samples).
    scheduler = make_scheduler(prediction_type=prediction_type)
    spread = 0.5  # data ~ N(0, 0.25): the exact denoiser is linear in x_t

    def exact(x, t, c):
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1)
        eps = (1 - a).sqrt() / (a * spread**2 + 1 - a) * x.float()
        x0 = a.sqrt() * spread**2 / (a * spread**2 + 1 - a) * x.float()
        out = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return out.to(x.dtype)  # what a network in the sample's dtype returns

    runs = {dtype: sampling.sample(exact, scheduler, randn(2, 3, 64).to(dtype), None, num_steps=50, eta=1.0,
                                   generator=seeded(1), return_trajectory=True)
            for dtype in (torch.float32, torch.bfloat16)}
    out = runs[torch.bfloat16]
    assert out.samples.dtype == torch.bfloat16 and out.log_probs.dtype == torch.float32
    assert torch.isfinite(out.latents).all() and torch.isfinite(out.log_probs).all()
    # The same chain up to bfloat16's rounding of each stored latent (8 bits: 0.4%).
    assert_close(out.samples.float(), runs[torch.float32].samples, rtol=0, atol=0.05)
    assert 0.4 < float(out.samples.float().std()) < 0.6


def test_mixed_dtypes_promote_as_the_inputs_do():
    # Under bf16 autocast a network returns bfloat16 beside a float32 x_t: the conversions and the step
    # must give what the float32 output would, not round to bfloat16 (v-prediction amplifies it in x_0).
    from prefdiff.sampling.ddim import add_noise, ddim_step, predict_x0, to_epsilon, training_target

    scheduler = make_scheduler(prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    x, t = randn(2, 3, 4), torch.tensor([901, 1])
    output = randn(2, 3, 4, seed=1).to(torch.bfloat16)
    for fn in (lambda o, x: to_epsilon(scheduler, o, x, t), lambda o, x: predict_x0(scheduler, x, o, t),
               lambda o, x: add_noise(scheduler, x, t, o), lambda o, x: training_target(scheduler, x, o, t),
               lambda o, x: ddim_step(scheduler, o, t, x, 1.0, noise=torch.zeros_like(x))[0]):
        mixed, wide = fn(output, x), fn(output.float(), x)
        assert mixed.dtype == torch.float32 and torch.equal(mixed, wide)
        assert fn(output.float(), x.double()).dtype == torch.float64


# ----------------------------------------------------------- gradients


def test_grad_last_k_controls_gradient_flow(unet, unet_model):
    # set_alpha_to_one: otherwise the last step, t=0 onto alphas_cumprod[0], is the identity.
    scheduler = make_scheduler(set_alpha_to_one=True)
    noise = randn(1, 3, 8, 8)

    out = sampling.sample(unet_model, scheduler, noise, None, num_steps=3, generator=seeded(0))
    assert not out.samples.requires_grad

    unet.zero_grad()
    out = sampling.sample(unet_model, scheduler, noise, None, num_steps=3, generator=seeded(0), grad_last_k=1)
    out.samples.pow(2).mean().backward()
    grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    unet.zero_grad()


class PhaseModel(torch.nn.Module):
    """eps = early * x on the first ``switch`` calls of a run, late * x after; counts calls under grad."""

    def __init__(self, switch):
        super().__init__()
        self.early = torch.nn.Parameter(torch.tensor(0.1))
        self.late = torch.nn.Parameter(torch.tensor(0.1))
        self.switch = switch
        self.calls = 0
        self.grad_calls = 0

    def forward(self, x, t, c):
        scale = self.early if self.calls < self.switch else self.late
        self.calls += 1
        self.grad_calls += torch.is_grad_enabled()
        return scale * x


@pytest.mark.parametrize("k, early_gets_grad", [(2, False), (3, True), (-1, True)])
def test_grad_last_k_truncates_backprop(k, early_gets_grad):
    model = PhaseModel(switch=3)  # the first 3 of 5 steps use `early`
    out = sampling.sample(model, make_scheduler(), randn(2, 3, 4), None, num_steps=5, generator=seeded(0),
                          grad_last_k=k)
    out.samples.sum().backward()
    assert model.grad_calls == (5 if k == -1 else k)
    assert model.late.grad is not None and model.late.grad != 0
    assert (model.early.grad is not None and model.early.grad != 0) == early_gets_grad


@pytest.mark.parametrize("k", [2, -1])
def test_input_to_first_grad_step_is_detached(k):
    model = PhaseModel(switch=0)
    noise = randn(2, 3, 4).requires_grad_()
    out = sampling.sample(model, make_scheduler(), noise, None, num_steps=4, generator=seeded(0), grad_last_k=k)
    out.samples.sum().backward()
    assert noise.grad is None
    assert model.late.grad is not None


def test_random_k_truncation_draws_k_from_1_to_grad_last_k():
    drawn = set()
    for seed in range(20):
        model = PhaseModel(switch=0)
        sampling.sample(model, make_scheduler(), randn(1, 2, 3), None, num_steps=6, generator=seeded(seed),
                        grad_last_k=4, truncation="random_k")
        drawn.add(model.grad_calls)
    assert drawn <= {1, 2, 3, 4}
    assert len(drawn) > 1


def test_per_step_truncation_keeps_each_step_with_random_k_chance():
    # TRL's AlignProp draws r_i uniform on n-k..n-1 for each step i and keeps step i when r_i <= i:
    # step i's chance is (i - n + k + 1) / k, the chance that AlignProp's contiguous last K covers it.
    n, k, draws = 6, 4, 4000
    generator = seeded(0)
    masks = torch.tensor([grad_steps(n, k, "per_step", generator) for _ in range(draws)], dtype=torch.float64)
    chance = torch.tensor([max(0, i - n + k + 1) / k for i in range(n)], dtype=torch.float64)
    contiguous = torch.tensor([grad_steps(n, k, "random_k", generator) for _ in range(draws)], dtype=torch.float64)
    standard_error = (chance * (1 - chance) / draws).sqrt()
    assert ((masks.mean(0) - chance).abs() <= 4 * standard_error + 1e-12).all()
    assert ((contiguous.mean(0) - chance).abs() <= 4 * standard_error + 1e-12).all()
    gaps = (masks[:, :-1] > masks[:, 1:]).any(1)  # a kept step followed by a dropped one
    assert gaps.float().mean() > 0.2
    assert not (contiguous[:, :-1] > contiguous[:, 1:]).any()


class StepModel(torch.nn.Module):
    """eps = w[i] * x at the i-th call: each step's share of the gradient lands in its own w[i]."""

    def __init__(self, steps):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.05, 0.3, steps))
        self.calls = 0

    def forward(self, x, t, c):
        self.calls += 1
        return self.w[self.calls - 1] * x


@pytest.mark.parametrize("family", ["ddim", "flow"])
def test_per_step_truncation_detaches_only_the_model_calls_it_drops(family):
    n = 6
    # set_alpha_to_one: else DDIM's last step, from t = 0 onto the same alpha, cancels eps exactly
    if family == "ddim":
        new_scheduler = lambda: make_scheduler(set_alpha_to_one=True)  # noqa: E731
    else:
        new_scheduler = FlowMatchEulerDiscreteScheduler
    step_options = {"eta": 0.0} if family == "ddim" else {}

    def has_gap(mask):
        return any(a and not b for a, b in zip(mask, mask[1:]))

    seed = next(s for s in range(100) if has_gap(grad_steps(n, n, "per_step", seeded(s))))
    mask = grad_steps(n, n, "per_step", seeded(seed))
    noise = randn(2, 3, 4)
    model = StepModel(n)
    out = sampling.sample(model, new_scheduler(), noise, None, num_steps=n, eta=0.0, generator=seeded(seed),
                          grad_last_k=n, truncation="per_step")
    out.samples.sum().backward()

    # diffusers' own loop: a dropped step's output is a constant, but x still flows through its update
    reference, scheduler = StepModel(n), new_scheduler()
    scheduler.set_timesteps(n)
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        if i == mask.index(True):
            x = x.detach()
        eps = reference(x, t, None)
        x = scheduler.step(eps if mask[i] else eps.detach(), t, x, **step_options).prev_sample
    x.sum().backward()
    assert (model.w.grad != 0).tolist() == mask
    assert_close(model.w.grad, reference.w.grad)


def test_checkpoint_gives_same_gradients(unet, unet_model, monkeypatch):
    scheduler = make_scheduler()
    noise = randn(1, 3, 8, 8)

    def grads(**kwargs):
        unet.zero_grad()
        out = sampling.sample(unet_model, scheduler, noise, None, num_steps=4, generator=seeded(0),
                              grad_last_k=2, **kwargs)
        out.samples.pow(2).mean().backward()
        result = [p.grad.clone() for p in unet.parameters()]
        unet.zero_grad()
        return result

    plain = grads(checkpoint=False)
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    checkpointed = grads(checkpoint=True)
    assert calls == [False, False]
    for a, b in zip(plain, checkpointed):
        assert_close(a, b)


# ------------------------------------------------------------ guidance


def test_guidance_scale_one_equals_plain(unet_model):
    scheduler = make_scheduler()
    noise = randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = sampling.sample(unet_model, scheduler, noise, None, num_steps=3, generator=seeded(0)).samples
        guided = sampling.sample(unet_model, scheduler, noise, None, num_steps=3, generator=seeded(0),
                                 guidance_scale=1.0, uncond="ignored").samples
    assert torch.equal(plain, guided)


def test_guidance_combines_cond_and_uncond():
    scheduler = make_scheduler()
    noise = randn(2, 3, 4)
    cond, uncond = torch.tensor([2.0, -1.0]).view(2, 1, 1), torch.tensor([0.5, 3.0]).view(2, 1, 1)
    calls = []

    def model(x, t, c):
        calls.append(x.shape[0])
        return c * x * 0.01

    out = sampling.sample(model, scheduler, noise, cond, num_steps=2, eta=0.0, guidance_scale=7.5, uncond=uncond,
                          return_trajectory=True)
    assert calls == [4, 4]  # one doubled batch per step

    eps_cond, eps_uncond = cond * noise * 0.01, uncond * noise * 0.01
    eps = eps_uncond + 7.5 * (eps_cond - eps_uncond)
    expected = scheduler.step(eps, out.timesteps[0], noise, eta=0.0).prev_sample
    assert_close(out.latents[:, 1], expected)

    as_dicts = sampling.sample(lambda x, t, c: c["s"] * x * 0.01, scheduler, noise, {"s": cond}, num_steps=2,
                               eta=0.0, guidance_scale=7.5, uncond={"s": uncond})
    assert_close(as_dicts.samples, out.samples)


def test_guidance_without_uncond_is_an_error():
    with pytest.raises(ValueError, match="uncond"):
        sampling.sample(lambda x, t, c: x, make_scheduler(), randn(1, 2, 3), None, guidance_scale=3.0)


# ------------------------------------------------------------- editing


def test_inpaint_keeps_known_region(unet_model):
    scheduler = make_scheduler()
    known = randn(2, 3, 8, 8, seed=5)
    keep_mask = (randn(1, 1, 8, 8, seed=6) > 0).float()
    with torch.no_grad():
        out = sampling.inpaint(unet_model, scheduler, known, keep_mask, None, num_steps=5, eta=1.0,
                               generator=seeded(0))
    kept = keep_mask.bool().expand_as(known)
    assert torch.equal(out[kept], known[kept])
    assert not torch.allclose(out[~kept], known[~kept])


def test_inpaint_pins_trajectory_ends_and_log_probs_stay_consistent():
    scheduler = make_scheduler()
    model = lambda x, t, c: 0.1 * x  # noqa: E731
    known = torch.zeros(2, 2, 16)
    known[..., 0], known[..., -1] = -1.0, 1.0
    keep_mask = torch.zeros(1, 1, 16)
    keep_mask[..., [0, -1]] = 1.0
    out = sampling.sample(model, scheduler, randn(2, 2, 16), None, num_steps=5, generator=seeded(0),
                          known=known, keep_mask=keep_mask, return_trajectory=True)
    assert torch.equal(out.samples[..., 0], known[..., 0])
    assert torch.equal(out.samples[..., -1], known[..., -1])
    free = (1 - keep_mask).bool().expand(2, 2, 16)
    for i, t in enumerate(out.timesteps[:-1]):  # the last step onto alpha 1 is deterministic
        log_prob, mean, std = sampling.step_log_prob(model, scheduler, out.latents[:, i], t, out.latents[:, i + 1],
                                                     None, keep_mask=keep_mask)
        assert_close(log_prob, out.log_probs[:, i])
        # The model's own draws only: Normal's density averaged over the entries outside the mask.
        normal = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(out.latents[:, i + 1])
        assert_close(out.log_probs[:, i], torch.stack([normal[b][free[b]].mean() for b in range(2)]))
        # The replaced ends were not drawn from the model: counting them gives another number.
        everything, _, _ = sampling.step_log_prob(model, scheduler, out.latents[:, i], t, out.latents[:, i + 1], None)
        assert not torch.allclose(everything, out.log_probs[:, i])


def test_inpaint_with_strength_starts_from_known():
    scheduler = make_scheduler()
    model = lambda x, t, c: 0.1 * x  # noqa: E731
    known = randn(1, 2, 16, seed=4)
    keep_mask = torch.zeros(1, 1, 16)
    keep_mask[..., :4] = 1.0
    out = sampling.inpaint(model, scheduler, known, keep_mask, None, num_steps=20, strength=0.05,
                           generator=seeded(0))
    assert torch.equal(out[..., :4], known[..., :4])
    assert (out - known).abs().max() < 0.1


def test_sdedit_small_strength_stays_close_to_input():
    scheduler = make_scheduler()
    model = lambda x, t, c: 0.1 * x  # noqa: E731
    x0 = randn(2, 3, 8, 8, seed=7)
    small = sampling.sdedit(model, scheduler, x0, None, 0.05, num_steps=20, generator=seeded(0))
    full = sampling.sdedit(model, scheduler, x0, None, 1.0, num_steps=20, generator=seeded(0))
    assert (small - x0).abs().max() < 0.1
    assert (full - x0).abs().mean() > 0.5


def test_sdedit_strength_one_ignores_input(unet_model):
    scheduler = make_scheduler()
    a, b = randn(2, 3, 8, 8, seed=1), randn(2, 3, 8, 8, seed=2)
    with torch.no_grad():
        from_a = sampling.sdedit(unet_model, scheduler, a, None, 1.0, num_steps=4, eta=1.0, generator=seeded(0))
        from_b = sampling.sdedit(unet_model, scheduler, b, None, 1.0, num_steps=4, eta=1.0, generator=seeded(0))
        half_a = sampling.sdedit(unet_model, scheduler, a, None, 0.5, num_steps=4, eta=1.0, generator=seeded(0))
        half_b = sampling.sdedit(unet_model, scheduler, b, None, 0.5, num_steps=4, eta=1.0, generator=seeded(0))
    assert torch.equal(from_a, from_b)
    assert not torch.allclose(half_a, half_b)


@pytest.mark.parametrize("family", ["ddim", "flow"])
def test_an_edit_starts_where_diffusers_img2img_pipelines_start(family):
    """The step count of ``strength`` is diffusers' own: its img2img pipelines' ``get_timesteps`` (Stable
    Diffusion's truncates strength x steps, SD3's the steps left before it), run on a stand-in pipeline
    that has only the scheduler; where they would run no step, one runs."""
    from types import SimpleNamespace

    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusionImg2ImgPipeline

    scheduler = make_scheduler() if family == "ddim" else FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipeline = StableDiffusionImg2ImgPipeline if family == "ddim" else StableDiffusion3Img2ImgPipeline
    differs_from_rounding = 0
    for num_steps in (4, 10, 20, 25, 50):
        # 0.28 of 25 and 0.58 of 50 are 7.000000000000001 and 28.999999999999996 in floats
        for strength in (0.05, 0.1, 0.28, 0.3, 0.35, 0.45, 0.5, 0.58, 0.6, 0.7, 0.75, 0.99, 1.0):
            scheduler.set_timesteps(num_steps)
            _, theirs = pipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), num_steps, strength, "cpu")
            ours = num_steps - sampling.edit_start_step(scheduler, num_steps, strength)
            assert ours == max(theirs, 1), (num_steps, strength)
            differs_from_rounding += ours != max(1, round(strength * num_steps))
    assert differs_from_rounding >= 3  # the grid holds strengths where rounding would start elsewhere


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5])
def test_sdedit_rejects_strength_outside_unit_interval(strength):
    with pytest.raises(ValueError, match="strength"):
        sampling.sdedit(lambda x, t, c: x, make_scheduler(), randn(1, 2, 3), None, strength)


def test_one_dimensional_trajectories():
    scheduler = make_scheduler()
    model = lambda x, t, c: 0.1 * x + c  # noqa: E731
    cond = torch.full((3, 4, 1), 0.01)
    out = sampling.sample(model, scheduler, randn(3, 4, 32), cond, num_steps=6, generator=seeded(0),
                          return_trajectory=True)
    assert out.samples.shape == (3, 4, 32)
    assert out.latents.shape == (3, 7, 4, 32)
    assert out.log_probs.shape == (3, 6)
    assert torch.isfinite(out.log_probs).all()
    edited = sampling.sdedit(model, scheduler, out.samples, cond, 0.5, num_steps=6, generator=seeded(1))
    assert edited.shape == (3, 4, 32)


def test_inpaint_noises_the_kept_region_to_the_next_timestep():
    # RePaint's replacement: after the step t -> t_prev the kept region is a draw
    # of q(x_{t_prev} | known) = N(sqrt(a) known, (1 - a) I), a = alpha_bar(t_prev).
    # Standardised with the right a it is N(0, 1) at every intermediate step; one
    # step off (t, or t - 2 * step_ratio) shifts its mean and its variance.
    scheduler = make_scheduler()
    known = 0.5 + torch.rand(256, 1, 8, 8, generator=seeded(1))
    keep_mask = (torch.arange(8) < 4).float().view(1, 1, 1, 8)
    out = sampling.sample(lambda x, t, c: 0.1 * x, scheduler, randn(256, 1, 8, 8, seed=2), None, num_steps=5, eta=0.0,
                          generator=seeded(0), known=known, keep_mask=keep_mask, return_trajectory=True)
    kept = keep_mask.bool().expand_as(known)
    n = int(kept.sum())
    for i, t_prev in enumerate(out.timesteps[1:].tolist()):
        alpha = scheduler.alphas_cumprod[t_prev]
        z = (out.latents[:, i + 1][kept] - alpha.sqrt() * known[kept]) / (1 - alpha).sqrt()
        # Five standard errors of the mean and of the variance of n standard normals.
        assert abs(z.mean().item()) < 5 / n**0.5, (t_prev, z.mean())
        assert abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5, (t_prev, z.var())
    assert torch.equal(out.samples[kept], known[kept])


def test_joined_chunks_keep_every_part_of_the_trajectory():
    from prefdiff.sampling.common import SampleOutput, concat_outputs

    def part(value, b):
        return SampleOutput(samples=torch.full((b, 2), value), timesteps=torch.tensor([9, 5]),
                            latents=torch.full((b, 3, 2), value), log_probs=torch.full((b, 2), value),
                            means=torch.full((b, 2, 2), value), stochastic=torch.tensor([True, False]),
                            noise_std=torch.tensor([0.5, 0.0]))

    joined = concat_outputs([part(1.0, 2), part(2.0, 1)])
    for name in ("samples", "latents", "log_probs", "means"):
        assert getattr(joined, name).shape[0] == 3 and float(getattr(joined, name)[2].flatten()[0]) == 2.0, name
    assert torch.equal(joined.stochastic, torch.tensor([True, False]))
    assert torch.equal(joined.noise_std, torch.tensor([0.5, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_noise_is_drawn_in_the_samples_dtype(dtype):
    from prefdiff.sampling.common import randn_like

    like = torch.zeros(4, 3, dtype=dtype)
    noise = randn_like(like, seeded(7))
    assert noise.dtype == dtype
    torch.testing.assert_close(noise, torch.randn(4, 3, generator=seeded(7), dtype=dtype))
