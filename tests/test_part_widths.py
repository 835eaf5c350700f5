"""A pipeline folder assembled from two models is one clear error naming the parts, before any weight loads."""

import json
import shutil

import pytest

from prefdiff.errors import UserError
from prefdiff.models import load_model
from prefdiff.testing import tiny_flux_pipeline, tiny_pipeline, tiny_sd3_pipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    return {"sd": tiny_pipeline(root / "sd"), "sdxl": tiny_pipeline(root / "sdxl", sdxl=True, seed=2),
            "sd3": tiny_sd3_pipeline(root / "sd3"), "flux": tiny_flux_pipeline(root / "flux", seed=2)}


def edited(folders, tmp_path, which, part, **changes):
    """A copy of a tiny pipeline with ``part``'s config.json changed (the weights stay as they were)."""
    folder = shutil.copytree(folders[which], tmp_path / which)
    config = folder / part / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **changes}))
    return folder


def test_the_tiny_pipelines_fit_together(folders):
    for folder in folders.values():
        load_model(folder)


@pytest.mark.parametrize("which, part, key, message", [
    ("sd", "text_encoder", "hidden_size",
     r"its unet/ expects text states of width (\d+), but text_encoder/ \(hidden_size\) gives (?!\1)\d+; "
     r"the parts come from different models"),
    ("sd", "vae", "latent_channels", r"its unet/ expects input channels \d+, but vae/ \(latent_channels\) gives"),
    ("sdxl", "text_encoder_2", "hidden_size",
     r"its unet/ expects text states of width \d+, but text_encoder/ and text_encoder_2/ \(hidden_size, side by"),
    ("sdxl", "text_encoder_2", "projection_dim",
     r"its unet/ expects added embeddings of width \d+, but text_encoder_2/ \(projection_dim, plus six time ids\)"),
    ("sd3", "text_encoder_3", "d_model",
     r"its transformer/ expects text states of width \d+, but text_encoder_3/ \(d_model\) gives"),
    ("sd3", "text_encoder", "projection_dim",
     r"its transformer/ expects pooled prompt embeddings of width \d+, but text_encoder/ and text_encoder_2/"),
    ("flux", "text_encoder_2", "d_model",
     r"its transformer/ expects text states of width \d+, but text_encoder_2/ \(d_model\) gives"),
    ("flux", "text_encoder", "hidden_size",
     r"its transformer/ expects pooled prompt embeddings of width \d+, but text_encoder/ \(hidden_size\)"),
    ("flux", "vae", "latent_channels", r"its transformer/ expects input channels \d+, but vae/ \(latent_channels\)"),
])
def test_a_part_of_another_width_is_named(folders, tmp_path, which, part, key, message):
    config = json.loads((folders[which] / part / "config.json").read_text())
    folder = edited(folders, tmp_path, which, part, **{key: config[key] * 2})
    with pytest.raises(UserError, match=f"^pipeline folder {folder}: {message}"):
        load_model(folder)


def test_an_sdxl_unet_in_a_stable_diffusion_folder_is_named(folders, tmp_path):
    folder = shutil.copytree(folders["sd"], tmp_path / "sd")
    shutil.rmtree(folder / "unet")
    shutil.copytree(folders["sdxl"] / "unet", folder / "unet")
    with pytest.raises(UserError, match=r"is a StableDiffusionPipeline, but its unet/ is an SDXL UNet \(it adds "
                                        r"SDXL's text_time embedding\); open it in a StableDiffusionXLPipeline"):
        load_model(folder)
