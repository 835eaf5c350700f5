"""Latent Stable Diffusion pipelines through the model seam, against diffusers' own pipelines."""

import math

import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.models import LoraOptions, add_lora, load_model, save_lora_for_pipeline
from prefdiff.sampling import predict_sample, sample, step_log_prob
from prefdiff.schedulers import load_scheduler
from prefdiff.testing import tiny_pipeline

PROMPTS = ["two red circles left of a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def sd_v(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sdv") / "pipe", prediction_type="v_prediction", seed=1)


@pytest.fixture(scope="module")
def sd_zsnr(sd_v, tmp_path_factory):
    """SD 2.x-v style with zero terminal SNR (Lin et al. 2024): trailing timesteps start where alpha-bar is 0."""
    return rescheduled(sd_v, tmp_path_factory.mktemp("sdz") / "pipe", rescale_betas_zero_snr=True,
                       timestep_spacing="trailing")


def rescheduled(folder, copy, **options):
    """A copy of a pipeline folder whose scheduler config is updated with ``options``."""
    import json
    import shutil

    shutil.copytree(folder, copy)
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **options}))
    return copy


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("sdxl") / "pipe", sdxl=True, seed=2)


def ddim_pipeline(folder):
    """The user's own pipeline, loaded by diffusers, sampling with DDIM as prefdiff does."""
    from diffusers import DDIMScheduler, DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def guided(denoiser, scheduler, latents, prompts):
    """prefdiff's DDIM at eta 0 with guidance 3 against the denoiser's own unconditional prompts."""
    with torch.no_grad():
        return sample(denoiser, scheduler, latents, prompts, num_steps=4, eta=0.0, guidance_scale=3.0,
                      uncond=denoiser.null_condition(prompts)).samples


def diffusers_latents(folder, denoiser, prompts, latents, *, steps, guidance, lora=None):
    """What diffusers' own pipeline samples from the same prompt embeddings and initial latents."""
    pipe = ddim_pipeline(folder)
    if lora is not None:
        pipe.load_lora_weights(lora)
    encoded = denoiser.conditioner(prompts)
    negative = denoiser.conditioner(denoiser.null_condition(prompts))
    kwargs = {"prompt_embeds": encoded["encoder_hidden_states"],
              "negative_prompt_embeds": negative["encoder_hidden_states"]}
    if "added_cond_kwargs" in encoded:
        kwargs.update(pooled_prompt_embeds=encoded["added_cond_kwargs"]["text_embeds"],
                      negative_pooled_prompt_embeds=negative["added_cond_kwargs"]["text_embeds"])
    with torch.no_grad():
        return pipe(**kwargs, latents=latents.clone(), num_inference_steps=steps, guidance_scale=guidance, eta=0.0,
                    output_type="latent").images


@pytest.mark.parametrize("which, guidance", [("sd", 1.0), ("sd", 3.0), ("sd_v", 3.0), ("sd_zsnr", 3.0),
                                             ("sdxl", 3.0)])
def test_ddim_at_eta_0_equals_the_diffusers_pipeline(which, guidance, request):
    folder = request.getfixturevalue(which)
    denoiser, scheduler = load_model(folder), load_scheduler(folder)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    uncond = denoiser.null_condition(PROMPTS) if guidance != 1 else None
    with torch.no_grad():
        ours = sample(denoiser, scheduler, latents, PROMPTS, num_steps=4, eta=0.0, guidance_scale=guidance,
                      uncond=uncond).samples
    theirs = diffusers_latents(folder, denoiser, PROMPTS, latents, steps=4, guidance=guidance)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_zero_terminal_snr_with_noise_prediction_is_one_clear_error(sd, tmp_path):
    folder = rescheduled(sd, tmp_path / "pipe", rescale_betas_zero_snr=True)
    with pytest.raises(UserError, match="rescale_betas_zero_snr but predicts epsilon.*set prediction_type to "
                                        "v_prediction"):
        load_scheduler(folder)


