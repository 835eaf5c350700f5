"""make-data writes the imagefolder and prompt formats, and the dataset reads them back."""

import json
import shutil

import pytest
import torch

from prefdiff.api import UserError
from prefdiff.cli import main
from prefdiff_t2i import world
from prefdiff_t2i.data import ShapesCaptions


def test_make_data_command_writes_the_formats(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["t2i", "make-data", str(out), "--train", "10", "--val", "4", "--test", "6", "--seed", "1"]) == 0
    assert "wrote 10 + 4 + 6 images" in capsys.readouterr().out
    for split, n in (("train", 10), ("val", 4), ("test", 6)):
        records = [json.loads(line) for line in (out / split / "metadata.jsonl").read_text().splitlines()]
        assert len(records) == n and all((out / split / r["file_name"]).is_file() for r in records)
        for r in records:
            attrs = {k: r[k] for k in r if k not in ("file_name", "text", "objects")}
            assert world.parse(r["text"]) == attrs == world.describe(r["objects"])
            assert world.split_of(attrs) == split
        listed = (out / "prompts" / f"{split}.txt").read_text().splitlines()
        assert listed == [world.caption(p) for p in world.prompts_of(split)]
        meta = [json.loads(line) for line in (out / "prompts" / f"{split}.jsonl").read_text().splitlines()]
        assert [m["prompt"] for m in meta] == listed and all(world.parse(m["prompt"])["task"] == m["task"] for m in meta)
    info = json.loads((out / "world.json").read_text())
    assert info["train"] == 10 and len(info["held_out"]["test"]) == len(world.prompts_of("test"))
    # A second write into the same folder is refused with one line.
    assert main(["t2i", "make-data", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_dataset_reads_a_split_back(world_dir):
    from PIL import Image

    train = ShapesCaptions(world_dir, "train")
    assert len(train) == 48 and len(ShapesCaptions(world_dir, "test", size=5)) == 5
    item = train[3]
    assert item["x0"].shape == (3, 32, 32) and item["x0"].min() >= -1 and item["x0"].max() <= 1
    record = json.loads((world_dir / "train/metadata.jsonl").read_text().splitlines()[3])
    assert item["cond"] == record["text"] and train.attributes(3) == world.parse(record["text"])
    png = torch.from_numpy(__import__("numpy").asarray(Image.open(world_dir / "train" / record["file_name"])))
    torch.testing.assert_close(item["x0"], png.permute(2, 0, 1).float() / 127.5 - 1)
    test = ShapesCaptions(world_dir, "test")
    assert {world.caption(world.parse(test[i]["cond"])) for i in range(len(test))} <= {
        world.caption(p) for p in world.prompts_of("test")}


def test_the_dataset_is_registered(world_dir):
    from prefdiff.plugins import get_manager

    data = get_manager().dataset("t2i_shapes", split="val", root=str(world_dir))
    assert len(data) == 12 and isinstance(data[0]["cond"], str)


def test_bad_folders_get_one_clear_error(world_dir, tmp_path):
    with pytest.raises(UserError, match="metadata.jsonl does not exist; write the data with `prefdiff t2i make-data"):
        ShapesCaptions(tmp_path, "train")
    broken = shutil.copytree(world_dir, tmp_path / "broken")
    (broken / "val/metadata.jsonl").write_text('{"file_name": "00000.png"}\n')
    with pytest.raises(UserError, match="line 1 is not a record with 'file_name' and 'text'"):
        ShapesCaptions(broken, "val")
    (broken / "test/00001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read .*00001.png"):
        ShapesCaptions(broken, "test")
    with pytest.raises(UserError, match="split must be one of"):
        ShapesCaptions(world_dir, "holdout")
