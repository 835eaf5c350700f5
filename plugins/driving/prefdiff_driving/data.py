"""The ``nuscenes_bev`` dataset: keyframes of a nuScenes dataroot as BEV conditions and agent rasters.

Everything is read through the installed nuscenes-devkit: ``NuScenes`` for the
tables, ``NuScenesMap`` for the map layers, ``Box`` and pyquaternion's
``Quaternion`` to move annotation boxes into the ego frame (yaw only: the
devkit's flat vehicle coordinates), ``box_velocity`` for agent velocities and
``create_splits_scenes`` for the split. The dataroot is checked first, so a
broken one fails with one line naming the file and the fix instead of a devkit
assertion. Rasters are cached under ``$PREFDIFF_CACHE/driving``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prefdiff.api import UserError
from prefdiff_driving import bev

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
          "log", "scene", "sample", "sample_data", "sample_annotation", "map")
REQUIRED = {
    "category": ("token", "name"), "attribute": ("token", "name"), "visibility": ("token", "level"),
    "instance": ("token", "category_token", "first_annotation_token", "last_annotation_token"),
    "sensor": ("token", "channel", "modality"), "calibrated_sensor": ("token", "sensor_token"),
    "ego_pose": ("token", "timestamp", "translation", "rotation"), "log": ("token", "location"),
    "scene": ("token", "log_token", "nbr_samples", "first_sample_token", "name"),
    "sample": ("token", "timestamp", "scene_token", "prev", "next"),
    "sample_data": ("token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "is_key_frame"),
    "sample_annotation": ("token", "sample_token", "instance_token", "translation", "size", "rotation",
                          "prev", "next"),
    "map": ("token", "log_tokens", "filename"),
}
SPLITS = {"v1.0-mini": {"train": "mini_train", "val": "mini_val", "test": "mini_val"},
          "v1.0-trainval": {"train": "train", "val": "val", "test": "val"}}
"""nuScenes' own test split has no annotations, so the held-out split is val."""
VEHICLES = ("vehicle.car", "vehicle.truck", "vehicle.bus", "vehicle.trailer", "vehicle.construction",
            "vehicle.emergency", "vehicle.motorcycle", "vehicle.bicycle")
CACHE_FORMAT = 2

log = logging.getLogger("prefdiff.driving")


# ----------------------------------------------------------- validation ----


def _read_table(path: Path, name: str) -> list[dict]:
    fix = "re-extract the dataset or rewrite it with `prefdiff driving make-data`"
    if not path.is_file():
        raise UserError(f"nuScenes table {path} is missing; {fix}")
    try:
        records = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"nuScenes table {path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"nuScenes table {path} must be a JSON list of records; {fix}")
    for i, record in enumerate(records):
        missing = [k for k in REQUIRED[name] if k not in record]
        if missing:
            raise UserError(f"nuScenes table {path} record {i} lacks field '{missing[0]}'; {fix}")
    return records


def check_dataroot(root: str | Path, version: str) -> dict[str, list[dict]]:
    """Validate a nuScenes dataroot before the devkit reads it; returns the tables.

    Raises :class:`UserError` naming the culprit: a missing dataroot or version
    folder, a missing or malformed table, an unknown map, a map file that is
    not there, a scene without keyframes, a box whose quaternion is not unit.
    """
    from nuscenes.map_expansion.map_api import locations

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"nuScenes dataroot {root} does not exist; download nuScenes there or write a "
                        f"synthetic one with `prefdiff driving make-data {root}`")
    if not (root / version).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise UserError(f"nuScenes dataroot {root} has no '{version}' folder of tables (found: "
                        f"{', '.join(found) or 'none'}); set the dataset option version or pass the right dataroot")
    tables = {name: _read_table(root / version / f"{name}.json", name) for name in TABLES}
    for log in tables["log"]:
        if log["location"] not in locations:
            raise UserError(f"log {log['token']} in {root / version / 'log.json'} names unknown map "
                            f"'{log['location']}'; nuScenes maps are {', '.join(locations)}")
        expansion = root / "maps" / "expansion" / f"{log['location']}.json"
        if not expansion.is_file():
            raise UserError(f"map expansion {expansion} is missing; install the nuScenes map expansion "
                            f"(v1.3) into {root / 'maps' / 'expansion'}")
    if not tables["map"]:
        raise UserError(f"{root / version / 'map.json'} lists no map; it needs one record per map mask, its "
                        f"log_tokens naming the logs recorded on it")
    for record in tables["map"]:
        if not (root / record["filename"]).is_file():
            raise UserError(f"map mask {root / record['filename']} named in map.json is missing; "
                            f"re-extract the maps folder")
    samples = {s["token"] for s in tables["sample"]}
    for scene in tables["scene"]:
        count = scene["nbr_samples"]
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not float(count).is_integer():
            raise UserError(f"scene '{scene['name']}' in {root / version / 'scene.json'} has nbr_samples "
                            f"{scene['nbr_samples']!r}; it must be a whole number (of keyframes)")
        if scene["nbr_samples"] < 1 or scene["first_sample_token"] not in samples:
            raise UserError(f"scene '{scene['name']}' in {root / version / 'scene.json'} has no keyframes "
                            f"(nbr_samples {scene['nbr_samples']}); remove the scene or restore its samples")
    for ann in tables["sample_annotation"]:
        norm = float(np.linalg.norm(ann["rotation"]))
        if abs(norm - 1.0) > 1e-3:
            raise UserError(f"sample_annotation {ann['token']} has a rotation quaternion of norm {norm:.4f}, "
                            f"not 1; fix it in {root / version / 'sample_annotation.json'}")
    return tables


