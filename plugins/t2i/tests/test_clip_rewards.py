"""The CLIP-family rewards on a tiny random CLIP saved to a folder: the reward contract, each
formula recomputed here with CLIPModel's own get_image_features/get_text_features, the
preprocessing against CLIPImageProcessor, and the errors for bad weight paths."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from prefdiff.api import UserError
from prefdiff.rewards import Reward
from prefdiff.testing import char_tokenizer, check_reward
from prefdiff_t2i import clip_rewards
from prefdiff_t2i.clip_rewards import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess

SIZE = 16
"""The tiny CLIP's image_size; the test images are 20x24, so preprocessing resizes and crops."""
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
"""The tiny CLIP's preprocessor_config.json statistics, unlike OpenAI's so that a test sees which is used."""
PROMPTS = ["a red square", "two blue circles", "a red square"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random CLIP (hidden 32, projection 16, 16x16 images, 8x8 patches) with its tokenizer and
    image processor, saved as save_pretrained does."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                vocab_size=520, max_position_embeddings=32, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  image_size=SIZE, patch_size=8)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    char_tokenizer(32).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=SIZE, image_mean=list(MEAN),
                       image_std=list(STD)).save_pretrained(folder)
    return folder


def head_state(width: int, seed: int = 1) -> dict:
    """Random weights of LAION's head layout for ``width``-dim embeddings, keyed as the published .pth."""
    torch.manual_seed(seed)
    sizes = {0: (width, 1024), 2: (1024, 128), 4: (128, 64), 6: (64, 16), 7: (16, 1)}
    state = {}
    for index, (fan_in, fan_out) in sizes.items():
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in) / fan_in ** 0.5
        state[f"layers.{index}.bias"] = torch.randn(fan_out) * 0.1
    return state


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    """A random aesthetic head for the tiny CLIP's 16-dim embeddings, as safetensors."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("head") / "head.safetensors"
    save_file(head_state(16), str(path))
    return path


@pytest.fixture
def images():
    """Three 20x24 images in [-1, 1]."""
    return torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1


def build(name: str, **options) -> Reward:
    """The reward as the host hands it out (checked on every call), declared differentiable as the
    plugin registers it. Built from the module rather than ``build(name, **options)``
    because the plugin's field modules (field.py, recipe.py, commands.py) do not exist yet, so its
    registration hook fails as a whole."""
    return Reward(name, "t2i", getattr(clip_rewards, name)(**options), differentiable=True)


def options(name, clip_dir, head_file):
    return {"clip": str(clip_dir), **({"head": str(head_file)} if name == "aesthetic_score" else {})}


def reference(clip_dir):
    """The saved CLIP loaded here, for recomputing the formulas independently of the rewards."""
    from transformers import AutoTokenizer, CLIPModel

    return CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)


def features(output):
    """get_*_features returns the projected embedding (transformers 4) or an output holding it (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def cosines(clip_dir, images, prompts, mean=MEAN, std=STD):
    """cos(E_image, E_prompt) per pair with CLIPModel's get_image_features/get_text_features."""
    model, tokenizer = reference(clip_dir)
    with torch.no_grad():
        image = features(model.get_image_features(pixel_values=preprocess(images, SIZE, mean, std)))
        text = torch.cat([features(model.get_text_features(**tokenizer(p, return_tensors="pt"))) for p in prompts])
    return F.cosine_similarity(image, text, dim=-1), model


# ------------------------------------------------------------ the contract ----


@pytest.mark.parametrize("name", ["aesthetic_score", "clip_score", "pickscore", "hps_score"])
def test_reward_meets_the_contract(name, clip_dir, head_file, images):
    reward = build(name, **options(name, clip_dir, head_file))
    assert reward.differentiable
    scores = check_reward(reward, PROMPTS, images)
    assert scores.std() > 0, "three different images scored alike"
    _, info = reward(images, PROMPTS)
    assert info[name] == pytest.approx(scores.mean().item(), rel=1e-5)


def test_scores_follow_the_samples_dtype_and_back(clip_dir, images):
    reward = build("clip_score", clip=str(clip_dir))
    single, _ = reward(images, PROMPTS)
    double = check_reward(reward, PROMPTS, images.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=1e-4, rtol=1e-4)
    half = check_reward(reward, PROMPTS, images.bfloat16())  # a bfloat16 VAE's samples, on the CPU too
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), single, atol=1.0, rtol=0.02)
    again, _ = reward(images, PROMPTS)  # the cached text embeddings move back too
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, single)


