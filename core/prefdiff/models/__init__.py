"""The model seam: every family prefdiff aligns looks the same to trainers, losses and samplers.

A model is a :class:`Denoiser`, and whatever built it, it offers:

- **the condition encoder**: ``denoiser.conditioner`` maps a batch of raw
  conditions to what the network consumes. A field registers one (a mask
  one-hot, a BEV layout encoder); a text-to-image pipeline brings a frozen
  :class:`~prefdiff.models.text.PromptEncoder` (tokenizer and text
  encoder(s), embeddings cached per prompt). Raw conditions are tensors,
  dicts of tensors, or lists of prompts.
- **the codec**: ``denoiser.encode(x)`` and ``denoiser.decode(z)`` between
  samples (images, trajectories) and the model's own space: the identity in
  pixel space, a frozen VAE for latent pipelines
  (:mod:`prefdiff.models.codec`). Rewards always receive decoded samples;
  objectives work in the model's space.
- **the denoiser and its prediction type**: ``denoiser(x_t, t, cond)``
  predicts ``denoiser.prediction_type``: ``epsilon``, ``v_prediction`` or
  ``flow`` (velocity).
- **the scheduler family**, kept apart from the model (diffusers'
  philosophy): a DDIM-style scheduler, or flow matching; the sampler and the
  trainers read the family off the scheduler.

Where models come from:

- :mod:`~prefdiff.models.presets`: the fields' networks, built from a
  :class:`ModelPreset` (diffusers and MONAI UNets, 2-D and 1-D);
- :mod:`~prefdiff.models.pipelines`: a user's local diffusers pipeline folder
  (Stable Diffusion 1.x/2.x, SDXL), loaded with ``from_pretrained``;
- :mod:`~prefdiff.models.flow_pipelines`: SD3 and FLUX pipeline folders
  (flow-matching transformers), through the same ``load_model``;
- :mod:`~prefdiff.models.io`: prefdiff's own model folders (``save_model`` /
  ``load_model``; ``load_model`` also opens a pipeline folder).

LoRA adapters (:mod:`~prefdiff.models.lora`) go on the denoiser's network;
the reference model of the KL and DPO objectives is the same network with
its adapter disabled (:func:`reference_mode`), never a second copy.
"""

from prefdiff.models.denoiser import Denoiser
from prefdiff.models.io import (MODEL_FILE, count_parameters, is_model_folder, load_model, save_model,
                               saved_conditioner)
from prefdiff.models.lora import (FROZEN_DTYPES, LORA_CONFIG, LORA_INITS, LORA_WEIGHTS, LoraOptions, add_lora,
                                  check_lora_init, default_lora_init, default_lora_targets, export_lora, has_lora,
                                  hold_frozen_in, load_lora, lora_state_dict, reference_mode, save_lora,
                                  save_lora_for_pipeline)
from prefdiff.models.pipelines import load_pipeline_unet
from prefdiff.models.presets import CONDITIONINGS, KINDS, ModelPreset, build_denoiser

__all__ = [
    "CONDITIONINGS", "Denoiser", "FROZEN_DTYPES", "KINDS", "LORA_CONFIG", "LORA_INITS", "LORA_WEIGHTS", "LoraOptions",
    "MODEL_FILE", "ModelPreset", "add_lora", "build_denoiser", "check_lora_init", "count_parameters",
    "default_lora_init", "default_lora_targets",
    "export_lora", "has_lora",
    "hold_frozen_in", "is_model_folder", "load_lora", "load_model", "load_pipeline_unet", "lora_state_dict", "reference_mode",
    "save_lora", "save_lora_for_pipeline", "save_model", "saved_conditioner",
]
