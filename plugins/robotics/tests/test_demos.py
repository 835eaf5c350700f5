"""Demonstrations: make-data writes robomimic's layout, the dataset reads it or says why not."""

import json
import warnings

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


def test_demo_with_nan_is_skipped_with_a_warning(demo_file, tmp_path):
    def poison(f):
        f["data/demo_1/obs/robot_pos"][4, 0] = np.nan

    poisoned = _copy(demo_file, tmp_path / "nan.hdf5", poison)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = get_manager().dataset("robot_demos", split="train", path=str(poisoned))
    assert len(data) == 47 and data.dropped == 1
    assert any("skipped 1 demo" in str(w.message) for w in caught)
    assert torch.isfinite(data.x0).all()


def test_make_data_rejects_bad_arguments(tmp_path, capsys):
    assert main(["robotics", "make-data", str(tmp_path / "x.hdf5"), "--demos", "0"]) == 2
    assert "--demos must be >= 1" in capsys.readouterr().err
