"""prefdiff-t2i: text-to-image alignment on latent Stable Diffusion pipelines.

Registers the community's reward models, each loading its weights from a
local path (``aesthetic_score``: LAION's predictor head over CLIP image
embeddings; ``clip_score``: prompt-image cosine similarity; ``pickscore`` and
``hps_score``: CLIP preference scores; ``image_reward``: ImageReward's BLIP-based
preference model, ReFL's reward), and the ``t2i`` benchmark: a tiny
latent pipeline pretrained on this machine on a synthetic world of coloured
shapes whose captions are exactly checkable, aligned for prompt faithfulness
and judged by a recogniser that training never queries. Heavy imports happen
inside the factories.
"""

from __future__ import annotations

from prefdiff.api import hookimpl

__version__ = "0.1.0"


def _clip_reward(name: str):
    def factory(**options):
        from prefdiff_t2i import clip_rewards

        return getattr(clip_rewards, name)(**options)

    factory.__doc__ = f"Build prefdiff_t2i.clip_rewards.{name}."
    return factory


def _image_reward(weights: str, tokenizer: str, med_config: str | None = None):
    """Build prefdiff_t2i.image_reward.image_reward."""
    from prefdiff_t2i.image_reward import image_reward

    return image_reward(weights, tokenizer, med_config)


@hookimpl
def prefdiff_register_rewards(register):
    # The community's reward models (clip_rewards.py); all differentiable for reward backpropagation.
    for name in ("aesthetic_score", "clip_score", "pickscore", "hps_score"):
        register(name, _clip_reward(name), differentiable=True)
    register("image_reward", _image_reward, differentiable=True)  # image_reward.py
    # The benchmark field's rewards and judge (field.py).
    from prefdiff_t2i.field import register_rewards

    register_rewards(register)


@hookimpl
def prefdiff_register_datasets(register):
    from prefdiff_t2i.field import register_datasets

    register_datasets(register)


@hookimpl
def prefdiff_register_benchmarks(register):
    from prefdiff_t2i.recipe import t2i_recipe

    register("t2i", t2i_recipe)


@hookimpl
def prefdiff_register_commands(register):
    from prefdiff_t2i.commands import convert_clip, make_data

    register("make-data", make_data)
    register("convert-clip", convert_clip)
