"""Demonstrations: make-data writes robomimic's layout, the dataset reads it or says why not."""

import json

import h5py
import numpy as np
import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff.cli import main
from prefdiff_robotics.scene import COND_DIM, HORIZON


def test_make_data_writes_the_robomimic_layout(demo_file):
    with h5py.File(demo_file, "r") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        assert env_args["env_name"] == "prefdiff_robotics/PointRoom-v0"
        demos = [k for k in f["data"] if k.startswith("demo_")]
        assert len(demos) == 60
        g = f["data/demo_0"]
        assert {"obs", "next_obs", "actions", "states", "rewards", "dones"} <= set(g)
        assert g["obs/robot_pos"].shape == (g.attrs["num_samples"], 2) and g["actions"].shape[1] == 2
        kinds = [f["data"][d].attrs["kind"] for d in demos]
        masks = {k: len(f["mask"][k]) for k in ("train", "valid", "test")}
    assert kinds.count("expert") > len(kinds) / 2 and set(kinds) - {"expert"}  # mostly good, not all
    assert masks == {"train": 48, "valid": 6, "test": 6}


def test_dataset_items_are_normalised_trajectories(demo_file):
    manager = get_manager()
    train = manager.dataset("robot_demos", split="train", path=str(demo_file))
    test = manager.dataset("robot_demos", split="test", root=str(demo_file.parent), size=4)
    assert len(train) == 48 and len(test) == 4
    item = train[0]
    assert item["x0"].shape == (4, HORIZON) and item["cond"].shape == (COND_DIM,)
    assert train.x0.abs().max() <= 1.0 + 1e-6
    # the first position is the start the condition names
    torch.testing.assert_close(item["x0"][:2, 0], item["cond"][:2])


def _copy(src, dst, edit):
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        for key in a:
            a.copy(a[key], b, name=key)
        for key, value in a["data"].attrs.items():
            b["data"].attrs[key] = value
        edit(b)
    return dst


def test_file_in_another_layout_is_a_clear_error(tmp_path):
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f.create_dataset("trajectories/observations", data=np.zeros((5, 2)))
    with pytest.raises(UserError, match=r"other.hdf5 is not in the robomimic layout.*make-data"):
        get_manager().dataset("robot_demos", path=str(other))
    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        get_manager().dataset("robot_demos", path=str(text))
    with pytest.raises(UserError, match="does not exist.*make-data"):
        get_manager().dataset("robot_demos", path=str(tmp_path / "missing.hdf5"))
    with pytest.raises(UserError, match="is a folder; pass path= the HDF5 file"):
        get_manager().dataset("robot_demos", path=str(tmp_path))


def test_dimensions_that_do_not_match_the_model_are_a_clear_error(demo_file, tmp_path):
    def widen_actions(f):
        actions = f["data/demo_3/actions"][()]
        del f["data/demo_3/actions"]
        f["data/demo_3/actions"] = np.concatenate([actions, np.zeros((len(actions), 5))], axis=1)

    wide = _copy(demo_file, tmp_path / "wide.hdf5", widen_actions)
    with pytest.raises(UserError, match=r"data/demo_3/actions has shape \[\d+, 7\] but the model expects \[T, 2\]"):
        get_manager().dataset("robot_demos", path=str(wide))

    def drop_state(f):
        del f["data/demo_0/obs/robot_pos"]

    missing = _copy(demo_file, tmp_path / "missing.hdf5", drop_state)
    with pytest.raises(UserError, match=r"data/demo_0/obs/robot_pos is missing"):
        get_manager().dataset("robot_demos", path=str(missing))
    with pytest.raises(UserError, match="state_dim=2 and action_dim=2"):
        get_manager().dataset("robot_demos", path=str(demo_file), state_dim=3)


def test_demo_with_nan_is_skipped_with_a_warning(demo_file, tmp_path, caplog):
    def poison(f):
        f["data/demo_1/obs/robot_pos"][4, 0] = np.nan

    poisoned = _copy(demo_file, tmp_path / "nan.hdf5", poison)
    with caplog.at_level("WARNING", logger="prefdiff.robotics"):
        data = get_manager().dataset("robot_demos", split="train", path=str(poisoned))
    assert len(data) == 47 and data.dropped == 1
    assert [r.getMessage() for r in caplog.records] == [f"{poisoned}: skipped 1 demo(s) holding NaN or Inf"]
    assert torch.isfinite(data.x0).all()


def test_make_data_rejects_bad_arguments(tmp_path, capsys):
    assert main(["robotics", "make-data", str(tmp_path / "x.hdf5"), "--demos", "0"]) == 2
    assert "--demos must be >= 1" in capsys.readouterr().err
    (tmp_path / "afile").write_text("a user's file")
    assert main(["robotics", "make-data", str(tmp_path / "afile" / "x.hdf5"), "--demos", "1"]) == 2
    assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert main(["robotics", "make-data", str(tmp_path / "afile"), "--demos", "1"]) == 2
    assert f"{tmp_path / 'afile'} exists and was not written by" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "a user's file"
    assert main(["robotics", "make-data", str(tmp_path), "--demos", "1"]) == 2
    assert "it is a folder; pass a file name" in capsys.readouterr().err


