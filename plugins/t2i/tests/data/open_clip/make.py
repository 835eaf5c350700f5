"""Write the open_clip fixtures of test_open_clip_convert.py: two tiny random CLIPs saved by open_clip itself,
and the embeddings open_clip computes for fixed images and prompts.

Run it in a virtualenv of its own, never prefdiff's (open_clip needs torchvision, which prefdiff leaves out):

    python3 -m venv /tmp/oc && /tmp/oc/bin/pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch transformers
    .venv/bin/python -c "from prefdiff.testing import char_tokenizer; char_tokenizer(77).save_pretrained('/tmp/tok')"
    /tmp/oc/bin/python plugins/t2i/tests/data/open_clip/make.py /tmp/tok

Written with open_clip_torch 3.3.0, torch 2.14.1 (2026-12-03). Each checkpoint is saved the way its
family publishes it: ``hpsv2_tiny.pt`` as HPSv2's ``{"state_dict": ...}`` of an open_clip ``CLIP``
with GELU, ``openai_tiny.pt`` as a bare state dict with QuickGELU (OpenAI's CLIP, HPS v1).
"""

import json
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP
from safetensors.torch import save_file
from transformers import CLIPTokenizer

HERE = Path(__file__).parent
PROMPTS = ["a red square", "two blue circles left of a green triangle"]
VISION = dict(layers=2, width=48, head_width=16, patch_size=8, image_size=32, mlp_ratio=3.0)
TEXT = dict(context_length=77, vocab_size=520, width=32, heads=2, layers=2, mlp_ratio=4.0)


def tiny_clip(seed: int, quick_gelu: bool) -> CLIP:
    """An open_clip CLIP with every weight moved off its initial value (layer norms and biases included), so
    that a weight mapped to the wrong place changes the embeddings."""
    torch.manual_seed(seed)
    model = CLIP(embed_dim=16, vision_cfg=VISION, text_cfg=TEXT, quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.2)
    return model


def main(tokenizer_dir: str) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    ids = [tokenizer(p).input_ids for p in PROMPTS]
    text = torch.zeros(len(PROMPTS), TEXT["context_length"], dtype=torch.long)  # open_clip pads with 0
    for row, token_ids in zip(text, ids):
        row[:len(token_ids)] = torch.tensor(token_ids)
    images = torch.rand(len(PROMPTS), 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = ((images + 1) / 2 - mean) / std
    tensors = {"images": images}
    for name, seed, quick in (("hpsv2_tiny", 0, False), ("openai_tiny", 1, True)):
        model = tiny_clip(seed, quick)
        with torch.no_grad():
            tensors[f"{name}.image"] = model.encode_image(pixels, normalize=True)
            tensors[f"{name}.text"] = model.encode_text(text, normalize=True)
        state = model.state_dict()
        torch.save({"state_dict": state} if name == "hpsv2_tiny" else state, HERE / f"{name}.pt")
    save_file(tensors, str(HERE / "expected.safetensors"))
    (HERE / "expected.json").write_text(json.dumps({"prompts": PROMPTS, "token_ids": ids, "vision": VISION,
                                                     "text": TEXT, "open_clip": open_clip.__version__,
                                                     "torch": torch.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
