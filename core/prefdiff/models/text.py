"""The condition encoder of text-to-image pipelines: frozen tokenizer(s) and text encoder(s).

A prompt is encoded once per process and cached (up to a memory budget,
:class:`~prefdiff.models.memo.BoundedMemo`); the encoders never train
(they are frozen and stay in eval mode). The output is the denoising
network's keyword arguments, the way each diffusers pipeline's
``encode_prompt`` builds them:

- Stable Diffusion 1.x/2.x: ``encoder_hidden_states``, the last hidden state
  of the CLIP text encoder;
- SDXL: the penultimate hidden states of both encoders side by side, and
  ``added_cond_kwargs`` with the second encoder's pooled projection and the
  six size/crop "time ids" (Podell et al. 2023, sec. 2.2): a
  :class:`SizedPrompt`'s own for a training image, else the generated image's
  size with no crop, as the pipeline's defaults;
- SD3 (:class:`SD3PromptEncoder`): both CLIPs' penultimate states side by
  side, zero-padded to T5's width and followed by T5's states along the
  tokens; ``pooled_projections`` is both CLIPs' pooled projections (Esser et
  al. 2024, sec. 4);
- FLUX (:class:`FluxPromptEncoder`): T5's states, and CLIP's pooled output as
  ``pooled_projections``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prefdiff.models.memo import BUDGET_MB, BoundedMemo

log = logging.getLogger("prefdiff.models")


class SizedPrompt(str):
    """A prompt captioning a training image, with SDXL's micro-conditioning of that image (Podell et al. 2023,
    sec. 2.2): the image's ``original_size`` before resizing, the ``crop_top_left`` of the crop taken from it and
    the ``target_size`` it was trained at, all ``(height, width)``/``(top, left)`` in pixels. Anywhere else it is
    the prompt string; only SDXL's encoder reads the sizes (:func:`sized_prompts` makes them from a batch).
    """

    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]

    def __new__(cls, text: str, original_size, crop_top_left, target_size) -> "SizedPrompt":
        prompt = super().__new__(cls, text)
        prompt.original_size = tuple(int(v) for v in original_size)
        prompt.crop_top_left = tuple(int(v) for v in crop_top_left)
        prompt.target_size = tuple(int(v) for v in target_size)
        return prompt

    def __reduce__(self):
        return SizedPrompt, (str(self), self.original_size, self.crop_top_left, self.target_size)

    def time_ids(self) -> tuple[int, ...]:
        """SDXL's ``add_time_ids``: original size, crop's top-left corner, target size."""
        return (*self.original_size, *self.crop_top_left, *self.target_size)

    def like(self, text: str) -> "SizedPrompt":
        """``text`` with this prompt's sizes (the negative prompt of a training image keeps them, as
        StableDiffusionXLPipeline's ``negative_original_size`` defaults to ``original_size``)."""
        return SizedPrompt(text, self.original_size, self.crop_top_left, self.target_size)


def sized_prompts(prompts: Any, batch: dict[str, Any], images: torch.Tensor) -> Any:
    """``prompts`` as :class:`SizedPrompt` s carrying ``batch["original_size"]`` and ``batch["crop_top_left"]``
    (``[B, 2]``, as the text-to-image readers give them) and the size of ``images`` (``[B, 3, H, W]``, the
    batch's pixels), for a loss on those images; ``prompts`` as they are when the batch has no sizes or the
    conditions are not prompts."""
    if "original_size" not in batch or not isinstance(prompts, (list, tuple)):
        return prompts
    target = tuple(images.shape[-2:])
    return [SizedPrompt(p, size.tolist(), crop.tolist(), target)
            for p, size, crop in zip(prompts, batch["original_size"], batch["crop_top_left"])]


