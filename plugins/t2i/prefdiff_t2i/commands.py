"""`prefdiff t2i make-data` and `prefdiff t2i convert-clip` (the commands hook).

A function's signature is its command line: ``prefdiff t2i make-data DIR --train 6000``.
"""

from __future__ import annotations

from pathlib import Path

from prefdiff_t2i.data import ShapesData


def make_data(directory: Path, train: int = ShapesData.train, val: int = ShapesData.val, test: int = ShapesData.test,
              resolution: int = ShapesData.resolution, seed: int = ShapesData.seed) -> None:
    """Write the shapes world: an imagefolder per split (PNGs and metadata.jsonl) and prompt lists.

    :param directory: the folder to create (must not exist or be empty).
    :param train: training images (captions of training prompts only).
    :param val: validation images (held-out validation combinations).
    :param test: test images (held-out test combinations).
    :param resolution: image side in pixels.
    :param seed: seeds every scene.
    """
    from prefdiff_t2i.data import make_dataset

    spec = ShapesData(train=train, val=val, test=test, resolution=resolution, seed=seed)
    out = make_dataset(Path(directory), spec)
    print(f"wrote {train} + {val} + {test} images to {out} (train/, val/, test/ with metadata.jsonl; prompts/)")


def convert_clip(checkpoint: Path, out: Path, tokenizer: Path, quick_gelu: bool = False,
                 vision_head_width: int | None = None, text_head_width: int = 64) -> None:
    """Write an open_clip or OpenAI CLIP checkpoint (HPSv2's HPS_v2.1_compressed.pt, HPS v1) as the
    transformers CLIPModel folder that hps_score, clip_score and pickscore read (--model.init_args.reward_options
    '{clip: OUT}').

    :param checkpoint: the checkpoint file (.pt, .bin or .safetensors; a state dict, or one under "state_dict").
    :param out: the folder to create (must not exist or be empty).
    :param tokenizer: a folder with the CLIP tokenizer (vocab.json, merges.txt), e.g. a Stable Diffusion 1.x
        pipeline's tokenizer/: open_clip's ViTs and OpenAI's CLIP share it.
    :param quick_gelu: QuickGELU activations: OpenAI's checkpoints and HPS v1 (open_clip's own, HPSv2's, use GELU).
    :param vision_head_width: the image tower's attention head width (default: 80 for ViT-H, 64 for ViT-B/L).
    :param text_head_width: the text tower's attention head width.
    """
    from prefdiff_t2i.open_clip_convert import convert_open_clip

    folder = convert_open_clip(checkpoint, out, tokenizer, quick_gelu=quick_gelu,
                               vision_head_width=vision_head_width, text_head_width=text_head_width)
    print(f"wrote {folder}: a transformers CLIPModel with its tokenizer and image processor; use it as "
          f"--model.init_args.reward_options '{{clip: {folder}}}'")
