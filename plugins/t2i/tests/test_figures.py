"""The figure and the field's own numbers."""

import numpy as np
import torch
from PIL import Image

from prefdiff_t2i.figures import first_of_each_prompt, prompt_tile, render
from prefdiff_t2i.metrics import attribute_accuracy, colour_drift


def test_render_draws_a_prompt_row_and_one_row_per_model(tmp_path):
    prompts = ["two red circles", "two red circles", "a blue square above a green triangle", "one yellow square"]
    rows = {"base": torch.rand(4, 3, 32, 32) * 2 - 1, "dpo": torch.rand(4, 3, 32, 32) * 2 - 1}
    render(rows, prompts, tmp_path / "samples.png")
    image = Image.open(tmp_path / "samples.png")
    assert image.height > 3 * 96 and image.width > 3 * 96  # three rows of three 96-pixel tiles
    assert first_of_each_prompt(prompts, 8) == [0, 2, 3]


def test_a_prompt_tile_holds_dark_text_on_white():
    tile = prompt_tile("a red circle left of a blue square", 96)
    assert tile.shape == (3, 96, 96)
    assert (tile < 0).any() and (tile.mean() > 0.5)


def test_attribute_accuracy_counts_each_task_apart():
    checks = [{"colour": True, "shape": True, "count": False}, {"colour": True, "shape": False, "count": False},
              {"object": True, "object2": True, "position": True}]
    acc = attribute_accuracy(checks)
    assert acc["colour"] == 1.0 and acc["shape"] == 0.5 and acc["count"] == 0.0 and acc["position"] == 1.0
    assert acc["counting_exact"] == 0.0 and acc["position_exact"] == 1.0 and abs(acc["exact"] - 1 / 3) < 1e-9


def test_colour_drift_is_zero_for_the_same_images_and_grows_with_a_colour_shift():
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    assert colour_drift(x, x) == 0.0
    assert colour_drift((x + 0.5).clamp(-1, 1), x) > colour_drift((x + 0.1).clamp(-1, 1), x) > 0


def test_sample_and_edit_draw_the_prompts_above_the_samples(world_dir, tmp_path):
    from prefdiff.cli import main
    from prefdiff.testing import tiny_pipeline
    from prefdiff_t2i.data import ShapesCaptions

    side = ShapesCaptions(world_dir, split="test")[0]["x0"].shape[-1]
    pipe = tiny_pipeline(tmp_path / "pipe", image_size=side)
    common = ["--model", str(pipe), "--dataset", "t2i_shapes", "--dataset-option", f"root={world_dir}",
              "--split", "test", "--steps", "2"]
    assert main(["sample", *common, "--n", "2", "--out", str(tmp_path / "s")]) == 0
    assert main(["edit", *common, "--index", "0", "--strength", "0.5", "--out", str(tmp_path / "e")]) == 0
    for png, rows in ((tmp_path / "s/samples.png", 2), (tmp_path / "e/edit.png", 3)):
        with Image.open(png) as figure:
            grey = torch.from_numpy(np.array(figure.convert("L"))).float()
        tile = side * 3
        assert figure.height > rows * tile, png  # the prompts' row above the samples'
        # The tiles' columns are where the last row (noise samples) is dark nearly top to bottom (not its label).
        columns = ((grey[-(tile + 4):-4] < 250).float().mean(dim=0) > 0.9).nonzero().flatten()
        prompt_tile = grey[figure.height - rows * (tile + 4):][:tile, columns]
        assert len(columns) >= tile - 4 and prompt_tile.mean() > 200 and prompt_tile.min() < 100, png  # dark text on white
