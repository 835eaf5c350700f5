"""The noise schedule, kept apart from the models (diffusers' philosophy)."""

from __future__ import annotations

from pathlib import Path

from prefdiff.errors import UserError

# Cosine betas (Nichol & Dhariwal 2021) with "leading" timesteps offset by one, as
# Stable Diffusion sets them: on small images the linear schedule's first DDIM step
# from t=999 amplifies the noise-prediction error into saturated samples (measured
# on the built-in example), and a step onto t=0 would be a no-op.
DEFAULT_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                    "timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False,
                    "set_alpha_to_one": True, "prediction_type": "epsilon"}


def build_scheduler(config: dict | None = None):
    """A diffusers DDIMScheduler from keyword config (defaults: DEFAULT_SCHEDULE)."""
    from diffusers import DDIMScheduler

    merged = {**DEFAULT_SCHEDULE, **(config or {})}
    if merged["prediction_type"] not in ("epsilon", "v_prediction"):
        raise UserError(f"--scheduler.prediction_type must be 'epsilon' or 'v_prediction', "
                        f"got '{merged['prediction_type']}'")
    try:
        return DDIMScheduler(**merged)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise UserError(f"--scheduler options are invalid: {exc}") from exc


def load_scheduler(model_dir: str | Path):
    """The scheduler saved beside a model (a pipeline's as DDIM), else the default."""
    from diffusers import DDIMScheduler

    from prefdiff.models.pipelines import is_pipeline_folder, load_pipeline_scheduler

    if is_pipeline_folder(model_dir):
        return load_pipeline_scheduler(model_dir)
    path = Path(model_dir) / "scheduler"
    if (path / "scheduler_config.json").is_file():
        return DDIMScheduler.from_pretrained(path)
    return build_scheduler()
