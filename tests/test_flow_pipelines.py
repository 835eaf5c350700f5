"""SD3 and FLUX pipeline folders (flow-matching transformers) through the model seam, against diffusers."""

import copy
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.models import LoraOptions, add_lora, load_model, save_lora_for_pipeline, save_model
from prefdiff.sampling import sample
from prefdiff.schedulers import load_scheduler
from prefdiff.testing import char_t5_tokenizer, tiny_flux_pipeline, tiny_pipeline, tiny_sd3_pipeline

PROMPTS = ["two red circles left of a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "pipe")


@pytest.fixture(scope="module")
def sd3_no_t5(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3-no-t5") / "pipe", t5=False, seed=1)


@pytest.fixture(scope="module")
def sd35(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd35") / "pipe", sd35=True, seed=4)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return tiny_flux_pipeline(tmp_path_factory.mktemp("flux") / "pipe", seed=2)


@pytest.fixture(scope="module")
def flux_undistilled(tmp_path_factory):
    return tiny_flux_pipeline(tmp_path_factory.mktemp("flux-cfg") / "pipe", guidance_embeds=False, seed=3)


@pytest.fixture(scope="module")
def sd3_dynamic(sd3, tmp_path_factory):
    """An SD3 folder whose scheduler shifts with the resolution (use_dynamic_shifting), at non-default bounds."""
    folder = shutil.copytree(sd3, tmp_path_factory.mktemp("sd3-dynamic") / "pipe")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "use_dynamic_shifting": True,
                                  "base_shift": 0.3, "max_shift": 1.5, "base_image_seq_len": 4,
                                  "max_image_seq_len": 64}))  # its 16 image tokens in between
    return folder


@pytest.fixture(scope="module")
def flux_schnell(flux_undistilled, tmp_path_factory):
    """FLUX.1-schnell's layout: no guidance embedding and a fixed schedule (no dynamic shifting, shift 1)."""
    folder = shutil.copytree(flux_undistilled, tmp_path_factory.mktemp("flux-schnell") / "pipe")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "use_dynamic_shifting": False, "shift": 1.0}))
    return folder


def diffusers_pipeline(folder, lora=None):
    """The user's own pipeline, loaded by diffusers (an SD3 folder without T5 needs the two Nones)."""
    from diffusers import DiffusionPipeline

    index = json.loads((folder / "model_index.json").read_text())
    no_t5 = {"text_encoder_3": None, "tokenizer_3": None} if index.get("text_encoder_3") == [None, None] else {}
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, **no_t5)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
    return pipe


def diffusers_latents(folder, denoiser, latents, *, steps, guidance, lora=None, distilled=None):
    """What diffusers' pipeline samples from our prompt embeddings and initial latents; for FLUX ``guidance``
    is true CFG (``true_cfg_scale``) and ``distilled`` the distilled guidance (its ``guidance_scale``, None:
    its default)."""
    pipe = diffusers_pipeline(folder, lora)
    encoded, negative = denoiser.conditioner(PROMPTS), denoiser.conditioner(denoiser.null_condition(PROMPTS))
    kwargs = {"prompt_embeds": encoded["encoder_hidden_states"], "pooled_prompt_embeds": encoded["pooled_projections"],
              "negative_prompt_embeds": negative["encoder_hidden_states"],
              "negative_pooled_prompt_embeds": negative["pooled_projections"]}
    side = denoiser.decode(torch.zeros(1, *denoiser.sample_shape)).shape[-1]
    flux = type(pipe).__name__ == "FluxPipeline"
    if flux:  # FluxPipeline takes and returns its packed latents (2x2 patches as tokens)
        kwargs["true_cfg_scale"] = guidance
        if distilled is not None:
            kwargs["guidance_scale"] = distilled
        latents = pipe._pack_latents(latents, *latents.shape)
    else:
        kwargs["guidance_scale"] = guidance
    with torch.no_grad():
        out = pipe(**kwargs, latents=latents.clone(), num_inference_steps=steps, height=side, width=side,
                   output_type="latent").images
    return pipe._unpack_latents(out, side, side, pipe.vae_scale_factor) if flux else out


