"""An open_clip (or OpenAI CLIP) checkpoint as the transformers ``CLIPModel`` folder the CLIP rewards read.

HPSv2 (Wu et al. 2023, arXiv:2306.09341) publishes its preference-tuned CLIP ViT-H/14 as an open_clip
checkpoint, ``HPS_v2_compressed.pt`` and ``HPS_v2.1_compressed.pt`` (``{"state_dict": ...}``); HPS v1
(Wu et al. 2023, ICCV) as a fine-tuned OpenAI CLIP. Both name their weights as OpenAI's CLIP does
(open_clip kept OpenAI's names for its ``CLIP`` class), so one mapping serves both:

==========================================  ================================================
open_clip / OpenAI                          transformers ``CLIPModel``
==========================================  ================================================
``token_embedding.weight``                  ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                    ``text_model.embeddings.position_embedding.weight``
``transformer.resblocks.i.attn.in_proj_*``  ``text_model.encoder.layers.i.self_attn.{q,k,v}_proj.*``
                                            (split in three along the output rows)
``...attn.out_proj`` / ``ln_1`` / ``ln_2``  ``...self_attn.out_proj`` / ``layer_norm1`` / ``layer_norm2``
``...mlp.c_fc`` / ``mlp.c_proj``            ``...mlp.fc1`` / ``mlp.fc2``
``ln_final``                                ``text_model.final_layer_norm``
``text_projection`` ``[width, dim]``        ``text_projection.weight``, transposed (a Linear)
``visual.conv1.weight``                     ``vision_model.embeddings.patch_embedding.weight``
``visual.class_embedding``                  ``vision_model.embeddings.class_embedding``
``visual.positional_embedding``             ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre`` / ``visual.ln_post``      ``vision_model.pre_layrnorm`` / ``post_layernorm``
``visual.transformer.resblocks.i...``       ``vision_model.encoder.layers.i...`` (as the text's)
``visual.proj`` ``[width, dim]``            ``visual_projection.weight``, transposed
``logit_scale``                             ``logit_scale``
==========================================  ================================================

This is the mapping transformers' ``convert_clip_original_pytorch_to_hf.py`` applies to OpenAI's
checkpoints, written anew. The sizes are read off the weights' shapes; what the shapes cannot tell is
the attention head width (64 in every open_clip text tower and in ViT-B/L image towers; 80, 88 and 104
in ViT-H, ViT-g and ViT-bigG's, :data:`VISION_HEAD_WIDTH`) and the activation (GELU for open_clip's
own models such as HPSv2's ViT-H-14, QuickGELU for OpenAI's, hence HPS v1's: ``quick_gelu``).
``tests/test_open_clip_convert.py`` checks the converted model's embeddings against open_clip's own.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch

from prefdiff.api import UserError
from prefdiff_t2i.clip_rewards import has_tokenizer_files, read_weights

#: open_clip image towers whose heads are not 64 wide: width -> head width (ViT-H/14, ViT-g/14, ViT-bigG/14).
VISION_HEAD_WIDTH = {1280: 80, 1408: 88, 1664: 104}
TEXT_HEAD_WIDTH = 64
_NEEDED = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection",
           "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
           "logit_scale")
_BLOCK = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def convert_open_clip(checkpoint: str | Path, out: str | Path, tokenizer: str | Path, *, quick_gelu: bool = False,
                      vision_head_width: int | None = None, text_head_width: int = TEXT_HEAD_WIDTH) -> Path:
    """Write the checkpoint at ``checkpoint`` to the new folder ``out`` as a transformers ``CLIPModel``
    (safetensors), with the CLIP tokenizer read from ``tokenizer`` and CLIP's image preprocessing; returns
    ``out``. The folder appears whole or not at all; an existing, non-empty ``out`` is an error.

    :param tokenizer: a folder holding the CLIP BPE tokenizer the checkpoint was trained with (OpenAI's, which
        every open_clip ViT and every Stable Diffusion 1.x ``tokenizer/`` folder also use).
    :param quick_gelu: the MLPs use QuickGELU (OpenAI's checkpoints and HPS v1), not GELU (open_clip's own).
    :param vision_head_width: the image tower's attention head width (default :data:`VISION_HEAD_WIDTH`, else 64).
    :param text_head_width: the text tower's attention head width.
    """
    from transformers import CLIPModel
    from transformers.utils import logging as transformers_logging

    for option, width in (("--vision-head-width", vision_head_width), ("--text-head-width", text_head_width)):
        if width is not None and width < 1:
            raise UserError(f"{option} must be a positive number of channels, got {width}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists; give convert-clip a new folder (nothing there is overwritten)")
    state = read_checkpoint(checkpoint)
    tok = read_tokenizer(tokenizer)
    config = clip_config(state, tok, quick_gelu=quick_gelu, vision_head_width=vision_head_width,
                         text_head_width=text_head_width, source=checkpoint)
    model = CLIPModel(config)
    model.load_state_dict(transformers_state(state, checkpoint), strict=True)
    side = config.vision_config.image_size
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # transformers 5 warns that this machine has no torchvision
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    transformers_logging.set_verbosity(verbosity)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    progress = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tok.save_pretrained(staging)
        processor.save_pretrained(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if progress:
            transformers_logging.enable_progress_bar()
    return out


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of an open_clip or OpenAI CLIP checkpoint (a state dict, or one under ``"state_dict"``, with
    DistributedDataParallel's ``module.`` prefixes dropped), read without running pickled code."""
    fix = "pass an open_clip checkpoint (.pt/.bin, e.g. HPS_v2.1_compressed.pt) or a .safetensors of its state dict"
    state = read_weights(path, str(path), fix)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; {fix}")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    absent = [k for k in _NEEDED if k not in state]
    if absent:
        raise UserError(f"{path} is not a CLIP checkpoint in open_clip's layout (no {', '.join(absent[:3])}); {fix}")
    return state


