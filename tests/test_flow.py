"""Flow matching: the samplers against diffusers and exact marginals, the step log-probs, the objectives."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from prefdiff import sampling
from prefdiff.sampling.flow import flow_step
from prefdiff.schedulers import build_scheduler

TINY_FLOW = dict(kind="unet2d", sample_size=8, channels=3, conditioning="class", num_classes=4,
                 block_out_channels=(16, 32), norm_num_groups=8, prediction_type="flow")


def velocity_model(x, t, cond):
    """A fixed nonlinear field, so steps differ in a way a wrong formula cannot hide."""
    s = (t.float() / 1000).view(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(x) * (1 + s) - 0.3 * s


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_ode_equals_the_diffusers_scheduler_loop(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = sampling.sample(velocity_model, scheduler, noise, None, num_steps=6, eta=0.0).samples
    reference = FlowMatchEulerDiscreteScheduler(shift=shift)
    reference.set_timesteps(6)
    x = noise.clone()
    for t in reference.timesteps:
        x = reference.step(velocity_model(x, t.expand(2), None), t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-6, rtol=1e-5)


def gaussian_velocity(mu: float, sd: float):
    """The exact rectified-flow velocity for data N(mu, sd^2): E[eps - x0 | x_s = x]."""

    def v(x, t, cond):
        s = (t.double() / 1000).view(-1, *([1] * (x.dim() - 1)))
        var = (1 - s) ** 2 * sd**2 + s**2
        centred = x.double() - (1 - s) * mu
        e_x0 = mu + (1 - s) * sd**2 / var * centred
        e_eps = s / var * centred
        return (e_eps - e_x0).to(x.dtype)

    return v


def test_a_bfloat16_model_samples_as_the_float32_one_does():
    # In bfloat16 the noise levels near 1 are 0.004 apart, as long as a step: the step's arithmetic
    # must not run in the sample's dtype (`--trainer.precision bf16-true`); diffusers' does it in float32.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    noise = torch.randn(4, 3, 64, generator=torch.Generator().manual_seed(0))
    runs = {dtype: sampling.sample(gaussian_velocity(0.5, 0.5), scheduler, noise.to(dtype), None, num_steps=40,
                                   eta=0.7, generator=torch.Generator().manual_seed(1), return_trajectory=True)
            for dtype in (torch.float32, torch.bfloat16)}
    out = runs[torch.bfloat16]
    assert out.samples.dtype == torch.bfloat16 and out.log_probs.dtype == torch.float32
    # The same chain up to bfloat16's rounding of each stored latent (8 bits: 0.4%); with the step
    # in bfloat16 the mean difference was 0.028.
    assert float((out.samples.float() - runs[torch.float32].samples).abs().mean()) < 0.01


def test_sde_keeps_the_odes_marginals_on_a_gaussian_toy():
    # Data N(2, 0.5^2): the marginal at noise level s is N((1 - s) 2, (1 - s)^2 0.25 + s^2) exactly,
    # and the velocity field is known in closed form, so only the sampler can be wrong.
    mu, sd, n, steps = 2.0, 0.5, 40_000, 100
    scheduler = FlowMatchEulerDiscreteScheduler()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    # The SDE starts at step 5 (s = 0.95): near s = 1, g^2 = a^2 s / (1 - s) makes one Euler-Maruyama
    # step as large as the noise itself, and any finite stand-in there (flow_grpo's) biases the variance.
    out = sampling.sample(gaussian_velocity(mu, sd), scheduler, noise, None, num_steps=steps, eta=0.7, sde="sde",
                          sde_window=(5, steps), generator=g, return_trajectory=True)
    sigmas = scheduler.sigmas.double()
    for i in range(5, steps + 1, 5):
        x, s = out.latents[:, i, 0], float(sigmas[i])
        mean, var = (1 - s) * mu, (1 - s) ** 2 * sd**2 + s**2
        se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / n)
        assert abs(float(x.mean()) - mean) < 4 * se_mean, (i, float(x.mean()), mean)
        assert abs(float(x.var()) - var) < 4 * se_var, (i, float(x.var()), var)
    # the ODE from the same noise ends on the data distribution too, but with no spread of its own
    ode = sampling.sample(gaussian_velocity(mu, sd), scheduler, noise, None, num_steps=steps, eta=0.0).samples
    assert abs(float(ode.mean()) - mu) < 4 * sd / math.sqrt(n) and abs(float(ode.std()) - sd) < 0.01


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_step_log_prob_is_normals(kind):
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    prev, log_prob, mean, std = flow_step(v, torch.tensor(0.7), torch.tensor(0.55), x, 0.8, kind=kind, generator=g)
    normal = torch.distributions.Normal(mean, std.expand_as(mean))
    torch.testing.assert_close(log_prob, normal.log_prob(prev).flatten(1).mean(1))
    # Flow-GRPO's SDE step and CPS by their formulas, written out here independently.
    s, s_prev, a = 0.7, 0.55, 0.8
    if kind == "sde":
        g2 = a**2 * s / (1 - s)
        expected_mean = x + (v + g2 / (2 * s) * (x + (1 - s) * v)) * (s_prev - s)
        expected_std = math.sqrt(g2 * (s - s_prev))
    else:
        x0, eps = x - s * v, x + (1 - s) * v
        expected_mean = (1 - s_prev) * x0 + s_prev * math.cos(a * math.pi / 2) * eps
        expected_std = s_prev * math.sin(a * math.pi / 2)
    torch.testing.assert_close(mean, expected_mean)
    assert float(std.flatten()[0]) == pytest.approx(expected_std, rel=1e-6)


def test_cps_marks_its_last_step_deterministic():
    # CPS's std is s' sin(a pi/2), 0 onto s' = 0: that step has no log-prob, so it is not a step to train
    # (flow_grpo trains num_steps - 1 steps), and it is the Euler step the ODE takes.
    scheduler = FlowMatchEulerDiscreteScheduler()
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 3, 8, 8, generator=g)
    out = sampling.sample(velocity_model, scheduler, noise, None, num_steps=4, eta=0.7, sde="cps", generator=g,
                          return_trajectory=True)
    assert out.stochastic.tolist() == [True, True, True, False]
    torch.testing.assert_close(out.noise_std, scheduler.sigmas[1:].float() * math.sin(0.7 * math.pi / 2))
    assert (out.log_probs[:, :3] != 0).all() and (out.log_probs[:, 3] == 0).all()
    last = out.latents[:, 3] - scheduler.sigmas[3] * velocity_model(out.latents[:, 3], out.timesteps[3].expand(2), None)
    torch.testing.assert_close(out.samples, last)
    sde = sampling.sample(velocity_model, scheduler, noise, None, num_steps=4, eta=0.7, generator=g)
    assert sde.stochastic.tolist() == [True] * 4  # Flow-GRPO's SDE still draws onto s' = 0


def test_recomputed_log_probs_reproduce_the_sampled_ones_and_the_window_is_respected():
    scheduler = FlowMatchEulerDiscreteScheduler()
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(2, 3, 8, 8, generator=g)
    out = sampling.sample(velocity_model, scheduler, noise, None, num_steps=6, eta=0.7, sde_window=(1, 3),
                          generator=g, return_trajectory=True)
    assert out.stochastic.tolist() == [False, True, True, False, False, False]
    assert torch.equal(out.noise_std > 0, out.stochastic)
    assert (out.log_probs[:, ~out.stochastic] == 0).all() and (out.log_probs[:, out.stochastic] != 0).all()
    for j in range(6):
        lp, _, _ = sampling.step_log_prob(velocity_model, scheduler, out.latents[:, j], out.timesteps[j],
                                          out.latents[:, j + 1], None, eta=0.7 if out.stochastic[j] else 0.0)
        torch.testing.assert_close(lp, out.log_probs[:, j], atol=1e-5, rtol=1e-5)
    # outside the window the steps are the ODE's
    x1 = out.latents[:, 0] + (scheduler.sigmas[1] - scheduler.sigmas[0]) * velocity_model(
        out.latents[:, 0], out.timesteps[0].expand(2), None)
    torch.testing.assert_close(out.latents[:, 1], x1)


def test_flow_editing_keeps_the_known_region_and_sdedit_starts_on_the_interpolation():
    scheduler = FlowMatchEulerDiscreteScheduler()
    g = torch.Generator().manual_seed(3)
    known = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    keep = torch.zeros(2, 1, 8, 8)
    keep[..., :4] = 1
    out = sampling.inpaint(velocity_model, scheduler, known, keep, None, num_steps=5, generator=g)
    torch.testing.assert_close(out * keep, known * keep)
    assert not torch.allclose(out * (1 - keep), known * (1 - keep))
    # SDEdit at strength 0.4 runs the last 2 of 5 steps from (1 - s) x0 + s eps at s = sigmas[3].
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    edited = sampling.sdedit(velocity_model, scheduler, known, None, 0.4, num_steps=5, generator=g1)
    eps = torch.randn(known.shape, generator=g2)
    sigmas = sampling.flow_timesteps(scheduler, 5)[1]
    x = (1 - sigmas[3]) * known + sigmas[3] * eps
    for i in (3, 4):
        x = x + (sigmas[i + 1] - sigmas[i]) * velocity_model(x, (sigmas[i] * 1000).expand(2), None)
    torch.testing.assert_close(edited, x)


def test_family_options_are_checked():
    ddim = build_scheduler()
    flow = build_scheduler(prediction_type="flow")
    noise = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="flow-matching options; this is a DDIM scheduler"):
        sampling.sample(velocity_model, ddim, noise, None, num_steps=2, sde_window=(0, 1))
    with pytest.raises(ValueError, match="clip_sample is a DDIM option"):
        sampling.sample(velocity_model, flow, noise, None, num_steps=2, clip_sample=1.0)
    with pytest.raises(ValueError, match="noise level must be in \\[0, 1\\], got 1.5"):
        sampling.sample(velocity_model, flow, noise, None, num_steps=2, eta=1.5)


# ------------------------------------------------------------ objectives on a flow model


@pytest.fixture(scope="module")
def flow_base(tmp_path_factory):
    from prefdiff.models import build_denoiser, save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("flow") / "model"
    save_model(build_denoiser(TINY_FLOW), path)
    build_scheduler(prediction_type="flow").save_pretrained(path / "scheduler")
    return str(path)


def test_flow_targets_and_noising_are_the_interpolation(flow_base):
    from prefdiff.schedulers import load_scheduler

    scheduler = load_scheduler(flow_base)
    assert sampling.is_flow(scheduler)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([100.0, 500.0, 900.0])
    s = (t / 1000).view(-1, 1, 1, 1)
    torch.testing.assert_close(sampling.noised(scheduler, x0, eps, t), (1 - s) * x0 + s * eps)
    torch.testing.assert_close(sampling.training_target(scheduler, x0, eps, t), eps - x0)


def test_flow_dpo_loss_is_ln2_with_a_fresh_adapter_and_compares_velocity_errors(flow_base, monkeypatch):
    from prefdiff.trainers import PairModule, pairs

    module = PairModule(base=flow_base, conditioner="class_label", lora_rank=4, num_steps=4)
    g = torch.Generator().manual_seed(0)
    batch = {"x_w": torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, "x_l": torch.rand(4, 3, 8, 8, generator=g) * 2 - 1,
             "cond": torch.tensor([0, 1, 2, 3])}
    assert float(module.training_step(batch, 0)) == pytest.approx(math.log(2), abs=1e-6)
    # The errors passed to the loss are the velocity errors ||v(x_s) - (eps - x0)||^2, recomputed here.
    seen = {}
    original = pairs.diffusion_dpo_loss
    monkeypatch.setattr(pairs, "diffusion_dpo_loss", lambda *a, **k: seen.setdefault("args", a) and original(*a, **k))
    module.training_step(batch, 0)
    t, eps = module.draw_training_noise(batch["x_w"], module.step_generator(per_rank=False))
    s = (t / 1000).view(-1, 1, 1, 1)
    x_w = (1 - s) * batch["x_w"] + s * eps
    with torch.no_grad():
        v = module.denoiser(x_w, t, batch["cond"])
    expected = (v - (eps - batch["x_w"])).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(seen["args"][0].detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method, extra", [
    ("sft", {}), ("rwr", {}), ("dpo", {}), ("kto", {}), ("d3po", {"eta": 0.7}),
    ("ddpo", {"samples_per_condition": 2, "eta": 0.7}), ("dpok", {"samples_per_condition": 2, "kl_coef": 0.1}),
    ("grpo", {"samples_per_condition": 2, "kl_coef": 0.01, "sde_window": [0, 2], "shared_noise": True}),
    ("grpo", {"samples_per_condition": 2, "sde": "cps"}),
    ("draft", {"reward": "smoothness", "k": 2, "drift_coef": 0.1}), ("alignprop", {"reward": "smoothness", "k": 2}),
    ("refl", {"reward": "smoothness"}),
])
def test_every_method_takes_a_step_on_a_flow_model(flow_base, method, extra):
    import pytorch_lightning as pl

    from prefdiff.datamodule import PrefDataModule
    from prefdiff.quiet import quiet_trainer
    from prefdiff.trainers import METHODS, TrainingData

    cls, fixed = METHODS[method]
    options = {"conditioner": "class_label", "num_steps": 3, "lr": 1e-2, **fixed, **extra}
    if cls.uses_reward(**fixed):
        options.setdefault("reward", "smoothness")  # continuous: two samples never tie
    module = cls(base=flow_base, lora_rank=4, **options)
    kind = cls.training_data(**fixed)
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(4):
        item = {"cond": torch.tensor(i % 4), "x0": torch.rand(3, 8, 8, generator=g) * 2 - 1}
        if kind is TrainingData.PAIRS:
            item.update(x_w=item["x0"], x_l=torch.zeros(3, 8, 8))
        if kind is TrainingData.SCORED_SAMPLES:
            item["reward"] = torch.tensor(float(i))
        items.append(item)
    before = {n: p.detach().clone() for n, p in module.denoiser.named_parameters() if "lora_B" in n}
    pl.seed_everything(0, verbose=False)
    quiet_trainer(1).fit(module, datamodule=PrefDataModule.from_datasets(items, batch_size=2))
    assert any(not torch.equal(before[n], p) for n, p in module.denoiser.named_parameters() if n in before)


def test_flow_only_options_on_a_ddim_model_are_one_clear_error(tmp_path):
    from prefdiff.errors import UserError
    from prefdiff.trainers import PolicyGradientModule

    preset = {**TINY_FLOW, "prediction_type": "epsilon"}
    for option in ({"sde_window": [0, 1]}, {"sde_window_size": 2}):
        with pytest.raises(UserError, match="--model.sde, --model.sde_window and --model.sde_window_size are "
                                            "flow-matching options"):
            PolicyGradientModule(model=preset, conditioner="class_label", **option)
    with pytest.raises(UserError, match="'beta_schedule' is a DDIM option, but this is a flow-matching model"):
        PolicyGradientModule(model=TINY_FLOW, conditioner="class_label", scheduler={"beta_schedule": "linear"})
    with pytest.raises(UserError, match="--model.eta must be in \\[0, 1\\], got 2"):
        PolicyGradientModule(model=TINY_FLOW, conditioner="class_label", eta=2.0)
    with pytest.raises(UserError, match="--model.sde_window must be"):
        PolicyGradientModule(model=TINY_FLOW, conditioner="class_label", num_steps=4, sde_window=[3, 9])
    with pytest.raises(UserError, match=r"--model.sde_window_size must be in \[1, 2\] \(the steps of "
                                        r"--model.sde_window\), got 3"):
        PolicyGradientModule(model=TINY_FLOW, conditioner="class_label", num_steps=4, sde_window=[1, 3],
                             sde_window_size=3)
    with pytest.raises(UserError, match=r"--model.sde_window_size must be in \[1, 4\]"):
        PolicyGradientModule(model=TINY_FLOW, conditioner="class_label", num_steps=4, sde_window_size=0)


def test_logit_normal_training_levels_are_sd3s_shifted_draws():
    # Esser et al. 2024: s = sigmoid(n), n ~ N(0, 1), then the scheduler's shift, written out here.
    from prefdiff.errors import UserError
    from prefdiff.trainers import PairModule

    module = PairModule(model=TINY_FLOW, conditioner="class_label", scheduler={"shift": 3.0},
                        timestep_sampling="logit_normal")
    x0 = torch.zeros(4000, 1)
    t, eps = module.draw_training_noise(x0, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    u = torch.sigmoid(torch.randn(4000, generator=g))
    torch.testing.assert_close(t, 1000 * 3 * u / (1 + 2 * u))
    torch.testing.assert_close(eps, torch.randn(4000, 1, generator=g))
    assert abs(float(t.median()) - 750) < 15  # shift(0.5) = 0.75: most draws at high noise
    uniform = PairModule(model=TINY_FLOW, conditioner="class_label", scheduler={"shift": 3.0})
    t, _ = uniform.draw_training_noise(x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, 1000 * torch.rand(4000, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(UserError, match="--model.timestep_sampling must be one of uniform, logit_normal, got 'lognorm'"):
        PairModule(model=TINY_FLOW, conditioner="class_label", timestep_sampling="lognorm")
    with pytest.raises(UserError, match="--model.timestep_sampling logit_normal is a flow-matching option"):
        PairModule(model={**TINY_FLOW, "prediction_type": "epsilon"}, conditioner="class_label",
                   timestep_sampling="logit_normal")


def test_the_shift_of_training_levels_is_the_schedulers_own():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from prefdiff.sampling import shifted

    static = FlowMatchEulerDiscreteScheduler(shift=3.0)
    # its training sigmas (before set_timesteps) are the shifted grid
    torch.testing.assert_close(shifted(static, torch.linspace(1, 0.001, 1000)), static.sigmas, atol=1e-6, rtol=0)
    dynamic = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    assert torch.equal(shifted(dynamic, torch.tensor([0.5])), torch.tensor([0.5]))


def test_a_window_size_draws_one_window_a_batch_inside_the_range(flow_base, monkeypatch):
    # Flow-GRPO-Fast: each batch trains `size` consecutive SDE steps placed at random in the range;
    # the chunks of one batch share its window, and over batches the window moves.
    from prefdiff.datamodule import PrefDataModule
    from prefdiff.quiet import quiet_trainer
    from prefdiff.trainers import PolicyGradientModule

    module = PolicyGradientModule(base=flow_base, conditioner="class_label", method="grpo", reward="smoothness",
                                  samples_per_condition=2, num_steps=6, eta=0.7, sde_window=[1, 5],
                                  sde_window_size=2, sample_chunks=2, lora_rank=4)
    calls = []
    original = module.run_sampler
    monkeypatch.setattr(module, "run_sampler", lambda *a, **kw: calls.append(kw["sde_window"]) or original(*a, **kw))
    trained = []
    chooser = module.trainable_steps
    monkeypatch.setattr(module, "trainable_steps",
                        lambda out, *a: trained.append(out.stochastic.nonzero().flatten().tolist()) or chooser(out, *a))
    items = [{"cond": torch.tensor(i % 4)} for i in range(2)]
    quiet_trainer(8).fit(module, datamodule=PrefDataModule.from_datasets(items, batch_size=2))
    batches = [calls[i:i + 2] for i in range(0, len(calls), 2)]
    assert len(batches) == 8 and all(a == b for a, b in batches)
    windows = [a for a, _ in batches]
    assert all(1 <= first and first + 2 == end <= 5 for first, end in windows)
    assert len(set(windows)) > 1
    assert trained == [list(range(*w)) for w in windows]
    g = torch.Generator().manual_seed(0)
    assert {module.draw_sde_window(g)["sde_window"] for _ in range(100)} == {(1, 3), (2, 4), (3, 5)}


# ------------------------------------------------------- options and plumbing ----


def velocity(x, t, c):
    return 0.3 * x - 0.1


def test_a_given_noise_is_the_one_the_step_adds():
    x, v = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(2, 3)
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    prev, _, mean, std = flow_step(v, torch.tensor(0.8), torch.tensor(0.6), x, 0.7, noise=noise,
                                   generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(prev, mean + std * noise)


def test_the_log_prob_model_sees_one_timestep_per_sample():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    noise = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    out = sampling.sample(velocity, scheduler, noise, None, num_steps=4, eta=0.7,
                          generator=torch.Generator().manual_seed(1), return_trajectory=True)
    seen = []

    def model(x, t, c):
        seen.append(tuple(t.shape))
        return velocity(x, t, c)

    lp, _, _ = sampling.step_log_prob(model, scheduler, out.latents[:, 1], out.timesteps[1], out.latents[:, 2],
                                      None, eta=0.7)
    assert seen == [(3,)]  # a 0-dim timestep is expanded to the batch
    torch.testing.assert_close(lp, out.log_probs[:, 1])


def test_a_batch_of_rows_at_different_steps_gets_each_rows_own_step():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    noise = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    out = sampling.sample(velocity, scheduler, noise, None, num_steps=4, eta=0.7,
                          generator=torch.Generator().manual_seed(1), return_trajectory=True)
    rows = torch.arange(3)
    steps = torch.tensor([2, 0, 1])  # row i at step steps[i]
    lp, _, _ = sampling.step_log_prob(velocity, scheduler, out.latents[rows, steps], out.timesteps[steps],
                                      out.latents[rows, steps + 1], None, eta=0.7)
    torch.testing.assert_close(lp, out.log_probs[rows, steps])


def test_inpainting_with_nothing_kept_is_plain_sampling():
    # ODE sampling draws nothing, so the known region's noise draws cannot move it: with an empty
    # mask the inpainting loop must give exactly the plain samples.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = sampling.sample(velocity, scheduler, noise, None, num_steps=4, eta=0.0)
    inpainted = sampling.sample(velocity, scheduler, noise, None, num_steps=4, eta=0.0,
                                known=torch.ones_like(noise), keep_mask=torch.zeros_like(noise),
                                generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(inpainted.samples, plain.samples)
    assert plain.latents is None and plain.log_probs is None  # no trajectory unless asked for
