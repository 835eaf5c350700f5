"""Write a synthetic dataset in the nuScenes schema, loadable by the nuscenes-devkit.

The thirteen tables of ``DATAROOT/VERSION/*.json`` carry the fields the devkit
reads (tokens, prev/next links, ego poses, boxes with quaternions, the map's
``log_tokens``), the scenes take their names from the devkit's own split lists
(``mini_train``/``mini_val``, or ``train``/``val``), the map expansion is
``maps/expansion/singapore-onenorth.json`` in the v1.3 schema, and the map
mask is a binary PNG at the devkit's native 10 px/m. Sensor files are not
written: nothing in this plugin reads them. Tables are written into a temporary
folder that replaces the target at the end, so a failed write leaves an
earlier dataset intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from prefdiff.api import UserError
from prefdiff_driving import world

MAP_NAME = "singapore-onenorth"
MARKER = "prefdiff-synthetic.json"
"""The file :func:`make_dataset` writes into its dataroots: only a folder holding it is ever replaced."""
VERSIONS = ("v1.0-mini", "v1.0-trainval")
IN_RANGE = 40.0            # annotate agents within this many metres of the ego


def _token(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _quaternion(yaw: float) -> list[float]:
    """A yaw about +z as the [w, x, y, z] quaternion nuScenes stores."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def scene_names(version: str, scenes: int | None = None) -> tuple[list[str], list[str]]:
    """Train and val scene names from the devkit's split lists."""
    from nuscenes.utils import splits

    if version == "v1.0-mini":
        return list(splits.mini_train), list(splits.mini_val)
    if version == "v1.0-trainval":
        n = scenes or 40
        return list(splits.train[:n]), list(splits.val[:max(2, n // 4)])
    raise UserError(f"--version must be one of {', '.join(VERSIONS)}, got '{version}'")


# ------------------------------------------------------------ tables ----


class _Tables:
    def __init__(self) -> None:
        self.t: dict[str, list[dict]] = {name: [] for name in (
            "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
            "log", "scene", "sample", "sample_data", "sample_annotation", "map")}
        cats = {"vehicle.car": "Vehicle designed primarily for personal use.",
                "vehicle.truck": "Vehicles primarily designed to haul cargo.",
                "human.pedestrian.adult": "An adult pedestrian moving around the cityscape."}
        for i, (name, text) in enumerate(cats.items()):
            self.t["category"].append({"token": _token("category", name), "name": name, "description": text,
                                       "index": i})
        for name in ("vehicle.moving", "vehicle.stopped", "pedestrian.moving"):
            self.t["attribute"].append({"token": _token("attribute", name), "name": name, "description": name})
        for level, token in (("v0-40", "1"), ("v40-60", "2"), ("v60-80", "3"), ("v80-100", "4")):
            self.t["visibility"].append({"token": token, "level": level, "description": f"visibility {level}"})
        self.sensor = _token("sensor", "LIDAR_TOP")
        self.t["sensor"].append({"token": self.sensor, "channel": "LIDAR_TOP", "modality": "lidar"})
        self.calib = _token("calibrated_sensor", "LIDAR_TOP")
        self.t["calibrated_sensor"].append({"token": self.calib, "sensor_token": self.sensor,
                                            "translation": [0.943713, 0.0, 1.84023],
                                            "rotation": [0.7077955119163518, -0.006492242056004365,
                                                         0.010646214713995808, -0.7063073142877817],
                                            "camera_intrinsic": []})

    def add_scene(self, index: int, name: str, drive: world.Drive, base_time: int) -> None:
        t = self.t
        log = _token("log", name)
        t["log"].append({"token": log, "logfile": f"synthetic-{name}", "vehicle": "n015",
                         "date_captured": "2018-07-24", "location": MAP_NAME})
        step = int(round(world.KEYFRAME_DT / world.SIM_DT))
        frames = list(range(0, len(drive.ego.xy), step))
        samples = [_token("sample", name, k) for k in range(len(frames))]
        scene = _token("scene", name)
        for k, f in enumerate(frames):
            stamp = base_time + int(f * world.SIM_DT * 1e6)
            pose = _token("ego_pose", name, k)
            x, y = drive.ego.xy[f]
            t["ego_pose"].append({"token": pose, "timestamp": stamp, "translation": [float(x), float(y), 0.0],
                                  "rotation": _quaternion(float(drive.ego.yaw[f]))})
            t["sample"].append({"token": samples[k], "timestamp": stamp, "scene_token": scene,
                                "prev": samples[k - 1] if k else "",
                                "next": samples[k + 1] if k + 1 < len(frames) else ""})
            sd = _token("sample_data", name, k)
            t["sample_data"].append({
                "token": sd, "sample_token": samples[k], "ego_pose_token": pose,
                "calibrated_sensor_token": self.calib, "timestamp": stamp, "fileformat": "pcd",
                "is_key_frame": True, "height": 0, "width": 0,
                "filename": f"samples/LIDAR_TOP/{name}__LIDAR_TOP__{stamp}.pcd.bin",
                "prev": _token("sample_data", name, k - 1) if k else "",
                "next": _token("sample_data", name, k + 1) if k + 1 < len(frames) else ""})
        t["scene"].append({"token": scene, "log_token": log, "nbr_samples": len(frames),
                           "first_sample_token": samples[0], "last_sample_token": samples[-1],
                           "name": name, "description": f"synthetic drive {index} in a grid town"})
        cats = {c["name"]: c["token"] for c in t["category"]}
        attrs = {a["name"]: a["token"] for a in t["attribute"]}
        for a, agent in enumerate(drive.agents):
            dist = np.array([np.linalg.norm(agent.xy[f] - drive.ego.xy[f]) for f in frames])
            near = np.nonzero(dist < IN_RANGE)[0]
            if len(near) == 0:
                continue
            ks = list(range(int(near[0]), int(near[-1]) + 1))
            inst = _token("instance", name, a)
            anns = [_token("sample_annotation", name, a, k) for k in ks]
            moving = float(np.linalg.norm(agent.xy[-1] - agent.xy[0])) > 0.5
            attr = ("pedestrian.moving" if agent.category.startswith("human")
                    else "vehicle.moving" if moving else "vehicle.stopped")
            for j, k in enumerate(ks):
                f = frames[k]
                x, y = agent.xy[f]
                t["sample_annotation"].append({
                    "token": anns[j], "sample_token": samples[k], "instance_token": inst,
                    "visibility_token": "4", "attribute_tokens": [attrs[attr]],
                    "translation": [float(x), float(y), agent.size[2] / 2], "size": list(agent.size),
                    "rotation": _quaternion(float(agent.yaw[f])), "num_lidar_pts": 50, "num_radar_pts": 3,
                    "prev": anns[j - 1] if j else "", "next": anns[j + 1] if j + 1 < len(ks) else ""})
            t["instance"].append({"token": inst, "category_token": cats[agent.category],
                                  "nbr_annotations": len(ks), "first_annotation_token": anns[0],
                                  "last_annotation_token": anns[-1]})


# --------------------------------------------------------- map expansion ----


class _MapWriter:
    def __init__(self) -> None:
        self.layers: dict = {name: [] for name in (
            "polygon", "line", "node", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing",
            "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider", "traffic_light",
            "lane_connector")}
        self.layers["arcline_path_3"] = {}
        self.layers["connectivity"] = {}
        self.count = 0

    def node(self, x: float, y: float) -> str:
        token = _token("node", self.count)
        self.count += 1
        self.layers["node"].append({"token": token, "x": round(float(x), 3), "y": round(float(y), 3)})
        return token

    def polygon(self, exterior, holes=()) -> str:
        token = _token("polygon", self.count)
        self.count += 1
        self.layers["polygon"].append({"token": token, "exterior_node_tokens": [self.node(*p) for p in exterior],
                                       "holes": [{"node_tokens": [self.node(*p) for p in h]} for h in holes]})
        return token

    def line(self, points) -> str:
        token = _token("line", self.count)
        self.count += 1
        self.layers["line"].append({"token": token, "node_tokens": [self.node(*p) for p in points]})
        return token


def _rect(xmin, ymin, xmax, ymax):
    return [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]


def map_expansion() -> dict:
    """The town's road map in the nuScenes map expansion schema, version 1.3."""
    from shapely.geometry import box
    from shapely.ops import unary_union

    m = _MapWriter()
    area = unary_union([box(*r) for r in world.road_rectangles()])
    area_polys = [area] if area.geom_type == "Polygon" else list(area.geoms)
    drivable = _token("drivable_area", 0)
    m.layers["drivable_area"].append({"token": drivable, "polygon_tokens": [
        m.polygon(list(p.exterior.coords)[:-1], [list(h.coords)[:-1] for h in p.interiors]) for p in area_polys]})
    for i, r in enumerate(world.road_rectangles()):
        m.layers["road_segment"].append({"token": _token("road_segment", i), "polygon_token": m.polygon(_rect(*r)),
                                         "is_intersection": False, "drivable_area_token": drivable})
    lanes = []
    for i, p in enumerate(world.road_pieces()):
        c, a, b, vertical = p["c"], p["a"], p["b"], p["vertical"]

        def xy(along, across):
            return (c + across, along) if vertical else (along, c + across)

        segment = _token("road_segment", i % len(world.road_rectangles()))
        m.layers["road_divider"].append({"token": _token("road_divider", i), "line_token": m.line([xy(a, 0), xy(b, 0)]),
                                         "road_segment_token": segment})
        for side in (1.0, -1.0):
            lo, hi = sorted([side * world.WALK_INNER, side * world.WALK_OUTER])
            corners = [xy(a, lo), xy(b, lo), xy(b, hi), xy(a, hi)]
            m.layers["walkway"].append({"token": _token("walkway", i, side), "polygon_token": m.polygon(corners)})
        # keep left: travelling towards +along, the lane lies on the +across side for
        # horizontal roads' left normal; the sign below picks the left of each direction
        for direction in (1.0, -1.0):
            heading = np.array([0.0, direction]) if vertical else np.array([direction, 0.0])
            left = world.left_of(heading)
            across_sign = float(left[0] if vertical else left[1])
            lo, hi = sorted([0.0, across_sign * world.LANE_WIDTH])
            start, end = (a, b) if direction > 0 else (b, a)
            token = _token("lane", i, direction)
            from_line = m.line([xy(start, lo), xy(start, hi)])
            to_line = m.line([xy(end, lo), xy(end, hi)])
            m.layers["lane"].append({
                "token": token, "polygon_token": m.polygon([xy(a, lo), xy(b, lo), xy(b, hi), xy(a, hi)]),
                "lane_type": "CAR", "from_edge_line_token": from_line, "to_edge_line_token": to_line,
                "left_lane_divider_segments": [], "right_lane_divider_segments": []})
            mid = across_sign * world.LANE_WIDTH / 2
            sx, sy = xy(start, mid)
            ex, ey = xy(end, mid)
            yaw = float(np.arctan2(heading[1], heading[0]))
            m.layers["arcline_path_3"][token] = [{
                "start_pose": [sx, sy, yaw], "end_pose": [ex, ey, yaw], "shape": "LSR", "radius": 999.999,
                "segment_length": [0.0, float(abs(end - start)), 0.0]}]
            lanes.append((token, (sx, sy), (ex, ey)))
    starts = {}
    for token, s, _ in lanes:
        starts.setdefault((round(s[0]), round(s[1])), []).append(token)
    for token, _, e in lanes:
        # a lane's successors start within one junction width of where it ends
        out = [t2 for (x, y), toks in starts.items() for t2 in toks
               if abs(x - e[0]) <= 2 * world.ROAD_HALF + 1 and abs(y - e[1]) <= 2 * world.ROAD_HALF + 1]
        m.layers["connectivity"][token] = {"incoming": [], "outgoing": out}
    for token, s, _ in lanes:
        for t2, links in m.layers["connectivity"].items():
            if token in links["outgoing"]:
                m.layers["connectivity"][token]["incoming"].append(t2)
    return {"version": "1.3", "canvas_edge": [world.CANVAS, world.CANVAS], **m.layers}


def map_mask(expansion: dict, resolution: float = 0.1) -> np.ndarray:
    """The semantic prior (drivable area and walkways) at ``resolution`` m/px, image rows from north."""
    import cv2

    size = int(round(world.CANVAS / resolution))
    mask = np.zeros((size, size), np.uint8)
    nodes = {n["token"]: (n["x"], n["y"]) for n in expansion["node"]}
    polys = {p["token"]: p for p in expansion["polygon"]}

    def pixels(tokens):
        xy = np.array([nodes[t] for t in tokens])
        return np.stack([xy[:, 0] / resolution, size - xy[:, 1] / resolution], 1).round().astype(np.int32)

    for record in expansion["drivable_area"]:
        for token in record["polygon_tokens"]:
            cv2.fillPoly(mask, [pixels(polys[token]["exterior_node_tokens"])], 255)
            for hole in polys[token]["holes"]:
                cv2.fillPoly(mask, [pixels(hole["node_tokens"])], 0)
    for record in expansion["walkway"]:
        cv2.fillPoly(mask, [pixels(polys[record["polygon_token"]]["exterior_node_tokens"])], 255)
    return mask


# -------------------------------------------------------------- writer ----


def make_dataset(root: str | Path, version: str = "v1.0-mini", scenes: int | None = None, seed: int = 0,
                 duration: float = 20.0) -> Path:
    """Write a synthetic nuScenes dataroot at ``root``; returns it.

    :param version: ``v1.0-mini`` (the ten mini scenes) or ``v1.0-trainval``
        (``scenes`` train scenes and a quarter as many val scenes).
    :param duration: seconds per scene (keyframes at 2 Hz).
    """
    from PIL import Image

    train, val = scene_names(version, scenes)
    if duration < world.KEYFRAME_DT:
        raise UserError(f"--duration must be >= {world.KEYFRAME_DT} s, got {duration}")
    root = Path(root)
    blocked = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"cannot write the dataroot {root}: {blocked} is a file, not a folder; pass a new folder")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise UserError(f"{root} holds files that `prefdiff driving make-data` did not write (it marks its "
                        f"dataroots with {MARKER}); not replacing them: pass a new or empty folder")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / version).mkdir(parents=True)
        (tmp / "maps" / "expansion").mkdir(parents=True)
        rng = np.random.default_rng(seed)
        tables = _Tables()
        base = 1532402927647951
        for i, name in enumerate(train + val):
            tables.add_scene(i, name, world.make_drive(rng, duration), base + i * int(1e9))
        expansion = map_expansion()
        mask_name = f"maps/{_token('map', MAP_NAME)}.png"
        Image.fromarray(map_mask(expansion)).save(tmp / mask_name, optimize=True)
        tables.t["map"].append({"token": _token("map", MAP_NAME), "category": "semantic_prior",
                                "filename": mask_name, "log_tokens": [r["token"] for r in tables.t["log"]]})
        for name, records in tables.t.items():
            (tmp / version / f"{name}.json").write_text(json.dumps(records, indent=0))
        (tmp / "maps" / "expansion" / f"{MAP_NAME}.json").write_text(json.dumps(expansion))
        (tmp / MARKER).write_text(json.dumps({"version": version, "scenes": len(train + val), "seed": seed,
                                              "duration_s": duration}) + "\n")
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            root.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
