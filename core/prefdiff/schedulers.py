"""The noise schedule, kept apart from the models (diffusers' philosophy)."""

from __future__ import annotations

from pathlib import Path

from prefdiff.errors import UserError

DEFAULT_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "timestep_spacing": "trailing",
                    "clip_sample": False, "set_alpha_to_one": True, "prediction_type": "epsilon"}


def build_scheduler(config: dict | None = None):
    """A diffusers DDIMScheduler from keyword config (defaults: linear betas, trailing timesteps as Lin et al. 2024 advise, 1000 steps)."""
    from diffusers import DDIMScheduler

    merged = {**DEFAULT_SCHEDULE, **(config or {})}
    if merged["prediction_type"] != "epsilon":
        raise UserError(f"--scheduler.prediction_type must be 'epsilon', got '{merged['prediction_type']}'")
    try:
        return DDIMScheduler(**merged)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise UserError(f"--scheduler options are invalid: {exc}") from exc


def load_scheduler(model_dir: str | Path):
    """The scheduler saved beside a model, else the default."""
    from diffusers import DDIMScheduler

    path = Path(model_dir) / "scheduler"
    if (path / "scheduler_config.json").is_file():
        return DDIMScheduler.from_pretrained(path)
    return build_scheduler()
