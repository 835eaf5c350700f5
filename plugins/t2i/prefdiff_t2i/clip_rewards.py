"""The community's CLIP-based reward models, each loading its weights from a local path.

- ``aesthetic_score``: LAION's aesthetic predictor (Schuhmann, "improved-aesthetic-predictor",
  head ``sac+logos+ava1-l14-linearMSE``): an MLP over the L2-normalised CLIP ViT-L/14 image
  embedding, trained to regress the mean 1-10 rating of SAC, LAION-Logos and AVA images.
- ``clip_score``: CLIPScore (Hessel et al. 2021): the cosine of the prompt's and the image's CLIP
  embeddings, times ``scale``.
- ``pickscore``: PickScore (Kirstain et al. 2023): CLIP-H/14 fine-tuned on Pick-a-Pic,
  ``exp(logit_scale) * cos(text, image)``.
- ``hps_score``: Human Preference Score (Wu et al. 2023, HPS and HPSv2): a preference-tuned CLIP,
  ``100 * cos(image, text)`` as the papers' tables report it.

Every reward takes images ``[B, 3, H, W]`` in [-1, 1] and preprocesses them in torch (resize,
centre crop, normalise), so gradients reach the samples for reward backpropagation. The models
are frozen, in eval mode, and follow the samples' device and dtype.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from prefdiff.api import UserError

#: OpenAI CLIP's pixel statistics, used when a folder has no preprocessor_config.json.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Prompt embeddings kept per reward, the most recently used (65,536 of ViT-H's 1024 floats: 256 MB).
CACHED_PROMPTS = 65536

_CLIP_FIX = "pass the local folder of a transformers CLIPModel (save_pretrained)"


# ------------------------------------------------------------ the rewards ----


def aesthetic_score(clip: str, head: str):
    """LAION's aesthetic predictor: ``head(e / |e|)`` with ``e`` the CLIP image embedding.

    The head is the MLP of LAION's improved-aesthetic-predictor, Linear(d, 1024) - Dropout -
    Linear(1024, 128) - Dropout - Linear(128, 64) - Dropout - Linear(64, 16) - Linear(16, 1) with no
    nonlinearity, ``d`` the CLIP's projection_dim (768 for ViT-L/14, which LAION's head expects).
    Scores are on the 1-10 rating scale for the published head. Conditions are ignored.

    :param clip: local folder of the transformers CLIPModel the head was trained on
        (``openai/clip-vit-large-patch14`` for LAION's head).
    :param head: the head's weights: LAION's ``sac+logos+ava1-l14-linearMSE.pth`` (a state dict
        with keys ``layers.0.weight`` ...) or a ``.safetensors`` file of the same state dict.
    """
    model = _ClipScorer(clip)
    mlp = _load_head(head, model.width, clip)
    model.add(mlp)

    def reward(samples: torch.Tensor, conditions: Any = None):
        model.follow(samples)
        scores = mlp(model.image_embeddings(samples)).squeeze(-1).to(samples.dtype)
        return scores, {"aesthetic_score": scores.detach().float().mean().item()}

    return reward


def clip_score(clip: str, scale: float = 100.0):
    """CLIPScore: ``scale * cos(E_image, E_prompt)`` (Hessel et al. 2021), the prompts being the conditions.

    With the default ``scale=100`` a matched pair reads as torchmetrics' ``CLIPScore``
    (``100 * max(cos, 0)``; Hessel et al. use a weight of 2.5). Negative cosines are not clipped at 0
    as torchmetrics does: the clip would stop the gradient exactly for the images that miss their
    prompt, which reward backpropagation most needs to move.

    :param clip: local folder of a transformers CLIPModel with its tokenizer
        (``openai/clip-vit-large-patch14`` saved with save_pretrained).
    :param scale: the factor on the cosine; 1 gives the raw cosine.
    """
    return _cosine_reward("clip_score", _ClipScorer(clip, tokenizer=True), lambda model: scale)


def pickscore(clip: str):
    """PickScore (Kirstain et al. 2023, Pick-a-Pic): ``exp(logit_scale) * cos(E_prompt, E_image)``.

    The logit of the preference model trained with CLIP's contrastive objective on Pick-a-Pic's
    choices; ``logit_scale`` is the CLIP's own learned temperature (about 100 for PickScore_v1,
    so scores sit near 20-23).

    :param clip: local folder of ``yuvalkirstain/PickScore_v1`` (a transformers CLIPModel, ViT-H/14)
        with a CLIP tokenizer saved into it.
    """
    return _cosine_reward("pickscore", _ClipScorer(clip, tokenizer=True),
                          lambda model: model.clip.logit_scale.exp())


def hps_score(clip: str, scale: float = 100.0):
    """Human Preference Score: ``scale * cos(E_image, E_prompt)`` of a preference-tuned CLIP.

    HPS (Wu et al. 2023, ICCV) defines the score as 100 times the cosine of the fine-tuned CLIP's
    embeddings; HPSv2 (Wu et al. 2023, arXiv:2306.09341) computes the same cosine with its
    fine-tuned CLIP-H/14 (``hpsv2.score`` returns the raw cosine, about 0.27; its benchmark tables
    report it times 100, about 27). The default follows the tables; ``scale=1`` gives ``hpsv2.score``.

    :param clip: local folder of the HPS/HPSv2 checkpoint converted to a transformers CLIPModel
        with its tokenizer (``prefdiff t2i convert-clip``, :mod:`prefdiff_t2i.open_clip_convert`).
    :param scale: the factor on the cosine.
    """
    return _cosine_reward("hps_score", _ClipScorer(clip, tokenizer=True), lambda model: scale)


def _cosine_reward(name: str, model: _ClipScorer, factor):
    """``factor(model) * cos(E_image, E_prompt)``: the text-image rewards differ only in the factor."""

    def reward(samples: torch.Tensor, conditions: Sequence[str]):
        model.follow(samples)
        cos = (model.image_embeddings(samples) * model.text_embeddings(conditions, len(samples))).sum(-1)
        scores = (factor(model) * cos).to(samples.dtype)
        return scores, {name: scores.detach().float().mean().item()}

    return reward


# ------------------------------------------------------------ preprocessing ----


def preprocess(samples: torch.Tensor, size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
               std: Sequence[float] = OPENAI_CLIP_STD) -> torch.Tensor:
    """CLIP's image preprocessing in torch, differentiable: ``[B, 3, H, W]`` in [-1, 1] -> pixel values.

    As CLIPImageProcessor does with PIL: map to [0, 1], resize the shortest side to ``size``
    (bicubic with antialiasing, the longer side truncated as ``int(size * long / short)``), crop
    the centre ``size x size``, subtract ``mean`` and divide by ``std`` per channel. Values outside
    [-1, 1] are clamped, as PIL's 8-bit images are.
    """
    x = ((samples + 1) / 2).clamp(0, 1)
    h, w = x.shape[-2:]
    if min(h, w) != size:
        short, long = min(h, w), max(h, w)
        new_long = int(size * long / short)
        # In float32 (torch's antialiased bicubic has no bfloat16 kernel on the CPU), back in the samples' dtype.
        x = F.interpolate(x.float(), size=(size, new_long) if h <= w else (new_long, size), mode="bicubic",
                          antialias=True, align_corners=False).to(x.dtype)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


# ------------------------------------------------------------ loading ----


class _ClipScorer:
    """A frozen CLIPModel (and its tokenizer) with per-prompt text embeddings cached (the
    ``cache_prompts`` most recently used).

    It moves itself, and the modules :meth:`add` gives it, to the samples' device on the first
    call and again whenever it changes. It computes in the dtype it was loaded in (float32):
    samples of another dtype are cast in and the rewards cast their scores back, so a bfloat16
    call never rounds the weights or the cached prompt embeddings that later float32 calls use.
    """

    def __init__(self, path: str, *, tokenizer: bool = False, cache_prompts: int = CACHED_PROMPTS) -> None:
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError as exc:
            raise UserError(f"the CLIP rewards need transformers ({exc}); pip install transformers") from None
        folder = _clip_folder(path)
        try:
            self.clip = CLIPModel.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise UserError(f"reward option clip: {path} could not be loaded as a CLIPModel "
                            f"({type(exc).__name__}: {exc}); {_CLIP_FIX}") from None
        self.tokenizer = None
        if tokenizer:
            if not has_tokenizer_files(folder):  # transformers 5 would load an empty vocabulary instead
                raise UserError(f"reward option clip: {path} has no tokenizer (no vocab.json or tokenizer.json); "
                                f"save the CLIP's tokenizer into it (CLIPProcessor or CLIPTokenizer.save_pretrained)")
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except Exception as exc:
                raise UserError(f"reward option clip: {path} has no usable tokenizer "
                                f"({type(exc).__name__}: {exc}); save the CLIP's tokenizer into it "
                                f"(CLIPTokenizer.save_pretrained)") from None
        self.size = self.clip.config.vision_config.image_size
        self.mean, self.std = _normalisation(folder)
        self.width = self.clip.config.projection_dim
        self.max_length = self.clip.config.text_config.max_position_embeddings
        self.dtype = self.clip.dtype
        self.device: torch.device | None = None
        self.texts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_prompts = cache_prompts
        self.modules: list[torch.nn.Module] = []
        self.add(self.clip)

    def add(self, module: torch.nn.Module) -> None:
        """Freeze ``module`` in eval mode (no dropout) and move it with the CLIP, in the CLIP's dtype."""
        module.eval().requires_grad_(False).to(device=self.device, dtype=self.dtype)
        self.modules.append(module)

    def follow(self, samples: torch.Tensor) -> None:
        """Move every module to the samples' device if they are elsewhere."""
        if samples.device != self.device:
            for module in self.modules:
                module.to(device=samples.device)
            self.device = samples.device
            self.texts.clear()  # cached embeddings live on the old device

    def image_embeddings(self, samples: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, projection_dim]``, differentiable w.r.t. the samples."""
        pixels = preprocess(samples.to(self.dtype), self.size, self.mean, self.std)
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.clip.visual_projection(pooled), dim=-1)

    def text_embeddings(self, prompts: Any, batch: int) -> torch.Tensor:
        """L2-normalised prompt embeddings ``[B, projection_dim]``, each prompt encoded alone once."""
        if (not isinstance(prompts, (list, tuple)) or len(prompts) != batch
                or not all(isinstance(p, str) for p in prompts)):
            got = f"{type(prompts).__name__} of {len(prompts)}" if isinstance(prompts, (list, tuple)) else \
                type(prompts).__name__
            raise UserError(f"CLIP text-image rewards score images against their prompts: pass the "
                            f"conditions as a list of {batch} strings, got {got}")
        for prompt in dict.fromkeys(prompts):
            if prompt in self.texts:
                self.texts.move_to_end(prompt)
            else:
                self.texts[prompt] = self._encode(prompt)
        embeddings = torch.stack([self.texts[p] for p in prompts])
        while len(self.texts) > self.cache_prompts:  # the least recently used go: Pick-a-Pic has a million prompts
            self.texts.popitem(last=False)
        return embeddings

    @torch.no_grad()
    def _encode(self, prompt: str) -> torch.Tensor:
        # One prompt at a time, without padding: its embedding cannot depend on the batch.
        tokens = self.tokenizer(prompt, truncation=True, max_length=self.max_length, return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        pooled = self.clip.text_model(input_ids=ids).pooler_output
        return F.normalize(self.clip.text_projection(pooled), dim=-1)[0]


def _clip_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"reward option clip: {path} does not exist; {_CLIP_FIX}")
    if not folder.is_dir():
        raise UserError(f"reward option clip: {path} is a file, not a folder; {_CLIP_FIX} "
                        f"(an open_clip checkpoint such as HPSv2's becomes one with "
                        f"`prefdiff t2i convert-clip CHECKPOINT OUT TOKENIZER_DIR`)")
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"reward option clip: {path} is not a CLIP folder (no config.json); {_CLIP_FIX}")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "clip":
        raise UserError(f"reward option clip: {path} holds a '{model_type}' model, not a CLIP; {_CLIP_FIX}")
    return folder


def has_tokenizer_files(folder: Path) -> bool:
    """Whether ``folder`` holds a saved CLIP tokenizer (``vocab.json`` and ``merges.txt``, or ``tokenizer.json``)."""
    return (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()


def _normalisation(folder: Path) -> tuple[Sequence[float], Sequence[float]]:
    """The folder's pixel mean and std (preprocessor_config.json), else OpenAI CLIP's."""
    config = folder / "preprocessor_config.json"
    if not config.is_file():
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    values = json.loads(config.read_text())
    return values.get("image_mean", OPENAI_CLIP_MEAN), values.get("image_std", OPENAI_CLIP_STD)


class AestheticHead(torch.nn.Module):
    """The MLP of LAION's improved-aesthetic-predictor; its parameter names match the published weights.

    There is no nonlinearity between the linear layers: the published head was trained so.
    """

    def __init__(self, width: int = 768) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, width]`` normalised embeddings -> ``[B, 1]`` ratings."""
        return self.layers(embeddings)