# ---------------------------------------------------------------- reading ----


def _cache_file(root: Path, version: str, split: str, scenes: dict | None = None) -> Path:
    from prefdiff.api import cache_root

    # a changed or missing table changes the key, so a broken dataroot is re-read and reported
    stamps = [(name, p.stat().st_mtime_ns if p.is_file() else None)
              for name, p in ((n, root / version / f"{n}.json") for n in TABLES)]
    key = json.dumps({"root": str(root.resolve()), "version": version, "split": split, "stamps": stamps,
                      **({"scenes": scenes} if scenes else {}),
                      "grid": [bev.RESOLUTION, bev.EXTENT, bev.ROUTE_POINTS, bev.ROUTE_SPACING],
                      "format": CACHE_FORMAT})
    return cache_root() / "driving" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _route(future_xy: np.ndarray, yaw: float) -> np.ndarray:
    """The ego's future path resampled every ROUTE_SPACING metres, straight on past its end."""
    pts = np.asarray(future_xy, dtype=float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1) if len(pts) > 1 else np.zeros(0)
    keep = np.concatenate([[True], seg > 1e-3])
    pts = pts[keep]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    heading = (pts[-1] - pts[-2]) / max(arc[-1] - arc[-2], 1e-9) if len(pts) > 1 else np.array(
        [np.cos(yaw), np.sin(yaw)])
    s = np.arange(bev.ROUTE_POINTS) * bev.ROUTE_SPACING
    inside = s <= arc[-1]
    out = np.empty((bev.ROUTE_POINTS, 2))
    out[inside, 0] = np.interp(s[inside], arc, pts[:, 0])
    out[inside, 1] = np.interp(s[inside], arc, pts[:, 1])
    out[~inside] = pts[-1] + (s[~inside] - arc[-1])[:, None] * heading
    return out


def split_scenes(version: str, split: str, scenes: dict[str, list[str]] | None) -> set[str]:
    """The scene names of ``split``: the user's own lists (``scenes``, keyed train and val; test reads
    val), else the devkit's ``create_splits_scenes``."""
    from nuscenes.utils.splits import create_splits_scenes

    if scenes is None:
        return set(create_splits_scenes()[SPLITS[version][split]])
    if (not isinstance(scenes, dict) or not {"train", "val"} <= set(scenes)
            or not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in scenes.values())):
        raise UserError(f"dataset option scenes must map train and val to lists of scene names, e.g. "
                        f"{{train: [scene-0001, ...], val: [scene-0100, ...]}}; got {scenes!r}")
    unknown = sorted(set(scenes) - {"train", "val", "test"})
    if unknown:
        raise UserError(f"dataset option scenes has split(s) {', '.join(unknown)}; it takes train, val and test")
    return set(scenes.get(split, scenes["val"]))


