"""Which weight files of a pipeline component to read: the plain ones or a variant.

``save_pretrained(variant="fp16")`` and the Hub's snapshots name a variant's
files by inserting its name (diffusers' and transformers' convention):

- ``diffusion_pytorch_model.fp16.safetensors`` (``model.fp16.safetensors`` for transformers);
- sharded: ``diffusion_pytorch_model.fp16-00001-of-00002.safetensors`` with the index
  ``diffusion_pytorch_model.safetensors.index.fp16.json``.

A folder downloaded with ``--include "*fp16*"`` holds only the variant, and
``from_pretrained`` without ``variant="fp16"`` fails on it. :func:`weights_variant`
picks, per component, the plain weights when they are there, else the variant
asked for, else the component's only variant, and says plainly when none fits.
Only safetensors are read: a ``.bin`` (a pickle) can run code when loaded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from prefdiff.errors import UserError

log = logging.getLogger("prefdiff.models")

#: the weight files' stems: diffusers' models and transformers' text encoders.
STEMS = ("diffusion_pytorch_model", "model")
_STEM = "|".join(STEMS)
_PLAIN = re.compile(rf"^(?:{_STEM})(?:-\d+-of-\d+)?\.safetensors$|^(?:{_STEM})\.safetensors\.index\.json$")
_VARIANT = re.compile(rf"^(?:{_STEM})\.([\w-]+?)(?:-\d+-of-\d+)?\.safetensors$"
                      rf"|^(?:{_STEM})\.safetensors\.index\.([\w-]+)\.json$")
#: how to choose a variant, for the error messages.
VARIANT_FLAGS = "--model.init_args.variant for `prefdiff fit`, --variant for `prefdiff sample` and `prefdiff edit`"


def weight_files(part: Path) -> tuple[bool, set[str]]:
    """``(plain, variants)``: whether ``part`` holds plain safetensors weights, and the variants it holds."""
    names = [p.name for p in part.iterdir() if p.is_file()] if part.is_dir() else []
    variants = set()
    for name in names:
        match = _VARIANT.match(name)
        if match:
            variants.add(match.group(1) or match.group(2))
    return any(_PLAIN.match(name) for name in names), variants


def weights_variant(part: str | Path, variant: str | None = None) -> str | None:
    """The ``variant`` to pass ``from_pretrained`` for the component folder ``part`` (None: its plain weights).

    :param variant: the variant asked for; a component without it reads its plain weights, as a diffusers
        pipeline does. None: the plain weights, else the component's only variant.
    """
    part = Path(part)
    plain, variants = weight_files(part)
    if variant is not None and variant in variants:
        return variant
    if plain:
        if variant is not None:
            log.info("%s has no '%s' weights; reading its plain weights", part, variant)
        return None
    if variant is not None:
        held = f"the variant(s) {', '.join(sorted(variants))}" if variants else "no safetensors weights"
        raise UserError(f"{part} has no '{variant}' weights (it holds {held}); pass one of its variants, or "
                        f"none for the plain weights ({VARIANT_FLAGS})")
    if len(variants) == 1:
        return variants.pop()
    if variants:
        raise UserError(f"{part} holds the weight variants {', '.join(sorted(variants))} and no plain weights; "
                        f"choose one ({VARIANT_FLAGS})")
    if any(part.glob("*.bin")):
        raise UserError(f"{part} holds only .bin (pickle) weights; prefdiff reads safetensors, which cannot run "
                        f"code when loaded. Convert the pipeline once: DiffusionPipeline.from_pretrained(DIR)"
                        f".save_pretrained(NEW_DIR, safe_serialization=True)")
    raise UserError(f"{part} holds no weights (no *.safetensors); copy the whole pipeline folder, weights included")