def read_weights(path: str | Path, culprit: str, fix: str) -> Any:
    """What a ``.safetensors``, ``.pt``, ``.pth`` or ``.bin`` file holds, read without running pickled code
    (``torch.load(weights_only=True)``); a missing or unreadable file is one error starting with ``culprit``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{culprit} does not exist; {fix}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"{culprit} could not be read ({type(exc).__name__}: {first}); {fix}") from None


def _load_head(path: str, width: int, clip: str) -> AestheticHead:
    fix = ("pass LAION's aesthetic head (sac+logos+ava1-l14-linearMSE.pth) or a .safetensors file "
           "of the same state dict")
    state = read_weights(path, f"reward option head: {path}", fix)
    first = state.get("layers.0.weight") if isinstance(state, dict) else None
    if not isinstance(first, torch.Tensor):
        raise UserError(f"reward option head: {path} is not the aesthetic head's state dict (no "
                        f"layers.0.weight); {fix}")
    if first.ndim != 2 or first.shape[1] != width:
        raise UserError(f"reward option head: {path} takes {first.shape[-1]}-dim embeddings but the CLIP "
                        f"at {clip} gives {width}-dim ones (projection_dim); pair the head with the CLIP "
                        f"it was trained on (ViT-L/14, 768, for LAION's)")
    head = AestheticHead(width)
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"reward option head: {path} does not fit the aesthetic head: "
                        f"{str(exc).splitlines()[-1].strip()}; {fix}") from None
    return head
