"""Demonstrations in robomimic's HDF5 layout, written and read.

The layout (robomimic's dataset format, one group per demonstration)::

    data                     attrs: total, env_args (JSON: env_name, type, env_kwargs)
    data/demo_N              attrs: num_samples (and, here, kind: expert/perturbed/failing)
    data/demo_N/obs/robot_pos    [T, 2] position (m)
    data/demo_N/obs/goal_pos     [T, 2] goal (m), constant over the demo
    data/demo_N/obs/obstacles    [T, 16] per slot x, y, radius, present (m)
    data/demo_N/next_obs/...     the same, one step later
    data/demo_N/actions      [T, 2] commanded velocity over the speed limit, in [-1, 1]
    data/demo_N/states       [T, 4] MuJoCo qpos and qvel (x, y, vx, vy; qvel zero if unknown)
    data/demo_N/rewards, dones   [T]
    mask/train, mask/valid, mask/test   names of the demos in each split

Any file in this layout with matching dimensions can be read; ``keys`` maps
the names above to a file's own (robomimic's ``robot0_eef_pos``, say). A file
without masks is split 80/10/10 in demo order. A file with masks never lends
a training demo to a held-out split: the test split is ``mask/test``, else the
demos in no mask, else (as in robomimic's own files, which have only
``train`` and ``valid``) the validation demos, with a warning that validation
and test then coincide; masks that leave no demo out of training are an error.
"""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prefdiff.api import UserError
from prefdiff_robotics.scene import (ACTION_DIM, COND_DIM, DT, GOAL_TOLERANCE, HORIZON, MAX_OBSTACLES,
                                     ROOM, STATE_DIM, VMAX, Layout, encode_trajectory)

ENV_ID = "prefdiff_robotics/PointRoom-v0"
SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}
MAKE = "make one with `prefdiff robotics make-data FILE`"
KEYS = {"robot_pos": "obs/robot_pos", "goal_pos": "obs/goal_pos", "obstacles": "obs/obstacles", "actions": "actions"}
"""What the dataset reads in each ``data/demo_N`` group; the ``keys`` option maps these names to a file's own."""
KEYS_HINT = 'or map the file\'s own names with the dataset option keys, e.g. keys={"robot_pos": "robot0_eef_pos"}'

log = logging.getLogger("prefdiff.robotics")