def read_split(root: str | Path, version: str, split: str, log=None,
               scenes: dict[str, list[str]] | None = None) -> dict[str, torch.Tensor | list]:
    """Rasterise every keyframe of the split's scenes; returns stacked tensors and sample tokens."""
    from nuscenes.map_expansion.map_api import NuScenesMap
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    if version not in SPLITS:
        raise UserError(f"dataset option version must be one of {', '.join(SPLITS)}, got '{version}'")
    if split not in SPLITS[version]:
        raise UserError(f"the split must be one of {', '.join(SPLITS[version])}, got '{split}'")
    root = Path(root)
    check_dataroot(root, version)
    try:
        nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    except (KeyError, IndexError, ValueError) as exc:  # the devkit indexes the tables' references as it loads
        raise UserError(f"{root / version}: the nuScenes devkit could not follow the tables' references "
                        f"({type(exc).__name__}: {str(exc)[:120]}); check that every token a record names exists "
                        f"in its table (sample_annotation.instance_token, map.log_tokens naming every log)") from None
    wanted = split_scenes(version, split, scenes)
    if not any(scene["name"] in wanted for scene in nusc.scene):
        source = ("the dataset option scenes" if scenes is not None
                  else f"the devkit's '{SPLITS[version][split]}' split list")
        raise UserError(f"none of the {len(nusc.scene)} scenes of {root / version} is in {source} (scene names "
                        f"like {nusc.scene[0]['name'] if nusc.scene else '-'}); for scenes of your own, name the "
                        f"split with the dataset option scenes: {{train: [...], val: [...]}}")
    maps: dict[str, Any] = {}
    fine = 4 * bev.RESOLUTION
    layout, agents, routes, speeds, tokens = [], [], [], [], []
    for scene in nusc.scene:
        if scene["name"] not in wanted:
            continue
        location = nusc.get("log", scene["log_token"])["location"]
        if location not in maps:
            maps[location] = NuScenesMap(dataroot=str(root), map_name=location)
        nmap = maps[location]
        chain, token = [], scene["first_sample_token"]
        while token:
            sample = nusc.get("sample", token)
            chain.append(sample)
            token = sample["next"]
        poses = []
        for sample in chain:
            if "LIDAR_TOP" not in sample["data"]:
                raise UserError(f"{root / version}: sample {sample['token']} of scene {scene['name']} has no "
                                f"LIDAR_TOP keyframe; prefdiff reads the ego pose of each keyframe from it, so "
                                f"add the LIDAR_TOP sample_data records (the sensor files are not read)")
            sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
            poses.append(nusc.get("ego_pose", sd["ego_pose_token"]))
        xy = np.array([p["translation"][:2] for p in poses])
        times = np.array([p["timestamp"] for p in poses]) * 1e-6
        for k, (sample, pose) in enumerate(zip(chain, poses)):
            yaw = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
            flat = Quaternion(scalar=np.cos(yaw / 2), vector=[0, 0, np.sin(yaw / 2)])
            boxes, given = [], []
            for ann_token in sample["anns"]:
                ann = nusc.get("sample_annotation", ann_token)
                kind = ("vehicle" if ann["category_name"].startswith(VEHICLES)
                        else "pedestrian" if ann["category_name"].startswith("human.pedestrian") else None)
                if kind is None:
                    continue
                box = Box(ann["translation"], ann["size"], Quaternion(ann["rotation"]),
                          velocity=tuple(nusc.box_velocity(ann_token)))
                box.translate(-np.array(pose["translation"]))
                box.rotate(flat.inverse)
                entry = {"xy": box.center[:2], "yaw": box.orientation.yaw_pitch_roll[0], "size": box.wlh,
                         "velocity": box.velocity[:2], "kind": kind}
                boxes.append(entry)
                # a quarter of the vehicles (fixed per instance) are given by the condition
                if kind == "vehicle" and int(ann["instance_token"][-2:], 16) % 4 == 0:
                    given.append(entry)
            x, y = pose["translation"][:2]
            patch = (x, y, bev.EXTENT, bev.EXTENT)
            areas = nmap.get_map_mask(patch, np.degrees(yaw), ["drivable_area", "walkway"], (fine, fine))
            lines = nmap.get_map_mask(patch, np.degrees(yaw), ["road_divider", "lane_divider"], (fine, fine))
            pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(areas).float()[None], 4)[0]
            divider = torch.nn.functional.max_pool2d(torch.from_numpy(lines.max(0)).float()[None, None], 4)[0, 0]
            given_raster = bev.agent_raster(given)[bev.VEHICLE] > bev.OCCUPIED
            layout.append(torch.stack([pooled[0], divider, pooled[1], torch.from_numpy(given_raster).float()]))
            agents.append(torch.from_numpy(bev.agent_raster(boxes)))
            c, s = np.cos(yaw), np.sin(yaw)
            rel = xy[k:] - xy[k]
            routes.append(torch.from_numpy(_route(rel @ np.array([[c, -s], [s, c]]), 0.0)).float())
            j = min(k + 1, len(poses) - 1)
            i = j - 1 if j > 0 else 0
            dt = max(times[j] - times[i], 1e-3)
            speeds.append(float(np.linalg.norm(xy[j] - xy[i]) / dt) if j != i else 0.0)
            tokens.append(sample["token"])
    if log is not None:
        log(f"read {len(tokens)} keyframes of split '{split}' from {root / version}")
    empty = torch.zeros(0, bev.RESOLUTION, bev.RESOLUTION)
    return {"layout": torch.stack(layout) if layout else empty.new_zeros(0, 4, bev.RESOLUTION, bev.RESOLUTION),
            "agents": torch.stack(agents) if agents else empty.new_zeros(0, 4, bev.RESOLUTION, bev.RESOLUTION),
            "route": torch.stack(routes) if routes else torch.zeros(0, bev.ROUTE_POINTS, 2),
            "speed": torch.tensor(speeds, dtype=torch.float32).reshape(-1, 1), "tokens": tokens}


