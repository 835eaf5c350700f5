"""Text-to-image data in the community's formats: prompt lists, Pick-a-Pic parquet shards,
image-caption folders; read from real files, trained on through `prefdiff fit`."""

import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from prefdiff.cli import main
from prefdiff.data import collate
from prefdiff.datamodule import PrefDataModule
from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff.textdata import ImageCaptions, PickAPicPairs, PromptList, hash_split

# `prefdiff fit` runs in this process: Lightning warns that pytest's own arguments are in sys.argv.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = Path(__file__).resolve().parents[1]
RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def rgb(colour):
    """A colour as the [-1, 1] values of an image channel triple."""
    return torch.tensor(colour, dtype=torch.float32) / 127.5 - 1


def image_bytes(colour, size=(16, 16), fmt="JPEG"):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_parquet(path, rows):
    """Write ``rows`` (dicts of column values) as one parquet shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def pickapic_row(caption, label, first=RED, second=BLUE, size=(16, 16)):
    return {"caption": caption, "jpg_0": image_bytes(first, size), "jpg_1": image_bytes(second, size),
            "label_0": label, "user_id": 7}


def user_error(capsys, code, *fragments):
    """Assert the CLI exited with 2 and printed one error line holding every fragment."""
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("prefdiff: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def fit(tmp_path, data, *extra, trainer="PairModule"):
    """`prefdiff fit` in this process on a tiny class-conditioned UNet; returns the exit code."""
    config = {"trainer": {"accelerator": "cpu", "max_steps": 1, "logger": False, "enable_progress_bar": False,
                          "enable_model_summary": False, "limit_val_batches": 0},
              "model": {"class_path": f"prefdiff.trainers.{trainer}",
                        "init_args": {"model": {"kind": "unet2d", "sample_size": 8, "block_out_channels": [8, 16]},
                                      "lora_rank": 4, "num_steps": 2}},
              "data": {"batch_size": 1, "val_size": 0, **data}}
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["fit", "--config", str(path), "--trainer.default_root_dir", str(tmp_path / "run"), *extra])


# ------------------------------------------------------------- prompts ----


def test_a_prompt_file_is_split_by_a_hash_of_each_prompt(tmp_path):
    prompts = [f"prompt number {i}" for i in range(200)]
    path = tmp_path / "prompts.txt"
    path.write_text("# one prompt a line\n\n" + "\n".join(prompts[:100]) + "\n   \n"
                    + "\n".join(prompts[100:]) + "\nprompt number 13\n")
    splits = {s: [item["cond"] for item in PromptList(path, split=s)] for s in ("train", "val", "test")}
    assert sorted({p for ps in splits.values() for p in ps}) == sorted(prompts)  # comments, blanks skipped
    assert all(hash_split(p) == s for s, ps in splits.items() for p in ps)
    assert splits["test"].count("prompt number 13") == 2  # a repeated prompt never crosses splits
    assert 160 <= len(splits["train"]) <= 190 and splits["val"] and splits["test"]
    # The hash is SHA-256, not Python's salted hash: splits are the same in every process and run.
    assert [hash_split(f"prompt number {i}") for i in (12, 13, 14)] == ["train", "test", "val"]
    assert [item["cond"] for item in PromptList(path, split="validation")] == splits["val"]
    assert [item["cond"] for item in PromptList(path, size=5)] == splits["train"][:5]


def test_jsonl_prompts_keep_the_metadata_that_collates(tmp_path):
    lines = [{"prompt": "a red circle", "id": 1, "category": "colour", "score": 0.5, "cond": "x", "tags": ["a"],
              "note": None},
             {"caption": "a blue square", "id": 2, "category": "shape", "score": "high", "cond": "y", "tags": [],
              "note": None},
             {"text": "two green triangles", "id": 3.5, "category": "count", "cond": "z", "tags": ["b"],
              "note": None}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(UserError):
        PromptList(path, split="train", size=0)
    items = [item for split in ("train", "val", "test") for item in PromptList(path, split=split)]
    assert sorted(item["cond"] for item in items) == ["a blue square", "a red circle", "two green triangles"]
    # id (numbers), category (strings) and cond (strings) are on every line; score mixes kinds; lists and
    # nulls do not collate.
    assert all(set(item["meta"]) == {"category", "cond", "id"} for item in items)
    batch = collate(sorted(items, key=lambda item: item["meta"]["id"]))
    assert batch["cond"] == ["a red circle", "a blue square", "two green triangles"]
    assert batch["meta"]["category"] == ["colour", "shape", "count"]
    assert batch["meta"]["id"].tolist() == [1.0, 2.0, 3.5]


def test_a_prompt_folder_uses_its_split_files(tmp_path):
    (tmp_path / "train.txt").write_text("a\nb\nc\n")
    (tmp_path / "validation.jsonl").write_text('{"prompt": "d"}\n')
    assert [i["cond"] for i in PromptList(tmp_path, split="train")] == ["a", "b", "c"]
    assert [i["cond"] for i in PromptList(tmp_path, split="val")] == ["d"]
    with pytest.raises(UserError, match="has no test.txt or test.jsonl .it has train, val files"):
        PromptList(tmp_path, split="test")


def test_the_builtin_plugin_registers_the_datasets(tmp_path):
    (tmp_path / "train.txt").write_text("a cat\na dog\n")
    manager = get_manager()
    assert {"prompts", "pickapic", "image_captions"} <= set(manager.names("datasets"))
    assert manager.entry("datasets", "prompts").plugin == "text"
    assert len(manager.dataset("prompts", root=str(tmp_path), split="train")) == 2
    assert len(manager.dataset("prompts", path=str(tmp_path / "train.txt"), size=1, split="train")) == 1
    with pytest.raises(UserError, match="needs one of the options path or root"):
        manager.dataset("prompts", split="train")
    data = PrefDataModule(dataset="prompts", dataset_options={"path": str(tmp_path)}, batch_size=2, val_size=0)
    data.setup()
    assert next(iter(data.train_dataloader()))["cond"] in (["a cat", "a dog"], ["a dog", "a cat"])


# ----------------------------------------------------------- Pick-a-Pic ----


def test_pickapic_pairs_put_the_winner_first_and_drop_ties(tmp_path, monkeypatch):
    # Image 0 is red and image 1 blue in every row, so the label alone decides the winner's colour.
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", [
        pickapic_row("zero won", 1.0), pickapic_row("a tie", 0.5), pickapic_row("one won", 0.0)])
    pairs = PickAPicPairs(tmp_path, resolution=8, cache_dir=str(tmp_path / "cache"))
    assert len(pairs) == 2
    first, second = pairs[0], pairs[1]
    assert (first["cond"], second["cond"]) == ("zero won", "one won")
    for item in (first, second):
        assert item["x_w"].shape == item["x_l"].shape == (3, 8, 8) and item["x_w"].dtype == torch.float32
        assert item["x_w"].min() >= -1 and item["x_w"].max() <= 1
    for image, colour in ((first["x_w"], RED), (first["x_l"], BLUE), (second["x_w"], BLUE), (second["x_l"], RED)):
        torch.testing.assert_close(image.mean((1, 2)), rgb(colour), atol=0.05, rtol=0)
    assert len(PickAPicPairs(tmp_path, resolution=8, size=1, cache_dir=str(tmp_path / "cache"))) == 1
    # The Arrow copy is made once and reused: the second reader opened the same, untouched file.
    cache = Path(pairs.table.cache_files[0]["filename"])
    assert cache.is_relative_to(tmp_path / "cache")
    made = cache.stat().st_mtime_ns
    again = PickAPicPairs(tmp_path, resolution=8, cache_dir=str(tmp_path / "cache"))
    assert Path(again.table.cache_files[0]["filename"]) == cache and cache.stat().st_mtime_ns == made
    # Without cache_dir the copy goes under the prefdiff cache, where `prefdiff bench` keeps its data.
    monkeypatch.setenv("PREFDIFF_CACHE", str(tmp_path / "prefdiff-cache"))
    default = Path(PickAPicPairs(tmp_path, resolution=8).table.cache_files[0]["filename"])
    assert default.is_relative_to(tmp_path / "prefdiff-cache" / "datasets")


def test_pickapic_shards_with_image_columns_read_as_byte_columns(tmp_path):
    """Shards saved by `datasets` with its Image feature (a struct of bytes and path) read as Pick-a-Pic's own
    binary columns do."""
    import datasets

    rows = [pickapic_row("zero won", 1.0), pickapic_row("one won", 0.0)]
    write_parquet(tmp_path / "bytes" / "train-0.parquet", rows)
    features = datasets.Features({"caption": datasets.Value("string"), "jpg_0": datasets.Image(),
                                  "jpg_1": datasets.Image(), "label_0": datasets.Value("float64")})
    images = datasets.Dataset.from_dict(
        {"caption": [r["caption"] for r in rows], "label_0": [r["label_0"] for r in rows],
         **{c: [{"bytes": r[c], "path": None} for r in rows] for c in ("jpg_0", "jpg_1")}}, features=features)
    (tmp_path / "images").mkdir()
    images.to_parquet(str(tmp_path / "images" / "train-0.parquet"))
    plain, featured = (PickAPicPairs(tmp_path / name, resolution=8, cache_dir=str(tmp_path / "cache"))
                       for name in ("bytes", "images"))
    assert len(plain) == len(featured) == 2
    for mine, theirs in zip(plain, featured):
        assert mine["cond"] == theirs["cond"]
        torch.testing.assert_close(mine["x_w"], theirs["x_w"], rtol=0, atol=0)
        torch.testing.assert_close(mine["x_l"], theirs["x_l"], rtol=0, atol=0)


def test_a_size_reads_only_the_shards_that_hold_it(tmp_path):
    # Three shards of two decided pairs and a tie each: three pairs need the first two shards only.
    for shard in range(3):
        write_parquet(tmp_path / f"train-0000{shard}-of-00003.parquet", [
            pickapic_row(f"s{shard} a", 1.0), pickapic_row(f"s{shard} tie", 0.5), pickapic_row(f"s{shard} b", 0.0)])
    cache = str(tmp_path / "cache")
    some = PickAPicPairs(tmp_path, resolution=4, size=3, cache_dir=cache)
    assert [shard.name for shard in some.shards] == ["train-00000-of-00003.parquet", "train-00001-of-00003.parquet"]
    assert [item["cond"] for item in some] == ["s0 a", "s0 b", "s1 a"]
    assert len(PickAPicPairs(tmp_path, resolution=4, size=4, cache_dir=cache).shards) == 2
    every = PickAPicPairs(tmp_path, resolution=4, size=50, cache_dir=cache)
    assert len(every.shards) == 3 and len(every) == 6
    assert [item["cond"] for item in every][:3] == ["s0 a", "s0 b", "s1 a"]


def test_images_keep_their_aspect_and_are_centre_cropped(tmp_path):
    from PIL import Image

    bands = Image.new("RGB", (48, 16), GREEN)
    bands.paste(Image.new("RGB", (16, 16), RED), (16, 0))
    bands.paste(Image.new("RGB", (16, 16), BLUE), (32, 0))
    buffer = io.BytesIO()
    bands.save(buffer, format="PNG")
    row = {**pickapic_row("bands", 1.0), "jpg_0": buffer.getvalue()}
    loser_first = {**row, "label_0": 0.0, "jpg_1": image_bytes(BLUE, (20, 30))}
    write_parquet(tmp_path / "train-0.parquet", [row, loser_first])
    pairs = PickAPicPairs(tmp_path, resolution=8, cache_dir=str(tmp_path / "cache"))
    x_w = pairs[0]["x_w"]
    # The shorter side goes to 8 (48x16 -> 24x8) and the middle 8 columns, the red band, are kept.
    torch.testing.assert_close(x_w[:, :, 1:-1], rgb(RED).view(3, 1, 1).expand(3, 8, 6), atol=0.02, rtol=0)
    # SDXL's size and crop conditioning of the pair: image 0's height and width as stored, and the crop's
    # top-left corner in the resized image (as diffusers' SDXL Diffusion-DPO script, whichever image won)
    for item in (pairs[0], pairs[1]):
        assert item["original_size"].tolist() == [16, 48] and item["crop_top_left"].tolist() == [0, 8]
    assert collate([pairs[0], pairs[1]])["original_size"].tolist() == [[16, 48], [16, 48]]


def test_pickapic_shards_are_chosen_by_their_split_prefix(tmp_path):
    for name, captions in {"train-00000-of-00002": ["t0", "t1"], "train-00001-of-00002": ["t2"],
                           "validation-00000-of-00001": ["v0"], "validation_unique-00000-of-00001": ["u0"]}.items():
        write_parquet(tmp_path / f"{name}.parquet", [pickapic_row(c, 1.0) for c in captions])

    def read(split):
        return [item["cond"] for item in PickAPicPairs(tmp_path, split=split, resolution=4,
                                                       cache_dir=str(tmp_path / "cache"))]

    assert read("train") == ["t0", "t1", "t2"]
    assert read("validation") == read("val") == ["v0"]  # not the unique split's shards
    assert read("validation_unique") == read("val_unique") == ["u0"]
    with pytest.raises(UserError, match="has no test shards .test-\\*.parquet.; it has train, val, val_unique"):
        read("test")
    plain = tmp_path / "plain"
    write_parquet(plain / "any-name.parquet", [pickapic_row("p0", 0.0)])
    assert [i["cond"] for i in PickAPicPairs(plain, resolution=4, cache_dir=str(tmp_path / "cache"))] == ["p0"]
    with pytest.raises(UserError, match="not named by split, so all of them are training data"):
        PickAPicPairs(plain, split="val", resolution=4)


def test_a_pickapic_folder_gives_its_distinct_captions_as_prompts(tmp_path):
    """`--dataset prompts` on Pick-a-Pic's shards: the split's distinct captions in order, ties too (a prompt
    needs no winner), only the caption column read; test_unique is the unique split's prompts."""
    shards = {"train-00000-of-00002": [("t0", 1.0), ("t1", 0.5), ("t0 ", 0.0)], "train-00001-of-00002": [("t2", 1.0)],
              "test-00000-of-00001": [("s0", 1.0), ("s1", 1.0), ("s0", 0.0)], "test_unique-00000-of-00001": [("s0", 1.0)]}
    for name, rows in shards.items():
        write_parquet(tmp_path / "data" / f"{name}.parquet", [pickapic_row(c, label) for c, label in rows])

    def read(split, size=None):
        return [item["cond"] for item in PromptList(tmp_path, split=split, size=size)]

    assert read("train") == ["t0", "t1", "t2"]
    assert read("train", size=2) == ["t0", "t1"]
    assert read("test") == ["s0", "s1"] and read("test_unique") == ["s0"]
    with pytest.raises(UserError, match="has no val shards .val-\\*.parquet or validation-\\*.parquet.; it has "
                                        "test, test_unique, train"):
        read("val")
    captions_only = tmp_path / "captions"
    write_parquet(captions_only / "train-0.parquet", [{"caption": "c0"}, {"caption": "c1"}])
    assert [i["cond"] for i in PromptList(captions_only)] == ["c0", "c1"]  # prompts need no images or labels
    (tmp_path / "prompts.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match=r"prompt file .*prompts.txt is not split already, so it has only the "
                                        r"splits train, val and test .* split 'test_unique' needs a folder of split "
                                        r"files \(test_unique.txt or test_unique.jsonl\) or of Pick-a-Pic shards"):
        PromptList(tmp_path / "prompts.txt", split="test_unique")
    # Split files beside shards: the files are the folder's splits, and the error says the shards were not read.
    (tmp_path / "data" / "train.txt").write_text("x\n")
    assert [i["cond"] for i in PromptList(tmp_path / "data")] == ["x"]
    with pytest.raises(UserError, match=r"has no test_unique.txt or test_unique.jsonl \(it has train files\) \(its "
                                        r"\.parquet files are not read: .*\); add one$"):
        PromptList(tmp_path / "data", split="test_unique")