def ours(folder, latents, guidance, denoiser=None):
    denoiser = denoiser or load_model(folder)
    uncond = denoiser.null_condition(PROMPTS) if guidance != 1 else None
    with torch.no_grad():
        return sample(denoiser, load_scheduler(folder), latents, PROMPTS, num_steps=4, eta=0.0,
                      guidance_scale=guidance, uncond=uncond).samples


@pytest.mark.parametrize("which, guidance", [("sd3", 1.0), ("sd3", 3.0), ("sd3_no_t5", 3.0), ("sd35", 3.0),
                                             ("sd3_dynamic", 1.0), ("flux", 1.0), ("flux_undistilled", 3.0),
                                             ("flux_schnell", 1.0)])
def test_euler_ode_equals_the_diffusers_pipeline(which, guidance, request):
    folder = request.getfixturevalue(which)
    denoiser = load_model(folder)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    mine = ours(folder, latents, guidance, denoiser)
    theirs = diffusers_latents(folder, denoiser, latents, steps=4, guidance=guidance)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    if guidance != 1:  # the guidance is applied, not ignored on both sides
        assert not torch.allclose(mine, ours(folder, latents, 1.0, denoiser), atol=1e-4)


@pytest.mark.parametrize("which", ["sd3", "sd3_no_t5", "flux"])
def test_prompt_embeddings_are_the_pipelines_own(which, request):
    folder = request.getfixturevalue(which)
    encoder, pipe = load_model(folder).conditioner, diffusers_pipeline(folder)
    mine = encoder(PROMPTS)
    with torch.no_grad():
        if which == "flux":
            states, pooled, _ = pipe.encode_prompt(PROMPTS, None)
        else:
            states, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False)
    assert states.shape[1] == (512 if which == "flux" else 32 + 256)  # the pipelines' default T5 lengths
    torch.testing.assert_close(mine["encoder_hidden_states"], states, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mine["pooled_projections"], pooled, atol=1e-6, rtol=1e-5)
    if which == "sd3_no_t5":  # without T5 its states are zeros, as StableDiffusion3Pipeline makes them
        assert not mine["encoder_hidden_states"][:, 32:].any()


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_decoded_samples_are_the_diffusers_pipeline_images(which, request):
    """The rewards score what the user's pipeline shows: prefdiff's decode of the pipeline's final latents is
    the pipeline's own image (latents over the VAE's scaling_factor, plus its shift_factor), and encoding
    inverts it."""
    folder = request.getfixturevalue(which)
    denoiser, pipe = load_model(folder), diffusers_pipeline(folder)
    latents = torch.randn((1, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    flux = type(pipe).__name__ == "FluxPipeline"
    side = pipe.vae_scale_factor * denoiser.sample_shape[-1]
    start = pipe._pack_latents(latents, *latents.shape) if flux else latents
    with torch.no_grad():
        final, images = (pipe(prompt=PROMPTS[:1], latents=start.clone(), num_inference_steps=2, height=side,
                              width=side, output_type=kind).images for kind in ("latent", "pt"))
        if flux:  # FluxPipeline returns its packed latents
            final = pipe._unpack_latents(final, side, side, pipe.vae_scale_factor)
        ours = denoiser.decode(final)
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), images, atol=1e-5, rtol=1e-4)
    assert denoiser.codec.shift_factor != 0 and denoiser.codec.scaling_factor != 1  # a check that can fail
    # The training images' latents are what this decode inverts: encoding then decoding is the VAE's own
    # autoencoding (AutoencoderKL.forward, the posterior's mode), scale and shift undone.
    pixels = images[:1] * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(denoiser.decode(denoiser.encode(pixels)), denoiser.codec.vae(pixels).sample,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strength", [0.5, 0.6])
def test_flow_sdedit_of_latents_equals_the_diffusers_img2img_pipeline(sd3, strength):
    """Flow SDEdit against StableDiffusion3Img2ImgPipeline handed the same latents and noise: the same start
    sigma, noising ((1 - s) x + s eps) and Euler steps (0.6 of 4 steps runs 3, not 2)."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    from prefdiff.sampling import sdedit

    denoiser, scheduler = load_model(sd3), load_scheduler(sd3)
    latents = denoiser.encode(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    pipe = StableDiffusion3Img2ImgPipeline.from_pretrained(sd3, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    encoded = denoiser.conditioner(PROMPTS)
    with torch.no_grad():
        ours = sdedit(denoiser, scheduler, latents, PROMPTS, strength, num_steps=4,
                      generator=torch.Generator().manual_seed(3))
        theirs = pipe(prompt_embeds=encoded["encoder_hidden_states"],
                      pooled_prompt_embeds=encoded["pooled_projections"], image=latents.clone(), strength=strength,
                      num_inference_steps=4, guidance_scale=1.0, output_type="latent",
                      generator=torch.Generator().manual_seed(3)).images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert (ours - latents).abs().max() > 1e-2  # the edit moved the latents


def test_a_component_the_index_leaves_out_is_not_loaded_and_a_bad_scheduler_is_one_error(sd3, tmp_path):
    """As diffusers reads a folder: T5 whose entry in model_index.json is null stays out, even when its folder
    is there; a scheduler folder without its config is one error naming the pipeline's folder."""
    from prefdiff.models.pipelines import INDEX

    folder = shutil.copytree(sd3, tmp_path / "pipe")
    index = json.loads((folder / INDEX).read_text())
    (folder / INDEX).write_text(json.dumps({**index, "text_encoder_3": [None, None], "tokenizer_3": [None, None]}))
    assert len(load_model(folder).conditioner.text_encoders) == 2 and (folder / "text_encoder_3").is_dir()
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(UserError, match=rf"^cannot load the pipeline in {folder}: "):
        load_scheduler(folder)


def test_the_pipelines_load_through_the_seam(sd3, flux):
    from diffusers import FlowMatchEulerDiscreteScheduler

    for folder in (sd3, flux):
        denoiser, scheduler = load_model(folder), load_scheduler(folder)
        assert denoiser.sample_shape == (4, 8, 8) and denoiser.prediction_type == "flow"
        assert type(scheduler) is FlowMatchEulerDiscreteScheduler
        assert denoiser.frozen_parts() == ["codec", "conditioner"]
        assert not any(p.requires_grad for p in [*denoiser.codec.parameters(), *denoiser.conditioner.parameters()])
        assert denoiser.decode(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 16, 16)
        vae = denoiser.codec.vae.config
        assert (denoiser.codec.scaling_factor, denoiser.codec.shift_factor) == (vae.scaling_factor, vae.shift_factor)
    # FLUX's resolution-dependent schedule survives the copies Lightning and DDP make.
    scheduler = load_scheduler(flux)
    scheduler.set_timesteps(4)
    for again in (pickle.loads(pickle.dumps(scheduler)), copy.deepcopy(scheduler)):
        again.set_timesteps(4)
        torch.testing.assert_close(again.sigmas, scheduler.sigmas)
    plain = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    plain.set_timesteps(4, mu=1.0)
    assert not torch.allclose(plain.sigmas, scheduler.sigmas)


def test_the_t5_tokenizer_round_trips(tmp_path):
    from transformers import T5TokenizerFast

    tokenizer = char_t5_tokenizer(16)
    tokenizer.save_pretrained(tmp_path)
    again = T5TokenizerFast.from_pretrained(tmp_path)
    ids = again("a red cat", padding="max_length", max_length=16).input_ids
    assert ids == tokenizer("a red cat", padding="max_length", max_length=16).input_ids
    assert again.convert_ids_to_tokens(ids) == [*"\u2581a\u2581red\u2581cat", "</s>", *["<pad>"] * 5]


def test_saved_pipelines_load_and_sample_the_same(sd3_no_t5, flux, tmp_path):
    for folder in (sd3_no_t5, flux):
        denoiser, scheduler = load_model(folder), load_scheduler(folder)
        saved = save_model(denoiser, tmp_path / folder.parent.name, scheduler)
        assert json.loads((saved / "model_index.json").read_text())["_class_name"] == denoiser.pipeline_class
        latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(ours(saved, latents, 1.0), ours(folder, latents, 1.0, denoiser))


def test_an_sd3_folder_without_t5_says_so_when_loaded(sd3_no_t5, sd3, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="prefdiff.models"):
        load_model(sd3)
        assert "T5" not in caplog.text
        denoiser = load_model(sd3_no_t5)
    assert "text_encoder_3 is null in its model_index.json: prompts are encoded by the two CLIP encoders alone" \
        in caplog.text
    assert len(denoiser.conditioner.text_encoders) == 2


def test_lora_goes_on_both_streams_attention(sd3, flux):
    ends = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    for folder in (sd3, flux):
        targets = set(add_lora(load_model(folder)).lora_config.target_modules)
        assert targets and all(t.endswith(ends) for t in targets)
        assert {t.rsplit(".", 1)[-1] for t in targets} >= {"to_q", "add_q_proj", "to_add_out"}
        torch.manual_seed(0)  # A starts N(0, 1/r), as Flow-GRPO's and diffusers' SD3 and FLUX LoRA scripts start it
        net = add_lora(load_model(folder), LoraOptions(r=2)).net
        a = torch.cat([p.flatten() for n, p in net.named_parameters() if "lora_A" in n])
        assert a.std().item() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("which", ["sd3", "sd35", "flux"])
def test_exported_lora_reproduces_our_samples_in_diffusers(which, request, tmp_path):
    from prefdiff.models import LoraOptions

    folder = request.getfixturevalue(which)
    denoiser = add_lora(load_model(folder), LoraOptions(r=4, alpha=8))  # the scale alpha / r travels in the file
    with torch.no_grad():  # a trained adapter: any non-zero update
        for name, p in denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    save_lora_for_pipeline(denoiser, tmp_path / "lora")
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(1))
    mine = ours(folder, latents, 1.0, denoiser)
    base = load_model(folder)
    assert not torch.allclose(mine, ours(folder, latents, 1.0, base), atol=1e-4)
    theirs = diffusers_latents(folder, base, latents, steps=4, guidance=1.0, lora=tmp_path / "lora")
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_a_lora_from_diffusers_training_scripts_loads_as_in_diffusers(which, request, tmp_path):
    """pytorch_lora_weights.safetensors alone, as diffusers' SD3 and FLUX LoRA scripts write it (FLUX's with
    per-module ``.alpha`` keys, as converted community LoRAs have them), loads into prefdiff as
    pipeline.load_lora_weights loads it, and saves and reloads as prefdiff's own adapter."""
    from safetensors.torch import load_file, save_file

    from prefdiff.models import save_lora
    from prefdiff.models.lora import load_lora
    from prefdiff.testing import diffusers_lora

    folder = request.getfixturevalue(which)
    lora = diffusers_lora(folder, tmp_path / "lora", alpha=8)
    if which == "flux":
        state = load_file(str(lora / "pytorch_lora_weights.safetensors"))
        alphas = {k.replace(".lora_A.weight", ".alpha"): torch.tensor(16.0) for k in state if ".lora_A." in k}
        save_file({**state, **alphas}, str(lora / "pytorch_lora_weights.safetensors"))
    denoiser, base = load_lora(load_model(folder), lora), load_model(folder)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(1))
    mine = ours(folder, latents, 1.0, denoiser)
    assert not torch.allclose(mine, ours(folder, latents, 1.0, base), atol=1e-4)
    theirs = diffusers_latents(folder, base, latents, steps=4, guidance=1.0, lora=lora)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    save_lora(denoiser, tmp_path / "own")
    torch.testing.assert_close(ours(folder, latents, 1.0, load_lora(load_model(folder), tmp_path / "own")), mine)


