"""Scene editing: insert or remove a vehicle in a real scene by masked inpainting.

Remove: one vehicle (a connected group of vehicle cells that the condition
does not give) and a one-cell margin around it are regenerated; the edit
succeeds when no vehicle cell is left where it stood. Insert: a free spot on
the road ahead of or beside the ego becomes a given vehicle in the condition,
the box and a one-cell margin are regenerated, and the edit succeeds when the
model puts a vehicle on at least half of the box. Everything outside the
regenerated region is kept exactly (RePaint-style replacement in the core's
``inpaint``); ``preservation`` is the share of cells outside the edited box
itself, the margin included, whose agent class did not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from prefdiff.api import UserError, connected_components, dilate, inpaint, select
from prefdiff_driving import bev

KINDS = ("insert", "remove")


def plan_edit(x0: torch.Tensor, layout: torch.Tensor, kind: str, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(box, new_layout)`` for one edit of a real raster, or None when the scene allows none."""
    if kind not in KINDS:
        raise UserError(f"a scene edit is one of {', '.join(KINDS)}, got '{kind}'")
    vehicles = (x0[bev.VEHICLE] > bev.OCCUPIED).numpy()
    given = layout[bev.GIVEN].numpy() > 0.5
    centres = bev.cell_centres(x0.shape[-1])
    if kind == "remove":
        # A vehicle is a 4-connected group of cells: boxes touching at a corner are two vehicles.
        options = [c for c in connected_components(vehicles, diagonal=False) if not (c & given).any()]
        if not options:
            return None
        box = options[int(rng.integers(len(options)))]
        return torch.from_numpy(box), layout.clone()
    agents = torch.from_numpy(vehicles | (x0[bev.PEDESTRIAN] > bev.OCCUPIED).numpy())
    busy = dilate(agents, 2).numpy()
    ego = np.linalg.norm(centres, axis=-1) < 7.0
    spots = np.argwhere((layout[bev.DRIVABLE].numpy() >= 0.9) & ~busy & ~ego)
    rng.shuffle(spots)
    for i, j in spots[:20]:
        box = bev.box_cells(centres[i, j], 0.0, 4.5, 1.9, x0.shape[-1])
        if (layout[bev.DRIVABLE].numpy()[box] >= 0.5).all() and not (busy[box]).any() and not ego[box].any():
            new = layout.clone()
            new[bev.GIVEN][torch.from_numpy(box)] = 1.0
            return torch.from_numpy(box), new
    return None


@torch.no_grad()
def edit_scenes(denoiser, scheduler, x0: torch.Tensor, cond: dict[str, torch.Tensor], *, n: int = 32,
                num_steps: int = 20, margin: int = 1, seed: int = 0) -> dict[str, Any]:
    """Insert and remove vehicles (alternating) in up to ``n`` real scenes; returns tensors and metrics."""
    rng = np.random.default_rng(seed)
    picked, boxes, layouts, kinds = [], [], [], []
    # visit the scenes in a seeded order: neighbouring keyframes look alike
    for i in rng.permutation(len(x0)).tolist():
        if len(picked) >= n:
            break
        kind = KINDS[len(picked) % 2]
        planned = plan_edit(x0[i], cond["layout"][i], kind, rng)
        if planned is None:
            continue
        picked.append(i)
        boxes.append(planned[0])
        layouts.append(planned[1])
        kinds.append(kind)
    if not picked:
        raise UserError("no held-out scene allows an edit (no vehicles to remove, no free road to insert on)")
    original = x0[picked]
    cond_before = select(cond, torch.tensor(picked))
    boxes_t = torch.stack(boxes)
    # the asked vehicle density gains (insert) or loses (remove) the box's cells
    sign = torch.tensor([1.0 if kind == "insert" else -1.0 for kind in kinds])
    traffic = cond_before["traffic"].clone()
    traffic[:, 0] = (traffic[:, 0] + sign * boxes_t.flatten(1).float().mean(1)).clamp_min(0)
    new_cond = {**cond_before, "layout": torch.stack(layouts), "traffic": traffic}
    regions = torch.stack([dilate(b, margin) for b in boxes_t])
    keep = (~regions).float()[:, None].expand_as(original)
    denoiser.eval()
    g = torch.Generator().manual_seed(seed)
    edited = inpaint(denoiser, scheduler, original, keep, new_cond, num_steps=num_steps, eta=1.0, generator=g)
    veh = edited[:, bev.VEHICLE] > bev.OCCUPIED
    inserted = (veh & boxes_t).sum((1, 2)).float() / boxes_t.sum((1, 2)).clamp_min(1)
    removed_left = (veh & boxes_t).sum((1, 2))
    success = torch.tensor([bool(inserted[k] >= 0.5) if kind == "insert" else bool(removed_left[k] == 0)
                            for k, kind in enumerate(kinds)])
    cls_before = (original[:, bev.VEHICLE] > bev.OCCUPIED).int() + 2 * (original[:, bev.PEDESTRIAN] > bev.OCCUPIED).int()
    cls_after = veh.int() + 2 * (edited[:, bev.PEDESTRIAN] > bev.OCCUPIED).int()
    outside = ~boxes_t
    same = ((cls_before == cls_after) & outside).sum((1, 2)).float() / outside.sum((1, 2)).clamp_min(1)
    metrics: dict[str, Any] = {"n": len(picked), "reward_mean": float(success.float().mean()),
                               "preservation": float(same.mean())}
    for kind in KINDS:
        mask = torch.tensor([k == kind for k in kinds])
        if mask.any():
            metrics[f"success_{kind}"] = float(success[mask].float().mean())
    return {"original": original, "edited": edited, "cond_before": cond_before, "cond": new_cond,
            "regions": regions, "boxes": boxes_t, "kinds": kinds, "success": success.tolist(), "metrics": metrics}


def run_edit_task(denoiser, scheduler, out_dir: str | Path, *, data_options: dict[str, Any], n: int = 32,
                  num_steps: int = 20, seed: int = 0) -> dict[str, Any]:
    """The benchmark's editing task on held-out scenes; writes ``edit.png``; returns the metrics,
    with the judge's planner score of the edited scenes beside them."""
    from prefdiff_driving.data import NuScenesBEV
    from prefdiff_driving.figures import render_edit
    from prefdiff_driving.planner import JUDGE, score_scenes

    test = NuScenesBEV(split="test", **data_options)
    result = edit_scenes(denoiser, scheduler, test.agents, test.conditions(), n=n, num_steps=num_steps, seed=seed)
    result["metrics"]["judge_after"] = float(score_scenes(result["edited"], result["cond"], JUDGE)["score"].mean())
    render_edit(result, Path(out_dir) / "edit.png")
    return result["metrics"]
