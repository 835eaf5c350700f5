"""`prefdiff t2i convert-clip`: open_clip and OpenAI CLIP checkpoints (HPSv2, HPS v1) as transformers CLIPModels,
checked against the embeddings open_clip itself computed for the same weights (data/open_clip/make.py)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from prefdiff.api import UserError
from prefdiff.testing import char_tokenizer
from prefdiff_t2i import clip_rewards
from prefdiff_t2i.open_clip_convert import convert_open_clip

DATA = Path(__file__).parent / "data" / "open_clip"
EXPECTED = load_file(str(DATA / "expected.safetensors"))
META = json.loads((DATA / "expected.json").read_text())
HEADS = {"vision_head_width": 16, "text_head_width": 16}
"""The tiny towers' head widths (make.py's VISION and TEXT), which the shapes cannot tell."""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    char_tokenizer(77).save_pretrained(folder)
    return folder


def embeddings(folder):
    """The converted CLIP's normalised image and text embeddings of the fixture's images and prompts, through the
    reward's own loading and preprocessing."""
    scorer = clip_rewards._ClipScorer(str(folder), tokenizer=True)
    images = EXPECTED["images"]
    scorer.follow(images)
    with torch.no_grad():
        return scorer.image_embeddings(images), scorer.text_embeddings(META["prompts"], len(images))


def test_the_fixture_prompts_tokenize_as_when_it_was_made(tokenizer):
    from transformers import CLIPTokenizer

    ours = CLIPTokenizer.from_pretrained(tokenizer)
    assert [ours(p).input_ids for p in META["prompts"]] == META["token_ids"]