def test_pair_options_reach_the_pickapic_reader_and_a_pair_file_takes_none(tmp_path):
    write_parquet(tmp_path / "train-0.parquet", [pickapic_row(f"p{i}", 1.0) for i in range(3)])
    data = PrefDataModule(pairs=str(tmp_path), pairs_options={"resolution": 4, "size": 2}, batch_size=2)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["x_w"].shape == (2, 3, 4, 4) and len(batch["cond"]) == 2 and data.val_set is None
    with pytest.raises(UserError, match="pairs_options .'resolutoin'. do not fit the Pick-a-Pic reader"):
        PrefDataModule(pairs=str(tmp_path), pairs_options={"resolutoin": 4}).setup()
    (tmp_path / "pairs.jsonl").write_text("")
    with pytest.raises(UserError, match="pairs.jsonl is a pair file, so drop the options"):
        PrefDataModule(pairs=str(tmp_path / "pairs.jsonl"), pairs_options={"resolution": 4}).setup()
    for options in ({"resolution": 4}, {}):  # a mistyped folder is named as missing, options or not
        with pytest.raises(UserError, match=r"--data.pairs .*pickapic_v2 does not exist; pass a folder of Pick-a-Pic"):
            PrefDataModule(pairs=str(tmp_path / "pickapic_v2"), pairs_options=options).setup()


