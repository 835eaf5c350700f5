"""Mask-guided editing: add, remove or grow a lesion in a real image.

Given a real slice, its mask and an edited mask, the model regenerates the
region that changed (plus a small margin, so the new structure blends in)
by masked inpainting from the core (RePaint-style replacement), or the whole
image by SDEdit, conditioned on the edited mask. The edit is judged by the
held-out judge's Dice against the edited mask, and by how well the region
whose label did not change is preserved (PSNR and SSIM through MONAI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from prefdiff.api import UserError, component_at, dilate, inpaint, sdedit

EDITS = ("add", "remove", "grow")
METHODS = ("inpaint", "sdedit")


# ------------------------------------------------------------ mask edits ----


def edit_mask(mask: torch.Tensor, kind: str, num_classes: int, generator: torch.Generator) -> torch.Tensor | None:
    """Return an edited copy of a class-index mask ``[1, H, W]``, or None when the edit does not apply.

    * ``add``: a disc of a random foreground class where the mask is background.
    * ``remove``: one connected structure set to background.
    * ``grow``: one class dilated by two pixels into the background.
    """
    if kind not in EDITS:
        raise UserError(f"a mask edit is one of {', '.join(EDITS)}, got '{kind}'")
    m = mask[0].round()
    h, w = m.shape
    out = m.clone()
    if kind == "add":
        radius = max(2, min(h, w) // 10)
        free = ~dilate(m > 0, radius + 1)
        free[:radius + 1], free[-radius - 1:], free[:, :radius + 1], free[:, -radius - 1:] = False, False, False, False
        spots = free.nonzero()
        if len(spots) == 0:
            return None
        cy, cx = spots[int(torch.randint(len(spots), (1,), generator=generator))].tolist()
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        out[disc] = float(torch.randint(1, num_classes + 1, (1,), generator=generator))
    elif kind == "remove":
        fg = (m > 0).nonzero()
        if len(fg) == 0:
            return None
        y, x = fg[int(torch.randint(len(fg), (1,), generator=generator))].tolist()
        out[torch.from_numpy(component_at(m == m[y, x], (y, x)))] = 0
    else:
        present = [int(c) for c in m.unique().tolist() if c > 0]
        if not present:
            return None
        c = present[int(torch.randint(len(present), (1,), generator=generator))]
        out[dilate(m == c, 2) & (m == 0)] = float(c)
    if torch.equal(out, m):
        return None
    return out.unsqueeze(0)


def keep_region(old: torch.Tensor, new: torch.Tensor, margin: int = 2) -> torch.Tensor:
    """1 where the image is kept: outside the changed labels dilated by ``margin`` pixels."""
    return (~dilate(old.round() != new.round(), margin)).float()


# ------------------------------------------------------------- editing ----


@torch.no_grad()
def edit_images(denoiser, scheduler, images: torch.Tensor, old: torch.Tensor, new: torch.Tensor, *,
                method: str = "inpaint", strength: float = 0.6, margin: int = 2, num_steps: int = 20,
                seed: int = 0) -> torch.Tensor:
    """Edit real images ``[B, 1, H, W]`` from masks ``old`` to ``new`` with the mask-conditioned model."""
    if method not in METHODS:
        raise UserError(f"the edit method must be one of {', '.join(METHODS)}, got '{method}'")
    denoiser.eval()
    generator = torch.Generator().manual_seed(seed)
    if method == "sdedit":
        return sdedit(denoiser, scheduler, images, new, strength, num_steps=num_steps, generator=generator)
    keep = keep_region(old, new, margin)
    return inpaint(denoiser, scheduler, images, keep, new, num_steps=num_steps, generator=generator)


def preservation(original: torch.Tensor, edited: torch.Tensor, unchanged: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB, capped at 60) and SSIM of the unchanged region (MONAI metrics).

    Pixels outside ``unchanged`` are set to the original in both images, so only
    the region that should have stayed the same can lower the scores.
    """
    from monai.metrics import PSNRMetric, SSIMMetric

    a = original.float()
    b = torch.where(unchanged.bool(), edited.float().clamp(-1, 1), a)
    a = a.clamp(-1, 1)
    psnr = PSNRMetric(max_val=2.0, reduction="none")(b, a).reshape(-1).nan_to_num(60.0, posinf=60.0).clamp(max=60.0)
    ssim = SSIMMetric(spatial_dims=2, data_range=2.0, win_size=7, reduction="none")(b, a).reshape(-1)
    return {"psnr": psnr, "ssim": ssim}


def edit_examples(dataset, n: int, num_classes: int, seed: int = 0):
    """Up to ``n`` (image, mask, edited mask, kind) from a dataset, cycling through the edit kinds."""
    generator = torch.Generator().manual_seed(seed)
    images, old, new, kinds = [], [], [], []
    for i in range(len(dataset)):
        if len(images) >= n:
            break
        kind = EDITS[len(images) % len(EDITS)]
        item = dataset[i]
        edited = edit_mask(item["cond"], kind, num_classes, generator)
        if edited is None:
            continue
        images.append(item["x0"])
        old.append(item["cond"])
        new.append(edited)
        kinds.append(kind)
    if not images:
        raise UserError("no test slice allows a mask edit; check the task's labels")
    return torch.stack(images), torch.stack(old), torch.stack(new), kinds


def run_edit_task(denoiser, scheduler, out_dir: Path, *, data_options: dict[str, Any], judge_checkpoint: str,
                  n: int = 24, method: str = "inpaint", strength: float = 0.6, margin: int = 2,
                  num_steps: int = 20, seed: int = 0, render: Callable | None = None) -> dict[str, Any]:
    """The benchmark's editing task on held-out test slices; writes ``edit.png`` into ``out_dir``.

    ``data_options`` build the ``decathlon`` dataset (``root``, ``resolution``, ...).

    Returns ``reward_mean`` (judge Dice against the edited masks), ``dice_before``
    (the same for the unedited images: what the edit had to fix),
    ``preservation`` (SSIM of the unchanged region), ``psnr`` and per-kind Dice.
    """
    from prefdiff_medical.data import DecathlonSlices
    from prefdiff_medical.rewards import segmentation_judge

    test = DecathlonSlices(split="test", **data_options)
    images, old, new, kinds = edit_examples(test, n, test.num_classes, seed)
    edited = edit_images(denoiser, scheduler, images, old, new, method=method, strength=strength,
                         margin=margin, num_steps=num_steps, seed=seed)
    judge = segmentation_judge(judge_checkpoint)
    after, _ = judge(edited, new)
    before, _ = judge(images, new)
    kept = preservation(images, edited, (old.round() == new.round()).float())
    result: dict[str, Any] = {
        "method": method, "n": len(kinds), "reward_mean": float(after.mean()),
        "dice_before": float(before.mean()), "preservation": float(kept["ssim"].mean()),
        "psnr": float(kept["psnr"].mean()),
    }
    for kind in EDITS:
        picked = [i for i, k in enumerate(kinds) if k == kind]
        if picked:
            result[f"reward_{kind}"] = float(after[picked].mean())
    if render is not None:
        render({"image": images, "edited": edited}, {"mask": old, "edited mask": new}, Path(out_dir) / "edit.png")
    return result