def read_tokenizer(folder: str | Path):
    """The CLIP tokenizer saved in ``folder`` (``vocab.json`` and ``merges.txt``, or ``tokenizer.json``); transformers
    5 would make an empty one of a folder without them."""
    from transformers import CLIPTokenizer

    fix = "pass a folder with vocab.json and merges.txt, e.g. a Stable Diffusion 1.x pipeline's tokenizer/"
    path = Path(folder).expanduser()
    if not has_tokenizer_files(path):
        raise UserError(f"tokenizer folder {folder} holds no CLIP tokenizer (no vocab.json or tokenizer.json); {fix}")
    try:
        return CLIPTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"tokenizer folder {folder} holds no readable CLIP tokenizer ({type(exc).__name__}); "
                        f"{fix}") from None


def clip_config(state: dict[str, torch.Tensor], tokenizer, *, quick_gelu: bool, vision_head_width: int | None,
                text_head_width: int, source: str | Path):
    """The ``CLIPConfig`` the weights' shapes describe."""
    from transformers import CLIPConfig

    vocab, text_width = state["token_embedding.weight"].shape
    if len(tokenizer) > vocab:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but {source} embeds only {vocab}; pass the "
                        f"tokenizer the checkpoint was trained with (OpenAI's CLIP BPE has 49408)")
    patch = state["visual.conv1.weight"].shape[-1]
    positions, vision_width = state["visual.positional_embedding"].shape
    grid = round((positions - 1) ** 0.5)
    vision_head_width = vision_head_width or VISION_HEAD_WIDTH.get(vision_width, 64)
    for tower, width, head in (("text", text_width, text_head_width), ("image", vision_width, vision_head_width)):
        if width % head:
            option = "--text-head-width" if tower == "text" else "--vision-head-width"
            raise UserError(f"{source}: the {tower} tower is {width} wide, not a whole number of {head}-wide "
                            f"heads; give its head width with {option}")
    act = "quick_gelu" if quick_gelu else "gelu"
    text = dict(vocab_size=vocab, hidden_size=text_width, num_attention_heads=text_width // text_head_width,
                num_hidden_layers=_layers(state, "transformer."),
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                max_position_embeddings=state["positional_embedding"].shape[0], hidden_act=act,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=vision_width, num_attention_heads=vision_width // vision_head_width,
                  num_hidden_layers=_layers(state, "visual.transformer."),
                  intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  image_size=grid * patch, patch_size=patch, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["text_projection"].shape[1],
                      logit_scale_init_value=float(state["logit_scale"]))


def transformers_state(state: dict[str, torch.Tensor], source: str | Path = "the checkpoint") -> dict[str, torch.Tensor]:
    """open_clip's names and layouts -> ``CLIPModel``'s (the table in the module's docstring). A weight the
    table does not place (layer scale, an attention pool, a text tower of another kind) is an error, never
    dropped."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return state[key]

    new = {
        "text_model.embeddings.token_embedding.weight": take("token_embedding.weight"),
        "text_model.embeddings.position_embedding.weight": take("positional_embedding"),
        "text_model.final_layer_norm.weight": take("ln_final.weight"),
        "text_model.final_layer_norm.bias": take("ln_final.bias"),
        "text_projection.weight": take("text_projection").T,
        "vision_model.embeddings.patch_embedding.weight": take("visual.conv1.weight"),
        "vision_model.embeddings.class_embedding": take("visual.class_embedding"),
        "vision_model.embeddings.position_embedding.weight": take("visual.positional_embedding"),
        "vision_model.pre_layrnorm.weight": take("visual.ln_pre.weight"),
        "vision_model.pre_layrnorm.bias": take("visual.ln_pre.bias"),
        "vision_model.post_layernorm.weight": take("visual.ln_post.weight"),
        "vision_model.post_layernorm.bias": take("visual.ln_post.bias"),
        "visual_projection.weight": take("visual.proj").T,
        "logit_scale": take("logit_scale"),
    }
    for prefix, target in (("transformer.", "text_model.encoder.layers."),
                           ("visual.transformer.", "vision_model.encoder.layers.")):
        for i in range(_layers(state, prefix)):
            old, block = f"{prefix}resblocks.{i}.", f"{target}{i}."
            for kind in ("weight", "bias"):
                q, k, v = take(f"{old}attn.in_proj_{kind}").chunk(3)
                new.update({f"{block}self_attn.q_proj.{kind}": q, f"{block}self_attn.k_proj.{kind}": k,
                            f"{block}self_attn.v_proj.{kind}": v})
                for a, b in _BLOCK.items():
                    new[f"{block}{b}.{kind}"] = take(f"{old}{a}.{kind}")
    left = sorted(k for k in state if k not in used and not k.endswith("attn_mask"))
    if left:
        raise UserError(f"{source} holds weights a plain CLIP ViT does not have ({', '.join(left[:3])}); "
                        f"convert-clip reads open_clip's CLIP and OpenAI's CLIP checkpoints")
    return {k: v.contiguous().float() for k, v in new.items()}


def _layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many residual blocks ``prefix + "resblocks.i."`` the state holds (``transformer.`` is the text's)."""
    pattern = re.compile(rf"^{re.escape(prefix)}resblocks\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in state if (m := pattern.match(k))), default=-1)