def test_the_aesthetic_score_follows_the_samples_dtype(clip_dir, head_file, images):
    reward = build("aesthetic_score", clip=str(clip_dir), head=str(head_file))
    single, _ = reward(images, None)
    half = check_reward(reward, None, images.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), single, atol=0.05, rtol=0.02)


def test_prompts_are_cut_to_the_text_encoders_positions_whatever_the_tokenizer_says(clip_dir, images, tmp_path):
    """A tokenizer saved without its limit (model_max_length 1e30, as some conversions leave it) still gets
    prompts cut to the text encoder's positions, as CLIP's own 77-token limit cuts them."""
    loose = shutil.copytree(clip_dir, tmp_path / "clip")
    config = loose / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": int(1e30)}))
    long = "a red square " * 10  # 130 characters, one token each: past the 32 positions
    scores, _ = build("clip_score", clip=str(loose))(images[:1], [long])
    expected, _ = build("clip_score", clip=str(clip_dir))(images[:1], [long])
    torch.testing.assert_close(scores, expected)


def test_each_prompt_is_encoded_once(clip_dir, images, monkeypatch):
    from transformers.models.clip import modeling_clip

    encoded = []
    forward = modeling_clip.CLIPTextEmbeddings.forward

    def counting(self, input_ids=None, *args, **kwargs):
        encoded.append(tuple(input_ids.shape))
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_clip.CLIPTextEmbeddings, "forward", counting)
    reward = build("pickscore", clip=str(clip_dir))
    reward(images, PROMPTS)
    reward(images[:1], PROMPTS[:1])
    assert [batch for batch, _ in encoded] == [1, 1], "each distinct prompt once, alone, without padding"
    assert encoded[0][1] == len(PROMPTS[0].replace(" ", "")) + 2  # its letters, start and end: no padding
    # The cache keeps the most recently used prompts only, so a million-prompt run does not fill the memory.
    scorer = clip_rewards._ClipScorer(str(clip_dir), tokenizer=True, cache_prompts=2)
    scorer.text_embeddings(["a", "b"], 2)
    scorer.text_embeddings(["a", "c"], 2)
    assert list(scorer.texts) == ["a", "c"]
    encoded.clear()
    scorer.text_embeddings(["b"], 1)
    assert len(encoded) == 1 and list(scorer.texts) == ["c", "b"]


# ------------------------------------------------------------ the formulas ----