def test_flow_dpo_loss_is_ln2_with_a_fresh_adapter(sd3):
    from prefdiff.trainers import PairModule

    module = PairModule(base=str(sd3), lora_rank=4, num_steps=4)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = module.training_step({"x_w": images[:2], "x_l": images[2:], "cond": PROMPTS}, 0)
    assert module.flow and float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)


class Captions(torch.utils.data.Dataset):
    """Prompts with images, pairs or rewards: whatever a method's training data asks for."""

    def __init__(self, kind, n=4):
        from prefdiff.trainers import TrainingData

        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            item = {"cond": PROMPTS[i % 2], "x0": torch.rand(3, 16, 16, generator=g) * 2 - 1}
            if kind is TrainingData.PAIRS:
                item.update(x_w=torch.rand(3, 16, 16, generator=g) * 2 - 1, x_l=torch.zeros(3, 16, 16))
            if kind is TrainingData.SCORED_SAMPLES:
                item["reward"] = torch.tensor(float(i))
            self.items.append(item)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("method, extra", [
    ("sft", {}), ("rwr", {}), ("dpo", {}), ("kto", {}), ("d3po", {}), ("ddpo", {"samples_per_condition": 2}),
    ("dpok", {"samples_per_condition": 2, "kl_coef": 0.1}), ("grpo", {"samples_per_condition": 2}),
    ("draft", {"reward": "smoothness", "k": 2, "drift_coef": 0.1}), ("alignprop", {"reward": "smoothness", "k": 2}),
    ("refl", {"reward": "smoothness"}),
])
def test_every_method_takes_a_step_on_an_sd3_pipeline(sd3, method, extra):
    import pytorch_lightning as pl

    from prefdiff.datamodule import PrefDataModule
    from prefdiff.quiet import quiet_trainer
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS[method]
    options = {"num_steps": 3, "lr": 1e-2, "guidance_scale": 2.0, **fixed, **extra}
    if cls.uses_reward(**fixed):
        options.setdefault("reward", "jpeg_compressibility")
    module = cls(base=str(sd3), lora_rank=4, **options)
    assert module.flow
    before = {n: p.detach().clone() for n, p in module.denoiser.named_parameters() if "lora_B" in n}
    pl.seed_everything(0, verbose=False)
    data = PrefDataModule.from_datasets(Captions(cls.training_data(**fixed)), batch_size=2)
    quiet_trainer(1).fit(module, datamodule=data)
    changed = [n for n, p in module.denoiser.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert changed, f"{method} took no step"
    frozen = [n for n, p in module.denoiser.named_parameters() if n.startswith(("codec.", "conditioner."))]
    assert frozen and not any(p.requires_grad for n, p in module.denoiser.named_parameters() if n in frozen)


def test_sample_command_on_an_sd3_folder(sd3, tmp_path):
    from safetensors.torch import load_file

    from prefdiff.cli import main

    code = main(["sample", "--model", str(sd3), "--prompt", "a red cat", "--prompt", "a dog", "--n", "4",
                 "--steps", "3", "--out", str(tmp_path / "out")])
    assert code == 0
    samples = load_file(str(tmp_path / "out" / "samples.safetensors"))["samples"]
    assert samples.shape == (4, 3, 16, 16) and torch.isfinite(samples).all()
    assert not torch.equal(samples[0], samples[1])
    # The picture: one row per prompt, labelled with it, under a title (16 px tiles at scale 3).
    from PIL import Image

    with Image.open(tmp_path / "out" / "samples.png") as figure:
        labels = np.array(figure.convert("L"))[28:, :40]
    assert figure.height == 28 + 2 * (16 * 3 + 4) and (labels < 128).sum(axis=1).astype(bool).sum() > 10
    # --negative-prompt steers guidance away from it, as the pipeline's negative_prompt does.
    for name, negative in (("plain", []), ("steered", ["--negative-prompt", "a blurry photo"])):
        assert main(["sample", "--model", str(sd3), "--prompt", "a red cat", "--n", "1", "--steps", "3",
                     "--guidance-scale", "3", *negative, "--out", str(tmp_path / name)]) == 0
    plain, steered = (load_file(str(tmp_path / name / "samples.safetensors"))["samples"] for name in ("plain", "steered"))
    assert (plain - steered).abs().max() > 1e-3


def test_bad_folders_get_one_clear_error(sd3, tmp_path):
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    def copy_of(name):
        shutil.copytree(sd3, tmp_path / name)
        return tmp_path / name

    ddim = copy_of("ddim")
    shutil.rmtree(ddim / "scheduler")
    DDIMScheduler().save_pretrained(ddim / "scheduler")
    for load in (load_model, load_scheduler):
        with pytest.raises(UserError, match=r"pairs a SD3Transformer2DModel \(transformer/\) with a DDIMScheduler "
                                            r"\(scheduler/\); a StableDiffusion3Pipeline samples with a flow-matching"):
            load(ddim)
    sd = tiny_pipeline(tmp_path / "sd")
    shutil.rmtree(sd / "scheduler")
    FlowMatchEulerDiscreteScheduler().save_pretrained(sd / "scheduler")
    for load in (load_model, load_scheduler):
        with pytest.raises(UserError, match=r"pairs a UNet2DConditionModel \(unet/\) with a FlowMatchEulerDiscrete"
                                            r"Scheduler \(scheduler/\); a StableDiffusionPipeline samples with a noise"):
            load(sd)
    no_clip = copy_of("no-clip-g")
    shutil.rmtree(no_clip / "text_encoder_2")
    with pytest.raises(UserError, match=r"has no text_encoder_2/ \(StableDiffusion3Pipeline needs transformer, vae"):
        load_model(no_clip)
    no_t5 = copy_of("no-t5")
    shutil.rmtree(no_t5 / "text_encoder_3")
    with pytest.raises(UserError, match=r"has no text_encoder_3/ but its model_index.json lists one"):
        load_model(no_t5)
    half_t5 = copy_of("half-t5")  # T5's encoder listed, its tokenizer not: not silently T5-less
    index = json.loads((half_t5 / "model_index.json").read_text())
    (half_t5 / "model_index.json").write_text(json.dumps({**index, "tokenizer_3": [None, None]}))
    with pytest.raises(UserError, match=r"model_index.json lists text_encoder_3 but not tokenizer_3; they go "
                                        r"together: list both .*or set both to \[null, null\]"):
        load_model(half_t5)
    swapped = copy_of("flux-transformer")
    (swapped / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(UserError, match=r"is a StableDiffusion3Pipeline but its transformer/ holds a "
                                        r"FluxTransformer2DModel"):
        load_model(swapped)


def test_distilled_guidance_is_the_flux_pipelines_guidance_scale(flux, sd3, tmp_path):
    from safetensors.torch import load_file

    from prefdiff.cli import main
    from prefdiff.trainers import PolicyGradientModule

    denoiser = load_model(flux)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    default = ours(flux, latents, 1.0, denoiser)
    denoiser.set_distilled_guidance(7.0)
    mine = ours(flux, latents, 1.0, denoiser)
    torch.testing.assert_close(mine, diffusers_latents(flux, denoiser, latents, steps=4, guidance=1.0, distilled=7.0),
                               atol=1e-5, rtol=1e-4)
    assert not torch.allclose(mine, default, atol=1e-4)
    # The same value from the command line and from fit's options.
    for name, extra in (("default", []), ("seven", ["--distilled-guidance", "7"])):
        assert main(["sample", "--model", str(flux), "--prompt", "a red cat", "--n", "1", "--steps", "3",
                     *extra, "--out", str(tmp_path / name)]) == 0
    default, seven = (load_file(str(tmp_path / name / "samples.safetensors"))["samples"] for name in ("default", "seven"))
    assert (default - seven).abs().max() > 1e-3
    module = PolicyGradientModule(base=str(flux), lora_rank=2, reward="smoothness", distilled_guidance=7.0)
    assert module.denoiser.net_call.guidance == 7.0
    # A transformer that embeds no guidance value: one line naming the option and the alternative.
    with pytest.raises(UserError, match="--model.init_args.distilled_guidance needs a guidance-distilled FLUX.*"
                                        "StableDiffusion3Pipeline has none.*--guidance-scale"):
        PolicyGradientModule(base=str(sd3), lora_rank=2, reward="smoothness", distilled_guidance=7.0)
    from prefdiff.testing import tiny_denoiser

    with pytest.raises(UserError, match="distilled_guidance needs a guidance-distilled FLUX .* this unet2d model has"):
        tiny_denoiser().set_distilled_guidance(7.0)  # a prefdiff model, not a pipeline
    assert main(["sample", "--model", str(sd3), "--prompt", "a cat", "--n", "1", "--steps", "2",
                 "--distilled-guidance", "7", "--out", str(tmp_path / "sd3")]) == 2
    assert not (tmp_path / "sd3").exists()