def test_a_pickapic_folder_trains_diffusion_dpo_through_prefdiff_fit(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from prefdiff.testing import tiny_pipeline

    pipe = tiny_pipeline(tmp_path / "pipe")
    shards = tmp_path / "pickapic" / "data"
    write_parquet(shards / "train-00000-of-00001.parquet",
                  [pickapic_row(f"a red circle {i}", float(i % 2), size=(16, 16)) for i in range(4)]
                  + [pickapic_row("a tie", 0.5)])
    run = tmp_path / "run"
    code = main(["fit", "--config", str(ROOT / "configs/sd_dpo_pickapic.yaml"),
                 "--model.init_args.base", str(pipe), "--model.init_args.lora_rank", "4",
                 "--model.init_args.lr", "0.01",
                 "--data.pairs", str(tmp_path / "pickapic"), "--data.pairs_options", '{"resolution": 16}',
                 "--data.batch_size", "2", "--data.num_workers", "0",
                 "--trainer.accelerator", "cpu", "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "1",
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run)])
    assert code == 0, capsys.readouterr().err[-3000:]
    lora = run / "lora"
    assert {"adapter_model.safetensors", "adapter_config.json", "pytorch_lora_weights.safetensors"} <= {
        p.name for p in lora.iterdir()}
    assert list(run.rglob("last.ckpt"))
    # diffusers loads the adapter, and it changes what the UNet predicts.
    sd = StableDiffusionPipeline.from_pretrained(pipe, local_files_only=True)
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 32, 32, generator=g)
    with torch.no_grad():
        base = sd.unet(latents, 500, encoder_hidden_states=text).sample
        sd.load_lora_weights(lora)
        tuned = sd.unet(latents, 500, encoder_hidden_states=text).sample
    assert sd.get_active_adapters() and not torch.allclose(base, tuned, atol=1e-6)