def test_clip_score_is_the_scaled_cosine(clip_dir, images):
    cos, _ = cosines(clip_dir, images, PROMPTS)
    scores, _ = build("clip_score", clip=str(clip_dir))(images, PROMPTS)
    torch.testing.assert_close(scores, 100 * cos, atol=1e-4, rtol=1e-4)
    raw, _ = build("clip_score", clip=str(clip_dir), scale=1.0)(images, PROMPTS)
    torch.testing.assert_close(raw, cos, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config", [None, {"crop_size": SIZE}])
def test_clip_score_without_preprocessor_statistics_uses_openai_s(clip_dir, images, tmp_path, config):
    """No preprocessor_config.json, or one without image_mean and image_std: OpenAI CLIP's statistics."""
    bare = shutil.copytree(clip_dir, tmp_path / "clip")
    (bare / "preprocessor_config.json").unlink()
    if config is not None:
        (bare / "preprocessor_config.json").write_text(json.dumps(config))
    cos, _ = cosines(bare, images, PROMPTS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    scores, _ = build("clip_score", clip=str(bare), scale=1.0)(images, PROMPTS)
    torch.testing.assert_close(scores, cos, atol=1e-6, rtol=1e-5)
    other, _ = build("clip_score", clip=str(clip_dir), scale=1.0)(images, PROMPTS)
    assert not torch.allclose(scores, other, atol=1e-4), "the folder's mean and std must matter"


def test_pickscore_is_exp_logit_scale_times_cosine(clip_dir, images):
    cos, model = cosines(clip_dir, images, PROMPTS)
    scores, _ = build("pickscore", clip=str(clip_dir))(images, PROMPTS)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-3)  # CLIP's initial temperature
    torch.testing.assert_close(scores, model.logit_scale.exp().detach() * cos, atol=1e-5, rtol=1e-5)


def test_hps_score_is_100_times_the_cosine(clip_dir, images):
    cos, _ = cosines(clip_dir, images, PROMPTS)
    scores, _ = build("hps_score", clip=str(clip_dir))(images, PROMPTS)
    torch.testing.assert_close(scores, 100 * cos, atol=1e-4, rtol=1e-4)
    raw, _ = build("hps_score", clip=str(clip_dir), scale=1.0)(images, PROMPTS)
    torch.testing.assert_close(raw, cos, atol=1e-6, rtol=1e-5)


def laion_head(state: dict) -> torch.nn.Module:
    """LAION's MLP written out here: linear layers with no nonlinearity (dropout is off in eval)."""
    def head(x):
        for index in (0, 2, 4, 6, 7):
            x = F.linear(x, state[f"layers.{index}.weight"], state[f"layers.{index}.bias"])
        return x
    return head


def test_aesthetic_score_is_the_head_on_the_normalised_embedding(clip_dir, head_file, images):
    model, _ = reference(clip_dir)
    with torch.no_grad():
        embedding = features(model.get_image_features(pixel_values=preprocess(images, SIZE, MEAN, STD)))
        expected = laion_head(head_state(16))(embedding / embedding.norm(dim=-1, keepdim=True)).squeeze(-1)
    scores, _ = build("aesthetic_score", clip=str(clip_dir), head=str(head_file))(images, None)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_aesthetic_head_loads_from_the_original_pth(clip_dir, head_file, images, tmp_path):
    pth = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(head_state(16), pth)
    from_pth, _ = build("aesthetic_score", clip=str(clip_dir), head=str(pth))(images, None)
    from_safetensors, _ = build("aesthetic_score", clip=str(clip_dir), head=str(head_file))(images, None)
    torch.testing.assert_close(from_pth, from_safetensors)


@pytest.mark.parametrize("height, width", [(20, 28), (28, 20)])
def test_preprocess_matches_clip_image_processor(height, width):
    """The differentiable torch preprocessing against transformers' PIL one on a smooth 8-bit image, wide and
    tall (on noise PIL's 8-bit rounding between its horizontal and vertical passes differs more)."""
    from transformers import CLIPImageProcessor

    noise = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    pixels = F.avg_pool2d(noise, 5, stride=1, padding=2, count_include_pad=False)[0].round().to(torch.uint8)
    processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size=SIZE, image_mean=list(MEAN),
                                   image_std=list(STD))
    expected = torch.as_tensor(processor(images=pixels.permute(1, 2, 0).numpy(), return_tensors="np")["pixel_values"])
    ours = preprocess(pixels[None].float() / 127.5 - 1, SIZE, MEAN, STD)
    assert ours.shape == expected.shape == (1, 3, SIZE, SIZE)
    levels = (ours - expected).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255  # in 8-bit levels
    assert levels.max() < 1.5 and levels.mean() < 0.5, "more than PIL's rounding apart"
    # Beyond [-1, 1] a decoded sample is clamped, as an 8-bit image is.
    overshoot = torch.linspace(-3, 3, height * width).view(1, 1, height, width).expand(1, 3, -1, -1)
    torch.testing.assert_close(preprocess(overshoot, SIZE), preprocess(overshoot.clamp(-1, 1), SIZE))
    assert not torch.allclose(preprocess(overshoot, SIZE), preprocess(overshoot / 2, SIZE))
    # In the samples' dtype: a bfloat16 CLIP takes bfloat16 pixels.
    assert preprocess(overshoot.bfloat16(), SIZE, MEAN, STD).dtype == torch.bfloat16


