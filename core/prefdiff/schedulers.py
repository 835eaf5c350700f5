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


#: Flow matching: the noise levels of diffusers' FlowMatchEulerDiscreteScheduler, no shift
#: (the fields' small images need none; SD3 uses 3.0 at 1024 px, Esser et al. 2024).
FLOW_SCHEDULE = {"num_train_timesteps": 1000, "shift": 1.0}


def build_scheduler(config: dict | None = None, prediction_type: str = "epsilon"):
    """The noise schedule for a fresh model: a ``DDIMScheduler`` from keyword config (defaults:
    DEFAULT_SCHEDULE), or for ``prediction_type="flow"`` a ``FlowMatchEulerDiscreteScheduler``."""
    from diffusers import DDIMScheduler

    if prediction_type == "flow":
        return build_flow_scheduler(config)
    merged = {**DEFAULT_SCHEDULE, **(config or {})}
    if merged["prediction_type"] not in ("epsilon", "v_prediction"):
        raise UserError(f"--scheduler.prediction_type must be 'epsilon' or 'v_prediction', "
                        f"got '{merged['prediction_type']}'")
    try:
        return DDIMScheduler(**merged)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise UserError(f"--scheduler options are invalid: {exc}") from exc


def build_flow_scheduler(config: dict | None = None):
    """A ``FlowMatchEulerDiscreteScheduler``; only its own options are accepted (a DDIM option is an error)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dict(config or {})
    ddim_only = sorted(set(config) & (set(DEFAULT_SCHEDULE) - set(FLOW_SCHEDULE)))
    if ddim_only:
        raise UserError(f"--model.scheduler option '{ddim_only[0]}' is a DDIM option, but this is a flow-matching "
                        f"model; it takes num_train_timesteps and shift")
    try:
        return FlowMatchEulerDiscreteScheduler(**{**FLOW_SCHEDULE, **config})
    except (TypeError, ValueError) as exc:
        raise UserError(f"--model.scheduler options are invalid for flow matching: {exc}") from exc


def load_scheduler(model_dir: str | Path):
    """The scheduler saved beside a model (DDIM or flow matching; a pipeline's as its family has it),
    else the default DDIM schedule."""
    import json

    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from prefdiff.models.flow_pipelines import load_flow_scheduler
    from prefdiff.models.pipelines import FLOW_LAYOUTS, is_pipeline_folder, load_pipeline_scheduler, pipeline_layout

    if is_pipeline_folder(model_dir):
        if pipeline_layout(model_dir) in FLOW_LAYOUTS:  # SD3, FLUX
            return load_flow_scheduler(model_dir)
        return load_pipeline_scheduler(model_dir)
    path = Path(model_dir) / "scheduler"
    if (path / "scheduler_config.json").is_file():
        name = json.loads((path / "scheduler_config.json").read_text()).get("_class_name")
        cls = FlowMatchEulerDiscreteScheduler if name == "FlowMatchEulerDiscreteScheduler" else DDIMScheduler
        return cls.from_pretrained(path)
    return build_scheduler()