def test_make_data_replaces_its_own_file_but_never_a_users_robomimic_file(demo_file, tmp_path, capsys):
    import shutil

    users = tmp_path / "lift.hdf5"  # robomimic's layout, written by someone else's environment
    with h5py.File(users, "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1})
        f.create_dataset("data/demo_0/actions", data=np.zeros((5, 7)))
    before = users.read_bytes()
    assert main(["robotics", "make-data", str(users), "--demos", "2"]) == 2
    assert "was not written by `prefdiff robotics make-data`" in capsys.readouterr().err
    assert users.read_bytes() == before
    ours = shutil.copy(demo_file, tmp_path / "ours.hdf5")
    assert main(["robotics", "make-data", str(ours), "--demos", "2"]) == 0
    with h5py.File(ours, "r") as f:
        assert len([k for k in f["data"] if k.startswith("demo_")]) == 2


def _masks(f, **masks):
    """Replace the file's split masks with ``masks`` (split -> demo numbers)."""
    del f["mask"]
    for key, numbers in masks.items():
        f.create_dataset(f"mask/{key}", data=np.array([f"demo_{i}".encode() for i in numbers]))


def _split(path, split):
    """The demos of a split, as rows of the dataset's conditions."""
    return {tuple(c.tolist()) for c in get_manager().dataset("robot_demos", split=split, path=str(path)).cond}


def test_test_split_never_takes_training_demos(demo_file, tmp_path, caplog):
    # robomimic's own files carry mask/train and mask/valid only; here the valid demos come first.
    two = _copy(demo_file, tmp_path / "two.hdf5", lambda f: _masks(f, train=range(6, 60), valid=range(6)))
    with caplog.at_level("WARNING", logger="prefdiff.robotics"):
        test = _split(two, "test")
    assert test == _split(two, "val") and not test & _split(two, "train")
    assert "no mask/test" in caplog.text and "validation and test coincide" in caplog.text

    spare = _copy(demo_file, tmp_path / "spare.hdf5", lambda f: _masks(f, train=range(6, 54), valid=range(6)))
    caplog.clear()
    with caplog.at_level("WARNING", logger="prefdiff.robotics"):
        test = _split(spare, "test")  # the demos in no mask
    assert len(test) == 6 and not test & (_split(spare, "train") | _split(spare, "val")) and not caplog.text

    all_train = _copy(demo_file, tmp_path / "all.hdf5", lambda f: _masks(f, train=range(60)))
    with pytest.raises(UserError, match=r"all\.hdf5: its masks \(mask/train\) leave no held-out demo for the test "
                                        r"split"):
        get_manager().dataset("robot_demos", split="test", path=str(all_train))
    assert len(get_manager().dataset("robot_demos", split="train", path=str(all_train))) == 60
    shared = _copy(demo_file, tmp_path / "shared.hdf5", lambda f: _masks(f, train=range(50), test=range(45, 60)))
    with pytest.raises(UserError, match=r"mask/test shares 5 demo\(s\) with mask/train"):
        get_manager().dataset("robot_demos", split="test", path=str(shared))


def test_a_file_with_its_own_key_names_is_read_through_the_keys_option(demo_file, tmp_path):
    def rename(f):
        for demo in (k for k in f["data"] if k.startswith("demo_")):
            f.move(f"data/{demo}/obs/robot_pos", f"data/{demo}/obs/robot0_eef_pos")
            f.move(f"data/{demo}/actions", f"data/{demo}/commands")

    renamed = _copy(demo_file, tmp_path / "renamed.hdf5", rename)
    with pytest.raises(UserError, match=r"data/demo_0/obs/robot_pos is missing.*dataset option keys, e\.g\. "
                                        r"keys=\{\"robot_pos\": \"robot0_eef_pos\"\}"):
        get_manager().dataset("robot_demos", path=str(renamed))
    data = get_manager().dataset("robot_demos", path=str(renamed),
                                 keys={"robot_pos": "robot0_eef_pos", "actions": "commands"})
    original = get_manager().dataset("robot_demos", path=str(demo_file))
    assert torch.equal(data.x0, original.x0) and torch.equal(data.cond, original.cond)
    with pytest.raises(UserError, match="keys names 'speed', which robot_demos does not read"):
        get_manager().dataset("robot_demos", path=str(renamed), keys={"speed": "v"})


def test_sample_and_edit_draw_the_trajectories_in_their_layouts(demo_file, tmp_path):
    from PIL import Image

    from prefdiff.testing import drawn_figures
    from prefdiff_robotics.recipe import robotics_recipe

    samples, edit = drawn_figures(robotics_recipe(quick=True), {"path": demo_file}, tmp_path,
                                  edit=("--cond-from", "1"))
    with Image.open(samples) as one_row, Image.open(edit) as two_rows:
        assert two_rows.height > 1.5 * one_row.height  # input and edited, each drawn in its layout