# ------------------------------------------------------------ errors ----


@pytest.mark.parametrize("name", ["aesthetic_score", "clip_score", "pickscore", "hps_score"])
def test_missing_clip_folder_is_a_user_error(name, head_file, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=rf"^reward option clip: {missing} does not exist; pass the local folder "
                                        r"of a transformers CLIPModel \(save_pretrained\)$"):
        build(name, **options(name, missing, head_file))


def test_a_folder_without_a_clip_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="reward option clip: .* is not a CLIP folder"):
        build("clip_score", clip=str(tmp_path))
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(UserError, match="reward option clip: .* is a file, not a folder"):
        build("hps_score", clip=str(tmp_path / "weights.pt"))


def test_a_clip_folder_without_its_tokenizer_is_a_user_error(clip_dir, head_file, tmp_path):
    """CLIPModel.save_pretrained alone writes no tokenizer; transformers 5 would then read every prompt with an
    empty vocabulary, and the text-image rewards would score nonsense without a word."""
    bare = shutil.copytree(clip_dir, tmp_path / "clip")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    for name in ("clip_score", "pickscore", "hps_score"):
        with pytest.raises(UserError, match=r"^reward option clip: .* has no tokenizer \(no vocab.json or "
                                            r"tokenizer.json\); save the CLIP's tokenizer into it"):
            build(name, clip=str(bare))
    build("aesthetic_score", clip=str(bare), head=str(head_file))  # needs none


def test_a_clip_folder_with_a_vocabulary_and_merges_alone_scores_as_with_tokenizer_json(clip_dir, images, tmp_path):
    """Tokenizers saved without tokenizer.json (vocab.json and merges.txt, as older transformers saved CLIP's)
    are a tokenizer too."""
    from transformers import AutoTokenizer

    older = shutil.copytree(clip_dir, tmp_path / "clip")
    vocabulary = AutoTokenizer.from_pretrained(clip_dir).get_vocab()
    (older / "tokenizer.json").unlink()
    (older / "vocab.json").write_text(json.dumps(vocabulary))
    (older / "merges.txt").write_text("#version: 0.2\n")  # the character tokenizer has no merges
    expected, _ = build("clip_score", clip=str(clip_dir))(images, PROMPTS)
    scores, _ = build("clip_score", clip=str(older))(images, PROMPTS)
    torch.testing.assert_close(scores, expected)


class _RunsCode:
    """Unpickling this makes a folder: the stand-in for a .pth file that runs code when it is loaded."""

    def __init__(self, folder):
        self.folder = str(folder)

    def __reduce__(self):
        import os

        return os.mkdir, (self.folder,)


def test_a_head_file_is_read_without_running_its_pickled_code(clip_dir, tmp_path, monkeypatch):
    """A downloaded .pth never runs code, even where the environment tells torch.load to allow it."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    pth = tmp_path / "head.pth"
    torch.save({**head_state(16), "extra": _RunsCode(tmp_path / "it-ran")}, pth)
    with pytest.raises(UserError, match=r"^reward option head: .*head.pth could not be read \(UnpicklingError"):
        build("aesthetic_score", clip=str(clip_dir), head=str(pth))
    assert not (tmp_path / "it-ran").exists()


def test_head_errors_name_the_head_option(clip_dir, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(UserError, match="reward option head: .* does not exist"):
        build("aesthetic_score", clip=str(clip_dir), head=str(tmp_path / "head.pth"))
    save_file(head_state(768), str(tmp_path / "vit-l.safetensors"))
    with pytest.raises(UserError, match=rf"reward option head: .* takes 768-dim embeddings but the CLIP at "
                                        rf"{clip_dir} gives 16-dim ones"):
        build("aesthetic_score", clip=str(clip_dir), head=str(tmp_path / "vit-l.safetensors"))


def test_prompts_are_required_for_text_image_rewards(clip_dir, images):
    reward = build("clip_score", clip=str(clip_dir))
    with pytest.raises(UserError, match="pass the conditions as a list of 3 strings, got NoneType"):
        reward(images, None)
