"""ImageReward (Xu et al. 2023, "ImageReward: Learning and Evaluating Human Preferences for
Text-to-Image Generation"), the reward ReFL was introduced with, from its published weights.

The model is BLIP (Li et al. 2022): a ViT encodes the image, and BLIP's text encoder (BERT with a
cross-attention to the image tokens in every layer) encodes the prompt while looking at it. The
prompt's first ([CLS]) output goes through an MLP to one number, standardised by the mean and std
its authors measured on their data:

    r(x, y) = (MLP(BERT(y | ViT(x))[CLS]) - 0.16717362830052426) / 1.0333394966054072

The published ``ImageReward.pt`` is a state dict in BLIP's own layout (``blip.visual_encoder.*``,
``blip.text_encoder.*``, ``mlp.layers.*``); :func:`blip_to_transformers` renames it for
transformers' ``BlipVisionModel`` and ``BlipTextModel``, which compute the same layers. The
prompt is tokenised as the authors' ``score`` does: bert-base-uncased, padded to 35 tokens.
Images are preprocessed as CLIP's (:func:`prefdiff_t2i.clip_rewards.preprocess`: bicubic resize
of the shorter side, centre crop, OpenAI's CLIP statistics), the transform ImageReward uses, in torch
so that gradients reach the samples.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from prefdiff.api import UserError
from prefdiff_t2i.clip_rewards import AestheticHead, preprocess, read_weights

#: The standardisation of ImageReward's published scores (``ImageReward.mean`` and ``.std``).
MEAN, STD = 0.16717362830052426, 1.0333394966054072
#: The authors' prompt length: ``tokenizer(prompt, padding="max_length", truncation=True, max_length=35)``.
MAX_TOKENS = 35
#: BLIP's ViTs have 64-dim heads (ViT-B 768 / 12, ViT-L 1024 / 16), and LayerNorm eps 1e-6.
VIT_HEAD_DIM, VIT_EPS = 64, 1e-6

_WEIGHTS_FIX = "pass ImageReward.pt (THUDM/ImageReward on the Hugging Face Hub) or a .safetensors file of it"
_TOKENIZER_FIX = ("pass a local folder of bert-base-uncased's tokenizer (vocab.txt or tokenizer.json, as "
                  "BertTokenizer.save_pretrained writes it)")


def image_reward(weights: str, tokenizer: str, med_config: str | None = None):
    """ImageReward's score of each image for its prompt (the conditions), differentiable.

    :param weights: ``ImageReward.pt`` as published (or a ``.safetensors`` file of its state dict).
    :param tokenizer: a local folder of bert-base-uncased's tokenizer (ImageReward's own code
        downloads it by that name; here it is read from disk).
    :param med_config: BLIP's text-encoder config, ``med_config.json``, published beside the weights;
        by default the one in the weights' folder.
    """
    model = ImageRewardModel.load(weights, tokenizer, med_config)

    def reward(samples: torch.Tensor, conditions: Sequence[str]):
        scores = model.score(samples, conditions)
        return scores, {"image_reward": scores.detach().float().mean().item()}

    return reward


class ImageRewardModel(torch.nn.Module):
    """BLIP's ViT and text encoder and ImageReward's MLP, frozen in eval mode, in float32.

    It follows the samples' device on every call and casts its scores to their dtype.
    """

    def __init__(self, vision, text, head: AestheticHead, tokenizer) -> None:
        super().__init__()
        self.vision, self.text, self.head, self.tokenizer = vision, text, head, tokenizer
        self.size = vision.config.image_size
        self.eval().requires_grad_(False)

    @classmethod
    def load(cls, weights: str, tokenizer: str, med_config: str | None = None) -> ImageRewardModel:
        from transformers import BlipTextModel, BlipVisionModel

        state = read_weights(weights, f"reward option weights: {weights}", _WEIGHTS_FIX)
        config_file = Path(med_config).expanduser() if med_config else Path(weights).expanduser().parent / "med_config.json"
        vision_state, text_state, head_state = blip_to_transformers(state, weights)
        try:
            vision_config, text_config = _configs(vision_state, _read_med_config(config_file, med_config))
        except KeyError as exc:
            raise UserError(f"reward option weights: {weights}: its blip.visual_encoder lacks {exc.args[0]} (as "
                            f"transformers names it); {_WEIGHTS_FIX}") from None
        vision, text = BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False)
        head = AestheticHead(text_config.hidden_size)
        for module, part, name in ((vision, vision_state, "blip.visual_encoder"),
                                   (text, text_state, "blip.text_encoder"), (head, head_state, "mlp")):
            try:
                module.load_state_dict(part)
            except RuntimeError as exc:
                raise UserError(f"reward option weights: {weights}: its {name} does not fit "
                                f"{config_file.name}: {str(exc).splitlines()[-1].strip()}; {_WEIGHTS_FIX}, with "
                                f"the med_config.json published with it") from None
        return cls(vision, text, head, _bert_tokenizer(tokenizer))

    def score(self, samples: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """``[B]`` standardised rewards of ``samples`` (``[B, 3, H, W]`` in [-1, 1]) for ``prompts``."""
        if (not isinstance(prompts, (list, tuple)) or len(prompts) != len(samples)
                or not all(isinstance(p, str) for p in prompts)):
            got = (f"{type(prompts).__name__} of {len(prompts)}" if isinstance(prompts, (list, tuple))
                   else type(prompts).__name__)
            raise UserError(f"image_reward scores images against their prompts: pass the conditions as a "
                            f"list of {len(samples)} strings, got {got}")
        if next(self.parameters()).device != samples.device:
            self.to(samples.device)
        pixels = preprocess(samples.float(), self.size)
        image = self.vision(pixel_values=pixels).last_hidden_state
        # Tokenised per call (cheap), as the authors' score does: no cache to grow with a million prompts.
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                                return_tensors="pt")
        ids, mask = tokens["input_ids"].to(samples.device), tokens["attention_mask"].to(samples.device)
        text = self.text(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                         encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long, device=image.device))
        rewards = self.head(text.last_hidden_state[:, 0]).squeeze(-1)
        return ((rewards - MEAN) / STD).to(samples.dtype)


# ------------------------------------------------------------ BLIP's layout ----

# BLIP's ViT (timm's names) -> transformers' BlipVisionModel. Its BERT keeps BERT's names in both.
_VISION_NAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def blip_to_transformers(state: Any, weights: str = "the weights") -> tuple[dict, dict, dict]:
    """ImageReward's state dict as (BlipVisionModel's, BlipTextModel's, the MLP's) state dicts.

    Keys outside the three parts (BLIP's ``vision_proj`` and ``text_proj``, which ImageReward does
    not use) are left out, and so is the text encoder's ``position_ids`` buffer.
    """
    if not isinstance(state, dict) or not isinstance(state.get("blip.visual_encoder.cls_token"), torch.Tensor):
        raise UserError(f"reward option weights: {weights} is not ImageReward's state dict (no "
                        f"blip.visual_encoder.cls_token); {_WEIGHTS_FIX}")
    vision, text, head = {}, {}, {}
    for key, tensor in state.items():
        if key.startswith("blip.visual_encoder."):
            name = key[len("blip.visual_encoder."):]
            for pattern, replacement in _VISION_NAMES:
                if re.match(pattern, name):
                    vision[re.sub(pattern, replacement, name)] = tensor
                    break
            else:
                vision[name] = tensor  # reported by load_state_dict as unexpected
        elif key.startswith("blip.text_encoder.") and not key.endswith("position_ids"):
            text[key[len("blip.text_encoder."):]] = tensor
        elif key.startswith("mlp."):
            head[key[len("mlp."):]] = tensor
    return vision, text, head


def _read_med_config(path: Path, option: str | None) -> dict:
    culprit = f"reward option med_config: {path}" if option else f"{path} (the default of reward option med_config)"
    fix = "pass the med_config.json published with ImageReward.pt (THUDM/ImageReward) as option med_config"
    if not path.is_file():
        raise UserError(f"{culprit} does not exist; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{culprit} is not JSON ({exc}); {fix}") from None


def _configs(vision_state: dict, med: dict):
    """BlipVisionConfig from the ViT's weights (BLIP's ViTs: 64-dim heads, MLP ratio from fc1) and
    BlipTextConfig from BLIP's med_config.json, its cross-attention reading the ViT's width."""
    from transformers import BlipTextConfig, BlipVisionConfig

    patch = vision_state["embeddings.patch_embedding.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    grid = round((vision_state["embeddings.position_embedding"].shape[1] - 1) ** 0.5)
    depth = len({k.split(".")[2] for k in vision_state if k.startswith("encoder.layers.")})
    vision = BlipVisionConfig(hidden_size=width, intermediate_size=vision_state["encoder.layers.0.mlp.fc1.weight"].shape[0],
                              num_hidden_layers=depth, num_attention_heads=max(1, width // VIT_HEAD_DIM),
                              image_size=grid * patch_size, patch_size=patch_size, layer_norm_eps=VIT_EPS,
                              hidden_act="gelu")
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id")
    missing = [key for key in keys[:6] if key not in med]
    if missing:
        raise UserError(f"reward option med_config: it lacks {', '.join(missing)}; pass the med_config.json "
                        f"published with ImageReward.pt")
    text = BlipTextConfig(**{key: med[key] for key in keys if key in med}, encoder_hidden_size=width,
                          is_decoder=True,  # transformers' switch for the cross-attention layers
                          bos_token_id=None, sep_token_id=None)
    return vision, text


def _bert_tokenizer(path: str):
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"reward option tokenizer: {path} is not a folder; {_TOKENIZER_FIX}")
    if not ((folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()):
        raise UserError(f"reward option tokenizer: {path} holds no vocab.txt or tokenizer.json; {_TOKENIZER_FIX}")
    from transformers import BertTokenizer

    try:
        return BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"reward option tokenizer: {path} could not be loaded ({type(exc).__name__}: {exc}); "
                        f"{_TOKENIZER_FIX}") from None