def write_robomimic(path: str | Path, demos, splits=(0.8, 0.1, 0.1)) -> Path:
    """Write ``demos`` (see :mod:`prefdiff_robotics.expert`) as a robomimic HDF5 file, atomically."""
    import h5py

    path = Path(path)
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise UserError(f"cannot write {path}: {blocked} is a file, not a folder; pass a path in a folder")
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; pass a file name, e.g. {path / 'demos.hdf5'}")
    if path.exists() and not _written_here(path):
        raise UserError(f"{path} exists and was not written by `prefdiff robotics make-data` (its env_args do not "
                        f"name {ENV_ID}); not replacing it: pass a new file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    demos = list(demos)
    names = [f"demo_{i}" for i in range(len(demos))]
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["total"] = sum(len(d.positions) for d in demos)
            data.attrs["env_args"] = json.dumps({
                "env_name": ENV_ID, "type": 2,  # robomimic's EnvType.GYM_TYPE
                "env_kwargs": {"horizon": HORIZON, "dt": DT, "vmax": VMAX, "room_half_size": ROOM,
                               "max_obstacles": MAX_OBSTACLES, "goal_tolerance": GOAL_TOLERANCE}})
            for name, demo in zip(names, demos):
                g = data.create_group(name)
                t = len(demo.positions)
                g.attrs["num_samples"] = t
                g.attrs["kind"] = demo.kind
                slots = demo.layout.to_vector()[4:] * ROOM
                obs = {"robot_pos": demo.positions, "goal_pos": np.repeat(demo.layout.goal[None], t, 0),
                       "obstacles": np.repeat(slots[None], t, 0)}
                for key, value in obs.items():
                    g.create_dataset(f"obs/{key}", data=np.asarray(value, dtype=np.float64))
                    g.create_dataset(f"next_obs/{key}", data=np.concatenate([value[1:], value[-1:]]))
                g.create_dataset("actions", data=demo.actions)
                velocity = np.concatenate([np.diff(demo.positions, axis=0) / DT, np.zeros((1, 2))])
                g.create_dataset("states", data=np.concatenate([demo.positions, velocity], axis=1))
                dist = np.linalg.norm(demo.positions - demo.layout.goal, axis=1)
                g.create_dataset("rewards", data=(dist < GOAL_TOLERANCE).astype(np.float64))
                g.create_dataset("dones", data=np.arange(t) == t - 1)
            cut = np.cumsum(np.round(np.asarray(splits) / np.sum(splits) * len(names)).astype(int))
            for key, part in zip(("train", "valid", "test"), np.split(np.array(names), cut[:2])):
                f.create_dataset(f"mask/{key}", data=np.array([n.encode() for n in part]))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _written_here(path: Path) -> bool:
    """Whether ``path`` is a demonstration file :func:`write_robomimic` wrote: HDF5 whose ``env_args``
    name this plugin's environment (a user's robomimic file names its own)."""
    import h5py

    if not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            env_args = f["data"].attrs.get("env_args", "{}")
        return json.loads(env_args).get("env_name") == ENV_ID
    except (OSError, KeyError, ValueError, AttributeError):
        return False


def _key_paths(keys: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``keys`` (our name -> the file's) as the path of each array in a demo group; a bare name is under obs/."""
    if keys is None:
        return tuple(KEYS.items())
    if not isinstance(keys, dict) or not all(isinstance(v, str) and v for v in keys.values()):
        raise UserError(f"dataset option keys must map names to the file's key names, e.g. "
                        f'{{"robot_pos": "robot0_eef_pos"}}; got {keys!r}')
    unknown = sorted(set(keys) - set(KEYS))
    if unknown:
        raise UserError(f"dataset option keys names '{unknown[0]}', which robot_demos does not read; it reads "
                        f"{', '.join(KEYS)}")
    paths = dict(KEYS)
    for name, key in keys.items():
        paths[name] = key if "/" in key or name == "actions" else f"obs/{key}"
    return tuple(paths.items())


@lru_cache(maxsize=8)
def _read(path: str, mtime: float, size: int, horizon: int, state_dim: int, action_dim: int,
          keys: tuple[tuple[str, str], ...] = tuple(KEYS.items())):
    """Every demo of the file as (x0 [N, C, H], cond [N, K], names, split masks); cached per file version."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc}); {MAKE}") from None
    with f:
        data = f.get("data")
        demos = sorted((k for k in (data.keys() if isinstance(data, h5py.Group) else []) if k.startswith("demo_")),
                       key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else -1)
        if not demos:
            raise UserError(f"{path} is not in the robomimic layout (no data/demo_N groups); {MAKE}")
        where = dict(keys)
        x0, cond, names, dropped = [], [], [], 0
        for name in demos:
            g = data[name]
            arrays = {}
            for key, cols, meaning in (("robot_pos", state_dim, "state (x, y)"),
                                       ("goal_pos", 2, "goal (x, y)"),
                                       ("obstacles", 4 * MAX_OBSTACLES, f"obstacle slots ({MAX_OBSTACLES} x "
                                                                        "x, y, radius, present)"),
                                       ("actions", action_dim, "action (vx, vy)")):
                if where[key] not in g:
                    raise UserError(f"{path}: data/{name}/{where[key]} is missing; the robomimic layout needs "
                                    f"{', '.join(where.values())} per demo; {MAKE}, {KEYS_HINT}")
                a = np.asarray(g[where[key]], dtype=np.float64)
                if a.ndim != 2 or a.shape[1] != cols or len(a) == 0:
                    raise UserError(f"{path}: data/{name}/{where[key]} has shape {list(a.shape)} but the model "
                                    f"expects [T, {cols}] ({meaning}); convert the file or build the model for its "
                                    f"dimensions")
                arrays[key] = a
            t = len(arrays["actions"])
            if len(arrays["robot_pos"]) != t:
                raise UserError(f"{path}: data/{name} has {len(arrays['robot_pos'])} observations and {t} "
                                f"actions; each step needs both")
            if not all(np.isfinite(a).all() for a in arrays.values()):
                dropped += 1
                continue
            positions, actions = arrays["robot_pos"][:horizon], arrays["actions"][:horizon]
            if t < horizon:  # a short demo waits at its last position
                positions = np.concatenate([positions, np.repeat(positions[-1:], horizon - t, 0)])
                actions = np.concatenate([actions, np.zeros((horizon - t, action_dim))])
            layout_vec = np.concatenate([arrays["robot_pos"][0], arrays["goal_pos"][0],
                                         arrays["obstacles"][0]]) / ROOM
            x0.append(encode_trajectory(positions, actions))
            cond.append(layout_vec.astype(np.float32))
            names.append(name)
        masks = {}
        if "mask" in f:
            for key in ("train", "valid", "test"):
                if key in f["mask"]:
                    masks[key] = {n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][key][()]}
    if dropped:
        log.warning(f"{path}: skipped {dropped} demo(s) holding NaN or Inf")
    if not x0:
        raise UserError(f"{path}: every demo holds NaN or Inf; re-create the file ({MAKE})")
    return np.stack(x0), np.stack(cond), names, masks, dropped


def _split_demos(file: Path, names: list[str], masks: dict[str, set[str]], key: str) -> set[str]:
    """The demos of split ``key`` (train, valid, test); a held-out split never holds a training demo."""
    if not masks:  # no masks at all: 80/10/10 in demo order
        n = len(names)
        bounds = {"train": (0, int(0.8 * n)), "valid": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
        return set(names[slice(*bounds[key])])
    unmasked = {n for n in names if not any(n in m for m in masks.values())}
    train = masks["train"] if "train" in masks else unmasked
    if key == "train":
        return train
    other, split = ("valid", "test") if key == "test" else ("test", "validation")
    if masks.get(key):
        chosen, source = masks[key], f"mask/{key}"
    elif unmasked and "train" in masks:
        chosen, source = unmasked, "the demos in no mask"
    elif masks.get(other):
        chosen, source = masks[other], f"mask/{other}"
    else:
        raise UserError(f"{file}: its masks ({', '.join(f'mask/{k}' for k in sorted(masks))}) leave no held-out "
                        f"demo for the {split} split (no mask/{key}, no mask/{other}, every demo in mask/train); "
                        f"add a mask/{key} of demos kept out of training")
    leaked = sorted(chosen & train)
    if leaked:
        raise UserError(f"{file}: {source} shares {len(leaked)} demo(s) with mask/train (e.g. {leaked[0]}); a "
                        f"held-out split must not hold training demos; fix the file's masks")
    if source == f"mask/{other}":
        log.warning(f"{file} has no mask/{key} and no demo outside its masks: the {split} split is "
                    f"mask/{other}, so validation and test coincide (the test score was seen while choosing "
                    f"the model); add a mask/test of held-out demos for an unbiased test")
    return chosen


class RobotDemos(Dataset):
    """Demonstrations of a robomimic HDF5 file as ``{"x0": [4, H], "cond": [20]}`` items.

    ``x0`` holds position over the room's half-size and action over the speed
    limit (both in [-1, 1]); ``cond`` the start, the goal and the obstacle
    slots (see :mod:`prefdiff_robotics.scene`). Demos longer than the horizon
    are cut to it, shorter ones wait at their last position.

    :param split: train, val or test (the file's mask/train, mask/valid, mask/test).
    :param size: at most this many items (the first ones of the split).
    :param path: the HDF5 file; or ``root``, a folder holding ``demos.hdf5``.
    :param horizon: trajectory length the model generates.
    :param state_dim: state columns the model expects (obs/robot_pos).
    :param action_dim: action columns the model expects.
    :param keys: the file's own names for what is read, by ours: ``robot_pos``, ``goal_pos``,
        ``obstacles`` (under ``obs/`` unless the name has a ``/``) and ``actions``; e.g.
        ``{"robot_pos": "robot0_eef_pos"}``. Names left out keep the layout above.
    """

    def __init__(self, split: str = "train", size: int | None = None, path: str | None = None,
                 root: str | None = None, horizon: int = HORIZON, state_dim: int = STATE_DIM,
                 action_dim: int = ACTION_DIM, keys: dict[str, str] | None = None) -> None:
        if split not in SPLITS:
            raise UserError(f"dataset split must be one of train, val, test; got '{split}'")
        if (state_dim, action_dim) != (STATE_DIM, ACTION_DIM):
            raise UserError(f"the point robot has state_dim={STATE_DIM} and action_dim={ACTION_DIM}; "
                            f"got state_dim={state_dim}, action_dim={action_dim}")
        if path is None and root is None:
            raise UserError(f"robot_demos needs path= (a robomimic HDF5 file) or root= (a folder with "
                            f"demos.hdf5); {MAKE}")
        file = Path(path) if path is not None else Path(root) / "demos.hdf5"
        if file.is_dir():
            raise UserError(f"demonstration file {file} is a folder; pass path= the HDF5 file, or root= a folder "
                            f"holding demos.hdf5")
        if not file.is_file():
            raise UserError(f"demonstration file {file} does not exist; {MAKE}")
        stat = file.stat()
        x0, cond, names, masks, self.dropped = _read(str(file.resolve()), stat.st_mtime, stat.st_size,
                                                     horizon, STATE_DIM, ACTION_DIM, _key_paths(keys))
        chosen = _split_demos(file, names, masks, SPLITS[split])
        keep = [i for i, n in enumerate(names) if n in chosen]
        if size is not None:
            keep = keep[:size]
        self.x0 = torch.from_numpy(x0[keep])
        self.cond = torch.from_numpy(cond[keep])
        if self.cond.shape[1] != COND_DIM:
            raise UserError(f"{file}: conditions have {self.cond.shape[1]} numbers, expected {COND_DIM}")
        self.path = file

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"x0": self.x0[index], "cond": self.cond[index]}

    def layouts(self) -> list[Layout]:
        """Every item's layout."""
        return [Layout.from_vector(c) for c in self.cond.numpy()]

    def draw(self, rows: dict[str, torch.Tensor], cond: torch.Tensor, png_path: str | Path) -> None:
        """`prefdiff sample` and `prefdiff edit`'s figure: each row's planned and simulated paths in their
        layouts (the benchmark's figure)."""
        from prefdiff_robotics.figures import render_rows

        render_rows(rows, cond, Path(png_path))
