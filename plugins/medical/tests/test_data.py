"""The Decathlon reader on tasks written by make-data, and each bad input it must name."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from prefdiff.api import UserError
from prefdiff.cli import main
from prefdiff_medical.data import SPLITS, DecathlonSlices


def load_all(root, **options):
    return {split: DecathlonSlices(root, split=split, **options) for split in SPLITS}


def test_make_data_writes_the_decathlon_layout_and_reads_back_split_by_volume(tmp_path, capsys):
    root = tmp_path / "Task90_Demo"
    assert main(["medical", "make-data", str(root), "--volumes", "7", "--depth", "10", "--classes", "3"]) == 0
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 7 and set(meta["labels"]) == {"0", "1", "2", "3"}
    assert len(list((root / "imagesTr").glob("*.nii.gz"))) == 7 == len(list((root / "labelsTr").glob("*.nii.gz")))
    assert nib.load(root / meta["training"][0]["image"]).shape == (32, 32, 10)

    splits = load_all(root, resolution=16)
    volumes = {split: {data.volume_of(i) for i in range(len(data))} for split, data in splits.items()}
    assert not volumes["train"] & volumes["val"] and not volumes["train"] & volumes["test"]
    assert not volumes["val"] & volumes["test"]
    assert len(set().union(*volumes.values())) == 7
    for data in splits.values():
        item = data[0]
        assert item["x0"].shape == item["cond"].shape == (1, 16, 16)
        assert -1 <= item["x0"].min() and item["x0"].max() <= 1
        assert set(item["cond"].unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
        assert all((data[i]["cond"] > 0).any() for i in range(len(data)))  # min_foreground=1
    assert splits["train"].num_classes == 3
    # The same split every time, and `size` caps the number of slices.
    assert DecathlonSlices(root, split="test", resolution=16).volumes == splits["test"].volumes
    assert len(DecathlonSlices(root, split="train", resolution=16, size=5)) == 5
    assert main(["medical", "make-data", str(root)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_images_and_masks_stay_aligned(small_task):
    # The synthetic objects are the brightest voxels: labelled pixels must be brighter on average.
    data = DecathlonSlices(small_task, split="train", percentiles=(0, 100))
    x = torch.stack([data[i]["x0"] for i in range(len(data))])
    m = torch.stack([data[i]["cond"] for i in range(len(data))])
    assert x[m > 0].mean() > x[m == 0].mean() + 0.5


def _first(task, key="image"):
    rec = json.loads((task / "dataset.json").read_text())["training"][0]
    return (task / rec[key]).resolve()


def test_corrupt_nifti_names_the_file(task_copy):
    image = _first(task_copy)
    image.write_bytes(b"this is not a NIfTI file at all" * 10)
    with pytest.raises(UserError, match=rf"{image}.*corrupt or truncated"):
        load_all(task_copy)


def test_truncated_nifti_names_the_file(task_copy):
    label = _first(task_copy, "label")
    label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"{label}.*corrupt or truncated"):
        load_all(task_copy)


def test_image_and_label_of_different_shapes(task_copy):
    label = _first(task_copy, "label")
    nib.save(nib.Nifti1Image(np.zeros((32, 30, 10), np.uint8), np.eye(4)), str(label))
    with pytest.raises(UserError, match=rf"has shape \(32, 32, 10\) but its label {label} has shape \(32, 30, 10\)"):
        load_all(task_copy)


def test_label_with_undeclared_classes(task_copy):
    label = _first(task_copy, "label")
    volume = np.asarray(nib.load(label).dataobj).copy()
    volume[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(label))
    with pytest.raises(UserError, match=rf"{label} holds label value\(s\) 7 that dataset.json does not declare"):
        load_all(task_copy)


def test_nan_voxels_name_the_file(task_copy):
    # One NaN voxel turns the percentile scaling, hence every slice of the volume, into NaN.
    image = _first(task_copy)
    loaded = nib.load(image)
    volume = np.asarray(loaded.dataobj).astype(np.float32)
    volume[0, 0, :2] = np.nan
    nib.save(nib.Nifti1Image(volume, loaded.affine), str(image))
    with pytest.raises(UserError, match=rf"{image} holds 2 NaN or infinite voxel\(s\)"):
        load_all(task_copy)


def test_empty_or_missing_images_folder(task_copy):
    for f in (task_copy / "imagesTr").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=rf"{task_copy / 'imagesTr'} is empty"):
        DecathlonSlices(task_copy)
    (task_copy / "imagesTr").rmdir()
    with pytest.raises(UserError, match=rf"{task_copy / 'imagesTr'} is missing.*make-data"):
        DecathlonSlices(task_copy)


def test_dataset_json_that_does_not_parse(task_copy):
    meta = task_copy / "dataset.json"
    meta.write_text(meta.read_text()[:-20])
    with pytest.raises(UserError, match=rf"{meta} does not parse as JSON"):
        DecathlonSlices(task_copy)


def test_missing_task_folder_and_listed_file(task_copy, tmp_path):
    with pytest.raises(UserError, match="does not exist.*make-data"):
        DecathlonSlices(tmp_path / "nowhere")
    image = _first(task_copy)
    image.unlink()
    with pytest.raises(UserError, match=rf"{image} \(image of training\[0\]"):
        DecathlonSlices(task_copy)


def test_gzip_that_is_valid_but_not_nifti(task_copy):
    image = _first(task_copy)
    image.write_bytes(gzip.compress(b"\0" * 100))
    with pytest.raises(UserError, match=str(image)):
        load_all(task_copy)


def test_bad_options_are_named_as_flags(small_task):
    with pytest.raises(UserError, match="dataset split must be one of train, val, test"):
        DecathlonSlices(small_task, split="training")
    with pytest.raises(UserError, match="dataset option percentiles must be two numbers"):
        DecathlonSlices(small_task, percentiles=(99, 1))


def test_commands_print_one_line_and_exit_2_on_bad_input(task_copy, capsys):
    meta = task_copy / "dataset.json"
    meta.write_text("{not json")
    assert main(["medical", "train-segmenter", str(task_copy), str(task_copy / "seg.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(meta) in err and "does not parse" in err
    assert main(["medical", "make-data", str(task_copy / "new"), "--volumes", "2"]) == 2
    assert "--volumes must be >= 3" in capsys.readouterr().err
    # The output is checked before any training: a folder is not a checkpoint file.
    assert main(["medical", "train-segmenter", str(task_copy), str(task_copy)]) == 2
    assert f"{task_copy} is a folder; pass the checkpoint file to write" in capsys.readouterr().err


def test_a_bad_task_variable_is_named(tmp_path, monkeypatch):
    from prefdiff_medical.recipe import medical_recipe

    monkeypatch.setenv("PREFDIFF_MEDICAL_TASK", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=rf"PREFDIFF_MEDICAL_TASK={tmp_path / 'nowhere'}: task folder .* does not exist"):
        medical_recipe(quick=True)


def test_sample_and_edit_draw_the_conditioning_masks_above_the_slices(small_task, tmp_path):
    from PIL import Image

    from prefdiff.testing import drawn_figures
    from prefdiff_medical.recipe import medical_recipe

    for png in drawn_figures(medical_recipe(quick=True), {"root": small_task}, tmp_path):
        with Image.open(png) as figure:
            pixels = np.asarray(figure.convert("RGB")).astype(int)
        # the samples are grey; only the masks' class colours make red differ from green
        assert (np.abs(pixels[..., 0] - pixels[..., 1]) > 100).any(), png


def test_the_sample_and_edit_figures_show_every_sample_and_an_edits_two_masks(tmp_path, monkeypatch):
    import prefdiff_medical.figures as figures

    shown = []
    monkeypatch.setattr(figures, "save_labelled_rows", lambda rows, path, columns: shown.append(
        {name: len(v) for name, v in rows.items()}))
    masks, images = torch.randint(0, 3, (10, 1, 8, 8)).float(), torch.rand(10, 1, 8, 8)
    DecathlonSlices.draw(None, {"samples": images}, masks, tmp_path / "s.png")  # prefdiff sample --n 10
    assert shown.pop() == {"conditioning mask 1-8": 8, "samples 1-8": 8, "conditioning mask 9-10": 2,
                           "samples 9-10": 2}
    # prefdiff edit --index 1 --cond-from 2: the input beside its own mask, the edit beside the target's
    DecathlonSlices.draw(None, {"input": images[:1], "edited": images[1:2]}, masks[2:3], tmp_path / "e.png",
                         input_cond=masks[1:2])
    assert shown.pop() == {"mask": 1, "edited mask": 1, "input": 1, "edited": 1}
    figures.render({"dpo": images}, masks, tmp_path / "b.png")  # the benchmark's figure keeps its 8
    assert shown.pop() == {"conditioning mask": 8, "dpo": 8}
