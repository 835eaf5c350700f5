"""ImageReward on a tiny random checkpoint in the published layout (BLIP's key names, med_config.json,
a BERT vocabulary): the reward contract, and the score recomputed here by a plain-torch BLIP forward over
the original keys (timm's ViT and BLIP's BERT with cross-attention, written out from the papers' code
structure), so a wrong rename, head count or LayerNorm eps in the loader shows up as a different score."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from prefdiff.api import UserError
from prefdiff.rewards import Reward
from prefdiff.testing import check_reward
from prefdiff_t2i.clip_rewards import preprocess
from prefdiff_t2i.image_reward import MAX_TOKENS, MEAN, STD

PROMPTS = ["a red square", "two blue circles", "a red square"]
WORDS = ["a", "red", "square", "two", "blue", "circles", "green"]
VIT = dict(width=128, depth=2, patch=8, image=16)  # two 64-dim heads, as BLIP's ViTs have
MED = dict(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64, max_position_embeddings=40, layer_norm_eps=1e-12, hidden_act="gelu",
           pad_token_id=0, add_cross_attention=True, encoder_width=128, type_vocab_size=2)


def original_state(seed: int = 0) -> dict:
    """Random weights keyed as ImageReward.pt: blip.visual_encoder.* (timm), blip.text_encoder.* (BERT), mlp.*."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(shape[-1]))

    d, n = VIT["width"], (VIT["image"] // VIT["patch"]) ** 2 + 1
    v = "blip.visual_encoder."
    # Embeddings of std about 1e-3: a token's variance is then near the LayerNorm's eps, so 1e-5 for 1e-6 shows.
    state = {v + "cls_token": rand(1, 1, d, scale=1e-3), v + "pos_embed": rand(1, n, d, scale=1e-3),
             v + "patch_embed.proj.weight": rand(d, 3, VIT["patch"], VIT["patch"], scale=1e-4),
             v + "patch_embed.proj.bias": rand(d, scale=1e-3),
             v + "norm.weight": 1 + rand(d, scale=0.1), v + "norm.bias": rand(d, scale=0.1)}
    for i in range(VIT["depth"]):
        b = f"{v}blocks.{i}."
        state |= {b + "norm1.weight": 1 + rand(d, scale=0.1), b + "norm1.bias": rand(d, scale=0.1),
                  b + "attn.qkv.weight": rand(3 * d, d), b + "attn.qkv.bias": rand(3 * d, scale=0.1),
                  b + "attn.proj.weight": rand(d, d), b + "attn.proj.bias": rand(d, scale=0.1),
                  b + "norm2.weight": 1 + rand(d, scale=0.1), b + "norm2.bias": rand(d, scale=0.1),
                  b + "mlp.fc1.weight": rand(4 * d, d), b + "mlp.fc1.bias": rand(4 * d, scale=0.1),
                  b + "mlp.fc2.weight": rand(d, 4 * d), b + "mlp.fc2.bias": rand(d, scale=0.1)}
    h, t = MED["hidden_size"], "blip.text_encoder."

    def dense(name, fan_out, fan_in):
        return {f"{name}.weight": rand(fan_out, fan_in), f"{name}.bias": rand(fan_out, scale=0.1)}

    def norm(name):
        return {f"{name}.weight": 1 + rand(h, scale=0.1), f"{name}.bias": rand(h, scale=0.1)}

    state |= {t + "embeddings.word_embeddings.weight": rand(MED["vocab_size"], h, scale=1.0),
              t + "embeddings.position_embeddings.weight": rand(MED["max_position_embeddings"], h, scale=1.0),
              t + "embeddings.position_ids": torch.arange(MED["max_position_embeddings"]).unsqueeze(0),
              **norm(t + "embeddings.LayerNorm")}
    for i in range(MED["num_hidden_layers"]):
        layer = f"{t}encoder.layer.{i}."
        for attention, width in (("attention", h), ("crossattention", d)):
            state |= {**dense(f"{layer}{attention}.self.query", h, h), **dense(f"{layer}{attention}.self.key", h, width),
                      **dense(f"{layer}{attention}.self.value", h, width),
                      **dense(f"{layer}{attention}.output.dense", h, h), **norm(f"{layer}{attention}.output.LayerNorm")}
        state |= {**dense(layer + "intermediate.dense", MED["intermediate_size"], h),
                  **dense(layer + "output.dense", h, MED["intermediate_size"]), **norm(layer + "output.LayerNorm")}
    for index, (fan_in, fan_out) in {0: (h, 1024), 2: (1024, 128), 4: (128, 64), 6: (64, 16), 7: (16, 1)}.items():
        state |= dense(f"mlp.layers.{index}", fan_out, fan_in)
    state |= dense("blip.vision_proj", 16, d) | dense("blip.text_proj", 16, h)  # BLIP's, unused by ImageReward
    return state


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """ImageReward.pt beside its med_config.json, and a bert-base-uncased-style tokenizer folder."""
    folder = tmp_path_factory.mktemp("image_reward")
    torch.save(original_state(), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(MED))
    tokenizer = folder / "bert-base-uncased"
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return folder / "ImageReward.pt", tokenizer


@pytest.fixture
def images():
    """Three 20x24 images in [-1, 1]: preprocessing resizes and crops them to the ViT's 16."""
    return torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1


def build(**options):
    from prefdiff.plugins import get_manager

    return get_manager().reward("image_reward", **options)


def blip_reference(state: dict, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ImageReward's score written out over the original keys: BLIP's ViT (pre-norm blocks, eps 1e-6, a
    final norm), BLIP's BERT (post-norm; self-attention masked by the padding, cross-attention to every image
    token), the [CLS] output through the MLP (no nonlinearities), standardised."""
    def linear(x, name):
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    def attend(q, k, v, heads, additive=None):
        split = lambda x: x.reshape(*x.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if additive is not None:
            scores = scores + additive
        out = scores.softmax(-1) @ v
        return out.transpose(1, 2).reshape(*out.shape[:1], out.shape[2], -1)

    v, d = "blip.visual_encoder.", VIT["width"]
    ln = lambda x, name, eps: F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps)  # noqa: E731
    x = F.conv2d(pixels, state[v + "patch_embed.proj.weight"], state[v + "patch_embed.proj.bias"], stride=VIT["patch"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state[v + "cls_token"].expand(len(x), -1, -1), x], 1) + state[v + "pos_embed"]
    for i in range(VIT["depth"]):
        b = f"{v}blocks.{i}."
        q, k, w = linear(ln(x, b + "norm1", 1e-6), b + "attn.qkv").chunk(3, dim=-1)
        x = x + linear(attend(q, k, w, d // 64), b + "attn.proj")
        x = x + linear(F.gelu(linear(ln(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    image = ln(x, v + "norm", 1e-6)

    t, eps, heads = "blip.text_encoder.", MED["layer_norm_eps"], MED["num_attention_heads"]
    h = state[t + "embeddings.word_embeddings.weight"][ids] + state[t + "embeddings.position_embeddings.weight"][
        :ids.shape[1]]
    h = ln(h, t + "embeddings.LayerNorm", eps)
    padding = (1.0 - mask[:, None, None, :].float()) * -10000.0  # BERT's extended attention mask
    for i in range(MED["num_hidden_layers"]):
        layer = f"{t}encoder.layer.{i}."
        a = layer + "attention."
        out = attend(linear(h, a + "self.query"), linear(h, a + "self.key"), linear(h, a + "self.value"), heads, padding)
        h = ln(linear(out, a + "output.dense") + h, a + "output.LayerNorm", eps)
        c = layer + "crossattention."
        out = attend(linear(h, c + "self.query"), linear(image, c + "self.key"), linear(image, c + "self.value"), heads)
        h = ln(linear(out, c + "output.dense") + h, c + "output.LayerNorm", eps)
        ffn = linear(F.gelu(linear(h, layer + "intermediate.dense")), layer + "output.dense")
        h = ln(ffn + h, layer + "output.LayerNorm", eps)
    r = h[:, 0]
    for index in (0, 2, 4, 6, 7):
        r = linear(r, f"mlp.layers.{index}")
    return (r.squeeze(-1) - MEAN) / STD


def test_the_score_is_blips_forward_over_the_published_keys(published, images):
    from transformers import BertTokenizer

    weights, tokenizer = published
    scores, info = build(weights=str(weights), tokenizer=str(tokenizer))(images, PROMPTS)
    tokens = BertTokenizer.from_pretrained(str(tokenizer))(PROMPTS, padding="max_length", truncation=True,
                                                           max_length=MAX_TOKENS, return_tensors="pt")
    assert tokens["input_ids"].shape == (3, 35) and tokens["attention_mask"].sum() < 3 * 35  # padded, as the authors
    expected = blip_reference(original_state(), preprocess(images, VIT["image"]), tokens["input_ids"],
                              tokens["attention_mask"])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert scores.std() > 0.1 and info["image_reward"] == pytest.approx(scores.mean().item(), rel=1e-5)
    # The prompt matters: the text encoder reads it, not only the image.
    other, _ = build(weights=str(weights), tokenizer=str(tokenizer))(images, ["green circles"] * 3)
    assert not torch.allclose(other, scores, atol=1e-3)


def test_reward_meets_the_contract(published, images):
    weights, tokenizer = published
    reward = build(weights=str(weights), tokenizer=str(tokenizer))
    assert isinstance(reward, Reward) and reward.differentiable
    single = check_reward(reward, PROMPTS, images)
    half = check_reward(reward, PROMPTS, images.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), single, atol=0.05, rtol=0.05)


def test_bad_paths_are_one_error_naming_the_option(published, tmp_path):
    weights, tokenizer = published
    with pytest.raises(UserError, match=r"^reward option weights: .*nowhere.pt does not exist; pass ImageReward.pt"):
        build(weights=str(tmp_path / "nowhere.pt"), tokenizer=str(tokenizer))
    with pytest.raises(UserError, match=r"^reward option tokenizer: .* holds no vocab.txt or tokenizer.json; "
                                        r"pass a local folder of bert-base-uncased's tokenizer"):
        build(weights=str(weights), tokenizer=str(tmp_path))
    alone = tmp_path / "ImageReward.pt"  # without med_config.json beside it
    alone.write_bytes(weights.read_bytes())
    with pytest.raises(UserError, match=r"med_config.json \(the default of reward option med_config\) does not "
                                        r"exist; pass the med_config.json published with ImageReward.pt"):
        build(weights=str(alone), tokenizer=str(tokenizer))
    build(weights=str(alone), tokenizer=str(tokenizer), med_config=str(weights.parent / "med_config.json"))
    clip_head = tmp_path / "head.pt"
    torch.save({"layers.0.weight": torch.zeros(4, 4)}, clip_head)
    with pytest.raises(UserError, match=r"is not ImageReward's state dict \(no blip.visual_encoder.cls_token\)"):
        build(weights=str(clip_head), tokenizer=str(tokenizer))
    partial = {k: v for k, v in original_state().items() if "mlp.fc1" not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=r"partial.pt: its blip.visual_encoder lacks encoder.layers.0.mlp.fc1.weight"):
        build(weights=str(tmp_path / "partial.pt"), tokenizer=str(tokenizer),
              med_config=str(weights.parent / "med_config.json"))
    (tmp_path / "med_config.json").write_text(json.dumps({**MED, "num_hidden_layers": 3}))
    with pytest.raises(UserError, match=r"its blip.text_encoder does not fit med_config.json"):
        build(weights=str(alone), tokenizer=str(tokenizer))


def test_prompts_are_required(published, images):
    weights, tokenizer = published
    reward = build(weights=str(weights), tokenizer=str(tokenizer))
    with pytest.raises(UserError, match="pass the conditions as a list of 3 strings, got NoneType"):
        reward(images, None)
    with pytest.raises(UserError, match="pass the conditions as a list of 3 strings, got list of 2"):
        reward(images, PROMPTS[:2])
