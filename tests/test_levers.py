"""The trainers' performance levers leave the numbers alone: each one on gives the loss and
gradients (or optimizer steps) it gives off, within float tolerance, on the CPU.

benchmarks/gpu.sh measures what each lever buys on a GPU; these tests are why its runs may be
compared with their baselines at all.

The training steps run under a Lightning Trainer in float64 ("64-true"): in float32 a different
summation order alone moves a gradient by up to 1e-5 of its scale (measured: channels-last
convolutions, 7e-6), so rounding could hide a lever that changes the math, or fail one that does
not. In float64 the same steps agree to 1e-13, and a 1e-9 tolerance catches any real change.
Inductor's code (torch.compile) is checked in float32, the dtype it is generated for here.
"""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from prefdiff.errors import UserError
from prefdiff.trainers import PairModule, PolicyGradientModule, SFTModule

TINY = dict(kind="unet2d", sample_size=8, channels=3, conditioning="class", num_classes=4,
            block_out_channels=(8, 16), norm_num_groups=8)
PROMPTS = ["a red cat", "a dog on grass"]
TOL = 1e-9
# Diffusion-DPO multiplies differences of model errors by beta/2 inside a sigmoid; at the default
# beta (2000) float rounding of 1e-8 in the errors moves the loss by 1e-5, whatever the lever.
DPO = dict(lora_rank=4, beta=50.0)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    from prefdiff.testing import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    from prefdiff.testing import tiny_sd3_pipeline

    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "pipe", t5=False)


def pairs():
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return {"x_w": images[:2], "x_l": images[2:], "cond": PROMPTS}


def made(cls, **options):
    """A trainer built with fixed draws; a LoRA adapter is moved off zero so every LoRA weight gets a
    gradient and the policy differs from its reference."""
    torch.manual_seed(0)
    module = cls(**options)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in module.denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


class Capture(pl.Callback):
    """The gradients just before the optimizer steps, and the step's loss."""

    def __init__(self, during=None):
        self.during, self.grads, self.loss, self.seen = during, None, None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.during is not None:
            self.seen.append(self.during())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.denoiser.named_parameters()
                      if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = outputs["loss"].detach() if isinstance(outputs, dict) and "loss" in outputs else None


def one_step(module, batch, during=None) -> Capture:
    """One training step of ``module`` under a quiet Lightning Trainer in float64, as ``prefdiff fit``
    takes it; ``during()`` is called at the step's start and its results kept in ``seen``."""
    from prefdiff.quiet import quiet_trainer

    class One(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return batch

    capture = Capture(during)
    quiet_trainer(1, callbacks=[capture], precision="64-true").fit(module, train_dataloaders=DataLoader(One(), batch_size=None))
    assert capture.grads, "the step computed no gradient"
    return capture


def assert_same(a: dict, b: dict, tol: float = TOL) -> None:
    """Equal within ``tol`` of the scale of ``b`` (its largest entry over every tensor), name by name.

    One scale for all: a gradient that is zero in exact arithmetic (a bias before a group norm)
    comes out as rounding noise, which no per-tensor relative tolerance can hold.
    """
    assert a.keys() == b.keys() and a
    scale = max(float(t.abs().max()) for t in b.values())
    assert scale > 0
    errors = {name: float((a[name] - b[name]).abs().max()) for name in a}
    worst = max(errors, key=errors.get)
    print(f"largest difference {errors[worst] / scale:.2e} of the scale, over {len(a)} tensors")
    assert errors[worst] <= tol * scale, f"{worst}: differs by {errors[worst]:.3g} (scale {scale:.3g})"


def assert_same_loss(a: torch.Tensor, b: torch.Tensor) -> None:
    print(f"losses {float(a):.8f} {float(b):.8f}")
    assert abs(float(a) - float(b)) <= TOL * abs(float(b)), (float(a), float(b))


# -------------------------------------------------------------- channels_last ----


def test_channels_last_gives_the_same_loss_and_gradients(sd):
    plain = one_step(made(PairModule, base=str(sd), **DPO), pairs())
    module = made(PairModule, base=str(sd), **DPO, channels_last=True)
    net = module.denoiser.net
    assert net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    net.conv_in.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    fast = one_step(module, pairs())
    assert seen and all(seen), "the network's input was not channels-last"
    assert_same_loss(fast.loss, plain.loss)
    assert_same(fast.grads, plain.grads)


# ---------------------------------------------------------------- sdpa_backend ----


def test_math_attention_gives_what_the_default_kernel_gives(sd):
    flash = torch.backends.cuda.flash_sdp_enabled
    plain = one_step(made(PairModule, base=str(sd), **DPO), pairs(), during=flash)
    forced = one_step(made(PairModule, base=str(sd), **DPO, sdpa_backend="math"), pairs(), during=flash)
    assert plain.seen == [True] and forced.seen == [False]  # only the math kernel was allowed in the fit
    assert flash()  # and the process-wide setting is back afterwards
    assert_same_loss(forced.loss, plain.loss)
    assert_same(forced.grads, plain.grads)


# --------------------------------------------------------------------- compile ----


def test_compile_option_compiles_the_network_in_place(sd, monkeypatch):
    eager = PairModule(base=str(sd), **DPO)
    calls = []
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kwargs: (calls.append(kwargs), compile_module(self, **kwargs))[1])
    module = PairModule(base=str(sd), lora_rank=4, compile=True, compile_mode="reduce-overhead")
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]
    assert module.denoiser.net._compiled_call_impl is not None and eager.denoiser.net._compiled_call_impl is None
    assert module.state_dict().keys() == eager.state_dict().keys()  # checkpoints unchanged


