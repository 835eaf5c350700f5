"""The condition encoder of text-to-image pipelines: frozen tokenizer(s) and text encoder(s).

A prompt is encoded once per process and cached; the encoders never train
(they are frozen and stay in eval mode). The output is the UNet's keyword
arguments, the way the diffusers pipelines build them:

- Stable Diffusion 1.x/2.x: ``encoder_hidden_states``, the last hidden state
  of the CLIP text encoder;
- SDXL: the penultimate hidden states of both encoders side by side, and
  ``added_cond_kwargs`` with the second encoder's pooled projection and the
  six size/crop "time ids" (Podell et al. 2023, sec. 2.2).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger("prefdiff.models")


class PromptEncoder(nn.Module):
    """``encoder(prompts) -> UNet kwargs`` for a batch of prompts, cached per prompt.

    :param tokenizers: one tokenizer per text encoder.
    :param text_encoders: the CLIP text encoder(s); two means SDXL.
    :param image_size: the pixel side of generated images (SDXL's time ids).
    :param negative_prompt: the unconditional prompt of classifier-free guidance.
    :param zeros_for_empty_prompt: SDXL's convention: the empty negative prompt is zeros.
    """

    def __init__(self, tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], *, image_size: int = 512,
                 negative_prompt: str = "", zeros_for_empty_prompt: bool = True) -> None:
        super().__init__()
        if len(tokenizers) != len(text_encoders) or len(text_encoders) not in (1, 2):
            raise ValueError("give one or two tokenizers and as many text encoders")
        self.tokenizers = list(tokenizers)
        self.text_encoders = nn.ModuleList(text_encoders).requires_grad_(False).eval()
        self.image_size = image_size
        self.negative_prompt = negative_prompt
        self.zeros_for_empty_prompt = zeros_for_empty_prompt and self.is_sdxl
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
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
        """The unconditional prompts for classifier-free guidance (Ho & Salimans 2022)."""
        return [self.negative_prompt] * len(prompts)

    def forward(self, prompts: Sequence[str], *, device: torch.device | None = None,
                dtype: torch.dtype | None = None) -> dict[str, Any]:
        """UNet keyword arguments for ``prompts``, on ``device`` in ``dtype``."""
        if isinstance(prompts, str):
            raise TypeError("pass a list of prompts, not one string")
        encoded = [self._encode(p) for p in prompts]
        device = device or next(self.text_encoders.parameters()).device
        hidden = torch.stack([h for h, _ in encoded]).to(device=device, dtype=dtype)
        if not self.is_sdxl:
            return {"encoder_hidden_states": hidden}
        pooled = torch.stack([p for _, p in encoded]).to(device=device, dtype=dtype)
        size = float(self.image_size)
        time_ids = torch.tensor([size, size, 0.0, 0.0, size, size], device=device, dtype=dtype or hidden.dtype)
        return {"encoder_hidden_states": hidden,
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.expand(len(prompts), -1)}}

    @torch.no_grad()
    def _encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prompt in self._cache:
            return self._cache[prompt]
        if self.zeros_for_empty_prompt and prompt == "":
            hidden, pooled = self._encode_text("")
            encoded = (torch.zeros_like(hidden), torch.zeros_like(pooled))
        else:
            encoded = self._encode_text(prompt)
        self._cache[prompt] = encoded
        return encoded

    def _encode_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            limit = tokenizer.model_max_length
            if len(tokenizer(prompt).input_ids) > limit and prompt not in self._warned:
                self._warned.add(prompt)
                log.warning(f"prompt {prompt[:60]!r}... is longer than the tokenizer's limit of {limit} tokens; "
                            f"it is truncated, as the diffusers pipelines do")
            ids = tokenizer(prompt, padding="max_length", max_length=limit, truncation=True,
                            return_tensors="pt").input_ids.to(next(encoder.parameters()).device)
            out = encoder(ids, output_hidden_states=self.is_sdxl)
            if self.is_sdxl:
                states.append(out.hidden_states[-2][0])
                pooled = out[0][0]  # the last encoder's projection (text_embeds)
            else:
                states.append(out[0][0])
        return torch.cat(states, dim=-1).float().cpu(), None if pooled is None else pooled.float().cpu()