# ------------------------------------------------------- image captions ----


def write_captions(folder, names_colours, key="text"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, colour in names_colours:
        Image.new("RGB", (24, 16), colour).save(folder / name)
        lines.append(json.dumps({"file_name": name, key: f"a {name.split('.')[0]} picture"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_caption_that_is_not_text_is_one_clear_error(tmp_path):
    folder = write_captions(tmp_path / "images", [("a.png", RED)])
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": 5}\n')
    with pytest.raises(UserError, match=r"metadata.jsonl:1 needs a string file_name and a string caption"):
        ImageCaptions(folder, resolution=8)


def test_an_image_is_resized_bilinearly_on_its_shorter_side_and_centre_cropped(tmp_path):
    """As diffusers' text-to-image and Diffusion-DPO scripts prepare images (transforms.Resize, bilinear, and
    CenterCrop), written out here with PIL; and a 1-pixel resolution is still a resolution."""
    import numpy as np
    from PIL import Image

    from prefdiff.textdata.images import check_resolution, read_image

    noise = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)  # 16 high, 24 wide
    Image.fromarray(noise).save(tmp_path / "wide.png")
    picture = read_image(tmp_path / "wide.png", 8, "wide.png")
    resized = np.asarray(Image.fromarray(noise).resize((12, 8), Image.BILINEAR))[:, 2:10]
    torch.testing.assert_close(picture.pixels, torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    assert picture.original_size == (16, 24) and picture.crop_top_left == (0, 2)
    assert check_resolution(1) == 1


def test_an_image_caption_folder_gives_sft_targets(tmp_path):
    colours = [RED, GREEN, BLUE]
    write_captions(tmp_path, [(f"img{i}.png", colours[i % 3]) for i in range(60)], key="caption")
    splits = {s: ImageCaptions(tmp_path, split=s, resolution=8) for s in ("train", "val", "test")}
    names = {s: [e.file_name for e in d.entries] for s, d in splits.items()}
    assert sorted(n for ns in names.values() for n in ns) == sorted(f"img{i}.png" for i in range(60))
    assert all(hash_split(n) == s for s, ns in names.items() for n in ns)
    item = splits["train"][0]
    index = int(names["train"][0][3:-4])
    assert item["cond"] == f"a img{index} picture" and item["x0"].shape == (3, 8, 8)
    # 24x16 -> 12x8, the middle 8 columns: SDXL's size and crop conditioning of the image
    assert item["original_size"].tolist() == [16, 24] and item["crop_top_left"].tolist() == [0, 2]
    torch.testing.assert_close(item["x0"], rgb(colours[index % 3]).view(3, 1, 1).expand(3, 8, 8))
    assert len(ImageCaptions(tmp_path, size=4)) == 4


def test_split_subfolders_are_used_when_present(tmp_path):
    write_captions(tmp_path / "train", [("a.png", RED), ("b.png", BLUE)])
    write_captions(tmp_path / "validation", [("c.png", GREEN)])
    assert [e.file_name for e in ImageCaptions(tmp_path, split="train").entries] == ["a.png", "b.png"]
    assert [e.caption for e in ImageCaptions(tmp_path, split="val").entries] == ["a c picture"]
    with pytest.raises(UserError, match="has train/, validation/ but no test/ folder"):
        ImageCaptions(tmp_path, split="test")
    data = PrefDataModule(dataset="image_captions", dataset_options={"root": str(tmp_path), "resolution": 4},
                          batch_size=2, val_size=1)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["x0"].shape == (2, 3, 4, 4) and sorted(batch["cond"]) == ["a a picture", "a b picture"]
    assert len(data.val_set) == 1
    flat = write_captions(tmp_path / "flat", [("a.png", RED)])
    with pytest.raises(UserError, match=r"image-caption folder .*flat is not split already, .* split "
                                        r"'val_unique' needs a validation_unique/ subfolder"):
        ImageCaptions(flat, split="val_unique")


# ------------------------------------------------------------ bad input ----


def _bad_prompt_file(tmp_path):
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    return {"dataset": "prompts", "dataset_options": {"path": str(tmp_path / "empty.txt")}}, [
        "empty.txt holds no prompts", "one prompt a line"]


def _bad_jsonl_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\n{"title": "no prompt"}\n')
    return {"dataset": "prompts", "dataset_options": {"path": str(tmp_path / "p.jsonl")}}, [
        "p.jsonl:2 has no prompt", "prompt, caption, text"]


def _parquet_without_columns(tmp_path):
    write_parquet(tmp_path / "shards" / "train-0.parquet", [{"caption": "c", "jpg_0": b"x", "score": 1}])
    return {"pairs": str(tmp_path / "shards")}, ["train-0.parquet lacks the column(s) jpg_1, label_0",
                                                 "caption, jpg_0, jpg_1, label_0"]


def _folder_without_parquet(tmp_path):
    (tmp_path / "shards").mkdir()
    return {"pairs": str(tmp_path / "shards")}, ["shards holds no .parquet files", "JSONL pair file"]


def _only_ties(tmp_path):
    write_parquet(tmp_path / "shards" / "train-0.parquet", [pickapic_row("tie", 0.5)])
    return {"pairs": str(tmp_path / "shards")}, ["hold only ties"]


def _bad_label(tmp_path):
    write_parquet(tmp_path / "shards" / "train-0.parquet", [pickapic_row("a", 1.0), pickapic_row("b", 0.7)])
    return {"pairs": str(tmp_path / "shards")}, ["row 1 of", "train-0.parquet has label_0 0.7"]


def _text_label(tmp_path):
    write_parquet(tmp_path / "shards" / "train-0.parquet", [{**pickapic_row("a", 1.0), "label_0": "left"}])
    return {"pairs": str(tmp_path / "shards")}, ["train-0.parquet holds label_0 as string; it must be a number"]


def _no_metadata(tmp_path):
    (tmp_path / "images").mkdir()
    return {"dataset": "image_captions", "dataset_options": {"root": str(tmp_path / "images")}}, [
        "images has no metadata.jsonl", '"file_name"']


def _missing_image(tmp_path):
    folder = write_captions(tmp_path / "images", [("a.png", RED)])
    with open(folder / "metadata.jsonl", "a") as f:
        f.write('{"file_name": "gone.png", "text": "lost"}\n')
    return {"dataset": "image_captions", "dataset_options": {"root": str(folder)}}, [
        "metadata.jsonl:2 names gone.png, which is not in"]


def _unreadable_image(tmp_path):
    assert hash_split("bad.png") == "train"  # so training reads it
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "metadata.jsonl").write_text('{"file_name": "bad.png", "text": "broken"}\n')
    return {"dataset": "image_captions", "dataset_options": {"root": str(folder), "resolution": 8}}, [
        "bad.png (named on", "metadata.jsonl:1) is not a readable image"]


@pytest.mark.parametrize("case", [_bad_prompt_file, _bad_jsonl_line, _parquet_without_columns,
                                  _folder_without_parquet, _only_ties, _bad_label, _text_label, _no_metadata,
                                  _missing_image, _unreadable_image], ids=lambda f: f.__name__[1:])
def test_bad_input_is_one_clear_error_with_exit_code_2(tmp_path, capsys, case):
    data, fragments = case(tmp_path)
    trainer = "PairModule" if "pairs" in data else "SFTModule"
    user_error(capsys, fit(tmp_path, data, trainer=trainer), *fragments)