def test_zero_terminal_snr_starts_where_alpha_bar_is_zero_and_every_step_is_finite(sd_zsnr):
    # The first trailing timestep has alpha-bar 0: x_0 must come from v, not from (x_t - eps) / sqrt(0).
    denoiser, scheduler = load_model(sd_zsnr), load_scheduler(sd_zsnr)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sample(denoiser, scheduler, latents, PROMPTS, num_steps=4, eta=1.0, return_trajectory=True,
                     generator=torch.Generator().manual_seed(1))
        assert float(scheduler.alphas_cumprod[out.timesteps[0]]) == 0
        assert torch.isfinite(out.latents).all() and torch.isfinite(out.log_probs).all()
        assert (out.log_probs != 0).all()
        for i, t in enumerate(out.timesteps):
            log_prob, _, _ = step_log_prob(denoiser, scheduler, out.latents[:, i], t, out.latents[:, i + 1],
                                           PROMPTS, eta=1.0)
            torch.testing.assert_close(log_prob, out.log_probs[:, i], atol=1e-4, rtol=1e-5)
        x0 = predict_sample(denoiser, scheduler, latents, out.timesteps[0], PROMPTS)
        assert torch.isfinite(x0).all()


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_a_negative_prompt_guides_as_in_diffusers(which, request):
    folder = request.getfixturevalue(which)
    denoiser, scheduler = load_model(folder), load_scheduler(folder)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))

    def ours(negative):
        denoiser.set_negative_prompt(negative)
        return guided(denoiser, scheduler, latents, PROMPTS)

    with torch.no_grad():
        theirs = ddim_pipeline(folder)(prompt=PROMPTS, negative_prompt=["a blurry photo"] * 2, latents=latents.clone(),
                      num_inference_steps=4, guidance_scale=3.0, eta=0.0, output_type="latent").images
    steered = ours("a blurry photo")
    torch.testing.assert_close(steered, theirs, atol=1e-5, rtol=1e-4)
    assert (steered - ours("")).abs().max() > 1e-3


@pytest.mark.parametrize("zeros", [True, False])
def test_sdxl_guides_against_what_its_folder_says_the_empty_prompt_is(sdxl, zeros, tmp_path):
    """SDXL's folder says whether the empty negative prompt is zeros (force_zeros_for_empty_prompt); by default
    prefdiff's guidance must match the pipeline called with prompts alone, either way."""
    import json
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(sdxl, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": zeros}))
    denoiser, scheduler = load_model(folder), load_scheduler(folder)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = ddim_pipeline(folder)(prompt=PROMPTS, latents=latents.clone(), num_inference_steps=4,
                                       guidance_scale=3.0, eta=0.0, output_type="latent").images
    torch.testing.assert_close(guided(denoiser, scheduler, latents, PROMPTS), theirs, atol=1e-5, rtol=1e-4)


def test_sdxl_conditions_on_a_training_images_size_and_crop_as_diffusers(sdxl):
    """SDXL's micro-conditioning (Podell et al. 2023, sec. 2.2): a SizedPrompt's sizes reach the UNet as the
    pipeline's original_size, crops_coords_top_left and target_size do, the negative prompt keeping them."""
    from prefdiff.models.text import SizedPrompt

    denoiser, scheduler = load_model(sdxl), load_scheduler(sdxl)
    side = denoiser.conditioner.image_size
    sized = [SizedPrompt(p, (24, 40), (3, 5), (side, side)) for p in PROMPTS]
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    encoded, negative = denoiser.conditioner(PROMPTS), denoiser.conditioner(denoiser.null_condition(PROMPTS))
    with torch.no_grad():
        theirs = ddim_pipeline(sdxl)(
            prompt_embeds=encoded["encoder_hidden_states"], negative_prompt_embeds=negative["encoder_hidden_states"],
            pooled_prompt_embeds=encoded["added_cond_kwargs"]["text_embeds"],
            negative_pooled_prompt_embeds=negative["added_cond_kwargs"]["text_embeds"],
            latents=latents.clone(), num_inference_steps=4, guidance_scale=3.0, eta=0.0, output_type="latent",
            original_size=(24, 40), crops_coords_top_left=(3, 5), target_size=(side, side)).images
    ours = guided(denoiser, scheduler, latents, sized)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, guided(denoiser, scheduler, latents, PROMPTS), atol=1e-4), \
        "the sizes must reach the UNet"


def test_sized_prompts_keep_their_text_and_sizes_through_pickling():
    """DataLoader workers and DDP ranks pass conditions pickled."""
    import pickle

    from prefdiff.models.text import sized_prompts

    batch = {"original_size": torch.tensor([[24, 40], [512, 384]]), "crop_top_left": torch.tensor([[3, 5], [0, 64]])}
    images = torch.zeros(2, 3, 16, 16)
    rows = [(24, 40, 3, 5, 16, 16), (512, 384, 0, 64, 16, 16)]
    made = sized_prompts(PROMPTS, batch, images)
    for sized in (made, pickle.loads(pickle.dumps(made))):
        assert [str(p) for p in sized] == PROMPTS and [p.time_ids() for p in sized] == rows
    assert sized_prompts(PROMPTS, {}, images) is PROMPTS