def _write_cache(cache: Path, data: dict[str, Any]) -> None:
    """Write the parsed split whole: temporary file, fsync, rename, fsync the folder (the rule of
    ``prefdiff.durable``), so a crash never leaves a torn cache for the next run to trip on.

    A failed write (a full disk) only costs the cache: the run goes on and says so.
    """
    import io

    buffer = io.BytesIO()
    torch.save(data, buffer)
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cache)
        folder = os.open(cache.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning(f"could not write the cache file {cache} ({exc.strerror or exc}); going on without it: "
                    f"the next run parses the dataroot again (free disk space, or set PREFDIFF_CACHE elsewhere)")


class NuScenesBEV(Dataset):
    """Keyframes of one split as ``{"cond": {"layout", "route", "speed", "traffic"}, "x0": agent raster}``.

    :param root: the nuScenes dataroot (tables under ``root/version``, maps under ``root/maps``).
    :param version: ``v1.0-mini`` or ``v1.0-trainval``.
    :param split: ``train``, ``val`` or ``test`` (test reads the val scenes: nuScenes' test split has
        no annotations).
    :param size: keep the first ``size`` keyframes.
    :param scenes: the split of a dataroot of your own scenes, ``{"train": [names], "val": [names]}``
        (test reads val); by default the devkit's split lists of nuScenes' scene names.
    """

    def __init__(self, root: str | None = None, split: str = "train", version: str = "v1.0-mini",
                 size: int | None = None, scenes: dict[str, list[str]] | None = None) -> None:
        if root is None:
            raise UserError("the nuscenes_bev dataset needs the dataset option root (a nuScenes dataroot; "
                            "`prefdiff driving make-data DIR` writes a synthetic one)")
        if size is not None and size < 1:
            raise UserError(f"dataset option size must be >= 1, got {size}")
        root_path = Path(root)
        if version not in SPLITS:
            raise UserError(f"dataset option version must be one of {', '.join(SPLITS)}, got '{version}'")
        cache = _cache_file(root_path, version, split, scenes) if (root_path / version).is_dir() else None
        if cache is not None and cache.is_file():
            data = torch.load(cache, weights_only=True)
        else:
            data = read_split(root_path, version, split, scenes=scenes)
            if cache is not None:
                _write_cache(cache, data)
        n = len(data["tokens"]) if size is None else min(size, len(data["tokens"]))
        self.layout, self.agents = data["layout"][:n], data["agents"][:n]
        self.route, self.speed, self.tokens = data["route"][:n], data["speed"][:n], list(data["tokens"][:n])
        self.traffic = bev.traffic(self.agents)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"cond": {"layout": self.layout[i], "route": self.route[i], "speed": self.speed[i],
                         "traffic": self.traffic[i]},
                "x0": self.agents[i]}

    def conditions(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``n`` conditions, collated."""
        n = len(self) if n is None else min(n, len(self))
        return {"layout": self.layout[:n], "route": self.route[:n], "speed": self.speed[:n],
                "traffic": self.traffic[:n]}

    def draw(self, rows: dict[str, torch.Tensor], cond: dict[str, torch.Tensor], png_path: str | Path) -> None:
        """`prefdiff sample` and `prefdiff edit`'s figure: each row's scenes on their maps and routes, with
        the planner's best plan (the benchmark's figure)."""
        from prefdiff_driving.figures import render

        render(rows, cond, png_path)