def test_compiled_block_matches_eager():
    """Inductor's code for a block of the denoiser (conv, group norm, SiLU), forward and backward,
    compiled as ``--model.compile`` compiles the network (``nn.Module.compile``, ``dynamic=False``).

    One small block, not a whole UNet: on two shared CPU cores inductor's first compile in a
    process costs about 30 s and each further graph about 15 s (a tiny pipeline's DPO fit took
    8 minutes), so this is the cheapest test that runs inductor's generated code.
    """
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4)
    x = torch.randn(2, 8, 8, 8)
    out = block(x, None)
    out.square().sum().backward()
    eager = {n: p.grad.clone() for n, p in block.named_parameters()}
    block.zero_grad()
    block.compile(mode="default", dynamic=False)
    compiled = block(x, None)
    compiled.square().sum().backward()
    assert_same({"out": compiled.detach()}, {"out": out.detach()}, tol=1e-5)
    assert_same({n: p.grad for n, p in block.named_parameters()}, eager, tol=1e-5)


# ------------------------------------------------------------- fused optimizer ----


def test_fused_adamw_takes_the_same_steps():
    plain = made(SFTModule, model=TINY, conditioner="class_label", lora_rank=0, lr=1e-2).double()
    fused = made(SFTModule, model=TINY, conditioner="class_label", lora_rank=0, lr=1e-2, fused_optimizer=True).double()
    opt_plain, opt_fused = plain.configure_optimizers(), fused.configure_optimizers()
    assert opt_fused.defaults["fused"] is True and not opt_plain.defaults.get("fused")
    before = {n: p.detach().clone() for n, p in plain.denoiser.named_parameters()}
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        for p, q in zip(plain.trainable_parameters(), fused.trainable_parameters()):
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            q.grad = p.grad.clone()
        opt_plain.step()
        opt_fused.step()
    stepped = {n: p.detach() for n, p in plain.denoiser.named_parameters()}
    assert all(not torch.equal(stepped[n], before[n]) for n in before)  # every weight moved
    assert_same({n: p.detach() for n, p in fused.denoiser.named_parameters()}, stepped)


# ----------------------------------------------------- gradient checkpointing ----


def test_gradient_checkpointing_gives_the_same_gradients(sd, monkeypatch):
    import torch.utils.checkpoint as checkpointing

    plain = one_step(made(PairModule, base=str(sd), **DPO), pairs())
    module = made(PairModule, base=str(sd), **DPO, gradient_checkpointing=True)
    assert module.denoiser.net.is_gradient_checkpointing
    calls = []
    original = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    saved = one_step(module, pairs())
    assert calls, "no block was checkpointed"
    assert_same_loss(saved.loss, plain.loss)
    assert_same(saved.grads, plain.grads)


# --------------------------------------------------------------- logprob_batch ----


def count_forwards(module):
    calls = []
    module.denoiser.net.register_forward_pre_hook(lambda m, args: calls.append(1))
    return calls


def test_batched_log_probs_equal_per_step_ones_ddim():
    options = dict(model=TINY, conditioner="class_label", lora_rank=0, num_steps=4, method="ddpo",
                   samples_per_condition=2, reward="smoothness")
    batch = {"cond": torch.tensor([0, 3])}
    per_step = made(PolicyGradientModule, **options)
    calls_per_step = count_forwards(per_step)
    reference = one_step(per_step, batch)
    batched = made(PolicyGradientModule, **options, logprob_batch=3)
    calls_batched = count_forwards(batched)
    together = one_step(batched, batch)
    # 4 sampling steps, then the 3 stochastic ones (the last DDIM step draws no noise) recomputed.
    assert len(calls_per_step) == 4 + 3 and len(calls_batched) == 4 + 1
    assert_same(together.grads, reference.grads)


def test_batched_log_probs_equal_per_step_ones_flow_with_guidance_and_kl(sd3):
    """Flow-GRPO on an SD3 pipeline, classifier-free guidance and the KL to the reference: the batched
    forward carries the prompts, the negative prompts and the adapter-disabled reference too."""
    options = dict(base=str(sd3), lora_rank=4, num_steps=3, method="grpo", samples_per_condition=2,
                   reward="smoothness", eta=0.7, guidance_scale=2.0, kl_coef=0.1)
    reference = one_step(made(PolicyGradientModule, **options), {"cond": PROMPTS})
    together = one_step(made(PolicyGradientModule, **options, logprob_batch=2), {"cond": PROMPTS})
    assert_same(together.grads, reference.grads)


# ------------------------------------------------------------- LoRA targets ----


def test_lora_targets_choose_the_adapted_layers(sd):
    from peft.tuners.lora import LoraLayer

    def adapted(**options):
        module = PairModule(base=str(sd), lora_rank=4, **options)
        return {n for n, m in module.denoiser.net.named_modules() if isinstance(m, LoraLayer)}

    default, attention, blocks = adapted(), adapted(lora_targets="attention"), adapted(lora_targets="blocks")
    assert default == attention and attention < blocks  # a pipeline's default is the attention projections
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in attention)
    assert any("resnets" in n for n in blocks)


@pytest.mark.parametrize("option, value, flag", [
    ("lora_targets", "everything", "--model.lora_targets"), ("sdpa_backend", "fast", "--model.sdpa_backend"),
    ("compile_mode", "turbo", "--model.compile_mode"), ("lora_init", "pissa", "--model.lora_init"),
])
def test_lever_options_are_checked(option, value, flag):
    with pytest.raises(UserError, match=flag):
        PairModule(model=TINY, conditioner="class_label", lora_rank=4, **{option: value})


def test_logprob_batch_must_be_positive():
    with pytest.raises(UserError, match="--model.logprob_batch"):
        PolicyGradientModule(model=TINY, conditioner="class_label", reward="smoothness", logprob_batch=0)