@pytest.mark.parametrize("trainer", ["PairModule", "SFTModule"])
def test_sdxl_trains_on_each_images_own_size_and_crop(sdxl, trainer):
    """The text-to-image readers give each image's original_size and crop_top_left; the losses on those images
    pass them to SDXL's UNet (as diffusers' SDXL training scripts do), with the batch's size as the target."""
    import prefdiff.trainers as trainers

    module = getattr(trainers, trainer)(base=str(sdxl), lora_rank=4)
    seen = []
    module.denoiser.net.register_forward_pre_hook(
        lambda net, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].tolist()), with_kwargs=True)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sizes = {"original_size": torch.tensor([[24, 40], [512, 384]]), "crop_top_left": torch.tensor([[3, 5], [0, 64]])}
    batch = {"x_w": images, "x_l": images.flip(0)} if trainer == "PairModule" else {"x0": images}
    module.training_step({**batch, "cond": PROMPTS, **sizes}, 0)
    rows = [[24, 40, 3, 5, 16, 16], [512, 384, 0, 64, 16, 16]]
    assert seen and all(ids == rows * (len(ids) // 2) for ids in seen), seen  # winners then losers, model and reference


def test_the_trainers_take_a_negative_prompt_for_pipelines_only(sd):
    from prefdiff.testing import tiny_preset
    from prefdiff.trainers import PairModule

    module = PairModule(base=str(sd), negative_prompt="a blurry photo", lora_rank=4)
    assert module.denoiser.null_condition(PROMPTS) == ["a blurry photo"] * 2
    with pytest.raises(UserError, match="a negative prompt needs a text-to-image pipeline; this model is "
                                        "conditioned on 'class' conditions"):
        PairModule(model=vars(tiny_preset()), conditioner="class_label", negative_prompt="blurry", lora_rank=4)


def test_the_pipeline_loads_through_the_seam(sd, sdxl):
    denoiser = load_model(sd)
    assert denoiser.sample_shape == (4, 8, 8) and denoiser.prediction_type == "epsilon"
    assert denoiser.frozen_parts() == ["codec", "conditioner"]
    assert not any(p.requires_grad for p in denoiser.codec.parameters())
    assert not any(p.requires_grad for p in denoiser.conditioner.parameters())
    images = denoiser.decode(torch.zeros(2, 4, 8, 8))
    assert images.shape == (2, 3, 16, 16)
    # The codec encodes an image once, however often it is asked.
    calls = []
    denoiser.codec.vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    first = denoiser.encode(images)
    torch.testing.assert_close(denoiser.encode(images), first)
    assert len(calls) == 1
    xl = load_model(sdxl)
    assert xl.conditioner.is_sdxl and xl.conditioner(["a"])["added_cond_kwargs"]["time_ids"].tolist() == [
        [16.0, 16.0, 0.0, 0.0, 16.0, 16.0]]
    assert load_model(sd).prediction_type == "epsilon" and load_scheduler(sd).config.prediction_type == "epsilon"


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_decoded_samples_are_the_diffusers_pipeline_images(which, request):
    """The rewards score what the user's pipeline shows: prefdiff's decode of the pipeline's final latents is
    the pipeline's own image (latents over the VAE's scaling_factor; SD has no shift_factor), and encoding
    inverts it."""
    folder = request.getfixturevalue(which)
    denoiser, pipe = load_model(folder), ddim_pipeline(folder)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        final, images = (pipe(prompt=PROMPTS, latents=latents.clone(), num_inference_steps=2, eta=0.0,
                              output_type=kind).images for kind in ("latent", "pt"))
        ours = denoiser.decode(final)
    torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), images, atol=1e-5, rtol=1e-4)
    assert denoiser.codec.scaling_factor != 1.0 and (images - 0.5).abs().max() > 1e-3  # a check that can fail
    # The training images' latents are what this decode inverts: encoding then decoding is the VAE's own
    # autoencoding (AutoencoderKL.forward, the posterior's mode), scale and shift undone.
    pixels = images[:1] * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(denoiser.decode(denoiser.encode(pixels)), denoiser.codec.vae(pixels).sample,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strength", [0.5, 0.7])
def test_sdedit_of_latents_equals_the_diffusers_img2img_pipeline(sd, strength):
    """Latent SDEdit against StableDiffusionImg2ImgPipeline handed the same latents (its `image` may be latents)
    and the same noise: the same start step, noising and DDIM steps (0.7 of 4 steps runs 2, not 3)."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from prefdiff.sampling import sdedit

    denoiser, scheduler = load_model(sd), load_scheduler(sd)
    latents = denoiser.encode(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ours = sdedit(denoiser, scheduler, latents, PROMPTS, strength, num_steps=4, eta=0.0,
                      generator=torch.Generator().manual_seed(3))
        theirs = pipe(prompt_embeds=denoiser.conditioner(PROMPTS)["encoder_hidden_states"], image=latents.clone(),
                      strength=strength, num_inference_steps=4, guidance_scale=1.0, eta=0.0, output_type="latent",
                      generator=torch.Generator().manual_seed(3)).images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert (ours - latents).abs().max() > 1e-2  # the edit moved the latents


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_saved_pipelines_load_and_sample_the_same(which, request, tmp_path):
    """`save_model` writes an SD or SDXL denoiser as a diffusers pipeline folder (a base, never with its LoRA)."""
    import json

    from prefdiff.models import save_model

    folder = request.getfixturevalue(which)
    denoiser, scheduler = load_model(folder), load_scheduler(folder)
    saved = save_model(denoiser, tmp_path / "saved", scheduler)
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == denoiser.pipeline_class
    if which == "sd":
        assert index["requires_safety_checker"] is False and index["safety_checker"] == [None, None]
    else:
        assert index["force_zeros_for_empty_prompt"] is True
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(guided(load_model(saved), load_scheduler(saved), latents, PROMPTS),
                               guided(denoiser, scheduler, latents, PROMPTS), rtol=0, atol=0)
    with pytest.raises(ValueError, match="save the base pipeline before adding LoRA"):
        save_model(add_lora(denoiser), tmp_path / "with-lora", scheduler)


def test_the_vae_decodes_in_slices_in_its_own_dtype_and_stays_in_eval_mode(sd):
    codec = load_model(sd).codec
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = codec.decode(latents)
        codec.slice_size = 2  # slices of 2, 2 and 1 latents
        torch.testing.assert_close(codec.decode(latents), whole, rtol=0, atol=1e-6)
        codec.vae.to(torch.bfloat16)  # the frozen VAE in bfloat16 (frozen_dtype), the latents in float32
        half = codec.decode(latents)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, whole, atol=0.05, rtol=0.05)
    codec.train()  # as Lightning's module.train() reaches it
    assert not any(module.training for module in codec.modules())


def test_sdxl_conditions_come_in_the_dtype_asked_for(sdxl):
    encoded = load_model(sdxl).conditioner(PROMPTS, dtype=torch.bfloat16)
    added = encoded["added_cond_kwargs"]
    assert {t.dtype for t in (encoded["encoder_hidden_states"], added["text_embeds"], added["time_ids"])} == {
        torch.bfloat16}


def test_a_tokenizer_saved_as_vocabulary_and_merges_loads_as_one_saved_as_tokenizer_json(sd, tmp_path):
    """Older SD folders hold tokenizer/vocab.json and merges.txt, not tokenizer.json."""
    import json
    import shutil

    from transformers import AutoTokenizer

    older = shutil.copytree(sd, tmp_path / "pipe")
    vocabulary = AutoTokenizer.from_pretrained(sd / "tokenizer").get_vocab()
    (older / "tokenizer" / "tokenizer.json").unlink()
    (older / "tokenizer" / "vocab.json").write_text(json.dumps(vocabulary))
    (older / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")  # the character tokenizer has no merges
    expected = load_model(sd).conditioner(PROMPTS)["encoder_hidden_states"]
    torch.testing.assert_close(load_model(older).conditioner(PROMPTS)["encoder_hidden_states"], expected)


def test_the_latent_and_prompt_caches_keep_to_their_budgets(sd, caplog):
    import logging

    from prefdiff.trainers import PairModule

    denoiser = load_model(sd)
    codec, encoder = denoiser.codec, denoiser.conditioner
    encoded, prompted = [], []
    codec.vae.encoder.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0]))
    encoder.text_encoders[0].register_forward_hook(lambda module, args, out: prompted.append(1))
    images = codec.decode(torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    codec.cache.budget_mb = 2 * 4 * 8 * 8 * 4 / 2 ** 20  # room for two float32 latents of 4 x 8 x 8
    encoder.cache.budget_mb = 32 * 32 * 4 / 2 ** 20  # one prompt's states: 32 tokens of width 32
    with caplog.at_level(logging.INFO, logger="prefdiff"):
        first = codec.encode(images)
        states = encoder(["a", "b"])["encoder_hidden_states"]
    assert "the latent cache (--model.init_args.latent_cache_mb) is full (2 items, 0 MB)" in caplog.text
    assert "the prompt-embedding cache (--model.init_args.prompt_cache_mb) is full (1 items" in caplog.text
    again = codec.encode(images)
    assert encoded == [3, 1] and len(codec.cache) == 2  # the third image is encoded again, not cached
    torch.testing.assert_close(again[:2], first[:2], rtol=0, atol=0)  # the cached two, as they were
    # the third, encoded alone now and in a batch of three before: equal up to the kernels' rounding,
    # which on some CPUs (AMD EPYC here) differs with the batch size
    torch.testing.assert_close(again[2:], first[2:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(encoder(["a", "b"])["encoder_hidden_states"], states, rtol=0, atol=0)
    assert len(prompted) == 3 and "a" in encoder.cache and "b" not in encoder.cache
    codec.cache.budget_mb = 0
    codec.cache.clear()
    codec.encode(images)
    codec.encode(images)
    assert encoded == [3, 1, 3, 3] and not len(codec.cache)
    module = PairModule(base=str(sd), lora_rank=4, latent_cache_mb=1.5, prompt_cache_mb=0)
    assert (module.denoiser.codec.cache.budget_mb, module.denoiser.conditioner.cache.budget_mb) == (1.5, 0)
    with pytest.raises(UserError, match=r"--model.prompt_cache_mb must be >= 0 \(0: no cache\), got -1"):
        PairModule(base=str(sd), lora_rank=4, prompt_cache_mb=-1)


def test_prompt_embeddings_are_computed_once_per_prompt(sd):
    encoder = load_model(sd).conditioner
    calls = []
    encoder.text_encoders[0].register_forward_hook(lambda *a: calls.append(1))
    encoder(["a cat", "a dog", "a cat"])
    encoder(["a dog"])
    assert len(calls) == 2


def test_a_too_long_prompt_is_truncated_with_a_warning(sd, caplog, capfd):
    encoder = load_model(sd).conditioner
    long = "a red circle " * 20
    capfd.readouterr()
    with caplog.at_level("WARNING"):
        out = encoder([long])["encoder_hidden_states"]
    assert out.shape == (1, 32, 32)
    assert "longer than the tokenizer's limit of 32 tokens" in caplog.text
    # and not transformers' own "... will result in indexing errors", which would contradict it
    assert "indexing errors" not in caplog.text + "".join(capfd.readouterr())


def test_sft_caption_dropout_turns_prompts_into_the_negative_prompt(sd):
    """p_uncond on prompts (diffusers' --proportion_empty_prompts): a dropped prompt becomes the negative prompt,
    the others stay as they were, and the step trains."""
    from prefdiff.trainers import SFTModule

    module = SFTModule(base=str(sd), lora_rank=4, p_uncond=0.5, negative_prompt="a blurry photo")
    prompts = [f"{i} red circles" for i in range(64)]
    out = module._drop_condition(prompts, torch.Generator().manual_seed(0))
    dropped = (torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.5).tolist()  # one draw a prompt
    assert out == ["a blurry photo" if d else p for p, d in zip(prompts, dropped)]
    assert 16 < sum(dropped) < 48
    loss = module.training_step({"x0": torch.rand(2, 3, 16, 16) * 2 - 1, "cond": PROMPTS}, 0)
    assert torch.isfinite(loss)


def test_lora_goes_on_the_attention_projections(sd):
    denoiser = add_lora(load_model(sd))
    targets = set(denoiser.lora_config.target_modules)
    assert targets and all(t.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or t.endswith("to_out.0")
                           for t in targets)


def lora_a_std(denoiser) -> float:
    return torch.cat([p.flatten() for n, p in denoiser.net.named_parameters() if "lora_A" in n]).std().item()


def test_a_pipelines_lora_starts_gaussian_as_the_communitys_trainers_start_it(sd):
    # diffusers' LoRA scripts, TRL and Flow-GRPO start A as N(0, 1/r), and their learning rates assume
    # it; peft's Kaiming-uniform would start these layers (fan-in 8-32) below 0.21, whatever the rank.
    torch.manual_seed(0)
    assert lora_a_std(add_lora(load_model(sd), LoraOptions(r=2))) == pytest.approx(0.5, rel=0.05)
    torch.manual_seed(0)
    assert lora_a_std(add_lora(load_model(sd), LoraOptions(r=2, init="kaiming"))) < 0.21


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_exported_lora_reproduces_our_samples_in_diffusers(which, request, tmp_path):
    sd = request.getfixturevalue(which)  # SDXL's adapter is written in SD's layout, which its loader reads
    denoiser, scheduler = load_model(sd), load_scheduler(sd)
    add_lora(denoiser)
    with torch.no_grad():  # a trained adapter: any non-zero update
        for name, p in denoiser.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    save_lora_for_pipeline(denoiser, tmp_path / "lora")
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = sample(denoiser, scheduler, latents, PROMPTS, num_steps=4, eta=0.0).samples
        base = load_model(sd)
        plain = sample(base, scheduler, latents, PROMPTS, num_steps=4, eta=0.0).samples
    assert not torch.allclose(ours, plain, atol=1e-4)
    theirs = diffusers_latents(sd, base, PROMPTS, latents, steps=4, guidance=1.0, lora=tmp_path / "lora")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_a_lora_from_diffusers_training_scripts_loads_as_in_diffusers(sd, tmp_path):
    """A folder with diffusers' pytorch_lora_weights.safetensors alone loads into prefdiff as
    pipeline.load_lora_weights loads it, and becomes prefdiff's adapter: the reference is the base."""
    from prefdiff.models import reference_mode
    from prefdiff.models.lora import load_lora
    from prefdiff.testing import diffusers_lora

    lora = diffusers_lora(sd, tmp_path / "dpo-lora", alpha=8)
    assert [f.name for f in lora.iterdir()] == ["pytorch_lora_weights.safetensors"]
    denoiser, scheduler, base = load_lora(load_model(sd), lora), load_scheduler(sd), load_model(sd)
    latents = torch.randn((2, *denoiser.sample_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = sample(denoiser, scheduler, latents, PROMPTS, num_steps=4, eta=0.0).samples
        plain = sample(base, scheduler, latents, PROMPTS, num_steps=4, eta=0.0).samples
        with reference_mode(denoiser):
            reference = sample(denoiser, scheduler, latents, PROMPTS, num_steps=4, eta=0.0).samples
    theirs = diffusers_latents(sd, base, PROMPTS, latents, steps=4, guidance=1.0, lora=lora)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, plain, atol=1e-4)
    torch.testing.assert_close(reference, plain)
    trainable = {n for n, p in denoiser.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable) and denoiser.lora_config.r == 4
    # prefdiff's own export read alone keeps its scale (alpha 8 over rank 4, in the file's metadata)
    from prefdiff.models import LoraOptions

    mine = add_lora(load_model(sd), LoraOptions(r=4, alpha=8))
    with torch.no_grad():
        for name, p in mine.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    save_lora_for_pipeline(mine, tmp_path / "export")
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "pytorch_lora_weights.safetensors").write_bytes(
        (tmp_path / "export" / "pytorch_lora_weights.safetensors").read_bytes())
    alone = load_lora(load_model(sd), tmp_path / "alone")
    # and prefdiff's own lora/ folder (peft's files) loads onto a pipeline with its VAE and text encoder frozen
    from prefdiff.models import save_lora

    save_lora(mine, tmp_path / "own")
    own = load_lora(load_model(sd), tmp_path / "own")
    assert {n for n, p in own.named_parameters() if p.requires_grad} == {
        n for n, p in mine.named_parameters() if p.requires_grad}
    with torch.no_grad():
        expected = sample(mine, scheduler, latents, PROMPTS, num_steps=4, eta=0.0).samples
        for loaded in (alone, own):
            torch.testing.assert_close(sample(loaded, scheduler, latents, PROMPTS, num_steps=4, eta=0.0).samples,
                                       expected)


def test_a_diffusers_lora_that_prefdiff_cannot_load_is_one_clear_error(sd, tmp_path):
    from safetensors.torch import load_file, save_file

    from prefdiff.models.lora import load_lora
    from prefdiff.testing import tiny_denoiser

    own = tmp_path / "own"
    save_lora_for_pipeline(add_lora(load_model(sd)), own)
    with pytest.raises(UserError, match=r"holds a LoRA in diffusers' layout .* this model is a prefdiff model"):
        load_lora(tiny_denoiser(), own)
    with pytest.raises(UserError, match="this model already carries a LoRA adapter"):
        load_lora(add_lora(load_model(sd)), own)
    state = load_file(str(own / "pytorch_lora_weights.safetensors"))
    text = {**state, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 4)}
    (tmp_path / "te").mkdir()
    save_file(text, str(tmp_path / "te" / "pytorch_lora_weights.safetensors"))
    with pytest.raises(UserError, match=r"adapts text_encoder too; prefdiff trains and loads adapters of the unet "):
        load_lora(load_model(sd), tmp_path / "te")
    (tmp_path / "other").mkdir()
    nowhere = {"unet.nowhere.to_q.lora_A.weight": torch.zeros(4, 32),
               "unet.nowhere.to_q.lora_B.weight": torch.zeros(32, 4)}
    save_file(nowhere, str(tmp_path / "other" / "pytorch_lora_weights.safetensors"))
    with pytest.raises(UserError, match=r"does not fit this StableDiffusionPipeline's unet \(Target modules"):
        load_lora(load_model(sd), tmp_path / "other")


def test_bad_folders_get_one_clear_error(sd, tmp_path):
    import shutil

    with pytest.raises(UserError, match="is not a prefdiff model folder .* nor a diffusers pipeline"):
        load_model(tmp_path)
    with pytest.raises(UserError, match="^model folder .*models/sd15 does not exist; pass a folder written by"):
        load_model(tmp_path / "models" / "sd15")
    (tmp_path / "v1-5-pruned.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="v1-5-pruned.safetensors is a file, not a folder; .*single-file checkpoints"):
        load_model(tmp_path / "v1-5-pruned.safetensors")
    broken = tmp_path / "no-text-encoder"
    shutil.copytree(sd, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(UserError, match="has no text_encoder/ .StableDiffusionPipeline needs unet, vae, text_encoder"):
        load_model(broken)
    # A download that left the tokenizer's files out (transformers 5 would make an empty vocabulary of it)
    untokenized = tmp_path / "no-tokenizer-files"
    shutil.copytree(sd, untokenized)
    for file in (untokenized / "tokenizer").iterdir():
        file.unlink()
    (untokenized / "tokenizer" / "vocab.json").write_text("{}")  # a BPE vocabulary without its merges.txt
    with pytest.raises(UserError, match=r"no-tokenizer-files: its tokenizer/ holds no tokenizer files \(tokenizer.json,"
                                        r" vocab.json with merges.txt, or spiece.model\); copy them too"):
        load_model(untokenized)


def test_a_scheduler_option_beside_a_saved_model_is_an_error_not_ignored(sd):
    from prefdiff.trainers import PairModule

    with pytest.raises(UserError, match=r"--model.scheduler builds a fresh model's scheduler, but a saved model "
                                        r"\(--model.base .*\) samples with its own scheduler/ folder"):
        PairModule(base=str(sd), scheduler={"clip_sample": True}, lora_rank=4)


def test_v_prediction_targets_and_noise_agree(sd_v):
    from prefdiff.sampling import to_epsilon, training_target

    scheduler = load_scheduler(sd_v)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    x_t = scheduler.add_noise(x0, noise, t)
    v = training_target(scheduler, x0, noise, t)
    torch.testing.assert_close(v, scheduler.get_velocity(x0, noise, t))
    torch.testing.assert_close(to_epsilon(scheduler, v, x_t, t), noise, atol=1e-5, rtol=1e-4)


def test_diffusion_dpo_loss_is_ln2_with_a_fresh_adapter(sd):
    from prefdiff.trainers import PairModule

    module = PairModule(base=str(sd), lora_rank=4, num_steps=4)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = module.training_step({"x_w": images[:2], "x_l": images[2:], "cond": PROMPTS}, 0)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)


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
def test_every_method_takes_a_step_on_a_pipeline(sd, method, extra):
    import pytorch_lightning as pl

    from prefdiff.datamodule import PrefDataModule
    from prefdiff.quiet import quiet_trainer
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS[method]
    options = {"num_steps": 3, "lr": 1e-2, "guidance_scale": 2.0, **fixed, **extra}
    if cls.uses_reward(**fixed):
        options.setdefault("reward", "jpeg_compressibility")
    module = cls(base=str(sd), lora_rank=4, **options)
    before = {n: p.detach().clone() for n, p in module.denoiser.named_parameters() if "lora_B" in n}
    pl.seed_everything(0, verbose=False)
    data = PrefDataModule.from_datasets(Captions(cls.training_data(**fixed)), batch_size=2)
    quiet_trainer(1).fit(module, datamodule=data)
    changed = [n for n, p in module.denoiser.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert changed, f"{method} took no step"
    frozen = [n for n, p in module.denoiser.named_parameters() if n.startswith(("codec.", "conditioner."))]
    assert frozen and not any(p.requires_grad for n, p in module.denoiser.named_parameters() if n in frozen)


@pytest.mark.parametrize("method, extra", [("ddpo", {"samples_per_condition": 2}),
                                           ("draft", {"reward": "smoothness", "k": 2})])
def test_a_pipeline_trains_in_bfloat16(sd, method, extra):
    # `--trainer.precision bf16-true` (weights and activations in bfloat16, half the memory): before the
    # samplers kept their schedule arithmetic in float32, DDIM's samples were NaN here.
    import pytorch_lightning as pl

    from prefdiff.datamodule import PrefDataModule
    from prefdiff.quiet import quiet_trainer
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS[method]
    module = cls(base=str(sd), lora_rank=4, num_steps=3, lr=1e-2, guidance_scale=2.0,
                 **{"reward": "jpeg_compressibility", **fixed, **extra})
    pl.seed_everything(0, verbose=False)
    data = PrefDataModule.from_datasets(Captions(cls.training_data(**fixed)), batch_size=2)
    quiet_trainer(1, precision="bf16-true").fit(module, datamodule=data)
    lora = [p for n, p in module.denoiser.named_parameters() if "lora_B" in n]
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in lora)
    assert any(p.abs().sum() > 0 for p in lora), f"{method} took no step"


def test_frozen_weights_in_bfloat16_train_a_float32_adapter(sd):
    # diffusers' LoRA scripts' --mixed_precision: the frozen UNet, VAE and text encoder in bfloat16 (read from the
    # folder in it), the adapter and its optimizer in float32, the layers run by autocast.
    import pytorch_lightning as pl

    from prefdiff.datamodule import PrefDataModule
    from prefdiff.quiet import quiet_trainer
    from prefdiff.trainers import METHODS

    cls, fixed = METHODS["dpo"]
    module = cls(base=str(sd), lora_rank=4, num_steps=3, lr=1e-2, frozen_dtype="bfloat16", **fixed)
    parts = dict(module.denoiser.named_parameters())
    assert {p.dtype for p in parts.values() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in parts.values() if not p.requires_grad} == {torch.bfloat16}
    assert any(n.startswith("codec.") for n in parts) and any(n.startswith("conditioner.") for n in parts)
    lora = {n: p.detach().clone() for n, p in parts.items() if "lora_B" in n}
    pl.seed_everything(0, verbose=False)
    data = PrefDataModule.from_datasets(Captions(cls.training_data(**fixed)), batch_size=2)
    quiet_trainer(1, precision="bf16-mixed").fit(module, datamodule=data)
    assert all(p.dtype == torch.float32 and not torch.equal(p, lora[n]) for n, p in module.denoiser.named_parameters()
               if n in lora)
    with pytest.raises(UserError, match="--model.frozen_dtype bfloat16 holds the frozen weights in half precision, "
                                        "which only autocast can mix with the float32 adapter; add --trainer.precision "
                                        "bf16-mixed \\(the Trainer's is 32-true\\)"):
        quiet_trainer(1).fit(module, datamodule=data)
    with pytest.raises(UserError, match="--model.frozen_dtype must be one of bfloat16, float16, got 'int8'"):
        cls(base=str(sd), lora_rank=4, frozen_dtype="int8", **fixed)
    half = cls(base=str(sd), lora_rank=4, frozen_dtype="float16", **fixed)
    with pytest.raises(UserError, match="--model.frozen_dtype float16 needs a GPU: on a CPU, torch's group norm"):
        quiet_trainer(1, precision="bf16-mixed").fit(half, datamodule=data)

    with pytest.raises(UserError, match="the Trainer's is bf16-true"):  # it would round the adapter too
        quiet_trainer(1, precision="bf16-true").fit(module, datamodule=data)
    # A full fine-tune trains and writes every weight (its VAE and text encoders too) in float32.
    with pytest.raises(UserError, match="--model.frozen_dtype holds the weights under a LoRA adapter in half"):
        cls(base=str(sd), lora_rank=0, frozen_dtype="bfloat16", **fixed)


def test_a_folder_saved_in_half_precision_loads_in_float32_unless_told(tmp_path):
    # transformers 5 keeps a text encoder in the dtype it was saved in; prefdiff's weights are float32 unless
    # --model.init_args.frozen_dtype says otherwise, the text encoders too.
    from transformers import CLIPTextModel

    folder = tiny_pipeline(tmp_path / "pipe")
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    encoder.to(torch.bfloat16).save_pretrained(folder / "text_encoder")
    assert {p.dtype for p in load_model(folder).parameters()} == {torch.float32}
    assert {p.dtype for p in load_model(folder, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}
