"""The ``medical`` benchmark: mask-conditioned slices aligned for segmentation consistency.

On first run :func:`prepare` writes the synthetic Decathlon task (or uses the
user's task named by ``PREFDIFF_MEDICAL_TASK``) and trains the two
segmenters: the reward's UNet and the judge's BasicUNet, with other seeds.
Both are cached beside the data, so later runs start at the base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from prefdiff.api import AgainstReal, Recipe, UserError

from prefdiff_medical.synthetic import SyntheticTask

log = logging.getLogger("prefdiff.medical")

TASK_VARIABLE = "PREFDIFF_MEDICAL_TASK"
RESOLUTION = 32


#: Where the field's pretrained base and segmenters ship (see prefdiff.bench.shipped).
SHIPPED = Path(__file__).parent / "bases"


def _settings(quick: bool) -> dict[str, Any]:
    """The task, the segmenters, the network and its pretraining.

    The same for ``--quick`` and the full run, so both align the shipped base with the
    shipped segmenters: a quick run changes only the alignment and evaluation budgets,
    and a newcomer's first run aligns a real base in minutes. (Tests shrink these.)
    """
    return {"task": SyntheticTask(volumes=48, depth=24), "reward_steps": 800, "judge_steps": 600,
            "model": (32, 64, 64), "pretrain_steps": 2000, "downstream_steps": 300}


def medical_recipe(quick: bool = False) -> Recipe:
    """The recipe `prefdiff bench medical [--quick]` runs; :func:`prepare` fills in the data and segmenters."""
    settings = _settings(quick)
    user_task = os.environ.get(TASK_VARIABLE)
    if user_task:
        from prefdiff_medical.data import read_task

        try:
            num_classes = len(read_task(user_task)["classes"]) - 1
        except UserError as exc:
            raise UserError(f"{TASK_VARIABLE}={user_task}: {exc}") from None
    else:
        num_classes = settings["task"].num_classes
    lr = 5e-4
    methods: dict[str, dict] = {
        "sft": {"lr": lr},
        "rwr": {"lr": lr},
        "dpo": {"beta": 2000.0, "lr": 1e-3},
        "kto": {"beta": 2000.0, "lr": lr},
        "d3po": {"beta": 0.1, "lr": 3e-4},
        # Policy gradient samples a whole trajectory per step, the costliest method here:
        # 40 steps keep it inside the full run's budget.
        "ddpo": {"samples_per_condition": 2, "timestep_fraction": 0.25, "lr": 3e-4, "steps": 40},
        "dpok": {"samples_per_condition": 4, "kl_coef": 0.01, "lr": 3e-4},
        "grpo": {"samples_per_condition": 4, "kl_coef": 0.01, "lr": 3e-4},
        # Reward backprop hacks a single segmenter fast (a one-seed probe: DRaFT-1 raised the
        # reward segmenter's Dice from 0.92 to 0.98 while the judge's did not move): several
        # gradient steps and a drift penalty to the base.
        "draft": {"reward": "segmentation_consistency_soft", "k": 3, "drift_coef": 50.0, "lr": 3e-4},
        "alignprop": {"reward": "segmentation_consistency_soft", "k": 5, "drift_coef": 50.0, "lr": 3e-4},
        "refl": {"reward": "segmentation_consistency_soft", "drift_coef": 50.0, "lr": 3e-4},
    }
    return Recipe(
        domain="medical", dataset="decathlon",
        dataset_options=_data_options(user_task),
        model={"kind": "unet2d", "sample_size": RESOLUTION, "channels": 1, "conditioning": "concat",
               "cond_channels": num_classes, "block_out_channels": settings["model"], "layers_per_block": 1,
               "norm_num_groups": 8},
        conditioner="mask_onehot", conditioner_options={"num_classes": num_classes},
        reward="segmentation_consistency", judge="segmentation_judge",
        judge_note="a BasicUNet of another seed, trained on the same images; training never queries it",
        methods=methods,
        default_methods=["dpo", "draft"] if quick else ["dpo", "kto", "draft", "ddpo"],
        pretrain_steps=settings["pretrain_steps"], pretrain_batch=16,
        align_steps=8 if quick else 100, align_batch=4 if quick else 8,
        lora_rank=8, n_eval=32 if quick else 128, num_steps=20,
        mine_conditions=16 if quick else 192, mine_per_condition=4, shipped_bases=str(SHIPPED),
        prepare=partial(prepare, quick=quick, user_task=user_task),
        drift=_drift, render=_render,
        # Downstream utility: a third segmenter trained on each model's images, tested on real scans.
        metrics=partial(_downstream, num_classes=num_classes, steps=settings["downstream_steps"] // (2 if quick else 1)),
        against_real=AgainstReal("downstream_dice", "downstream Dice",
                                 "the real-scan Dice of a third segmenter trained on each model's synthetic pairs",
                                 interval="downstream_ratio_to_real", reads="{v:.2f}x real's [{lo:.2f}, {hi:.2f}]"),
        drift_note="Wasserstein-1 distance of pixel intensities plus that of gradient magnitudes, "
                   "generated against real held-out slices (0: the same histograms)",
    )


def _data_options(user_task: str | None) -> dict[str, Any]:
    # The synthetic images are already in [0, 1] with objects as the brightest voxels:
    # min-max scaling keeps the two classes' intensities apart, where percentile
    # clipping (right for MR and CT) would saturate both.
    return {"resolution": RESOLUTION, **({} if user_task else {"percentiles": [0.0, 100.0]})}


def _drift(samples, real) -> float:
    from prefdiff_medical.rewards import intensity_drift

    return intensity_drift(samples, real)


def _downstream(rows, cond, **options) -> dict[str, dict[str, Any]]:
    from prefdiff_medical.downstream import downstream_metrics

    return downstream_metrics(rows, cond, **options)


def _render(rows, cond, png_path) -> None:
    from prefdiff_medical.figures import render

    render(rows, cond, png_path)


def prepare(recipe: Recipe, data_dir: Path, *, quick: bool, user_task: str | None) -> Recipe:
    """Write the synthetic task and train both segmenters when missing; return the prepared recipe.

    The reward's UNet and the judge's BasicUNet are trained with other seeds on the
    same images and cached beside the data, so later runs start at the base model.
    """
    from prefdiff_medical.editing import run_edit_task
    from prefdiff_medical.figures import render
    from prefdiff_medical.segmenters import train_segmenter
    from prefdiff_medical.synthetic import make_task

    settings = _settings(quick)
    task: SyntheticTask = settings["task"]
    data_dir = Path(data_dir)
    if user_task:
        root = Path(user_task).resolve()
    else:
        root = data_dir / f"synthetic-{task.tag()}"
        if not (root / "dataset.json").is_file():
            log.info(f"writing the synthetic Decathlon task to {root}")
            make_task(root, task)
    data_options = {"root": str(root), **recipe.dataset_options}
    # A user's task is named by its path; the synthetic one by its settings, so the key (and the
    # segmenters shipped under it) does not depend on where the cache lives.
    where = str(root) if user_task else root.name
    key = hashlib.sha256(json.dumps({"data": {"root": where, **_data_options(user_task)},
                                     "task": None if user_task else asdict(task),
                                     "steps": [settings["reward_steps"], settings["judge_steps"]]},
                                    sort_keys=True).encode()).hexdigest()[:10]
    segmenters = data_dir / f"segmenters-{key}"
    reward_ckpt, judge_ckpt = segmenters / "reward_unet.safetensors", segmenters / "judge_basicunet.safetensors"
    seg_options = {k: v for k, v in data_options.items() if k != "root"}
    if not reward_ckpt.is_file():
        train_segmenter(root, reward_ckpt, arch="unet", steps=settings["reward_steps"], batch_size=16,
                        seed=1, **seg_options)
    if not judge_ckpt.is_file():
        train_segmenter(root, judge_ckpt, arch="basicunet", steps=settings["judge_steps"], batch_size=16,
                        seed=2, **seg_options)
    segmenter = {"checkpoint": str(reward_ckpt)}
    edit = partial(run_edit_task, data_options=data_options, judge_checkpoint=str(judge_ckpt),
                   n=12 if quick else 48, num_steps=recipe.num_steps, render=render)
    return replace(recipe, dataset_options=data_options, reward_options=segmenter,
                   other_reward_options={"segmentation_consistency_soft": segmenter},
                   judge_options={"checkpoint": str(judge_ckpt)}, edit=edit)