@pytest.mark.parametrize("name, quick_gelu", [("hpsv2_tiny", False), ("openai_tiny", True)])
def test_converted_embeddings_equal_open_clips(name, quick_gelu, tokenizer, tmp_path):
    out = convert_open_clip(DATA / f"{name}.pt", tmp_path / "clip", tokenizer, quick_gelu=quick_gelu, **HEADS)
    image, text = embeddings(out)
    torch.testing.assert_close(image, EXPECTED[f"{name}.image"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(text, EXPECTED[f"{name}.text"], atol=2e-5, rtol=1e-4)
    # hps_score is the cosine of exactly those embeddings
    scores, _ = clip_rewards.hps_score(clip=str(out), scale=1.0)(EXPECTED["images"], META["prompts"])
    torch.testing.assert_close(scores, (EXPECTED[f"{name}.image"] * EXPECTED[f"{name}.text"]).sum(-1),
                               atol=2e-5, rtol=1e-4)
    assert (out / "preprocessor_config.json").is_file() and (out / "model.safetensors").is_file()
    from transformers import CLIPModel

    state = torch.load(DATA / f"{name}.pt", weights_only=True)
    logit_scale = state.get("state_dict", state)["logit_scale"]  # pickscore's temperature comes across too
    assert CLIPModel.from_pretrained(out).logit_scale.item() == pytest.approx(logit_scale.item())


def test_the_activation_and_head_width_matter(tokenizer, tmp_path):
    """What the shapes cannot tell changes the embeddings: the options are not ignored."""
    wrong_act = convert_open_clip(DATA / "hpsv2_tiny.pt", tmp_path / "a", tokenizer, quick_gelu=True, **HEADS)
    wrong_heads = convert_open_clip(DATA / "hpsv2_tiny.pt", tmp_path / "h", tokenizer, vision_head_width=48,
                                    text_head_width=32)
    for folder in (wrong_act, wrong_heads):
        image, text = embeddings(folder)
        assert not torch.allclose(image, EXPECTED["hpsv2_tiny.image"], atol=1e-3)
        assert not torch.allclose(text, EXPECTED["hpsv2_tiny.text"], atol=1e-3)


def test_ddp_prefixes_and_safetensors_read_alike(tokenizer, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(DATA / "hpsv2_tiny.pt", weights_only=True)["state_dict"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ddp.pt")
    save_file({k: v.half() for k, v in state.items()}, str(tmp_path / "half.safetensors"))
    image, _ = embeddings(convert_open_clip(tmp_path / "ddp.pt", tmp_path / "ddp", tokenizer, **HEADS))
    torch.testing.assert_close(image, EXPECTED["hpsv2_tiny.image"], atol=2e-5, rtol=1e-4)
    image, _ = embeddings(convert_open_clip(tmp_path / "half.safetensors", tmp_path / "half", tokenizer, **HEADS))
    assert F.cosine_similarity(image, EXPECTED["hpsv2_tiny.image"]).min() > 0.999  # float16 weights, read as float32


def test_the_command_writes_a_folder_the_rewards_read(tokenizer, tmp_path, capsys):
    from prefdiff.cli import main

    out = tmp_path / "models" / "hpsv2"
    assert main(["t2i", "convert-clip", str(DATA / "hpsv2_tiny.pt"), str(out), str(tokenizer),
                 "--vision-head-width", "16", "--text-head-width", "16"]) == 0
    assert f"{{clip: {out}}}" in capsys.readouterr().out
    image, _ = embeddings(out)
    torch.testing.assert_close(image, EXPECTED["hpsv2_tiny.image"], atol=2e-5, rtol=1e-4)
    assert [p.name for p in out.parent.iterdir()] == ["hpsv2"], "no staging folder is left behind"


@pytest.mark.parametrize("case, message", [
    ("exists", r"already exists; give convert-clip a new folder \(nothing there is overwritten\)"),
    ("missing", r"does not exist; pass an open_clip checkpoint"),
    ("not_clip", r"is not a CLIP checkpoint in open_clip's layout \(no token_embedding.weight, positional_embedding"),
    ("extra", r"holds weights a plain CLIP ViT does not have \(visual.transformer.resblocks.0.ls_1.gamma\)"),
    ("pickle", r"could not be read \(UnpicklingError"),
    ("tokenizer", r"the tokenizer has 514 tokens but .* embeds only 300"),
    ("no_tokenizer", r"tokenizer folder .* holds no CLIP tokenizer \(no vocab.json or tokenizer.json\); pass a "
                     r"folder with vocab.json and merges.txt"),
    ("heads", r"the image tower is 48 wide, not a whole number of 64-wide heads; give its head width with "
              r"--vision-head-width"),
])
def test_bad_input_is_one_clear_error_with_exit_code_2(case, message, tokenizer, tmp_path, capsys):
    from prefdiff.cli import main

    state = torch.load(DATA / "hpsv2_tiny.pt", weights_only=True)["state_dict"]
    checkpoint, out, heads = tmp_path / "ckpt.pt", tmp_path / "out", ["--text-head-width", "16"]
    if case != "heads":
        heads += ["--vision-head-width", "16"]
    if case == "exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    if case == "not_clip":
        state = {"layers.0.weight": torch.zeros(2, 2)}
    if case == "extra":
        state["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(48)
    if case == "tokenizer":
        state["token_embedding.weight"] = state["token_embedding.weight"][:300]
    if case == "pickle":
        torch.save({"state_dict": state, "args": Path("x")}, checkpoint)
    elif case != "missing":
        torch.save(state, checkpoint)
    if case == "no_tokenizer":
        tokenizer = tmp_path / "empty"
        tokenizer.mkdir()
    assert main(["t2i", "convert-clip", str(checkpoint), str(out), str(tokenizer), *heads]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prefdiff: error: ")
    assert __import__("re").search(message, err[0]), err[0]
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"
    else:
        assert not out.exists(), "a failed conversion leaves no folder"


def test_a_checkpoint_given_as_the_clip_option_points_to_the_converter(tmp_path):
    (tmp_path / "HPS_v2.1_compressed.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"is a file, not a folder; .*prefdiff t2i convert-clip"):
        clip_rewards.hps_score(clip=str(tmp_path / "HPS_v2.1_compressed.pt"))


def test_vit_h_14_shapes_give_laions_config(tokenizer):
    """HPSv2's tower (open_clip's ViT-H-14) read off its shapes alone, against the config of the transformers
    port of the same model (laion/CLIP-ViT-H-14-laion2B-s32B-b79K): 16 heads of 80 in the image tower, 16 of 64
    in the text tower."""
    from transformers import CLIPTokenizer

    from prefdiff_t2i.open_clip_convert import clip_config

    def tower(prefix, width, layers, mlp):
        block = {"ln_1.weight": (width,), "attn.in_proj_weight": (3 * width, width), "mlp.c_fc.weight": (mlp, width)}
        return {f"{prefix}resblocks.{i}.{k}": s for i in range(layers) for k, s in block.items()}

    shapes = {"token_embedding.weight": (49408, 1024), "positional_embedding": (77, 1024), "ln_final.weight": (1024,),
              "text_projection": (1024, 1024), "visual.conv1.weight": (1280, 3, 14, 14),
              "visual.class_embedding": (1280,), "visual.positional_embedding": (257, 1280),
              "visual.proj": (1280, 1024), "logit_scale": (),
              **tower("transformer.", 1024, 24, 4096), **tower("visual.transformer.", 1280, 32, 5120)}
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    state["logit_scale"] = torch.tensor(4.6052)
    config = clip_config(state, CLIPTokenizer.from_pretrained(tokenizer), quick_gelu=False, vision_head_width=None,
                         text_head_width=64, source="HPS_v2.1_compressed.pt")
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_attention_heads, v.num_hidden_layers, v.intermediate_size) == (1280, 16, 32, 5120)
    assert (v.image_size, v.patch_size, v.hidden_act) == (224, 14, "gelu")
    assert (t.hidden_size, t.num_attention_heads, t.num_hidden_layers, t.intermediate_size) == (1024, 16, 24, 4096)
    assert (t.vocab_size, t.max_position_embeddings, t.hidden_act, config.projection_dim) == (49408, 77, "gelu", 1024)
    assert config.logit_scale_init_value == pytest.approx(4.6052)