class PromptEncoder(nn.Module):
    """``encoder(prompts) -> UNet kwargs`` for a batch of prompts, cached per prompt.

    :param tokenizers: one tokenizer per text encoder.
    :param text_encoders: the CLIP text encoder(s); two means SDXL.
    :param image_size: the pixel side of generated images (SDXL's time ids).
    :param negative_prompt: the unconditional prompt of classifier-free guidance.
    :param zeros_for_empty_prompt: SDXL's convention: the empty negative prompt is zeros.
    :param cache_mb: host memory for the prompts' states (a :class:`~prefdiff.models.memo.BoundedMemo`); once
        it is full, later prompts are encoded each time they are read (0: no cache).
    """

    encoder_counts: tuple[int, ...] = (1, 2)
    """How many text encoders the layout has."""

    def __init__(self, tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], *, image_size: int = 512,
                 negative_prompt: str = "", zeros_for_empty_prompt: bool = True, cache_mb: float = BUDGET_MB) -> None:
        super().__init__()
        if len(tokenizers) != len(text_encoders) or len(text_encoders) not in self.encoder_counts:
            counts = " or ".join(map(str, self.encoder_counts))
            raise ValueError(f"give {counts} tokenizers and as many text encoders")
        self.tokenizers = list(tokenizers)
        self.text_encoders = nn.ModuleList(text_encoders).requires_grad_(False).eval()
        self.image_size = image_size
        self.negative_prompt = negative_prompt
        self.zeros_for_empty_prompt = zeros_for_empty_prompt and self.is_sdxl
        self.cache = BoundedMemo(cache_mb, "prompt-embedding cache (--model.init_args.prompt_cache_mb)")
        self._warned: set[str] = set()

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders, pooled embeddings and time ids."""
        return len(self.text_encoders) == 2

    def train(self, mode: bool = True) -> "PromptEncoder":
        # Frozen: Lightning's module.train() must not switch dropout on in the encoders.
        super().train(False)
        return self

    def null_condition(self, prompts: Sequence[str]) -> list[str]:
        """The unconditional prompts for classifier-free guidance (Ho & Salimans 2022); a
        :class:`SizedPrompt`'s keeps its sizes."""
        return [p.like(self.negative_prompt) if isinstance(p, SizedPrompt) else self.negative_prompt
                for p in prompts]

    def forward(self, prompts: Sequence[str], *, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> dict[str, Any]:
        """The network's keyword arguments for ``prompts``, on ``device`` in ``dtype``."""
        if isinstance(prompts, str):
            raise TypeError("pass a list of prompts, not one string")
        encoded = [self._encode(p) for p in prompts]
        device = device or next(self.text_encoders.parameters()).device
        hidden = torch.stack([h.to(device) for h, _ in encoded]).to(dtype=dtype)
        pooled = None if encoded[0][1] is None else torch.stack([p.to(device) for _, p in encoded]).to(dtype=dtype)
        return self._network_kwargs(hidden, pooled, prompts)

    def _network_kwargs(self, hidden: torch.Tensor, pooled: torch.Tensor | None,
                        prompts: Sequence[str]) -> dict[str, Any]:
        if not self.is_sdxl:
            return {"encoder_hidden_states": hidden}
        size = (self.image_size, self.image_size)
        rows = [p.time_ids() if isinstance(p, SizedPrompt) else (*size, 0, 0, *size) for p in prompts]
        time_ids = torch.tensor(rows, device=hidden.device, dtype=torch.float32).to(hidden.dtype)
        return {"encoder_hidden_states": hidden, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    @torch.no_grad()
    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prompt in self.cache:
            return self.cache[prompt]
        hidden, pooled = self._encode_text(prompt)
        hidden, pooled = hidden.float(), None if pooled is None else pooled.float()
        if self.zeros_for_empty_prompt and prompt == "":
            hidden, pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
        return self.cache.keep(prompt, (hidden, pooled))

    def _token_ids(self, tokenizer: Any, prompt: str, encoder: nn.Module, limit: int | None = None) -> torch.Tensor:
        """``[1, limit]`` ids padded to ``limit`` (default: the tokenizer's), truncated with a warning."""
        limit = limit or tokenizer.model_max_length
        if len(tokenizer(prompt, verbose=False).input_ids) > limit and prompt not in self._warned:
            self._warned.add(prompt)
            log.warning(f"prompt {prompt[:60]!r}... is longer than the tokenizer's limit of {limit} tokens; "
                        f"it is truncated, as the diffusers pipelines do")
        ids = tokenizer(prompt, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids
        return ids.to(next(encoder.parameters()).device)

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden states [L, D], pooled [P] or None)`` of one prompt."""
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(self._token_ids(tokenizer, prompt, encoder), output_hidden_states=self.is_sdxl)
            if self.is_sdxl:
                states.append(out.hidden_states[-2][0])
                pooled = out[0][0]  # the last encoder's projection (text_embeds)
            else:
                states.append(out[0][0])
        return torch.cat(states, dim=-1), pooled


class SD3PromptEncoder(PromptEncoder):
    """``encoder(prompts) -> SD3Transformer2DModel kwargs``: ``encoder_hidden_states`` and ``pooled_projections``.

    :param tokenizers: CLIP-L's, CLIP-G's and (with T5) T5's.
    :param text_encoders: the two ``CLIPTextModelWithProjection`` and, optionally, the ``T5EncoderModel``.
    :param max_sequence_length: T5's token count (StableDiffusion3Pipeline's default: 256).
    :param joint_attention_dim: the transformer's text width; without T5 its states are zeros of this width,
        as StableDiffusion3Pipeline makes them.
    :param negative_prompt: the unconditional prompt of classifier-free guidance.
    """

    encoder_counts = (2, 3)
    is_sdxl = False

    def __init__(self, tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], *, joint_attention_dim: int,
                 max_sequence_length: int = 256, negative_prompt: str = "") -> None:
        super().__init__(tokenizers, text_encoders, negative_prompt=negative_prompt)
        self.max_sequence_length = max_sequence_length
        self.joint_attention_dim = joint_attention_dim

    def _network_kwargs(self, hidden: torch.Tensor, pooled: torch.Tensor | None,
                        prompts: Sequence[str]) -> dict[str, Any]:
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        clip_states, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers[:2], self.text_encoders[:2]):
            out = encoder(self._token_ids(tokenizer, prompt, encoder), output_hidden_states=True)
            clip_states.append(out.hidden_states[-2][0])
            pooled.append(out[0][0])
        if len(self.text_encoders) == 3:
            t5 = self.text_encoders[2]
            t5_states = t5(self._token_ids(self.tokenizers[2], prompt, t5, self.max_sequence_length))[0][0]
        else:
            t5_states = clip_states[0].new_zeros(self.max_sequence_length, self.joint_attention_dim)
        clip = torch.cat(clip_states, dim=-1)
        clip = F.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5_states.to(clip.dtype)], dim=0), torch.cat(pooled, dim=-1)


class FluxPromptEncoder(PromptEncoder):
    """``encoder(prompts) -> FluxTransformer2DModel kwargs``: T5's ``encoder_hidden_states`` and CLIP's pooled
    output as ``pooled_projections`` (the token positions ``txt_ids`` are the network call's).

    :param tokenizers: CLIP's and T5's.
    :param text_encoders: the ``CLIPTextModel`` and the ``T5EncoderModel``.
    :param max_sequence_length: T5's token count (FluxPipeline's default: 512).
    :param negative_prompt: the unconditional prompt of classifier-free guidance ("true CFG").
    """

    encoder_counts = (2,)
    is_sdxl = False

    def __init__(self, tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], *,
                 max_sequence_length: int = 512, negative_prompt: str = "") -> None:
        super().__init__(tokenizers, text_encoders, negative_prompt=negative_prompt)
        self.max_sequence_length = max_sequence_length

    def _network_kwargs(self, hidden: torch.Tensor, pooled: torch.Tensor | None,
                        prompts: Sequence[str]) -> dict[str, Any]:
        return {"encoder_hidden_states": hidden, "pooled_projections": pooled}

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        (clip_tokenizer, t5_tokenizer), (clip, t5) = self.tokenizers, self.text_encoders
        pooled = clip(self._token_ids(clip_tokenizer, prompt, clip), output_hidden_states=False).pooler_output[0]
        states = t5(self._token_ids(t5_tokenizer, prompt, t5, self.max_sequence_length))[0][0]
        return states, pooled
