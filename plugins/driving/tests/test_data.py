"""The synthetic dataroot loads in the installed nuscenes-devkit, and the dataset reads it through it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prefdiff.errors import UserError
from prefdiff.plugins import get_manager
from prefdiff_driving import bev
from prefdiff_driving.data import TABLES, NuScenesBEV


def test_devkit_loads_the_generated_tables_and_map(dataroot):
    from nuscenes.map_expansion.map_api import NuScenesMap, locations
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils import splits

    nusc = NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)
    assert sorted(s["name"] for s in nusc.scene) == sorted(splits.mini_train + splits.mini_val)
    for name in TABLES:
        assert len(getattr(nusc, name)) > 0, name
    assert all(len(s["anns"]) > 0 for s in nusc.sample[:20])
    # the devkit's own lookups work on the records: velocity from prev/next, map of each log
    ann = next(a for a in nusc.sample_annotation if a["prev"] and a["next"])
    assert np.isfinite(nusc.box_velocity(ann["token"])).all()
    location = nusc.get("log", nusc.scene[0]["log_token"])["location"]
    assert location in locations
    nmap = NuScenesMap(dataroot=str(dataroot), map_name=location)
    assert nmap.version == "1.3" and len(nmap.lane) > 0 and len(nmap.walkway) > 0
    pose = nusc.ego_pose[0]
    assert nmap.layers_on_point(*pose["translation"][:2])["drivable_area"] != ""
    # the ego drives on the map mask (semantic prior) the map table names
    assert nusc.map[0]["mask"].is_on_mask(*pose["translation"][:2]).all()


def test_dataset_reads_boxes_and_map_through_the_devkit(dataroot, test_split):
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils import splits

    nusc = NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)
    val_scenes = {s["token"] for s in nusc.scene if s["name"] in splits.mini_val}
    assert len(test_split) == sum(s["scene_token"] in val_scenes for s in nusc.sample) > 0
    item = test_split[3]
    assert item["x0"].shape == (bev.AGENT_CHANNELS, bev.RESOLUTION, bev.RESOLUTION)
    assert set(item["cond"]) == {"layout", "route", "speed", "traffic"}
    # the asked traffic is the real scene's: its share of vehicle and pedestrian cells
    torch.testing.assert_close(item["cond"]["traffic"], (item["x0"][:2] > bev.OCCUPIED).float().mean((1, 2)))
    assert item["cond"]["layout"].shape == (bev.LAYOUT_CHANNELS, bev.RESOLUTION, bev.RESOLUTION)
    torch.testing.assert_close(item["cond"]["route"][0], torch.zeros(2))
    steps = item["cond"]["route"].diff(dim=0).norm(dim=1)
    torch.testing.assert_close(steps, torch.full_like(steps, bev.ROUTE_SPACING), atol=1e-3, rtol=0)
    # the ego stands on the drivable area of the rasterised map
    assert test_split.layout[:, bev.DRIVABLE, 15:17, 15:17].mean() > 0.9
    # every box the devkit itself moves into flat ego coordinates is painted at its centre
    checked = 0
    for i, token in enumerate(test_split.tokens[:10]):
        sample = nusc.get("sample", token)
        _, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"], use_flat_vehicle_coordinates=True)
        for box in boxes:
            x, y = box.center[:2]
            if abs(x) < 22 and abs(y) < 22:
                channel = bev.VEHICLE if box.name.startswith("vehicle") else bev.PEDESTRIAN
                row, col = bev.ego_to_cell(torch.tensor([x, y]))
                assert test_split.agents[i, channel, row, col] == 1.0, (token, box)
                checked += 1
    assert checked > 5


def test_splits_are_by_scene_and_the_cache_is_reused(dataroot):
    train = NuScenesBEV(root=str(dataroot), split="train")
    test = NuScenesBEV(root=str(dataroot), split="test")
    assert not set(train.tokens) & set(test.tokens)
    again = NuScenesBEV(root=str(dataroot), split="train", size=5)
    assert again.tokens == train.tokens[:5]
    torch.testing.assert_close(again.agents, train.agents[:5])


def _rewrite(path, fn):
    records = json.loads(path.read_text())
    fn(records)
    path.write_text(json.dumps(records))


def test_bad_dataroots_fail_with_one_line_naming_the_culprit(dataroot_copy, tmp_path):
    tables = dataroot_copy / "v1.0-mini"
    with pytest.raises(UserError, match="does not exist; .*make-data"):
        NuScenesBEV(root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no 'v1.0-trainval' folder of tables .found: v1.0-mini"):
        NuScenesBEV(root=str(dataroot_copy), version="v1.0-trainval")
    with pytest.raises(UserError, match="needs the dataset option root"):
        NuScenesBEV()
    with pytest.raises(UserError, match=r"needs the dataset option root .*\(prefdiff fit: --data.dataset_options "
                                        r"'\{key: value\}'; prefdiff sample and edit: --dataset-option KEY=VALUE\)"):
        get_manager().dataset("nuscenes_bev")

    (tables / "sample.json").rename(tables / "sample.json.bak")
    with pytest.raises(UserError, match=r"table .*sample\.json is missing"):
        NuScenesBEV(root=str(dataroot_copy))
    (tables / "sample.json.bak").rename(tables / "sample.json")

    good = (tables / "ego_pose.json").read_text()
    (tables / "ego_pose.json").write_text(good[: len(good) // 2])
    with pytest.raises(UserError, match=r"ego_pose\.json is not valid JSON"):
        NuScenesBEV(root=str(dataroot_copy))
    (tables / "ego_pose.json").write_text(good)

    _rewrite(tables / "instance.json", lambda r: r[2].pop("category_token"))
    with pytest.raises(UserError, match=r"instance\.json record 2 lacks field 'category_token'"):
        NuScenesBEV(root=str(dataroot_copy))


@pytest.mark.parametrize("breakage, message", [
    ("map", "names unknown map 'singapore-atlantis'; nuScenes maps are singapore-onenorth"),
    ("expansion", r"map expansion .*singapore-onenorth\.json is missing"),
    ("keyframes", "scene 'scene-0061' .* has no keyframes"),
    ("quaternion", "has a rotation quaternion of norm 2.0000, not 1"),
    ("nbr_samples", "scene 'scene-0061' .* has nbr_samples 'forty'; it must be a whole number"),
    ("no map", r"map\.json lists no map"),
    ("instance", "the nuScenes devkit could not follow the tables' references"),
    ("log_tokens", "the nuScenes devkit could not follow the tables' references"),
    ("lidar", "has no LIDAR_TOP keyframe"),
])
def test_broken_content_is_named(dataroot_copy, breakage, message):
    tables = dataroot_copy / "v1.0-mini"
    if breakage == "map":
        _rewrite(tables / "log.json", lambda r: r[0].update(location="singapore-atlantis"))
    elif breakage == "expansion":
        (dataroot_copy / "maps" / "expansion" / "singapore-onenorth.json").unlink()
    elif breakage == "keyframes":
        _rewrite(tables / "scene.json", lambda r: [s.update(nbr_samples=0, first_sample_token="")
                                                   for s in r if s["name"] == "scene-0061"])
    elif breakage == "quaternion":
        _rewrite(tables / "sample_annotation.json", lambda r: r[7].update(rotation=[2.0, 0.0, 0.0, 0.0]))
    elif breakage == "nbr_samples":
        _rewrite(tables / "scene.json", lambda r: [s.update(nbr_samples="forty") for s in r if s["name"] == "scene-0061"])
    elif breakage == "no map":
        (tables / "map.json").write_text("[]")
    elif breakage == "instance":
        _rewrite(tables / "sample_annotation.json", lambda r: r[3].update(instance_token="f" * 32))
    elif breakage == "log_tokens":
        _rewrite(tables / "map.json", lambda r: r[0].update(log_tokens=r[0]["log_tokens"][:1]))
    else:  # a camera-only dataset: every sensor is a camera
        _rewrite(tables / "sensor.json", lambda r: [s.update(channel="CAM_FRONT", modality="camera") for s in r])
    with pytest.raises(UserError, match=message):
        NuScenesBEV(root=str(dataroot_copy), split="train")


def test_make_data_command_errors_exit_2(tmp_path, capsys):
    from prefdiff.cli import main

    assert main(["driving", "make-data", str(tmp_path / "x"), "--version", "v2.0"]) == 2
    err = capsys.readouterr().err
    assert "--version must be one of v1.0-mini, v1.0-trainval" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    assert main(["driving", "make-data", str(tmp_path / "x"), "--scenes", "0"]) == 2
    assert "--scenes must be >= 1, got 0" in capsys.readouterr().err
    assert main(["driving", "make-data", str(tmp_path / "x"), "--scenes", "3"]) == 2
    assert "v1.0-mini always holds the ten mini scenes" in capsys.readouterr().err


def test_make_data_replaces_its_own_dataroot_but_never_a_users(dataroot_copy, tmp_path, capsys):
    import shutil

    from prefdiff.cli import main

    users = Path(shutil.copytree(dataroot_copy, tmp_path / "nuscenes"))  # a real dataroot: tables, and more
    (users / "prefdiff-synthetic.json").unlink()
    (users / "samples" / "CAM_FRONT").mkdir(parents=True)
    (users / "samples" / "CAM_FRONT" / "a.jpg").write_bytes(b"jpeg")
    assert main(["driving", "make-data", str(users), "--version", "v1.0-trainval", "--scenes", "1"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (users / "samples" / "CAM_FRONT" / "a.jpg").read_bytes() == b"jpeg"
    assert not (users / "v1.0-trainval").exists()
    assert main(["driving", "make-data", str(dataroot_copy), "--version", "v1.0-trainval", "--scenes", "1",
                 "--duration", "2"]) == 0
    assert sorted(p.name for p in dataroot_copy.iterdir()) == ["maps", "prefdiff-synthetic.json", "v1.0-trainval"]


def test_a_failed_make_data_leaves_the_earlier_dataroot_intact(dataroot_copy, monkeypatch):
    from prefdiff_driving import synthetic, world

    before = (dataroot_copy / "v1.0-mini" / "scene.json").read_text()
    calls = []

    def failing_drive(rng, duration):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return world.make_drive(rng, duration)

    monkeypatch.setattr(synthetic.world, "make_drive", failing_drive)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.make_dataset(dataroot_copy, seed=9)
    assert (dataroot_copy / "v1.0-mini" / "scene.json").read_text() == before
    assert not list(dataroot_copy.parent.glob(".mini.tmp-*"))
    assert len(NuScenesBEV(root=str(dataroot_copy), split="test")) > 0


def test_a_dataroot_of_ones_own_scenes_names_its_split(dataroot_copy):
    tables = dataroot_copy / "v1.0-mini"
    _rewrite(tables / "scene.json", lambda r: [s.update(name=f"my-drive-{i:03d}") for i, s in enumerate(r)])
    with pytest.raises(UserError, match="none of the 10 scenes .* is in the devkit's 'mini_train' split list "
                                        ".*dataset option scenes"):
        NuScenesBEV(root=str(dataroot_copy), split="train")
    scenes = {"train": [f"my-drive-{i:03d}" for i in range(8)], "val": ["my-drive-008", "my-drive-009"]}
    train = NuScenesBEV(root=str(dataroot_copy), split="train", scenes=scenes)
    test = NuScenesBEV(root=str(dataroot_copy), split="test", scenes=scenes)
    assert len(train) > 0 and len(test) > 0 and not set(train.tokens) & set(test.tokens)
    with pytest.raises(UserError, match="must map train and val to lists of scene names"):
        NuScenesBEV(root=str(dataroot_copy), split="train", scenes={"train": scenes["train"]})


def test_the_benchmarks_dataroot_variables_are_named(dataroot, tmp_path, monkeypatch):
    from prefdiff_driving.recipe import driving_recipe, prepare

    monkeypatch.setenv("PREFDIFF_DRIVING_DATAROOT", str(dataroot))
    monkeypatch.setenv("PREFDIFF_DRIVING_VERSION", "mini")
    with pytest.raises(UserError, match="PREFDIFF_DRIVING_VERSION=mini: nuScenes versions are v1.0-mini"):
        prepare(driving_recipe(quick=True), tmp_path, quick=True)
    monkeypatch.setenv("PREFDIFF_DRIVING_VERSION", "v1.0-mini")
    monkeypatch.setenv("PREFDIFF_DRIVING_DATAROOT", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=rf"PREFDIFF_DRIVING_DATAROOT={tmp_path / 'nowhere'}: no such folder"):
        prepare(driving_recipe(quick=True), tmp_path, quick=True)


def test_sample_and_edit_draw_the_scenes_on_their_maps(dataroot, tmp_path):
    from PIL import Image

    from prefdiff.testing import drawn_figures
    from prefdiff_driving.recipe import driving_recipe

    samples, edit = drawn_figures(driving_recipe(quick=True), {"root": dataroot}, tmp_path)
    with Image.open(samples) as one_row, Image.open(edit) as two_rows:
        assert two_rows.height > 1.5 * one_row.height  # input and edited, each drawn on its map
